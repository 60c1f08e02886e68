"""The training step's speed work: the compiled graph called without dynamo, batches and noise drawn
ahead, and the split of a stage chosen from measured rates. Each must leave the results as they were."""

import gc
import time

import pandas as pd
import pytest
import torch

from rsgh.config import Runtime, make_config
from rsgh.data.task import TaskData
from rsgh.method.model import HashModel
from rsgh.method.objective import GroupSpec
from rsgh.book import schedule
from rsgh.train import compiled, loop, step
from rsgh.train.loop import train_group


def cfgs():
    base = dict(dataset="mnist", hidden_layers=2, bits=8, batch_size=32)
    return [make_config(None, dict(base, method="sgh", seed=0)),
            make_config(None, dict(base, method="rsgh", seed=1, redundancy="kl", tau=0.2))]


def weights(run):
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def frame(run):
    return pd.read_csv(run / "metrics.csv").drop(columns=["elapsed_s"])


@pytest.mark.parametrize("kw", [dict(epochs=3, eval_every=7), dict(sampling="replacement", iterations=40, eval_every=9,
                                                                   epochs=0, train_noise="half")])
def test_drawing_ahead_gives_the_results_of_drawing_step_by_step(tmp_path, blobs, monkeypatch, kw):
    """Evaluations every 7 steps and 16 steps an epoch: draws of 64 steps are cut at both."""
    configs = [make_config(None, dict(c.to_dict(), **kw)) for c in cfgs()]
    ahead, single = [tmp_path / f"a{g}" for g in range(2)], [tmp_path / f"s{g}" for g in range(2)]
    train_group(configs, TaskData(*blobs), ahead)
    monkeypatch.setattr(loop._Training, "DRAW_AHEAD", 1)
    train_group(configs, TaskData(*blobs), single)
    for a, s in zip(ahead, single):
        for k, v in weights(s).items():
            assert torch.equal(weights(a)[k], v), k
        pd.testing.assert_frame_equal(frame(a), frame(s))


def test_makespan_and_parts():
    assert step.makespan([3, 3, 2, 2, 2], 2) == 7
    assert step.part_sizes(5, 2) == [3, 2] and step.part_sizes(2, 4) == [1, 1]
    assert step.candidate_parts(2, 2) == [1, 2] and step.candidate_parts(20, 2) == [1, 2, 4, 8, 16, 20]
    rates = {1: 100.0, 4: 300.0}  # model-steps/s; a group of 2 interpolated: 166.7
    assert step.part_durations(4, 1000, 2, rates) == pytest.approx([12.0, 12.0])
    assert step.part_durations(4, 1000, 1, rates) == pytest.approx([1000 * 4 / 300])


def test_best_splits_balances_the_cores():
    # one long stage and two short ones: splitting the long pair only pays when a lone model is cheap
    cheap_lone = [(2, 1000, {1: 1.0, 2: 1.2}), (2, 100, {1: 1.0, 2: 1.8}), (2, 100, {1: 1.0, 2: 1.8})]
    assert step.best_splits(cheap_lone, 2)[0] == 2
    dear_lone = [(2, 1000, {1: 1.0, 2: 1.9}), (2, 900, {1: 1.0, 2: 1.9}), (2, 100, {1: 1.0, 2: 1.9})]
    assert step.best_splits(dear_lone, 2) == [1, 1, 1]


def test_best_splits_takes_the_least_work_of_nearly_equal_makespans():
    # the long stage in lone models; the short one lone: makespan 1,100 s for 2,200 s of work, or a pair:
    # 1,133 s (3% longer) for 2,133 s; a pair that costs 190 s (8% longer) loses
    near = [(2, 1000, {1: 1.0, 2: 1.05}), (2, 100, {1: 1.0, 2: 1.5})]
    assert step.makespan([d for p, st in zip([2, 2], near) for d in step.part_durations(st[0], st[1], p, st[2])],
                         2) == pytest.approx(1100)
    assert step.best_splits(near, 2) == [2, 1]
    assert step.best_splits(near, 2, slack=0.0) == [2, 2]
    far = [(2, 1000, {1: 1.0, 2: 1.05}), (2, 100, {1: 1.0, 2: 1.05})]
    assert step.best_splits(far, 2) == [2, 2]
    # beyond 4096 combinations each stage is chosen on its own, by the same rule: a pair 2.6% longer than two
    # lone models, for half the work
    many = [(2, 100, {1: 1.0, 2: 1.95})] * 13
    assert step.best_splits(many, 2) == [1] * 13 and step.best_splits(many, 2, slack=0.0) == [2] * 13


