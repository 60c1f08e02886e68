"""The results store: the small files of every run, study and baseline table the book shows, kept in
the repository (``results/``), so that a fresh clone renders every page without training.

    results/runs/<dataset>/<run name>/   config.json, metrics.csv, summary.json, units.csv.gz, and for
                                         retrieval runs retrieval.json and retrieval_best.json (test-query
                                         mAP, precision, precision-recall and Euclidean Recall10@N of the
                                         final and of the best-validation model); never model weights
    results/studies/<study name>/        journal.log (the Optuna journal) and best.json
    results/baselines/<name>.csv         the classic baselines' tables, keyed by their data and code

A page reads its results through a :class:`Source`, whose ``mode`` says what may be computed:

- ``render``: everything from the store; nothing is trained or fitted, and a missing result is an
  error naming it (what the book's published pages do, and ``reproduce --profile render``);
- ``train``: runs trained (or reused) in ``runs_dir`` and baselines fitted; studies from the store
  (the best configurations are retrained, the searches are not rerun);
- ``study``: also the studies, run to their budgets in ``studies_dir``;
- ``publish``: as ``study``, with the studies in the store and every finished run and baseline table
  written into it as it finishes (how the published book's results are made).
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..files import atomic_text, atomic_write_file

ROOT = Path(__file__).resolve().parent.parent.parent / "results"
MODES = ("render", "train", "study", "publish")
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "retrieval.json", "retrieval_best.json")


def default_store() -> Path:
    """The results store: ``RSGH_RESULTS``, else ``results/`` of the checkout."""
    env = os.environ.get("RSGH_RESULTS")
    return Path(env).expanduser() if env else ROOT


def is_stored(folder: Path) -> bool:
    """Does ``folder`` hold a finished run's results (a run folder or its copy in the store)?"""
    return (folder / "summary.json").exists() and (folder / "config.json").exists()


def export_run(run: Path, dest: Path, units: bool = True) -> None:
    """The small files of the finished run folder ``run`` into the store folder ``dest`` (each written
    atomically; units.csv compressed, or left out with ``units=False``: a study's trial keeps its curve, not
    its per-unit statistics, which no page reads and which were most of the trials' bytes). A store folder of
    another configuration is never replaced."""
    run, dest = Path(run), Path(dest)
    if (dest / "config.json").exists() and (dest / "config.json").read_text() != (run / "config.json").read_text():
        raise ValueError(f"{dest} holds the results of another configuration than {run}; remove it yourself "
                         "if it is stale")
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES[1:]:
        if (run / name).exists():
            atomic_write_file(dest / name, lambda fh, src=run / name: fh.write(src.read_bytes()))
    if units and (run / "units.csv").exists():
        data = gzip.compress((run / "units.csv").read_bytes(), mtime=0)  # mtime 0: the same bytes every time
        atomic_write_file(dest / "units.csv.gz", lambda fh: fh.write(data))
    atomic_text(dest / "config.json", (run / "config.json").read_text())  # last: marks the copy complete


def store_size(store: Path | None = None) -> int:
    """Bytes in the store (the README states it; it must stay small)."""
    root = Path(store or default_store())
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@dataclass
class Source:
    """Where a page's runs, studies and baselines come from, and what may be computed (module docstring)."""
    mode: str = "render"
    store: str | Path = ""
    runs_dir: str | Path = "runs"
    studies_dir: str | Path = "studies"
    data_root: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        self.store = Path(self.store) if self.store else default_store()
        self.data_root = self.data_root or None
        self.reads: list[str] = []  # what this page read from the store (glue_reads: a test checks them)

    def _note(self, path: Path) -> Path:
        if path.is_relative_to(self.store):
            self.reads.append(str(path.relative_to(self.store)))
        return path

    def glue_reads(self) -> None:
        """Glue the store entries this page read (``store_reads``), so that a test can check that every
        result a published page shows is in the store."""
        import json

        from myst_nb import glue

        glue("store_reads", json.dumps(sorted(set(self.reads))), display=False)

    @property
    def trains(self) -> bool:
        return self.mode != "render"

    def run_folder(self, cfg) -> Path:
        return self.store / "runs" / cfg.dataset / cfg.run_name()

    def study_folder(self, name: str) -> Path:
        """A study's folder: in the store, except in ``study`` mode (a fresh search in ``studies_dir``)."""
        return self._note((Path(self.studies_dir) if self.mode == "study" else self.store / "studies") / name)

    def superseded_studies(self, dataset: str, bits: int) -> list[tuple[str, Path]]:
        """The store's superseded studies of ``dataset`` at ``bits`` (``superseded/studies/``, kept for the
        record, each with a ``why.md``; an arm's first in ``<study name>``, later ones in ``<study name>.2``,
        ``.3``, ...): [(arm, folder)], by arm, then oldest first."""
        from .study import ARMS, study_name

        root, found = self.store / "superseded" / "studies", []
        for arm in ARMS:
            name = study_name(arm, dataset, bits)
            folders = [root / name] + sorted(root.glob(f"{name}.*"), key=lambda f: int(f.suffix[1:]))
            found += [(arm, self._note(f)) for f in folders if (f / "journal.log").exists()]
        return found

    def runs(self, experiment):
        """The experiment's results: read from the store (render); trained and read from the run folders
        (train, study); publish: the runs the store lacks trained and copied into it, then all read from it
        (a run the store holds is never trained again)."""
        from dataclasses import replace

        from ..train.rundir import read_runs
        from .experiments import Results

        if self.mode == "publish":
            missing = [(v, cfg) for v, cfg in experiment.variants if not is_stored(self.run_folder(cfg))]
            if missing:
                made = replace(experiment, variants=missing).run()
                for (_, cfg), d in zip(missing, made.dirs):
                    export_run(d, self.run_folder(cfg))
        if self.mode in ("render", "publish"):
            dirs = [self.run_folder(cfg) for _, cfg in experiment.variants]
            missing = [str(d) for d in dirs if not is_stored(d)]
            if missing:  # nothing read (a page whose data is not at hand says so instead of showing results)
                raise FileNotFoundError(f"{len(missing)} run(s) of {experiment.name} are not in the results store "
                                        f"(first: {missing[0]}); make them by retraining: `python -m rsgh reproduce` "
                                        "retrains one seed of every page (the Reproducibility page gives the other "
                                        "levels)")
            curves, finals = read_runs([self._note(d) for d in dirs], [v for v, _ in experiment.variants])
            return Results(dirs, curves, finals)
        return experiment.run()

    def table(self, name: str, compute) -> pd.DataFrame:
        """A derived table (the baselines'): from the store when it holds ``name``, else ``compute()``d
        (not in render mode), and written into the store when publishing."""
        path = self.store / "baselines" / f"{name}.csv"
        if path.exists() and self.mode in ("render", "publish"):
            self._note(path)
            return pd.read_csv(path)
        if not self.trains:
            raise FileNotFoundError(f"{path} is not in the results store; make it by retraining: `python -m rsgh "
                                    "reproduce` retrains one seed of every page (the Reproducibility page gives the "
                                    "other levels)")
        table = compute()
        if self.mode == "publish":
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_text(path, table.to_csv(index=False))
            self._note(path)
        return table


