"""Where a hyperparameter study's time goes, and how far the study is from the floor of its own work.

A fixed small study (``rsgh.book.study.run_study``, as ``python -m rsgh study`` runs it: trials as Dask
tasks on a local cluster of ``--workers`` single-threaded processes, Optuna's journal as storage,
compiled steps, a validation mAP every epoch, the median pruner), in a fresh temporary folder (never
the real studies): ``--trials`` trials of ``--arm`` on ``--dataset`` at ``--bits`` bits, at most
``--max-epochs`` epochs each, the sampler's seed fixed (``--seed``: the first ten trials, drawn at
random by TPE, are the same in every run; the later ones depend on the values of the first).

It prints the time in each part, in worker-seconds (a worker busy for a second is one) and as a share
of the workers' time (wall time times workers): the training steps, the compiled step's first calls
(compilation), the evaluations (collapse measures; hashing and the exact validation mAP; their
files: logs, checkpoints, best.pt), the end of a trial (measures on the training set, the final model,
test-query reports), the data and features, Optuna's storage (in the workers, and in the client that
asks and tells), the trial's start-up before its first step, Dask's dispatch (submitted to started,
ended to received) and the workers' idle time (waiting on the client, the last trial's tail).

The floor is measured in the same run, by the workers themselves, at the start and end of each
trial (so that it shares the trial's moment on a machine whose speed drifts, and other jobs' load):
the trial's step as its matrix products alone (``stages.products``: forward, the weights' gradient, the
gradient into every layer but the first) plus one fused Adam pass over its parameters
(``stages.adam_pass``), times the steps it took, plus the products of its evaluations (the encoder
over the database and the validation queries for the hashing, encoder and decoder over the
validation queries for the collapse measures), times the evaluations it made. The study's floor is
the sum over its trials divided by the workers; the sampling time is taken off the wall time.

With the default ``--max-epochs 2`` the study is bound by what each trial pays once (compiling a shape new to
its worker, its data, its end); ``--max-epochs 20``, the warm-up of the pixels protocol before which no trial is
pruned (unless it stays at chance through epoch 5), gives trials as long as most of a real study's: the book's
*Performance* page shows both.

    python benchmarks/study_speed.py [--arm rsgh] [--dataset mnist] [--bits 64] [--trials 12]
        [--max-epochs 2] [--workers 2] [--seed 0] [--inductor-cache warm|cold|as-is] [--label TEXT]

Needs the data root (``RSGH_DATA`` or ``--data-root``). Ends with ``study_vs_floor=<ratio>`` and
appends a record to ``results/benchmarks/study_speed.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROWS = 1024  # rows of a unit of the evaluations' products


def model_layers(cfg, input_dim: int) -> tuple[list, list, int]:
    """(encoder layers, decoder layers) as (in, out) pairs, and the parameters, of ``cfg``'s model."""
    from rsgh.method.model import HashModel

    ones = torch.ones(input_dim)
    model = HashModel(input_dim, cfg.bits, cfg.hidden_layers, cfg.arch, [0], ones * 0.5, ones, cfg.hidden_width)
    params = sum(p.numel() for p in model.parameters())
    if cfg.arch == "reference":
        return [(input_dim, cfg.bits)], [(cfg.bits, input_dim)], params
    return model.layer_sizes["enc"], model.layer_sizes["dec"], params


def floor_calls(cfg, input_dim: int) -> dict:
    """The floor's functions for ``cfg``'s trial: a step's products, Adam's pass, and the products of
    ``ROWS`` rows through the encoder and through the decoder (the evaluations)."""
    from stages import products  # benchmarks/ is on sys.path (the workers inherit it)

    enc, dec, params = model_layers(cfg, input_dim)
    step, _ = products(enc + dec, 1, cfg.batch_size)
    w, g, m, v = (torch.rand(params) for _ in range(4))
    count = torch.tensor(1.0)

    def adam():
        torch._fused_adam_([w], [g], [m], [v], [], [count], amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, maximize=False)

    def forward(layers):
        xs = [torch.rand(ROWS, a) for a, _ in layers]
        ws = [torch.rand(a, b) for a, b in layers]

        def call():
            for x, wt in zip(xs, ws):
                torch.mm(x, wt)
        return call

    return {"products": step, "adam": adam, "encoder": forward(enc), "decoder": forward(dec)}


