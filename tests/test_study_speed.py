"""A study's speed work (issue 38) leaves every trial's results as a lone fresh trial's: a trial whose
step reuses a graph compiled for an earlier trial in its process, the data of every feature scaling
made from one loaded collection, the validation mAP from the training task's own arrays, and no
test-query reports in a trial."""

import numpy as np
import pandas as pd
import pytest
import torch

from rsgh.book import study
from rsgh.config import Runtime, make_config
from rsgh.data.split import retrieval_split
from rsgh.data.task import RetrievalData, TaskData, load_task_data
from rsgh.eval.retrieval import map_evaluator
from rsgh.method.model import HashModel
from rsgh.train import step, task
from rsgh.train.task import run_group

COMPILED = Runtime(progress=False, compile_step=True, device="cpu")


def retrieval_blobs() -> TaskData:
    """A small labelled collection in [0, 1]^20 split as a study splits: test and validation queries, and
    the database (the training set)."""
    rng = np.random.default_rng(0)
    centres = rng.random((5, 20))
    labels = rng.integers(0, 5, 700)
    x = np.clip(centres[labels] + 0.1 * rng.standard_normal((700, 20)), 0, 1).astype(np.float32)
    split = retrieval_split(labels, seed=0, per_class=10, validation_per_class=10)
    r = RetrievalData(x, x, labels.astype(np.int64), split, {}, "blobs")
    return TaskData(r.x("database"), r.x("validation"), "blobs", {}, r)


def trial(params: dict, arm: str = "rsgh", epochs: int = 2):
    """A study's trial configuration (8 bits) with ``params`` over a fixed R-SGH choice."""
    base = {"feature_scaling": "none", "lr": 1e-3, "batch_size": 32, "train_noise": "uniform", "family": "mlp",
            "hidden_layers": 2, "width_factor": 1, "recon_sigma": 1.0, "prior": 0.5, "coupling": "weights",
            "delta": 0.1, "eta": 0.1, "adv_lr": 0.1, "tau": 0.1, "tie_target": "decoder", "redundancy": "kl"}
    return study.trial_config(dict(base, **params), arm, "mnist", 8, epochs)


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def metrics(run):
    return pd.read_csv(run / "metrics.csv").drop(columns=["elapsed_s"])


def weights(run):
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_a_trial_whose_step_was_compiled_for_an_earlier_trial_ends_as_a_fresh_one(tmp_path):
    """Trials of one architecture and batch size, other hyperparameters: the second reuses the graph the
    first compiled in the process (dynamo compiles nothing for it, even after a trial of another shape and
    with dynamo's own limit at one graph a function), and its validation mAPs, metrics and weights are a
    fresh process's to the bit (a fresh dynamo cache; inductor's disk cache as it is)."""
    data = retrieval_blobs()
    first = trial({"lr": 3e-3, "prior": 0.3, "tau": 0.05, "delta": 0.5})
    other_shape = trial({"batch_size": 64})
    second = trial({"lr": 1e-3, "prior": 0.6, "recon_sigma": 0.5, "eta": 1.0, "adv_lr": 0.01})
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):  # dynamo's default for other functions: 8
        run_group([first], [tmp_path / "first"], prepared=data, runtime=COMPILED, test_reports=False)
        run_group([other_shape], [tmp_path / "other"], prepared=data, runtime=COMPILED, test_reports=False)
        before = graphs()
        step.PHASES.take()
        run_group([second], [tmp_path / "reused"], prepared=data, runtime=COMPILED, test_reports=False)
        assert graphs() == before  # nothing compiled
        torch._dynamo.reset()
        run_group([second], [tmp_path / "fresh"], prepared=data, runtime=COMPILED, test_reports=False)
        assert graphs() == before + 1
    reused, fresh = metrics(tmp_path / "reused"), metrics(tmp_path / "fresh")
    assert reused["val_map"].notna().all() and len(reused) == 3
    pd.testing.assert_frame_equal(reused, fresh, check_exact=True)
    for k, v in weights(tmp_path / "fresh").items():
        assert torch.equal(weights(tmp_path / "reused")[k], v), k
    assert not (tmp_path / "reused" / "retrieval.json").exists()  # a trial's run folder: no test-query reports


def test_every_feature_scaling_is_made_from_one_loaded_collection(tmp_path, monkeypatch):
    """task_data loads a retrieval collection once, then fits and applies each scaling to it: the arrays
    are load_task_data's to the bit, the raw features are one array, and the images are read once."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "images" / f"class{c}").mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 60 * c, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / f"class{c}" / f"{i}.png")
    monkeypatch.setenv("RSGH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(task, "_LOADED", {})
    loads = []
    real = task.load_task_data
    monkeypatch.setattr(task, "load_task_data", lambda *a, **kw: loads.append(a[0].feature_scaling) or real(*a, **kw))

    def cfg(scaling):
        return make_config(None, dict(task="retrieval", dataset="folder", folder=str(tmp_path / "images"),
                                      features="pixels", image_size=8, bits=8, feature_scaling=scaling,
                                      queries_per_class=2, validation_per_class=2))

    got = {s: task.task_data(cfg(s), progress=False) for s in ("whiten", "standardize", "center", "none")}
    assert loads == ["none"]
    for s, data in got.items():
        want = load_task_data(cfg(s), progress=False)
        for name in ("train_x", "eval_x"):
            assert np.array_equal(getattr(data, name), getattr(want, name)), (s, name)
        assert np.array_equal(data.retrieval.features, want.retrieval.features), s
        assert set(data.retrieval.scaling) == set(want.retrieval.scaling)
        assert all(np.array_equal(v, want.retrieval.scaling[k]) for k, v in data.retrieval.scaling.items())
        assert data.retrieval.raw_features is got["none"].retrieval.raw_features
        assert data.checksums == want.checksums and data.source == want.source


def test_the_validation_map_from_the_tasks_own_arrays_is_the_same():
    data = retrieval_blobs()
    model = HashModel(20, 8, 1, seeds=[0, 1])
    given = map_evaluator(data.retrieval, queries=data.eval_x, database=data.train_x)(model)
    taken = map_evaluator(data.retrieval)(model)
    assert given == taken and len(given) == 2 and 0 < given[0]["val_map"] < 1


def test_a_study_trial_asks_for_no_test_query_reports(tmp_path, monkeypatch):
    study.open_study("rsgh", "mnist", 8, tmp_path / "study")
    seen = {}

    class Stop(Exception):
        pass

    def run_group(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(task, "run_group", run_group)
    s = study.open_study("rsgh", "mnist", 8, tmp_path / "study")
    t = s.ask()
    with pytest.raises(Stop):
        study.run_trial(trial({}), str(tmp_path / "run"), None, str(tmp_path / "study"), s.study_name, t._trial_id)
    assert seen["test_reports"] is False and seen["resume"] is True
