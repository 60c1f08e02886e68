"""The results store: what a run leaves in it, what a page may compute in each mode, that every published
page's results are in it, and that a render from it names a stored number that was changed."""

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import NOT_YET_RENDERED

from rsgh.book import store
from rsgh.book.experiments import Experiment
from rsgh.book.report import compare, glued, overall
from rsgh.book.reproduce import pages, run_plan
from rsgh.config import make_config

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "notebooks" / "plan.yml"


def _fake_run(folder: Path, cfg, mean: float = 0.1) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(cfg.to_json())
    (folder / "metrics.csv").write_text("epoch,iteration,recon_mse\n0,0,0.2\n1,10,0.1\n")
    (folder / "units.csv").write_text("iteration,epoch,bit,kl\n" + "".join(f"10,1,{b},0.5\n" for b in range(4)))
    final = {"recon_mse": mean, "recon_half_sse": 1.0, "active_units_001": 4, "active_units_005": 3, "mean_kl": 0.5,
             "bit_corr_mean": 0.1}
    (folder / "summary.json").write_text(json.dumps({"config": cfg.to_dict(), "final": final, "epochs": 1,
                                                     "wall_time_s": 1.0, "seconds_per_epoch": 1.0,
                                                     "train_recon_half_sse": 1.0, "data_source": "MNIST",
                                                     "git_commit": "abc"}))
    (folder / "model.pt").write_bytes(b"weights, never exported")
    (folder / "checkpoint.pt").write_bytes(b"state, never exported")


def test_a_run_leaves_its_small_files_in_the_store_and_never_its_weights(tmp_path):
    cfg = make_config("e1-sgh", {"epochs": 1})
    run, dest = tmp_path / "runs" / "r", tmp_path / "store" / "runs" / "mnist" / "r"
    _fake_run(run, cfg)
    store.export_run(run, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "metrics.csv", "summary.json", "units.csv.gz"]
    assert store.is_stored(dest) and not store.is_stored(run.parent)
    assert pd.read_csv(dest / "units.csv.gz").equals(pd.read_csv(run / "units.csv"))
    first = (dest / "units.csv.gz").read_bytes()
    store.export_run(run, dest)  # again: the same bytes (no timestamp in the gzip header), so git sees no change
    assert (dest / "units.csv.gz").read_bytes() == first
    from rsgh.train.rundir import RunDir

    assert RunDir(dest).read_units().equals(RunDir(run).read_units())  # pages read the store like a run folder
    other = tmp_path / "runs" / "other"
    _fake_run(other, make_config("e1-sgh", {"epochs": 2}))
    with pytest.raises(ValueError, match="another configuration"):
        store.export_run(other, dest)  # never over a different run's results


def test_render_reads_the_store_only_and_names_what_is_missing(tmp_path):
    cfgs = [make_config("e1-sgh", {"epochs": 1, "seed": s}) for s in (0, 1)]
    experiment = Experiment("e1", [("default", c) for c in cfgs], tmp_path / "runs")
    source = store.Source("render", tmp_path / "store")
    with pytest.raises(FileNotFoundError, match=r"2 run\(s\) of e1 are not in the results store"):
        source.runs(experiment)
    for c in cfgs:
        run = tmp_path / "made" / c.run_name()
        _fake_run(run, c, mean=0.1 + c.seed)
        store.export_run(run, source.run_folder(c))
    results = source.runs(experiment)
    assert list(results.finals["recon_mse"]) == [0.1, 1.1] and not (tmp_path / "runs").exists()  # nothing trained
    assert set(source.reads) == {f"runs/mnist/{c.run_name()}" for c in cfgs}
    with pytest.raises(FileNotFoundError, match="not in the results store"):
        source.table("absent", lambda: pytest.fail("render computes nothing"))
    made = store.Source("publish", tmp_path / "store").table("t", lambda: pd.DataFrame({"a": [1]}))
    assert made["a"].tolist() == [1] and (tmp_path / "store" / "baselines" / "t.csv").exists()
    assert source.table("t", lambda: pytest.fail("stored")).equals(made)
    with pytest.raises(ValueError, match="mode='fast' is not one of"):
        store.Source("fast")


def test_publish_trains_only_the_runs_the_store_lacks(tmp_path, monkeypatch):
    """A run already in the store is never trained again when publishing (the store outlives the machine: its
    runs/ folder may be gone); the runs it lacks are trained, copied into it, and every result is read from it."""
    cfgs = [make_config("e1-sgh", {"epochs": 1, "seed": s}) for s in (0, 1)]
    experiment = Experiment("e1", [("default", c) for c in cfgs], tmp_path / "runs")
    source = store.Source("publish", tmp_path / "store")
    stored = tmp_path / "made" / cfgs[0].run_name()
    _fake_run(stored, cfgs[0], mean=0.1)
    store.export_run(stored, source.run_folder(cfgs[0]))
    asked = []

    def run(self):  # the training: what it is asked for, made as a finished run folder
        asked.extend(c.seed for _, c in self.variants)
        for _, c in self.variants:
            _fake_run(Path(self.runs_dir) / c.dataset / c.run_name(), c, mean=0.2)
        return type("R", (), {"dirs": self.dirs()})()

    monkeypatch.setattr(Experiment, "run", run)
    results = source.runs(experiment)
    assert asked == [1] and list(results.finals["recon_mse"]) == [0.1, 0.2]
    assert all(store.is_stored(source.run_folder(c)) for c in cfgs) and results.dirs[1] == source.run_folder(cfgs[1])
    asked.clear()
    source.runs(experiment)
    assert asked == []  # all stored now: nothing trained


