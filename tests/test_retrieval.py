"""The retrieval pipeline end to end on a small labelled image folder made here: the split with its
validation queries, what training looks at, what a run folder holds, and the book's experiment
helpers."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rsgh.book import experiments as ex
from rsgh.book import notebook as nbk
from rsgh.book import tables
from rsgh.config import Runtime, make_config
from rsgh.data.split import Split, retrieval_split
from rsgh.data.task import load_task_data
from rsgh.eval.metrics import mean_average_precision
from rsgh.train.rundir import RunDir, load_model
from rsgh.train.task import run_group


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
                bits=16, batch_size=16, epochs=4, eval_epochs=1, queries_per_class=5)
    base.update(kw)
    return make_config("e2-rsgh", base)


def test_validation_queries_are_carved_from_the_database_and_leave_the_test_queries_alone():
    labels = np.repeat(np.arange(5), 30)
    plain = retrieval_split(labels, per_class=4, seed=3)
    split = retrieval_split(labels, per_class=4, seed=3, validation_per_class=6)
    assert np.array_equal(split.query, plain.query)  # the same test queries with or without validation
    assert not set(split.validation) & set(split.query)
    assert np.bincount(labels[split.validation]).tolist() == [6] * 5
    assert np.array_equal(np.sort(np.concatenate([split.query, split.validation, split.database])), np.arange(150))
    random = retrieval_split(labels, n_queries=20, n_validation=10, seed=1)
    assert len(random.validation) == 10 and not set(random.validation) & set(random.query)
    with pytest.raises(ValueError, match="validation queries are drawn like the test queries"):
        retrieval_split(labels, per_class=4, n_validation=3)


def test_a_saved_split_round_trips_and_a_broken_one_is_refused(tmp_path):
    split = retrieval_split(np.repeat(np.arange(3), 10), per_class=2, validation_per_class=2)
    split.save(tmp_path / "split.json")
    back = Split.load(tmp_path / "split.json")
    assert np.array_equal(back.validation, split.validation) and np.array_equal(back.database, split.database)
    doc = json.loads((tmp_path / "split.json").read_text())
    doc["validation"] = doc["validation"][:-1]
    (tmp_path / "split.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not sorted disjoint sets"):
        Split.load(tmp_path / "split.json")


def test_real_mnist_split_keeps_test_and_validation_apart(mnist_root):
    """On the real 70,000 labels: the study's validation queries never touch the test queries, and
    neither is in the database (the training set)."""
    data = load_task_data(make_config("e2-rsgh", dict(dataset="mnist", features="pixels", feature_scaling="none",
                                                      validation_per_class=100)), mnist_root, progress=False)
    r = data.retrieval
    assert len(r.split.query) == len(r.split.validation) == 1000 and len(r.split.database) == 68000
    assert not set(r.split.query) & set(r.split.validation)
    assert not (set(r.split.query) | set(r.split.validation)) & set(r.split.database)
    assert np.bincount(r.y("validation")).tolist() == [100] * 10
    assert data.train_x.shape == (68000, 784) and np.array_equal(data.eval_x, r.x("validation"))


def test_retrieval_run_folder_holds_the_split_scaling_and_results(tmp_path, folder):
    c = cfg(folder, feature_scaling="standardize", validation_per_class=5)
    out = tmp_path / "run"
    run_group([c], [out])
    run = RunDir(out)
    assert {"retrieval.json", "retrieval_best.json", "split.json", "feature_scaling.npz", "best.pt"} <= \
        {p.name for p in out.iterdir()}
    split = run.read_split()
    assert len(split.query) == len(split.validation) == 20 and len(split.database) == 120
    assert run.read_retrieval()["source"].startswith("image folder")
    assert run.read_retrieval()["n_database"] == 120


def test_training_looks_at_the_validation_queries_only(tmp_path, folder):
    """With a validation set, metrics.csv holds the validation mAP (no test mAP), best.pt is the model
    of the best validation evaluation, and retrieval_best.json is its test mAP, recomputed here."""
    c = cfg(folder, feature_scaling="standardize", validation_per_class=5)
    run_group([c], [tmp_path / "run"])
    run, r = RunDir(tmp_path / "run"), load_task_data(c).retrieval
    m = run.read_metrics()
    assert "val_map" in m.columns and "map" not in m.columns
    best_row = m.loc[m["val_map"].idxmax()]
    summary = run.read_summary()
    assert summary["best"]["best_epoch"] == best_row["epoch"]
    model, _ = load_model(run.path, best=True)
    codes = model.hash(torch.as_tensor(r.features))[0].numpy()
    assert mean_average_precision(codes[r.split.validation], codes[r.split.database], r.y("validation"),
                                  r.y("database")) == pytest.approx(best_row["val_map"])
    best = run.read_retrieval(best=True)
    assert best["epoch"] == best_row["epoch"]
    assert mean_average_precision(codes[r.split.query], codes[r.split.database], r.y("query"),
                                  r.y("database")) == pytest.approx(best["map"])


def test_reported_map_is_that_of_the_saved_model(tmp_path, folder):
    c = cfg(folder, feature_scaling="standardize")
    out = tmp_path / "run"
    run_group([c], [out])
    r = load_task_data(c).retrieval
    assert np.allclose(r.features[r.split.database].mean(0), 0, atol=1e-5)
    model, _ = load_model(out)
    scaling = np.load(out / "feature_scaling.npz")
    feats = (r.raw_features - scaling["mean"]) / scaling["std"]
    codes = model.hash(torch.as_tensor(feats, dtype=torch.float32))[0].numpy()
    report = RunDir(out).read_retrieval()
    assert mean_average_precision(codes[r.split.query], codes[r.split.database], r.y("query"),
                                  r.y("database")) == pytest.approx(report["map"])
    assert report["map"] > 0.5  # four well separated patterns: far above chance (0.25)
    assert RunDir(out).read_metrics()["map"].iloc[-1] == pytest.approx(report["map"])  # no validation set


def test_patience_stops_a_model_where_it_stops_alone(tmp_path, folder):
    patient = cfg(folder, validation_per_class=5, patience=1, epochs=12, seed=0)
    other = cfg(folder, validation_per_class=5, patience=1, epochs=12, seed=1, method="sgh")
    run_group([patient, other], [tmp_path / "g0", tmp_path / "g1"])
    run_group([patient], [tmp_path / "alone"])
    a, g = RunDir(tmp_path / "alone").read_summary(), RunDir(tmp_path / "g0").read_summary()
    assert a["stopped_early"] and a["iterations"] == g["iterations"] < 12 * (120 // 16)
    for k, v in torch.load(tmp_path / "alone" / "model.pt", weights_only=True)["state_dict"].items():
        torch.testing.assert_close(torch.load(tmp_path / "g0" / "model.pt", weights_only=True)["state_dict"][k], v,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_experiment_reuses_finished_runs(tmp_path, folder, monkeypatch):
    monkeypatch.setenv("RSGH_WORKERS", "1")
    monkeypatch.delenv("RSGH_SCHEDULER", raising=False)
    variants = ex.ablation_configs("e2-rsgh", [0], 2, task="retrieval", dataset="folder", folder=str(folder),
                                   features="pixels", hidden_layers=1, bits=8, batch_size=16, queries_per_class=5)
    experiment = ex.Experiment("abl", variants, tmp_path / "runs")
    results = experiment.run()
    assert len(results.dirs) == 6 and len({d.name for d in results.dirs}) == 6
    assert set(results.finals["variant"]) == {"default", "tie-encoder", "redundancy-kl", "redundancy-correlation",
                                              "step-sizes"}
    assert set(results.finals["method"]) == {"SGH", "R-SGH"}
    stamp = (results.dirs[0] / "summary.json").stat().st_mtime_ns
    experiment.run()  # a second call reuses the finished runs instead of training again
    assert (results.dirs[0] / "summary.json").stat().st_mtime_ns == stamp
    # other runtime settings (threads, a compiled step) are not part of what a run is: still reused
    ex.Experiment("abl", variants, tmp_path / "runs", runtime=Runtime(threads=2, compile_step=True)).run()
    assert (results.dirs[0] / "summary.json").stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "runs").rglob("config.json"))) == 6


@pytest.mark.slow
def test_baselines_table_is_cached_by_what_it_depends_on(tmp_path, folder, monkeypatch):
    monkeypatch.setenv("RSGH_CACHE", str(tmp_path / "cache"))
    c = cfg(folder, bits=8)
    base = ex.baselines_table(c, [8], [0, 1])
    assert set(base["method"]) == {"LSH", "PCAH", "ITQ", "SH"}
    assert (base["map"] > 0.3).all()
    assert len(list((tmp_path / "cache" / "baselines").glob("*.csv"))) == 1
    fresh = ex.baselines_table(c, [8], [0, 1], cache=False)  # computed afresh, the table is the cached one
    pd.testing.assert_frame_equal(fresh.drop(columns="seconds"), base.drop(columns="seconds"))
    import rsgh.eval.baselines

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted again instead of reading the cache")

    monkeypatch.setattr(rsgh.eval.baselines, "fit_baseline", no_fit)
    pd.testing.assert_frame_equal(ex.baselines_table(c, [8], [0, 1]), base)
    with pytest.raises(AssertionError, match="fitted again"):
        ex.baselines_table(c, [8], [0, 2])  # other seeds are another entry


@pytest.mark.slow
def test_tuned_baselines_choose_each_scaling_by_validation_map_and_report_its_test_map(tmp_path, folder, monkeypatch):
    from rsgh.book import comparison as cmp
    from rsgh.book.store import Source

    monkeypatch.setenv("RSGH_CACHE", str(tmp_path / "cache"))
    c = cfg(folder, bits=8, validation_per_class=5)
    source = Source("publish", tmp_path / "store")
    test, choice = cmp.tuned_baselines(source, c, [4, 8], [0, 1])
    assert len(list((tmp_path / "store" / "baselines").glob("*.csv"))) == 4 + len(set(choice["scaling"]))
    again, _ = cmp.tuned_baselines(Source("render", tmp_path / "store"), c, [4, 8], [0, 1])  # from the store alone
    pd.testing.assert_frame_equal(again.reset_index(drop=True), test.reset_index(drop=True), check_dtype=False)
    # the same choice made here, serially and without the cache
    val = pd.concat([ex.baselines_table(c, [4, 8], [0, 1], scaling=s, part="validation", cache=False)
                     for s in cmp.SCALINGS])
    means = val.groupby(["method", "bits", "scaling"])["map"].mean()
    assert len(choice) == 8 and len(test) == 12  # 4 methods x 2 code lengths; ITQ and LSH once per seed (2)
    for row in choice.itertuples():
        assert row.validation_map == pytest.approx(means[row.method, row.bits].max())
        assert row.validation_map == pytest.approx(means[row.method, row.bits, row.scaling])
        chosen = ex.baselines_table(c, [4, 8], [0, 1], scaling=row.scaling, cache=False)
        chosen = chosen[(chosen["method"] == row.method) & (chosen["bits"] == row.bits)]
        got = test[(test["method"] == row.method) & (test["bits"] == row.bits)]
        np.testing.assert_allclose(np.sort(got["map"].to_numpy()), np.sort(chosen["map"].to_numpy()))


def test_notebook_parameter_types():
    nbk.check_parameters(epochs=(3, int), lr=(1, float), seeds=([0], list))
    with pytest.raises(TypeError, match="epochs='ten' should be of type int"):
        nbk.check_parameters(epochs=("ten", int))
    with pytest.raises(TypeError, match="should be of type int, not bool"):
        nbk.check_parameters(epochs=(True, int))
    with pytest.raises(ValueError, match="seeds is an empty list: give at least one value"):  # was "No objects to concatenate"
        nbk.check_parameters(seeds=([], list))
    nbk.check_parameters(patents_seeds=([], list, "may be empty"))  # an optional part left out
    with pytest.raises(TypeError, match="patents_seeds=3 should be of type list"):
        nbk.check_parameters(patents_seeds=(3, list, "may be empty"))


def test_mean_and_spread_compact_rounds_to_the_spread():
    finals = pd.DataFrame({"method": ["A"] * 3 + ["B"] * 3 + ["C"],
                           "map": [0.40, 0.42, 0.41, 0.123456, 0.123456, 0.123456, 0.5],
                           "active": [54, 58, 55, 64, 64, 64, 3]})
    full = tables.mean_and_spread(finals, ["method"], ["map", "active"])
    assert full.loc["A", "map"] == "0.4100 ± 0.0100 (n=3)"
    table = tables.mean_and_spread(finals, ["method"], ["map", "active"], compact=True)
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
    table = tables.map_table(finals, baselines)
    assert table.index.tolist() == ["SGH", "R-SGH", "LSH", "ITQ"]
    assert table.columns.tolist() == ["K = 32", "K = 64", "seeds"]
    # mean ± sample sd: (0.30, 0.32) -> 0.310 ± 0.014
    assert table.loc["SGH", "K = 32"] == "0.310 ± 0.014"
    assert table.loc["R-SGH", "K = 64"] == "0.450"
    assert table.loc["LSH", "K = 64"] == "" and table.loc["ITQ", "K = 32"] == ""
    assert table["seeds"].tolist() == [2, 2, 2, 1]