def sample_floor(cfg, data_root) -> dict | None:
    """Seconds of one call of each of :func:`floor_calls`, timed in turns here and now; None before this
    worker has the trial's data (loading it is the trial's work, not the sample's)."""
    from rsgh.data.task import data_key
    from rsgh.train.step import timed_rates
    from rsgh.train.task import _LOADED

    data = _LOADED.get((data_key(cfg), str(data_root)))
    if data is None:
        return None
    rates = timed_rates(floor_calls(cfg, data.train_x.shape[1]), 0.03, warmup=3)[0]
    return {k: 1 / r for k, r in rates.items()}


def warm_disk_cache(arm: str, dataset: str, bits: int, max_epochs: int, seed: int, trials: int, data_root) -> float:
    """Compile once, in one of the study's workers (this runs as a Dask task), the steps of the first ``trials``
    trials that the study's sampler will ask (TPE's first ten are drawn at random from its seed, whatever the
    trials' values), a few steps of each through the training loop, so that inductor's and AOTAutograd's disk
    caches hold their graphs, as they do when a study is run again on a machine; the worker then forgets them
    (``torch._dynamo.reset``), and the workers still trace each shape (dynamo) and load the rest from the disk.
    Returns the seconds it took (not part of the study's time)."""
    import warnings

    import optuna

    import numpy as np

    from rsgh.book import study
    from rsgh.config import Runtime, make_config
    from rsgh.data.task import TaskData
    from rsgh.train.loop import train_group
    from rsgh.train.task import task_data
    from rsgh.book.schedule import tune_worker_process

    tune_worker_process(1)
    t = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    replay = optuna.create_study(direction="maximize", sampler=sampler)
    runtime = Runtime(progress=False, compile_step=True, device="cpu")
    x = None
    with tempfile.TemporaryDirectory() as runs:
        for i in range(min(trials, 10)):
            cfg = study.trial_config(study.suggest(replay.ask(), arm), arm, dataset, bits, max_epochs)
            if x is None:
                dim = task_data(dataclasses.replace(cfg, feature_scaling="none"), data_root, progress=False).train_x.shape[1]
                x = np.random.default_rng(0).random((4096, dim), dtype=np.float32)
            # a few steps through the training loop: its graph, as the trial's (AOTAutograd's cache is keyed
            # by the graph as dynamo traced it; a step timed on its own gave other keys)
            cfg = make_config(None, dict(cfg.to_dict(), iterations=4, eval_every=4, epochs=0))
            train_group([cfg], TaskData(x, x[:64]), [Path(runs) / str(i)], runtime)
    torch._dynamo.reset()
    return time.time() - t


def floored_trial(cfg, out, data_root, folder, study_name, trial_id, runtime):
    """``rsgh.book.study.run_trial`` with the floor sampled before and after it, in its worker."""
    from rsgh.book.study import run_trial
    from rsgh.train.rundir import RunDir

    begun = time.time()
    torch.set_num_threads(1)
    on_cpu = runtime is None or runtime.device == "cpu"  # a GPU's trials: their wall time only
    t = time.perf_counter()
    before = sample_floor(cfg, data_root) if on_cpu else None
    sampled = time.perf_counter() - t
    result = run_trial(cfg, out, data_root, folder, study_name, trial_id, runtime)
    t = time.perf_counter()
    after = sample_floor(cfg, data_root) if on_cpu else None
    sampled += time.perf_counter() - t
    metrics = RunDir(out).read_metrics()
    steps, evals = int(metrics["iteration"].max()), len(metrics)
    result["floor"] = {"steps": steps, "evaluations": evals, "products_s": 0.0, "adam_s": 0.0,
                       "eval_products_s": 0.0, "sample_s": sampled, "drift": 1.0}
    if after is not None:
        per_call = {k: (before[k] + after[k]) / 2 for k in after} if before else after
        from rsgh.train.task import task_data

        r = task_data(cfg, data_root, progress=False).retrieval
        n_db, n_val = len(r.split.database), len(r.indices(r.selection_part))
        eval_s = ((n_db + 2 * n_val) * per_call["encoder"] + n_val * per_call["decoder"]) / ROWS
        result["floor"].update(products_s=steps * per_call["products"], adam_s=steps * per_call["adam"],
                               eval_products_s=evals * eval_s,
                               drift=after["products"] / before["products"] if before else 1.0)
    result["times"].update(started=begun, ended=time.time())  # the task's, samples included
    result["shape"] = (cfg.arch, cfg.hidden_layers, cfg.hidden_width, cfg.batch_size, cfg.feature_scaling)
    return result