def test_step_rate_measures_the_group_and_measured_splits_restore_the_threads():
    configs = [make_config(None, dict(c.to_dict(), hidden_layers=1)) for c in cfgs()]
    rate, warm = step.step_rate(configs, 20, Runtime(progress=False, device="cpu"), seconds=0.05, warmup=2)
    assert rate > 0 and warm >= 0
    torch.set_num_threads(2)
    try:
        (parts, seconds), = schedule.measured_splits([(configs, 20, 1000)], 2, Runtime(progress=False, device="cpu",
                                                                                      threads=1), seconds=0.05)
        assert torch.get_num_threads() == 2  # the caller's, not the runtime's
    finally:
        torch.set_num_threads(1)
    assert parts in (1, 2) and len(seconds) == parts and min(seconds) > 0
    rates, warm, yard = step.stage_rates(configs, 20, [1, 2], Runtime(progress=False, device="cpu"), seconds=0.05)
    assert sorted(rates) == sorted(warm) == [1, 2] and min(rates.values()) > 0 and min(warm.values()) > 0 and yard > 0


def test_stage_rates_times_the_sizes_in_turns_in_model_steps(monkeypatch):
    """The sizes' steps and the yardstick are timed together (in turns), a group's steps/s count its
    models, and a group smaller than the stage takes its R-SGH model (the longer step) first."""
    timed, built = [], []

    def fake(calls, seconds, device, warmup):
        timed.append((list(calls), seconds, warmup))
        return {size: 100.0 if size != "yardstick" else 7.0 for size in calls}, 0.0
    group_step = step.group_step
    monkeypatch.setattr(step, "timed_rates", fake)
    monkeypatch.setattr(step, "group_step", lambda c, *a: (built.append([x.method for x in c]), group_step(c, *a))[1])
    configs = [make_config(None, dict(c.to_dict(), hidden_layers=1)) for c in cfgs()]
    assert [c.method for c in configs] == ["sgh", "rsgh"]
    rates, _, yard = step.stage_rates(configs, 20, [1, 2], Runtime(progress=False, device="cpu"), seconds=0.3, warmup=2)
    assert timed == [([1, 2, "yardstick"], 0.3, 0)] and rates == {1: 100.0, 2: 200.0} and yard == 7.0
    assert built == [["rsgh"], ["rsgh", "sgh"]]


def test_measured_splits_put_the_stages_on_the_yardsticks_scale(monkeypatch):
    """Two stages measured at different moments: the second while the machine ran at half speed (its
    yardstick too). On one scale (the yardsticks' median) the lone models of the first stage (1,333 s
    each) are longer than the second stage's pair (1,067 s), so they go first (``plan_parts`` orders the
    parts longest first); taken as measured, the pair (1,600 s) would look longer than them (1,000 s)."""
    given = {128: ({1: 0.5, 2: 0.75}, 10.0), 64: ({1: 0.3, 2: 0.625}, 5.0)}

    def rates(configs, dim, sizes, runtime, seconds):
        r, yard = given[configs[0].bits]
        return {s: r[s] for s in sizes}, dict.fromkeys(sizes, 0.0), yard
    monkeypatch.setattr(step, "stage_rates", rates)
    groups = [([make_config("e2-sgh", dict(bits=b)), make_config("e2-rsgh", dict(bits=b))], 512, 500) for b in given]
    runtime = Runtime(progress=False, device="cpu")
    monkeypatch.setattr(step, "best_splits", lambda stages, workers: [2, 1])
    plan = schedule.measured_splits(groups, 2, runtime)
    # the yardsticks' median is 7.5: the first stage's rates times 0.75, the second's times 1.5
    assert plan[0] == (2, pytest.approx([1000 / 0.75] * 2)) and plan[1] == (1, pytest.approx([1000 / 0.9375]))
    assert max(plan[1][1]) < min(plan[0][1])


