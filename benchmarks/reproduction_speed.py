"""How far a reproduction is from the floor of its own training, page by page.

Re-executes one page of the book (``--page``) as ``python -m rsgh reproduce --profile PROFILE --only PAGE``
executes it (papermill, one local Dask cluster of ``--workers`` single-threaded processes for the page,
the trained runs in a fresh folder), with the profile's parameters changed by ``--set KEY=VALUE`` (YAML
values: ``--set bits=[32]``), once for each of ``--epochs`` (the page's ``epochs`` parameter), in a
temporary folder: a copy of the page's notebook beside a plan of that one page (never the published
book, the results store or ``runs/``). Each execution starts its own cluster (part of its time) and,
with ``--inductor-cache cold`` (the default), compiles into an empty inductor cache, as a reproduction
on a fresh machine does.

For each execution it prints the page's wall time, the training's share (the runs' own wall times, per
worker) and the floor of the work the page's runs did: every step's matrix products plus one fused Adam
pass over the model's parameters (``study_speed.floor_calls``), plus the products of every evaluation
(the encoder over the database and the selection queries, encoder and decoder over the selection
queries) and of the test-query reports at the end (the encoder over the database and the test
queries, for the best and the final model), timed in turns right after the execution by every worker
at once (as the training kept them busy at once), one thread each, summed over the runs and divided by
the workers; and the workers' own seconds by phase
(``rsgh.train.compiled.PHASES``). ``reproduction_vs_floor`` extrapolates the longest execution to the
profile's own epochs (``quick``: the page's 200): what grows with the epochs (the steps, their compiled
first calls apart, and the evaluations, in worker-seconds) scaled to them, the rest of the page's wall
time (its kernel, cluster, data, compiling, baselines, test-query reports, figures) as it was, against
the floor scaled likewise: an estimate, from a short execution of one page, of the long one. (A fit of
the wall time over two executions was tried first: the compiling's spread on a loaded machine, tens of
seconds, swamped the epochs' difference.)

``--profile render`` trains nothing: it prints the page's time (and ``--epochs`` is not used).
``--device cuda`` executes the page with ``RSGH_DEVICE=cuda`` (``make reproduce DEVICE=cuda``): every
run's training on the GPU (the floor stays the CPU's, one thread).

    python benchmarks/reproduction_speed.py [--page mnist_pixels] [--profile quick] [--set bits=[32]]
        [--epochs 6] [--workers 2] [--device cpu|cuda|auto] [--inductor-cache cold|as-is] [--label TEXT]
        [--no-record] [--keep DIR]

Needs the data root (``RSGH_DATA`` or ``--data-root``). Appends a record to
``results/benchmarks/reproduction_speed.json`` (unless ``--no-record``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def one_page_plan(folder: Path, page: str, profile: str, changes: dict) -> Path:
    """A plan of ``page`` alone in ``folder`` (with a copy of its notebook), ``profile`` changed by
    ``changes``; returns the plan's path."""
    from rsgh.book.reproduce import PLAN, load_plan

    entry = dict(load_plan(PLAN)["notebooks"][page])
    notebook = entry.get("notebook", page)
    entry[profile] = {**(entry.get(profile) or {}), **changes}
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLAN.parent / f"{notebook}.ipynb", folder / f"{notebook}.ipynb")
    plan = folder / "plan.yml"
    plan.write_text(yaml.safe_dump({"notebooks": {page: entry}}, sort_keys=False))
    return plan


def runs_work(runs_dir: Path, data_root) -> list[dict]:
    """Every finished run under ``runs_dir``: its configuration, steps, evaluations, training seconds
    and the sizes its evaluations hash (from its data, loaded once here)."""
    from rsgh.train.rundir import RunDir
    from rsgh.train.task import task_data

    out = []
    for summary in sorted(runs_dir.rglob("summary.json")):
        run = RunDir(summary.parent)
        s = json.loads(summary.read_text())
        cfg = run.read_config()
        data = task_data(cfg, data_root, progress=False)
        r = data.retrieval
        sizes = {"dim": data.train_x.shape[1], "database": len(data.train_x), "selection": len(data.eval_x),
                 "test": len(r.indices("query")) if r is not None else 0}
        reports = 0 if r is None else sum((summary.parent / f).exists() for f in ("retrieval.json", "retrieval_best.json"))
        out.append({"cfg": cfg, "steps": int(s["iterations"]), "evaluations": len(run.read_metrics()),
                    "reports": reports, "train_s": float(s["wall_time_s"]), "group": int(s.get("group_size", 1)),
                    **sizes})
    return out


