"""The benchmarks' machinery where a fault would harm the machine or bias the measurement: the floor
sampled during ``paper_scale_run.py`` stops the cluster's workers for each sample."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import paper_scale_run
    import stages
    return paper_scale_run, stages


def _state(pid: int) -> str:
    """The process's state letter (R running, S sleeping, T stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _stopped_soon(pid: int) -> bool:
    """Whether the process is stopped within 0.2 s (a signal is delivered a moment after kill returns)."""
    deadline = time.time() + 0.2
    while _state(pid) != "T" and time.time() < deadline:
        time.sleep(0.001)
    return _state(pid) == "T"


@pytest.fixture
def worker():
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.001)"])
    yield child.pid
    child.kill()
    child.wait()


def _run_probe(probe, until):
    probe.start()
    deadline = time.time() + 30
    while not until() and time.time() < deadline and probe.is_alive():
        time.sleep(0.01)
    probe.done.set()
    probe.join()


def test_floor_during_run_times_each_sample_with_the_workers_stopped(benchmarks, worker, monkeypatch):
    psr, stages = benchmarks
    seen = []
    real = psr.timed_rates

    def spy(calls, seconds, **kw):
        seen.append(_stopped_soon(worker))
        return real(calls, seconds, **kw)

    monkeypatch.setattr(psr, "timed_rates", spy)
    probe = psr.FloorDuringRun(stages.stages([32], 1, 1), [worker], every=0.01, seconds=0.005)
    _run_probe(probe, lambda: min(map(len, probe.samples)) >= 2)
    assert min(map(len, probe.samples)) >= 2 and all(seen)
    assert _state(worker) != "T"
    assert probe.stopped_s > 0
    # the stages take turns, and each one's minutes are the mean of its samples' step times
    products, adam = probe.minutes()
    for smp, (_, steps), p, a in zip(probe.samples, probe.calls, products, adam):
        assert p == pytest.approx(sum(s[0] for s in smp) / len(smp) * steps / 60)
        assert a == pytest.approx(sum(s[1] for s in smp) / len(smp) * steps / 60)
    assert abs(len(probe.samples[0]) - len(probe.samples[1])) <= 1


def test_floor_during_run_lets_the_workers_go_on_when_a_sample_fails(benchmarks, worker, monkeypatch):
    psr, stages = benchmarks

    seen = []

    def fails(calls, seconds, **kw):
        seen.append(_stopped_soon(worker))
        raise RuntimeError("a sample that failed")

    monkeypatch.setattr(psr, "timed_rates", fails)
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # the thread's exception, expected
    probe = psr.FloorDuringRun(stages.stages([32], 1, 0), [worker], every=0.01, seconds=0.005)
    _run_probe(probe, lambda: False)
    assert seen == [True] and not probe.is_alive() and probe.minutes() is None
    assert _state(worker) != "T"