def test_measured_splits_follow_the_measured_rates(monkeypatch):
    """The rates measured (here given: model-steps/s by group size, 0.5 s of warm-up) decide the split
    and the parts' seconds, measured here or on a cluster's workers. Two equally long stages: each pair
    on a core of its own (1,667 and 1,053 s) beats splitting either (2,001 s at best), although a lone
    model of the first is nearly as fast as a pair."""
    from distributed import Client, LocalCluster

    given = {128: {2: 1.2, 1: 1.0}, 32: {2: 1.9, 1: 1.0}}
    measured = []

    def rates(configs, dim, sizes, runtime, seconds):
        measured.append((configs[0].bits, sizes))
        return {s: given[configs[0].bits][s] for s in sizes}, dict.fromkeys(sizes, 0.5), 1.0
    monkeypatch.setattr(step, "stage_rates", rates)
    groups = [([make_config("e2-sgh", dict(bits=b)), make_config("e2-rsgh", dict(bits=b))], 512, 1000) for b in given]
    runtime = Runtime(progress=False, device="cpu")
    plan = schedule.measured_splits(groups, 2, runtime)
    assert measured == [(128, [1, 2]), (32, [1, 2])]
    assert [p for p, _ in plan] == [1, 1]
    assert plan[0][1] == pytest.approx([2000 / 1.2 + 0.5]) and plan[1][1] == pytest.approx([2000 / 1.9 + 0.5])
    # on two workers (threads of this process, so that they see the given rates), each stage on one
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        assert schedule.measured_splits(groups, 2, runtime, client=client) == plan
        given[32] = {2: 1.9, 1: 1.9}  # lone models of the second stage as fast as its pair: both split (1,527 s)
        assert [p for p, _ in schedule.measured_splits(groups, 2, runtime, client=client)] == [2, 2]
    assert sorted(measured[2:]) == [(32, [1, 2]), (32, [1, 2]), (128, [1, 2]), (128, [1, 2])]


class _Client:
    """Just enough of a Dask client for plan_parts."""

    def __init__(self, workers):
        self.workers = workers

    def scheduler_info(self, n_workers=-1):
        return {"workers": dict.fromkeys(range(self.workers))}


def seeds(parts):
    return [[c.seed for c, _ in part] for part in parts]


def test_plan_parts_deals_the_groups_longest_part_first(tmp_path, monkeypatch):
    """Measured: each group dealt into its chosen parts (interleaved), the longest part first;
    'workers': one part per worker, in the order given, with no measurement."""
    short = [make_config("e2-sgh", dict(bits=32, seed=s)) for s in range(4)]
    long = [make_config("e2-sgh", dict(bits=128, seed=s)) for s in range(2)]
    runs = [(c, tmp_path / c.run_name()) for c in short + long]
    monkeypatch.setattr(schedule, "_steps", lambda cfg, data_root: (512, 1000))
    monkeypatch.setattr(schedule, "measured_splits", lambda groups, workers, runtime, client: [
        {32: (2, [30.0, 20.0]), 128: (1, [100.0])}[cfgs[0].bits] for cfgs, _, _ in groups])
    plan = schedule.plan_parts(_Client(2), runs, runtime=Runtime(progress=False, group_split="measure"))
    assert seeds(plan) == [[0, 1], [0, 2], [1, 3]] and [c.bits for c, _ in plan[0]] == [128, 128]
    plan = schedule.plan_parts(_Client(2), runs, runtime=Runtime(progress=False, group_split="workers"))
    assert seeds(plan) == [[0, 2], [1, 3], [0], [1]]
    client = _Client(2)  # 'auto': 6,000 model-steps in all, far below the threshold: not measured
    client.cluster = "local"
    assert seeds(schedule.plan_parts(client, runs, runtime=Runtime(progress=False, device="cpu"))) == [
        [0, 2], [1, 3], [0], [1]]
    monkeypatch.setattr(schedule, "_steps", lambda cfg, data_root: (512, 100_000))
    # 'auto', 600,000 model-steps: measured on a local cluster
    assert seeds(schedule.plan_parts(client, runs, runtime=Runtime(progress=False, device="cpu"))) == [
        [0, 1], [0, 2], [1, 3]]
    # ... not on a cluster of its own (the workers may be other machines)
    assert seeds(schedule.plan_parts(_Client(2), runs, runtime=Runtime(progress=False, device="cpu"))) == [
        [0, 2], [1, 3], [0], [1]]


