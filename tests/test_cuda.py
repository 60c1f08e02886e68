"""The device path on CUDA: lock-step groups end where lone runs end, runs are deterministic, resume
reaches the uninterrupted result, and the compiled step (CUDA graphs) agrees with the eager one.

The device comes from ``RSGH_TEST_DEVICE`` (default ``cuda``). Without CUDA these tests are skipped
(the one skip of the suite: this machine has no GPU); ``benchmarks/gpu_check.sh`` runs them on a
GPU, and with ``--dry-run`` on the CPU (``RSGH_TEST_DEVICE=cpu``) so that they are tested here too.
"""

import os

import pandas as pd
import pytest
import torch

from rsgh.config import Runtime, make_config
from rsgh.data.task import TaskData
from rsgh.train.loop import train, train_group

DEVICE = os.environ.get("RSGH_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="no CUDA device (benchmarks/gpu_check.sh runs these on a GPU)")
EAGER, COMPILED = Runtime(progress=False, device=DEVICE), Runtime(progress=False, device=DEVICE, compile_step=True)


class Interrupt(Exception):
    pass


def cfgs(epochs=2):
    base = dict(dataset="mnist", hidden_layers=2, bits=8, batch_size=32, epochs=epochs)
    return [make_config(None, dict(base, method="sgh", seed=0)),
            make_config(None, dict(base, method="rsgh", seed=1)),
            make_config(None, dict(base, method="rsgh", seed=2, tie_target="encoder", redundancy="kl", tau=0.2,
                                   prior=0.4, delta=0.1, eta=0.5, adv_lr=0.1))]


def weights(run):
    return torch.load(run / "model.pt", weights_only=True, map_location="cpu")["state_dict"]


def metrics(run):
    return pd.read_csv(run / "metrics.csv").drop(columns=["elapsed_s"])


def assert_same(a, b, **tol):
    for k, v in weights(a).items():
        if tol:
            torch.testing.assert_close(weights(b)[k], v, **tol)
        else:
            assert torch.equal(weights(b)[k], v), k


def stop_after_first_evaluation(g, row):
    if row["iteration"] > 0:
        raise Interrupt


def test_group_members_match_lone_runs_on_the_device(tmp_path, blobs):
    configs = cfgs()
    outs = [tmp_path / f"group{g}" for g in range(len(configs))]
    summaries = train_group(configs, TaskData(*blobs), outs, EAGER)
    assert all(s["device"].startswith(DEVICE) for s in summaries)
    for g, cfg in enumerate(configs):
        alone = tmp_path / f"alone{g}"
        train(cfg, TaskData(*blobs), alone, EAGER)
        assert_same(alone, outs[g], rtol=1e-4, atol=1e-5)  # test_group.py's tolerance
        pd.testing.assert_frame_equal(metrics(outs[g]), metrics(alone), rtol=1e-4, check_dtype=False)


def interrupt_and_resume(configs, blobs, outs, runtime):
    """Train the group into ``outs``, stopped after its first evaluation, then resumed to the end."""
    with pytest.raises(Interrupt):
        train_group(configs, TaskData(*blobs), outs, runtime, hooks=(stop_after_first_evaluation,))
    train_group(configs, TaskData(*blobs), outs, runtime, resume=True)


def test_runs_on_the_device_are_deterministic_and_resume_exactly(tmp_path, blobs):
    configs = cfgs()[:2]
    a, b, cut = ([tmp_path / f"{n}{g}" for g in range(2)] for n in ("a", "b", "cut"))
    train_group(configs, TaskData(*blobs), a, EAGER)
    train_group(configs, TaskData(*blobs), b, EAGER)
    interrupt_and_resume(configs, blobs, cut, EAGER)
    for x, y, z in zip(a, b, cut):
        assert_same(x, y)
        assert_same(x, z)
        pd.testing.assert_frame_equal(metrics(x), metrics(z))


def test_compiled_step_on_the_device_agrees_with_eager_and_resumes(tmp_path, blobs):
    configs = cfgs()
    eager, compiled, cut = ([tmp_path / f"{n}{g}" for g in range(3)] for n in ("e", "c", "cut"))
    train_group(configs, TaskData(*blobs), eager, EAGER)
    train_group(configs, TaskData(*blobs), compiled, COMPILED)
    interrupt_and_resume(configs, blobs, cut, COMPILED)
    for x, y, z in zip(eager, compiled, cut):
        assert_same(x, y, rtol=1e-4, atol=1e-5)  # test_group.py's compiled-against-eager tolerance
        assert_same(y, z, rtol=1e-6, atol=1e-7)
        pd.testing.assert_frame_equal(metrics(y), metrics(x), rtol=1e-3, check_dtype=False)