PARTS = [  # (name, what it is)
    ("steps", "training steps (their compiled first calls apart)"),
    ("compile", "the compiled step's first calls (dynamo, AOTAutograd, inductor)"),
    ("eval_map", "evaluations: hashing and the exact validation mAP"),
    ("eval_measures", "evaluations: collapse measures"),
    ("eval_files", "evaluations: logs, checkpoints, best.pt"),
    ("finish", "end of a trial: measures on the training set, final model, summary"),
    ("test_reports", "end of a trial: test-query reports"),
    ("data", "data and features (in the workers)"),
    ("storage", "Optuna's storage (workers and client)"),
    ("startup", "trial start-up before its training loop (data and storage apart)"),
    ("other", "the rest of a trial (its run folder read back, imports)"),
    ("sampling", "the floor's samples (this benchmark's own, taken off the wall time)"),
    ("dispatch", "Dask: submitted to started, ended to received"),
    ("idle", "workers idle otherwise (the client between trials, the last trials' tail)"),
]


def breakdown(timings: dict, wall: float, workers: int) -> dict:
    """Worker-seconds of each of PARTS over the study."""
    parts = dict.fromkeys([name for name, _ in PARTS], 0.0)
    for tr in timings["trials"]:
        t = tr["times"]
        parts["steps"] += t.get("steps", 0.0) - t.get("compile", 0.0)
        for k in ("compile", "eval_map", "eval_measures", "eval_files", "finish", "test_reports", "data"):
            parts[k] += t.get(k, 0.0)
        storage = t.get("storage_open", 0.0) + t.get("storage_reports", 0.0)
        parts["storage"] += storage
        before = t.get("before_training") or 0.0
        parts["startup"] += max(0.0, before - t.get("data", 0.0) - t.get("storage_open", 0.0)) + t.get("restore", 0.0)
        parts["other"] += t["seconds"] - before - sum(t.get(k, 0.0) for k in (
            "steps", "eval_map", "eval_measures", "eval_files", "finish", "test_reports", "storage_reports",
            "restore"))
        parts["sampling"] += tr["floor"]["sample_s"]
        parts["dispatch"] += max(0.0, t["started"] - tr["submitted"]) + max(0.0, tr["received"] - t["ended"])
    parts["storage"] += timings["storage_s"]  # the client's: a worker waits on it (taken off the idle time)
    busy = sum(tr["received"] - tr["submitted"] for tr in timings["trials"])
    parts["idle"] = max(0.0, wall * workers - busy - timings["storage_s"])
    return parts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", default="rsgh", choices=["sgh", "sgh-arch", "rsgh"])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "cifar10"])
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (the study's is 0)")
    p.add_argument("--data-root", default=os.environ.get("RSGH_DATA"))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="the trials' device (cuda: their wall time only; the floor is the CPU's)")
    p.add_argument("--eager", action="store_true", help="the trials' steps uncompiled (a quick check of the machinery)")
    p.add_argument("--folder", help="the study's temporary folder (default: a new one, removed at the end)")
    p.add_argument("--inductor-cache", default="warm", choices=["warm", "cold", "as-is"],
                   help="inductor's disk cache: 'warm' (the first trials' kernels compiled before the study, in a "
                        "cache that this benchmark's runs share), 'cold' (an empty cache of this run's own) or "
                        "'as-is' (this machine's)")
    p.add_argument("--label", default="", help="what this run measures (recorded)")
    p.add_argument("--no-record", action="store_true", help="print only (a trial run of the benchmark)")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.pop("RSGH_SCHEDULER", None)  # a cluster of its own, never a running one
    os.environ["RSGH_WORKERS"] = str(args.workers)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="rsgh-study-speed-"))
    if args.inductor_cache != "as-is":  # set before torch compiles anything; the workers inherit it
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor" if args.inductor_cache == "cold" else
                                                    Path(tempfile.gettempdir()) / "rsgh-study-speed-inductor")
    from rsgh.book import schedule, study
    from rsgh.config import Runtime

    t = time.time()
    client = schedule.get_client()
    cluster_s = time.time() - t
    warm_s = 0.0
    if args.inductor_cache == "warm" and args.device == "cpu" and not args.eager:
        # in a worker, as the trials will compile: graphs compiled here in the benchmark's own process did not
        # serve the workers' trials (a CIFAR-10 study's trials compiled 12.6 s each after such a warm-up, 2.5 s
        # after a study had run them), for a reason not found
        warm_s = client.submit(warm_disk_cache, args.arm, args.dataset, args.bits, args.max_epochs, args.seed,
                               args.trials, args.data_root, pure=False).result()
        print(f"inductor's disk cache warmed with the first trials' kernels in {warm_s:.0f} s", flush=True)
    import rsgh.book.study as st

    original_open = st.open_study

    def seeded(*a, **kw):  # the benchmark's sampler seed
        kw["seed"] = args.seed
        return original_open(*a, **kw)

    st.open_study = seeded
    timings: dict = {}
    t0 = time.time()
    try:
        best = study.run_study(args.arm, args.dataset, args.bits, args.trials, args.max_epochs, folder / "study",
                               folder / "scratch", args.data_root, timings=timings, trial_task=floored_trial,
                               runtime=Runtime(progress=False, compile_step=not args.eager, device=args.device),
                               progress=True)
    finally:
        st.open_study = original_open
    wall = time.time() - t0
    client.close()
    if not args.folder:
        shutil.rmtree(folder, ignore_errors=True)
    trials = timings["trials"]
    workers = args.workers
    parts = breakdown(timings, wall, workers)
    floor = {k: sum(tr["floor"][k] for tr in trials) for k in ("products_s", "adam_s", "eval_products_s")}
    floor_s = sum(floor.values()) / workers
    sampling_wall = parts["sampling"] / workers
    run_s = wall - sampling_wall
    states = [tr["state"] for tr in trials]
    print(f"\nstudy: {len(trials)} trials ({states.count('complete')} complete, {states.count('pruned')} pruned, "
          f"{states.count('diverged')} diverged), {sum(tr['floor']['steps'] for tr in trials):,} steps, "
          f"{sum(tr['floor']['evaluations'] for tr in trials)} evaluations; best validation mAP {best['validation_map']:.4f}")
    print(f"wall {wall:.1f} s on {workers} workers (the cluster's start, {cluster_s:.1f} s, and the client's "
          f"first data load, {timings.get('data_s', 0):.1f} s, before it); without the floor's samples {run_s:.1f} s")
    print(f"\n{'trial':>5s} {'state':9s} {'epochs':>6s} {'steps':>6s} {'compile s':>9s} {'steps s':>8s} {'floor s':>8s}"
          "  shape (arch, hidden layers, width, batch, scaling)")
    for tr in sorted(trials, key=lambda tr: tr["number"]):
        t, f = tr["times"], tr["floor"]
        print(f"{tr['number']:5d} {tr['state']:9s} {tr['epochs']:6g} {f['steps']:6d} {t.get('compile', 0):9.1f} "
              f"{t.get('steps', 0) - t.get('compile', 0):8.1f} {f['products_s'] + f['adam_s'] + f['eval_products_s']:8.1f}"
              f"  {tr.get('shape', '')}")
    print(f"\n{'part':70s} {'worker-s':>9s} {'share':>6s} {'per trial':>9s}")
    total = wall * workers
    for name, what in PARTS:
        print(f"{what:70s} {parts[name]:9.1f} {100 * parts[name] / total:5.1f}% {parts[name] / len(trials):9.2f}")
    print(f"{'(sum)':70s} {sum(parts.values()):9.1f} {100 * sum(parts.values()) / total:5.1f}%")
    print(f"\nfloor: products {floor['products_s']:.1f} s, Adam's pass {floor['adam_s']:.1f} s, evaluations' products "
          f"{floor['eval_products_s']:.1f} s (worker-seconds); on {workers} workers {floor_s:.1f} s")
    steps_vs = parts["steps"] / max(floor["products_s"] + floor["adam_s"], 1e-9)
    evals = parts["eval_map"] + parts["eval_measures"] + parts["eval_files"]
    drift = [tr["floor"]["drift"] for tr in trials]
    print(f"steps against their floor (products and Adam's pass): {steps_vs:.2f}; evaluations against their "
          f"products: {evals / max(floor['eval_products_s'], 1e-9):.2f}")
    print(f"the floor's products after a trial over before it: {min(drift):.2f} to {max(drift):.2f} "
          f"(median {statistics.median(drift):.2f}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"study_wall_s={wall:.1f}")
    if args.device != "cpu":
        return  # no floor on the CPU was sampled
    ratio = run_s / floor_s
    print(f"study_floor_s={floor_s:.1f}")
    print(f"study_vs_floor={ratio:.2f}")
    if args.no_record:
        return
    from record import record

    values = {"study_vs_floor": ratio, "wall_s": wall, "floor_s": floor_s, "trials": len(trials), "warm_s": warm_s,
              "max_epochs": args.max_epochs,
              "steps": sum(tr["floor"]["steps"] for tr in trials),
              "evaluations": sum(tr["floor"]["evaluations"] for tr in trials),
              "steps_vs_floor": steps_vs, "load_average": os.getloadavg()[0],
              **{f"{k}_worker_s": v for k, v in parts.items()}, **{f"floor_{k}": v for k, v in floor.items()}}
    record("study_speed", values, args, label=args.label)


if __name__ == "__main__":
    main()