def test_on_a_gpu_each_group_is_one_part_and_a_local_clusters_workers_share_the_gpu(tmp_path, monkeypatch):
    """DEVICE=cuda (RSGH_DEVICE): a lock-step group stays whole on the GPU (its groups on several workers at
    once), and its tasks ask for the GPU resource only on a cluster whose workers declare one (a local
    cluster's declare none: a task asking for it would wait for ever)."""
    cfgs = [make_config("e2-sgh", dict(bits=32, seed=s)) for s in range(4)]
    runs = [(c, tmp_path / c.run_name()) for c in cfgs]
    monkeypatch.setenv("RSGH_DEVICE", "cuda")
    gpu = Runtime(progress=False)  # not validated: this machine may have no GPU
    assert gpu.device == "cuda"
    assert seeds(schedule.plan_parts(_Client(2), runs, runtime=gpu)) == [[0, 1, 2, 3]]
    assert seeds(schedule.plan_parts(_Client(2), runs, runtime=Runtime(progress=False, group_split="workers"))) == [
        [0, 2], [1, 3]]
    assert schedule.resources(gpu) == {"GPU": 1}
    assert schedule.resources(gpu, _Client(2)) is None
    declared = _Client(1)
    declared.scheduler_info = lambda n_workers=-1: {"workers": {"tls://a": {"resources": {"GPU": 1}}}}
    assert schedule.resources(gpu, declared) == {"GPU": 1}
    assert schedule.resources(Runtime(progress=False, device="cpu"), declared) is None


def test_the_device_default_comes_from_rsgh_device(monkeypatch):
    monkeypatch.delenv("RSGH_DEVICE", raising=False)
    assert Runtime().device == "auto"
    monkeypatch.setenv("RSGH_DEVICE", "cpu")
    assert Runtime().device == "cpu" and Runtime(device="auto").device == "auto"
    monkeypatch.setenv("RSGH_DEVICE", "gpu")
    with pytest.raises(ValueError, match="RSGH_DEVICE='gpu' is not a device"):
        Runtime().validate()


def test_plan_parts_measures_and_deals_the_unfinished_runs_of_a_group(tmp_path, monkeypatch):
    """A group with finished runs: the split is measured for its unfinished models only, they are dealt
    first (one to each part), and the finished ones follow in the same parts."""
    cfgs = [make_config("e2-sgh", dict(bits=32, seed=s)) for s in range(4)]
    runs = [(c, tmp_path / c.run_name()) for c in cfgs]
    for _, path in runs[:2]:  # seeds 0 and 1 finished
        path.mkdir()
        (path / "summary.json").write_text("{}")
        (path / "model.pt").write_bytes(b"")
    measured = []

    def plan(groups, workers, runtime, client):
        measured.extend([c.seed for c in g] for g, _, _ in groups)
        return [(2, [20.0, 30.0])]
    monkeypatch.setattr(schedule, "_steps", lambda cfg, data_root: (512, 1000))
    monkeypatch.setattr(schedule, "measured_splits", plan)
    assert seeds(schedule.plan_parts(_Client(2), runs, runtime=Runtime(progress=False, group_split="measure"))) == [
        [3, 1], [2, 0]]
    assert measured == [[2, 3]]


def _sleep_and_time(seconds):
    start = time.perf_counter()
    time.sleep(seconds)
    return start, time.perf_counter()


def test_in_turn_starts_each_task_when_a_worker_is_free_in_the_order_given():
    """On a real cluster of two single-thread workers: each task starts in the order given, never more
    than two at once, so that the parts end as early as the order allows (Dask's priorities alone
    let the 0.2-s tasks go before the 0.6-s one and end after up to 1.6 s)."""
    from distributed import Client, LocalCluster

    seconds = [1.0, 0.2, 0.6, 0.2, 0.1]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        gc.collect()  # else a full collection of this test process's heap fell in the timed second (0.55 s)
        t0 = time.perf_counter()
        done = {i: f.result() for i, f in schedule.in_turn(client, [(_sleep_and_time, s) for s in seconds])}
    starts = [done[i][0] - t0 for i in range(len(seconds))]
    assert sorted(done) == list(range(len(seconds)))
    assert all(a <= b + 0.05 for a, b in zip(starts, starts[1:])), starts
    for i, (start, _) in done.items():  # at most two tasks at any moment
        assert sum(s <= start + 1e-3 < e for s, e in done.values()) <= 2
    assert max(e for _, e in done.values()) - t0 < 1.4  # the order's makespan: 1.1 s


