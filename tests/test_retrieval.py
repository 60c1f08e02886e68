"""The retrieval pipeline end to end on a small labelled image folder made here."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rsgh import experiments as ex
from rsgh.config import make_config
from rsgh.metrics import mean_average_precision
from rsgh.runner import load_task_data, run_group
from rsgh.train import load_model


@pytest.fixture
def folder(tmp_path):
    """4 classes of 40 noisy 12x12 images, each class a different pattern."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        pattern = rng.integers(0, 256, (12, 12, 3))
        for i in range(40):
            img = np.clip(pattern + rng.normal(0, 40, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def cfg(folder, **kw):
    base = dict(task="retrieval", dataset="folder", folder=str(folder), features="pixels", hidden_layers=1,
                bits=16, batch_size=16, epochs=4, queries_per_class=5, device="cpu")
    base.update(kw)
    return make_config("e2-rsgh", base)


def test_retrieval_run_directory(tmp_path, folder):
    c = cfg(folder, feature_scaling="standardize")
    train_data, rdata = load_task_data(c)
    assert len(rdata.query) == 20 and len(rdata.database) == 140
    assert np.allclose(rdata.features[rdata.database].mean(0), 0, atol=1e-5)
    out = tmp_path / "run"
    run_group([c], [out], prepared=(train_data, rdata), progress=False)
    report = json.loads((out / "retrieval.json").read_text())
    m = pd.read_csv(out / "metrics.csv")
    assert "map" in m.columns and m["map"].iloc[-1] == pytest.approx(report["map"])
    # the reported mAP is that of the saved model's codes, recomputed here
    model, _ = load_model(out)
    scaling = np.load(out / "feature_scaling.npz")
    feats = (rdata.raw_features - scaling["mean"]) / scaling["std"]
    codes = model.hash(torch.as_tensor(feats, dtype=torch.float32))[0].numpy()
    got = mean_average_precision(codes[rdata.query], codes[rdata.database], rdata.labels[rdata.query],
                                 rdata.labels[rdata.database])
    assert got == pytest.approx(report["map"])
    assert report["map"] > 0.5  # four well separated patterns: far above chance (0.25)
    split = json.loads((out / "split.json").read_text())
    assert sorted(split["query"]) == rdata.query.tolist()
    assert report["source"].startswith("image folder")


def test_experiment_helpers(tmp_path, folder, monkeypatch):
    monkeypatch.setenv("RSGH_CACHE", str(tmp_path / "cache"))
    variants = ex.ablation_configs("e2-rsgh", [0], 2, task="retrieval", dataset="folder", folder=str(folder),
                                   features="pixels", hidden_layers=1, bits=8, batch_size=16,
                                   queries_per_class=5, device="cpu")
    dirs = ex.train_variants("abl", variants, tmp_path / "runs", progress=False)
    assert len(dirs) == 6 and len({d.name for d in dirs}) == 6
    curves, finals = ex.read_runs(dirs)
    assert set(finals["variant"]) == {"default", "tie-encoder", "redundancy-kl", "redundancy-correlation",
                                      "step-sizes"}
    assert set(finals["method"]) == {"SGH", "R-SGH"}
    # a second call reuses the finished runs instead of training again
    stamp = (dirs[0] / "summary.json").stat().st_mtime_ns
    ex.train_variants("abl", variants, tmp_path / "runs", progress=False)
    assert (dirs[0] / "summary.json").stat().st_mtime_ns == stamp
    table = ex.mean_and_spread(finals, ["method"], ["map"])
    assert "n=" in table.loc["R-SGH", "map"]
    base = ex.baselines_table(variants[0][1], [8], [0, 1])
    assert set(base["method"]) == {"LSH", "PCAH", "ITQ", "SH"}
    assert (base["map"] > 0.3).all()
    assert len(list((tmp_path / "cache" / "baselines").glob("*.csv"))) == 1
    # computed afresh, the table is the cached one
    fresh = ex.baselines_table(variants[0][1], [8], [0, 1], cache=False)
    pd.testing.assert_frame_equal(fresh.drop(columns="seconds"), base.drop(columns="seconds"))
    # a second call reads the cache instead of fitting again; other seeds are another entry
    import rsgh.baselines

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted again instead of reading the cache")

    monkeypatch.setattr(rsgh.baselines, "fit_baseline", no_fit)
    pd.testing.assert_frame_equal(ex.baselines_table(variants[0][1], [8], [0, 1]), base)
    with pytest.raises(AssertionError, match="fitted again"):
        ex.baselines_table(variants[0][1], [8], [0, 2])


def test_notebook_parameter_types():
    ex.check_parameters(epochs=(3, int), lr=(1, float), seeds=([0], list))
    with pytest.raises(TypeError, match="epochs='ten' should be of type int"):
        ex.check_parameters(epochs=("ten", int))
    with pytest.raises(TypeError, match="should be of type int, not bool"):
        ex.check_parameters(epochs=(True, int))


def test_real_mnist_retrieval_split(mnist_root):
    _, rdata = load_task_data(make_config("e2-rsgh", dict(dataset="mnist", features="pixels",
                                                           feature_scaling="none")), mnist_root)
    assert len(rdata.query) == 1000 and len(rdata.database) == 69000
    assert np.bincount(rdata.labels[rdata.query]).tolist() == [100] * 10
    assert rdata.features.shape == (70000, 784) and rdata.features.max() == 1.0


def test_mean_and_spread_compact_rounds_to_the_spread():
    finals = pd.DataFrame({"method": ["A"] * 3 + ["B"] * 3 + ["C"],
                           "map": [0.40, 0.42, 0.41, 0.123456, 0.123456, 0.123456, 0.5],
                           "active": [54, 58, 55, 64, 64, 64, 3]})
    full = ex.mean_and_spread(finals, ["method"], ["map", "active"])
    assert full.loc["A", "map"] == "0.4100 ± 0.0100 (n=3)"
    table = ex.mean_and_spread(finals, ["method"], ["map", "active"], compact=True)
    # sd 0.01 -> three decimals; sd 2.08 -> one; no spread -> three significant digits of the mean
    assert table.loc["A", "map"] == "0.410 ± 0.010"
    assert table.loc["A", "active"] == "55.7 ± 2.1"
    assert table.loc["B", "map"] == "0.123 ± 0.000"
    assert table.loc["B", "active"] == "64.0 ± 0.0"
    assert table.loc["C", "map"] == "0.500"
    assert table["seeds"].tolist() == [3, 3, 1]


def test_map_table_one_row_per_method_one_column_per_code_length():
    finals = pd.DataFrame({"method": ["SGH", "SGH", "R-SGH", "R-SGH", "SGH", "R-SGH"],
                           "bits": [32, 32, 32, 32, 64, 64], "seed": [0, 1, 0, 1, 0, 0],
                           "map": [0.30, 0.32, 0.35, 0.37, 0.40, 0.45]})
    baselines = pd.DataFrame({"method": ["LSH", "LSH", "ITQ"], "bits": [32, 32, 64], "seed": [0, 1, 0],
                              "map": [0.1, 0.2, 0.5]})
    table = ex.map_table(finals, baselines)
    assert table.index.tolist() == ["SGH", "R-SGH", "LSH", "ITQ"]
    assert table.columns.tolist() == ["K = 32", "K = 64", "seeds"]
    # mean ± sample sd: (0.30, 0.32) -> 0.310 ± 0.014
    assert table.loc["SGH", "K = 32"] == "0.310 ± 0.014"
    assert table.loc["R-SGH", "K = 64"] == "0.450"
    assert table.loc["LSH", "K = 64"] == "" and table.loc["ITQ", "K = 32"] == ""
    assert table["seeds"].tolist() == [2, 2, 2, 1]