def per_call_seconds(shapes: list, seconds: float = 0.05) -> dict:
    """Seconds of one call of each of ``study_speed.floor_calls`` for each shape ``(cfg, input dim)``, timed
    in turns here, one thread."""
    from rsgh.train.step import timed_rates
    from study_speed import floor_calls  # benchmarks/ is on sys.path (the workers inherit it)

    torch.set_num_threads(1)
    out = {}
    for i, (cfg, dim) in enumerate(shapes):
        out[i] = {k: 1 / r for k, r in timed_rates(floor_calls(cfg, dim), seconds, warmup=3)[0].items()}
    return out


def _key(w: dict) -> tuple:
    c = w["cfg"]
    return (c.arch, c.hidden_layers, c.hidden_width, c.bits, c.batch_size, w["dim"])


def floor_seconds(work: list[dict], client=None) -> dict:
    """Worker-seconds of the floor of ``work`` (:func:`runs_work`): products, Adam's pass, evaluations'
    and reports' products. Each distinct shape is timed by every worker of ``client`` at once (as the
    training had its workers busy at once; the mean of theirs), else here."""
    from study_speed import ROWS

    keys = list(dict.fromkeys(_key(w) for w in work))
    shapes = [next((w["cfg"], w["dim"]) for w in work if _key(w) == k) for k in keys]
    if client is not None:
        runs = list(client.run(per_call_seconds, shapes).values())
        timed = {i: {k: sum(r[i][k] for r in runs) / len(runs) for k in runs[0][i]} for i in range(len(keys))}
    else:
        timed = per_call_seconds(shapes)
    per_call = {k: timed[i] for i, k in enumerate(keys)}
    total = {"products_s": 0.0, "adam_s": 0.0, "eval_products_s": 0.0}
    for w in work:
        t = per_call[_key(w)]
        total["products_s"] += w["steps"] * t["products"]
        total["adam_s"] += w["steps"] * t["adam"]
        evaluation = ((w["database"] + 2 * w["selection"]) * t["encoder"] + w["selection"] * t["decoder"]) / ROWS
        report = (w["database"] + w["test"]) * t["encoder"] / ROWS
        total["eval_products_s"] += w["evaluations"] * evaluation + w["reports"] * report
    return total


def _worker_phases() -> dict:
    """This worker's seconds by phase of its trainings since it started (``rsgh.train.compiled.PHASES``)."""
    from rsgh.train.compiled import PHASES

    return dict(PHASES.seconds)


SCALING = ("eval_map", "eval_measures", "eval_files")  # phases that grow with the epochs, with the steps