@pytest.mark.slow
def test_compiled_step_called_directly_equals_dynamo_bit_for_bit(monkeypatch):
    """After two steps the compiled graph is called without dynamo: the same numbers as through
    dynamo at every step, for two groups of one shape in one process (the second reuses the graph)."""

    def group():
        configs = [make_config(None, dict(c.to_dict(), bits=8)) for c in cfgs()]
        model = HashModel(20, 8, 2, seeds=[c.seed for c in configs])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        lam = torch.zeros(2, 8)
        return model, lam, step.make_step(model, opt, GroupSpec.from_configs(configs), lam, compiled=True)

    gen = torch.Generator().manual_seed(0)
    # then a batch of another size (the direct call checks the batch's layout and hands it back to
    # dynamo, since inductor's own size checks are off), and the first size again
    batches = [(torch.rand(b, 20, generator=gen), torch.rand(2, b, 8, generator=gen)) for b in [32] * 12 + [16] * 4]
    batches += batches[:4]
    runs = {}
    for name in ("direct", "dynamo", "again"):
        if name == "dynamo":
            monkeypatch.setattr(compiled, "_settled", lambda seen: None)
        else:
            monkeypatch.undo()
        model, lam, s = group()
        parts = torch.cat([s(x.clone(), xi.clone()) for x, xi in batches])
        runs[name] = (parts, {k: v.detach().clone() for k, v in model.params.items()}, lam.clone(),
                      s.calls_graph_directly())
    assert runs["direct"][3] and runs["again"][3] and not runs["dynamo"][3]
    for name in ("dynamo", "again"):
        assert torch.equal(runs[name][0], runs["direct"][0])
        assert all(torch.equal(runs[name][1][k], v) for k, v in runs["direct"][1].items())
        assert torch.equal(runs[name][2], runs["direct"][2])


@pytest.mark.slow
def test_a_graph_from_aotautogradss_cache_is_called_directly_with_the_same_numbers():
    """After dynamo's cache is emptied, a group of the same shape gets its graph from AOTAutograd's disk
    cache (the step allows it the stochastic neuron's autograd.Function), still calls it without dynamo
    after two steps, and computes what the first group computed, to the bit."""
    from torch._dynamo.utils import counters

    def run():
        configs = [make_config(None, dict(c.to_dict(), bits=8)) for c in cfgs()]
        model = HashModel(20, 8, 2, seeds=[c.seed for c in configs])
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        lam = torch.zeros(2, 8)
        s = step.make_step(model, opt, GroupSpec.from_configs(configs), lam, compiled=True)
        gen = torch.Generator().manual_seed(0)
        parts = torch.cat([s(torch.rand(32, 20, generator=gen), torch.rand(2, 32, 8, generator=gen)) for _ in range(6)])
        return parts, {k: v.detach().clone() for k, v in model.params.items()}, lam.clone(), s.calls_graph_directly()

    torch._dynamo.reset()
    first = run()
    torch._dynamo.reset()
    hits = counters["aot_autograd"]["autograd_cache_hit"]
    again = run()
    assert counters["aot_autograd"]["autograd_cache_hit"] == hits + 1
    assert first[3] and again[3]
    assert torch.equal(first[0], again[0]) and torch.equal(first[2], again[2])
    assert all(torch.equal(again[1][k], v) for k, v in first[1].items())