def copy_study(src: Path, dest: Path) -> None:
    """A study's journal and best.json copied into the store (a study run elsewhere, then published)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("journal.log", "best.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dest / name)


def record_reproduction(profile: str, line: str, status: int, report: list[dict], pages: list[dict],
                        seconds: float, store: Path | None = None) -> Path:
    """The outcome of a whole reproduction at one level, kept in the store (``reproduction/<profile>.json``):
    when, at which commit, on which CPU, its verdict line, the numbers outside tolerance (the verdicts' signs
    are not numbers: a one-seed rerun decides no verdict), the claims that changed and each page's time."""
    import datetime
    import json

    from ..train.rundir import git_commit, versions
    from .report import claim_changes, numbers

    path = Path(store or default_store()) / "reproduction" / f"{profile}.json"
    doc = {"profile": profile, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": git_commit(), "cpu": versions()["cpu"], "cores": os.cpu_count(), "torch": versions()["torch"],
           "status": status, "line": line, "minutes": seconds / 60, "numbers": len(report),
           "outside": [{k: r[k] for k in ("page", "quantity", "published", "reproduced", "tolerance", "z")}
                       for r in numbers(report) if not r["ok"]],
           "claims_changed": claim_changes(report),
           "page_seconds": {p["notebook"]: p["seconds"] for p in pages if p["status"] == "executed"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_text(path, json.dumps(doc, indent=2, default=float))
    return path


def last_reproduction(profile: str, store: Path | None = None) -> dict | None:
    import json

    path = Path(store or default_store()) / "reproduction" / f"{profile}.json"
    return json.loads(path.read_text()) if path.exists() else None


def reproductions(store: Path | None = None):
    """The last reproduction at each level (``reproduction/<profile>.json``), one row each: its numbers
    outside tolerance and its changed claims as lists of names."""
    import json

    from .report import numbers

    rows = []
    for path in sorted((Path(store or default_store()) / "reproduction").glob("*.json")):
        doc = json.loads(path.read_text())
        rows.append({"level": doc["profile"], "date": doc["date"][:10], "commit": str(doc["commit"])[:10],
                     "CPU": f"{doc['cpu']}, {doc['cores']} cores", "minutes": doc["minutes"], "verdict": doc["line"],
                     # records made before the verdicts' signs were kept apart listed them with the numbers
                     "outside": [f"{o['page']}: {o['quantity']}" for o in numbers(doc["outside"])],
                     "claims changed": [f"{c['page']}: {c['claim']} ({c['reason']})"
                                        for c in doc.get("claims_changed", [])]})
    return pd.DataFrame(rows)


def run_commits(store: Path | None = None) -> dict[str, int]:
    """{commit: how many stored runs were trained at it} ("-dirty": with uncommitted changes to the package)."""
    import json

    counts: dict[str, int] = {}
    for summary in (Path(store or default_store()) / "runs").glob("*/*/summary.json"):
        commit = str(json.loads(summary.read_text()).get("git_commit", "unknown"))
        counts[commit] = counts.get(commit, 0) + 1
    return counts


def changed_since(commit: str, paths=("rsgh", "notebooks")) -> list[str] | None:
    """The files under ``paths`` that differ between ``commit`` and the checkout's HEAD (None when git or the
    commit is not at hand): what changed in the code since the stored runs were made."""
    import subprocess

    base = commit.removesuffix("-dirty")
    try:
        done = subprocess.run(["git", "diff", "--name-only", base, "HEAD", "--", *paths], cwd=ROOT.parent,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.split() if done.returncode == 0 else None
