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