def test_adam_floor_times_the_update_that_torch_adam_makes(monkeypatch):
    """adam_floor.py's ``exact`` is Adam's step (as the compiled training step writes it): three steps of
    it give torch.optim.Adam's weights and moments to float32 rounding."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import adam_floor

    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(1000, generator=gen)
    grads = [torch.randn(1000, generator=gen) for _ in range(3)]
    p = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([p], lr=1e-3)
    w, m, v = w0.clone(), torch.zeros(1000), torch.zeros(1000)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        adam_floor.exact(w, g, m, v, torch.tensor(1e-3 / (1 - 0.9 ** t)), torch.tensor(1 / (1 - 0.999 ** t) ** 0.5))
    state = opt.state[p]
    torch.testing.assert_close(m, state["exp_avg"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(v, state["exp_avg_sq"], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(w, p.detach(), rtol=1e-6, atol=1e-8)
    assert not torch.equal(w, w0)


def test_subnormals_counts_the_moments_below_the_smallest_normal_float(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import subnormals

    torch.set_flush_denormal(False)
    tiny = torch.finfo(torch.float32).tiny  # 1.18e-38, the smallest normal float32
    m = torch.tensor([1e-39, -1e-40, 0.0, 1.0, tiny, -2 * tiny, 1e-45])  # 1e-45: the smallest subnormal
    v = torch.tensor([0.5, tiny / 2, 0.0, 0.0, 0.0, 0.0, 0.0])
    brute = sum(1 for x in m.tolist() + v.tolist() if 0 < abs(x) < tiny)
    assert brute == 4 and subnormals.subnormal_count([{"exp_avg": m, "exp_avg_sq": v}]) == brute


@pytest.fixture
def speed(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import reproduction_speed
    import study_speed
    return study_speed, reproduction_speed


def test_study_speeds_parts_add_up_to_the_workers_time(speed):
    """The breakdown partitions the workers' time (wall time times workers): every second of a trial in one
    part, the dispatch, and the workers' idle time, the client's storage calls counted once."""
    study_speed, _ = speed
    trial = {"submitted": 100.0, "received": 131.0, "state": "complete",
             "floor": {"sample_s": 1.0, "steps": 10, "evaluations": 3},
             "times": {"started": 100.5, "ended": 130.0, "seconds": 28.5, "before_training": 6.0, "data": 2.0,
                       "storage_open": 0.5, "steps": 15.0, "compile": 9.0, "eval_map": 3.0, "eval_measures": 0.5,
                       "eval_files": 0.5, "storage_reports": 0.2, "finish": 1.0, "test_reports": 2.0}}
    later = dict(trial, submitted=131.5, received=162.5,
                 times=dict(trial["times"], started=132.0, ended=161.5))  # the same trial, 31.5 s later
    timings = {"trials": [trial, later], "storage_s": 0.7}
    parts = study_speed.breakdown(timings, wall=70.0, workers=2)
    assert sum(parts.values()) == pytest.approx(140.0)
    assert parts["steps"] == pytest.approx(2 * 6.0) and parts["compile"] == pytest.approx(18.0)
    assert parts["startup"] == pytest.approx(2 * 3.5) and parts["storage"] == pytest.approx(2 * 0.7 + 0.7)
    assert parts["other"] == pytest.approx(2 * (28.5 - 6.0 - 15.0 - 4.0 - 1.0 - 2.0 - 0.2))


@pytest.mark.parametrize("family", ["mlp", "linear-reference"])
def test_the_floor_of_a_trial_has_its_models_layers(speed, family):
    import torch

    from rsgh.book import study
    from rsgh.method.model import HashModel

    study_speed, _ = speed
    params = {"feature_scaling": "none", "lr": 1e-3, "batch_size": 32, "train_noise": "uniform", "family": family,
              "hidden_layers": 2, "width_factor": 2, "recon_sigma": 1.0, "prior": 0.5}
    if family == "linear-reference":
        params = {k: params[k] for k in ("feature_scaling", "lr", "batch_size", "train_noise", "family")}
    cfg = study.trial_config(params, "sgh", "mnist", 16, 2)
    enc, dec, n = study_speed.model_layers(cfg, 30)
    ones = torch.ones(30)
    model = HashModel(30, 16, cfg.hidden_layers, cfg.arch, [0], ones, ones, cfg.hidden_width)
    assert n == sum(p.numel() for p in model.parameters())
    assert enc[0][0] == 30 and enc[-1][1] == 16 and dec[0][0] == 16 and dec[-1][1] == 30
    if family == "mlp":
        assert enc == [(30, 32), (32, 16), (16, 16)]
    for call in study_speed.floor_calls(cfg, 30).values():
        call()


def test_reproduction_speed_executes_one_page_of_the_plan_with_its_changes(speed, tmp_path):
    from rsgh.book.reproduce import pages

    _, reproduction_speed = speed
    plan = reproduction_speed.one_page_plan(tmp_path, "mnist_pixels", "quick", {"epochs": 3, "bits": [16]})
    (name, source, parameters), = pages(plan, "quick")
    assert name == "mnist_pixels" and source == tmp_path / "retrieval.ipynb" and source.exists()
    assert parameters["epochs"] == 3 and parameters["bits"] == [16] and parameters["mode"] == "train"
    assert parameters["seeds"] == [0]