def test_a_study_is_read_from_the_store_except_when_studies_are_rerun(tmp_path):
    assert store.Source("render", tmp_path / "s").study_folder("x") == tmp_path / "s" / "studies" / "x"
    assert store.Source("train", tmp_path / "s").study_folder("x") == tmp_path / "s" / "studies" / "x"
    assert store.Source("publish", tmp_path / "s").study_folder("x") == tmp_path / "s" / "studies" / "x"
    assert store.Source("study", tmp_path / "s", studies_dir=tmp_path / "fresh").study_folder("x") == tmp_path / "fresh" / "x"


def _reads(page: Path) -> list[str] | None:
    """The store entries a page glued as read; None when it glued none (an empty list: it read nothing, as a page
    whose data was not at hand)."""
    for cell in nbformat.read(page, as_version=4).cells:
        for o in cell.get("outputs", []):
            if o.get("metadata", {}).get("scrapbook", {}).get("name") == "store_reads":
                return json.loads(eval(o["data"]["application/papermill.record/text/plain"]))
    return None


def test_every_result_a_published_page_shows_is_in_the_store():
    """Each page glues the store entries it read (``store_reads``); each must be in results/ with the files
    that make it a result: a run's summary and configuration, a study's journal and best configuration, a
    superseded study's journal and why it was superseded."""
    missing, read = [], 0
    for name, _, params in pages(PLAN, "book"):
        page = ROOT / "book" / f"{name}.ipynb"
        if params.get("mode") != "render" or not page.exists():
            continue
        reads = _reads(page)
        if name not in NOT_YET_RENDERED and reads is None:
            missing.append(f"{name}: says nothing of what it read from the store (store_reads not glued)")
        for entry in reads or []:
            read += 1
            path = store.ROOT / entry
            if entry.startswith("runs/"):
                ok = store.is_stored(path)
            elif entry.startswith("studies/"):
                ok = (path / "journal.log").exists() and (path / "best.json").exists()
            elif entry.startswith("superseded/studies/"):  # kept for the record, with why
                ok = (path / "journal.log").exists() and (path / "why.md").exists()
            else:
                ok = path.exists()
            if not ok:
                missing.append(f"{name}: {entry}")
    assert not missing, missing
    assert read > 0


def test_the_store_stays_small():
    assert store.store_size() < 50 * 2 ** 20


@pytest.mark.slow
def test_render_from_the_store_reproduces_a_page_and_names_a_stored_number_that_was_changed(tmp_path, mnist_root,
                                                                                           monkeypatch):
    """A page made in publish mode (smoke budget, a store of its own), rendered from that store into
    another folder: every number the same. Then one stored number changed: the render names it."""
    monkeypatch.setenv("RSGH_DATA", str(mnist_root))
    monkeypatch.setenv("RSGH_WORKERS", "1")
    monkeypatch.delenv("RSGH_SCHEDULER", raising=False)  # the pages' kernels start their own cluster
    own = tmp_path / "store"
    common = {"store": str(own), "runs_dir": str(tmp_path / "runs")}
    run_plan(PLAN, "smoke", tmp_path / "made", only=["e1_mnist_reconstruction"],
             extra_parameters=dict(common, mode="publish"))
    run_plan(PLAN, "smoke", tmp_path / "render", only=["e1_mnist_reconstruction"],
             extra_parameters=dict(common, mode="render"))
    records = compare(tmp_path / "made", tmp_path / "render", ["e1_mnist_reconstruction"])
    assert records and all(r["ok"] and r["difference"] == 0 for r in records)
    assert overall(records)[0] == 0
    shutil.rmtree(tmp_path / "runs")  # a render never trains: without the run folders it still works
    summary = next((own / "runs" / "mnist").glob("sgh-*")) / "summary.json"
    doc = json.loads(summary.read_text())
    doc["final"]["recon_mse"] *= 1.5
    summary.write_text(json.dumps(doc))
    run_plan(PLAN, "smoke", tmp_path / "changed", only=["e1_mnist_reconstruction"],
             extra_parameters=dict(common, mode="render"))
    records = compare(tmp_path / "made", tmp_path / "changed", ["e1_mnist_reconstruction"])
    bad = [r["quantity"] for r in records if not r["ok"]]
    assert bad and all("reconmse" in q or "mse_ratio" in q for q in bad), bad
    assert "e1_reconmse_sgh" in bad
    assert glued(tmp_path / "changed" / "e1_mnist_reconstruction.ipynb")["e1_reconmse_rsgh"] == \
        glued(tmp_path / "made" / "e1_mnist_reconstruction.ipynb")["e1_reconmse_rsgh"]