def execute(plan: Path, page: str, profile: str, out: Path, runs_dir: Path, data_root) -> float:
    """Seconds of one execution of the page (papermill), its runs into ``runs_dir``."""
    from rsgh.book.reproduce import run_plan

    extra = {"runs_dir": str(runs_dir)}
    if data_root:
        extra["data_root"] = str(data_root)
    t = time.time()
    run_plan(plan, profile, out, [page], redo=True, extra_parameters=extra)
    return time.time() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page", default="mnist_pixels")
    p.add_argument("--profile", default="quick", choices=["render", "quick", "paper", "full", "smoke"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the page changed (YAML value), e.g. bits=[32]")
    p.add_argument("--epochs", type=int, nargs="+", default=[6],
                   help="the page's epochs, one execution each (the last, the longest, is extrapolated)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="RSGH_DEVICE of the execution (make reproduce DEVICE=...)")
    p.add_argument("--data-root", default=os.environ.get("RSGH_DATA"))
    p.add_argument("--inductor-cache", choices=["cold", "as-is"], default="cold",
                   help="inductor's disk cache: 'cold' (an empty one for each execution, as on a fresh machine) or "
                        "'as-is' (this machine's)")
    p.add_argument("--keep", help="a folder to keep the executions in (default: a temporary one, removed)")
    p.add_argument("--label", default="")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = yaml.safe_load(value)
    os.environ.pop("RSGH_SCHEDULER", None)  # a cluster of its own, never a running one
    os.environ["RSGH_WORKERS"] = str(args.workers)
    os.environ["RSGH_DEVICE"] = args.device
    folder = Path(args.keep or tempfile.mkdtemp(prefix="rsgh-reproduction-speed-"))
    from rsgh.book import schedule
    from rsgh.book.reproduce import _use_cluster, pages

    rows = []
    epochs_list = [None] if args.profile == "render" else args.epochs
    for i, epochs in enumerate(epochs_list):
        tag = f"{i}-" + ("render" if epochs is None else f"e{epochs}")
        plan = one_page_plan(folder / tag, args.page, args.profile,
                             {**changes, **({} if epochs is None else {"epochs": epochs})})
        runs_dir = folder / tag / "runs"
        if args.inductor_cache == "cold":  # the workers, started below, inherit it
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / tag / "inductor")
        t = time.time()
        os.environ.pop("RSGH_SCHEDULER", None)  # the last execution's, closed
        _use_cluster(None)  # one local cluster, as reproduce starts it; the page's kernel connects to it
        cluster_s = time.time() - t
        wall = cluster_s + execute(plan, args.page, args.profile, folder / tag / "out", runs_dir, args.data_root)
        phases: dict = {}
        client = schedule.get_client()
        for worker in client.run(_worker_phases).values():
            for k, v in worker.items():
                phases[k] = phases.get(k, 0.0) + v
        row = {"epochs": epochs, "wall_s": wall, "cluster_s": cluster_s, "phases": phases}
        if epochs is not None:
            work = runs_work(runs_dir, args.data_root)
            floor = floor_seconds(work, client if args.device == "cpu" else None)
        schedule._close()
        if epochs is not None:
            row.update(floor, runs=len(work), steps=sum(w["steps"] for w in work),
                       train_s=sum(w["train_s"] / w["group"] for w in work),
                       floor_s=sum(floor.values()) / args.workers)
            row["vs_floor"] = wall / row["floor_s"]
            # what grows with the epochs: the steps (their compiled first calls apart) and the evaluations
            row["growing_s"] = phases.get("steps", 0.0) - phases.get("compile", 0.0) + sum(phases.get(k, 0.0)
                                                                                          for k in SCALING)
        rows.append(row)
        print(f"{args.page} ({args.profile}{'' if epochs is None else f', {epochs} epochs'}): {wall:.1f} s (its "
              f"cluster's start {cluster_s:.1f} s)"
              + ("" if epochs is None else
                 f"; {row['runs']} runs, {row['steps']:,} steps, their training {row['train_s']:.1f} worker-s; floor "
                 f"{row['floor_s']:.1f} s on {args.workers} workers (products {row['products_s']:.1f}, Adam's pass "
                 f"{row['adam_s']:.1f}, evaluations' products {row['eval_products_s']:.1f} worker-s); "
                 f"{row['vs_floor']:.2f} times the floor"), flush=True)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"page_wall_s={rows[-1]['wall_s']:.1f}")
    values = {"page": args.page, "profile": args.profile, "device": args.device, "load_average": os.getloadavg()[0]}
    if args.profile == "render":
        values["render_s"] = rows[0]["wall_s"]
        print(f"render_s={rows[0]['wall_s']:.1f}")
    else:
        target = pages(ROOT / "notebooks" / "plan.yml", args.profile, [args.page])[0][2].get("epochs")
        values.update({f"wall_s e{r['epochs']}": r["wall_s"] for r in rows})
        values.update({f"floor_s e{r['epochs']}": r["floor_s"] for r in rows})
        values.update({f"vs_floor e{r['epochs']}": r["vs_floor"] for r in rows})
        values.update({f"growing_s e{r['epochs']}": r["growing_s"] for r in rows})
        last = rows[-1]
        print(f"page_vs_floor={last['vs_floor']:.2f} (at {last['epochs']} epochs)")
        ph = last["phases"]
        print("the workers' seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(ph.items())))
        if target:
            # The longest execution's parts that grow with the epochs (steps, evaluations: the workers' own
            # seconds), scaled to the profile's epochs, the rest (kernel, cluster, data, compiling, baselines,
            # reports, figures) as it was; the floor scaled likewise (all of it grows with the epochs but the
            # test-query reports' products, a few seconds).
            scale = target / last["epochs"]
            once = last["wall_s"] - last["growing_s"] / args.workers
            wall_at = once + scale * last["growing_s"] / args.workers
            floor_at = scale * last["floor_s"]
            print(f"at the profile's {target} epochs: {once:.0f} s once (the page's wall time less its steps and "
                  f"evaluations per worker) + {scale * last['growing_s'] / args.workers:.0f} s of steps and evaluations "
                  f"= {wall_at:.0f} s, against a floor of {floor_at:.0f} s (an extrapolation from {last['epochs']} epochs)")
            print(f"reproduction_vs_floor={wall_at / floor_at:.2f}")
            values.update(reproduction_vs_floor=wall_at / floor_at, extrapolated_to_epochs=target, once_s=once,
                          growing_s=last["growing_s"], steps_vs_floor=(ph.get("steps", 0.0) - ph.get("compile", 0.0))
                          / max(last["products_s"] + last["adam_s"], 1e-9),
                          **{f"phase_{k}_s": v for k, v in ph.items()})
    if args.no_record:
        return
    from record import record

    record("reproduction_speed", values, args, label=args.label,
           note="one page re-executed at a few epochs; the quick profile's ratio extrapolated from them")


if __name__ == "__main__":
    main()
