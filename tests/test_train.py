"""Training: determinism, resume equivalence, R-SGH -> SGH reduction, run-directory contents."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rsgh.config import make_config
from rsgh.data.task import TaskData
from rsgh.train.loop import train
from rsgh.train.rundir import RunExistsError, load_model

REQUIRED = ["epoch", "iteration", "recon_mse", "recon_half_sse", "active_units_001", "active_units_005",
            "mean_kl", "bit_balance_min", "bit_corr_mean"]


def small(method="rsgh", **kw):
    base = dict(dataset="mnist", hidden_layers=1, bits=8, batch_size=32, epochs=3, method=method)
    base.update(kw)
    return make_config(None, base)


def weights(run):
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def metrics(run):
    return pd.read_csv(run / "metrics.csv").drop(columns=["elapsed_s"])


def test_run_directory_contents(tmp_path, blobs):
    summary = train(small(), TaskData(*blobs, source="blobs"), tmp_path / "r")
    run = tmp_path / "r"
    m = pd.read_csv(run / "metrics.csv")
    assert set(REQUIRED) <= set(m.columns)
    assert m["epoch"].tolist() == [0.0, 1.0, 2.0, 3.0]  # epoch 0 is the untrained model
    assert m["iteration"].tolist() == [0, 16, 32, 48]
    units = pd.read_csv(run / "units.csv")
    assert len(units) == 4 * 8 and {"activity", "kl", "balance"} <= set(units.columns)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg == small().to_dict()
    s = json.loads((run / "summary.json").read_text())
    assert s["final"]["recon_mse"] == summary["final"]["recon_mse"] == m["recon_mse"].iloc[-1]
    assert {"wall_time_s", "versions", "git_commit", "data_source"} <= set(s)
    # the recorded error is that of the saved model on the evaluation set
    model, _ = load_model(run)
    x = torch.as_tensor(blobs[1])
    with torch.no_grad():
        x_hat, _ = model.decode(model.hash(x).float())
        x_hat = x_hat[0]
    assert float((x - x_hat).pow(2).mean()) == pytest.approx(m["recon_mse"].iloc[-1], rel=1e-5)


def test_training_reduces_reconstruction_error(tmp_path, blobs):
    train(small(epochs=15, bits=16), TaskData(*blobs), tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert m["recon_mse"].iloc[-1] < 0.5 * m["recon_mse"].iloc[0]


@pytest.mark.parametrize("method", ["sgh", "rsgh"])
def test_same_seed_gives_bit_identical_results(tmp_path, blobs, method):
    train(small(method), TaskData(*blobs), tmp_path / "a")
    train(small(method), TaskData(*blobs), tmp_path / "b")
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    pd.testing.assert_frame_equal(metrics(tmp_path / "a"), metrics(tmp_path / "b"))
    train(small(method, seed=1), TaskData(*blobs), tmp_path / "c")
    assert not torch.equal(weights(tmp_path / "a")["dec1_weight"], weights(tmp_path / "c")["dec1_weight"])


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("kw", [dict(method="rsgh"), dict(method="sgh", sampling="replacement", iterations=40,
                                                           eval_every=7, epochs=0)])
def test_resume_reaches_the_uninterrupted_result(tmp_path, blobs, kw):
    cfg = small(**kw)
    train(cfg, TaskData(*blobs), tmp_path / "full")

    def stop_after_second_eval(row):
        if row["iteration"] > 10:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, TaskData(*blobs), tmp_path / "cut", hooks=(stop_after_second_eval,))
    assert not (tmp_path / "cut" / "model.pt").exists()
    train(cfg, TaskData(*blobs), tmp_path / "cut", resume=True)
    assert_same_weights(tmp_path / "full", tmp_path / "cut")
    pd.testing.assert_frame_equal(metrics(tmp_path / "full"), metrics(tmp_path / "cut"))


def test_rsgh_with_zero_weights_is_sgh(tmp_path, blobs):
    train(small("sgh"), TaskData(*blobs), tmp_path / "sgh")
    train(small("rsgh", delta=0.0, eta=0.0), TaskData(*blobs), tmp_path / "rsgh0")
    assert_same_weights(tmp_path / "sgh", tmp_path / "rsgh0")
    train(small("rsgh"), TaskData(*blobs), tmp_path / "rsgh")
    assert not torch.equal(weights(tmp_path / "sgh")["dec1_weight"], weights(tmp_path / "rsgh")["dec1_weight"])


def test_existing_run_is_never_overwritten(tmp_path, blobs):
    train(small(epochs=1), TaskData(*blobs), tmp_path / "r")
    before = (tmp_path / "r" / "metrics.csv").read_text()
    with pytest.raises(RunExistsError, match="--resume"):
        train(small(epochs=1), TaskData(*blobs), tmp_path / "r")
    with pytest.raises(ValueError, match="different configuration.*bits"):
        train(small(epochs=1, bits=4), TaskData(*blobs), tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "metrics.csv").read_text() == before


@pytest.mark.parametrize("bad,msg", [
    (lambda x: x[:, :5].reshape(-1), "2-D"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), "NaN"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.inf, x), "infinite"),
])
def test_bad_training_data_is_refused(tmp_path, blobs, bad, msg):
    with pytest.raises(ValueError, match=msg):
        train(small(), TaskData(bad(blobs[0]), blobs[1]), tmp_path / "r")


def test_mismatched_dimensions_are_refused(tmp_path, blobs):
    with pytest.raises(ValueError, match="20 dimensions.*10"):
        train(small(), TaskData(blobs[0], blobs[1][:, :10]), tmp_path / "r")


def test_model_refuses_inputs_of_the_wrong_size(tmp_path, blobs):
    train(small(epochs=1), TaskData(*blobs), tmp_path / "r")
    model, _ = load_model(tmp_path / "r")
    with pytest.raises(ValueError, match=r"shape \(n, 20\)"):
        model.hash(torch.rand(3, 784))
    with pytest.raises(ValueError, match="NaN"):
        model.hash(torch.full((2, 20), float("nan")))


def test_distributional_estimator_trains(tmp_path, blobs):
    train(small(estimator="distributional", epochs=8, bits=8), TaskData(*blobs), tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert m["recon_mse"].iloc[-1] < 0.7 * m["recon_mse"].iloc[0]