@pytest.mark.slow
def test_gpu_check_dry_run_passes_and_writes_its_results(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: the GPU check's steps on the CPU at toy sizes (under 3 minutes on
    2 idle cores): the device tests, the throughput, an E2 run, a page of the book and a 2-trial study."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=root,
                          env=dict(os.environ, OUT=str(tmp_path)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tmp_path / "gpu_check"
    summary = (results / "summary.txt").read_text()
    for line in ("device=cpu dry_run=1", "tests=passed", "throughput=passed", "e2_k64=passed", "page_cpu=passed",
                 "study_cpu=passed", "gpu_check_status=0"):
        assert line in summary, summary
    assert "3 passed" in (results / "tests.log").read_text()
    assert "model-steps/s" in (results / "throughput.log").read_text()
    assert {"summary.json", "retrieval.json"} <= {p.name for p in (results / "e2-k64" / "rsgh").iterdir()}
    for name in ("page_cpu_s", "study_cpu_s"):  # their wall times, read from the benchmarks' output
        assert float(summary.split(f"{name}=")[1].split()[0]) > 0, summary


@pytest.mark.slow
def test_the_local_cluster_workers_run_without_dask_periodic_chores(monkeypatch):
    """The workers of the local cluster get the QUIET settings (no statistical profiler, slow ticks and
    monitors; a DASK_* variable set in this process after Dask's import never reached them), a setting
    of the user's own is kept, and this process's configuration is left as it was."""
    import dask
    import distributed  # noqa: F401 (its defaults join Dask's configuration before the user's setting)

    monkeypatch.setenv("RSGH_WORKERS", "1")
    monkeypatch.delenv("RSGH_SCHEDULER", raising=False)
    schedule._close()
    try:
        with dask.config.set({"distributed.admin.tick.interval": "50ms"}):
            client = schedule.get_client()
        (seen,) = client.run(lambda: {k: dask.config.get(k) for k in schedule.QUIET}).values()
        assert seen == dict(schedule.QUIET, **{"distributed.admin.tick.interval": "50ms"})
        assert seen["distributed.worker.profile.enabled"] is False
        assert dask.config.get("distributed.worker.profile.enabled") is True  # here: Dask's default
    finally:
        schedule._close()


def _flushed() -> bool:
    """Whether this thread computes with subnormal floats flushed to zero (x86's FTZ and DAZ)."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


def _probe_steps(monkeypatch, module, seen):
    """Wrap ``module.make_step``'s steps so that each call notes whether it ran flushed."""
    real = module.make_step

    def make_step(*args):
        inner = real(*args)
        return lambda x, xi: (seen["step"].add(_flushed()), inner(x, xi))[1]
    monkeypatch.setattr(module, "make_step", make_step)


def test_the_steps_flush_subnormals_and_the_evaluations_and_the_caller_do_not(tmp_path, blobs, monkeypatch):
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals (torch supports it on x86 with SSE3)")
    torch.set_flush_denormal(False)
    assert not _flushed()
    configs = [make_config(None, dict(c.to_dict(), epochs=2)) for c in cfgs()]
    seen = {"step": set(), "eval": set()}
    _probe_steps(monkeypatch, loop, seen)
    real_evaluate = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *a: (seen["eval"].add(_flushed()), real_evaluate(*a))[1])
    for flush in (True, False):
        seen["step"].clear(), seen["eval"].clear()
        outs = [tmp_path / f"{flush}{g}" for g in range(2)]
        train_group(configs, TaskData(*blobs), outs, Runtime(progress=False, device="cpu", flush_denormal=flush))
        assert seen == {"step": {flush}, "eval": {False}} and not _flushed()
    # the timed step of the split's measurement and of the benchmarks steps as the loop does
    for flush in (True, False):
        seen["step"].clear()
        _probe_steps(monkeypatch, step, seen)
        one, _ = step.group_step(configs, 20, Runtime(progress=False, device="cpu", flush_denormal=flush))
        one(), one()
        assert seen["step"] == {flush} and not _flushed()


@pytest.mark.slow
def test_flushing_subnormals_in_the_steps_leaves_e1_the_same_to_the_bit(tmp_path, mnist_root, monkeypatch):
    """One epoch of E1's R-SGH (the compiled step, as ``make reproduce`` trains), with and without the
    flush. In the run without it, Adam's first moment holds subnormal values (weights of pixels that
    are rarely not blank decay through that range), so the flush has something to change."""
    from rsgh.data.task import load_task_data

    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals (torch supports it on x86 with SSE3)")
    torch.set_flush_denormal(False)
    cfg = make_config("e1-rsgh", dict(epochs=1))
    data = load_task_data(cfg, mnist_root, progress=False)
    subnormal = []
    real = loop.make_step

    def make_step(model, opt, *args):
        inner = real(model, opt, *args)

        def counted(x, xi):
            out = inner(x, xi)
            if not _flushed():  # compares with DAZ on would read the subnormals as zero
                m = torch.cat([s["exp_avg"].flatten() for s in opt.state.values()])
                subnormal.append(int(((m != 0) & (m.abs() < torch.finfo(m.dtype).tiny)).sum()))
            return out
        return counted
    monkeypatch.setattr(loop, "make_step", make_step)
    for flush in (False, True):
        train_group([cfg], data, [tmp_path / str(flush)],
                    Runtime(progress=False, compile_step=True, flush_denormal=flush))
    assert max(subnormal) > 0
    for k, v in weights(tmp_path / "False").items():
        assert torch.equal(weights(tmp_path / "True")[k], v), k
    pd.testing.assert_frame_equal(frame(tmp_path / "True"), frame(tmp_path / "False"))
