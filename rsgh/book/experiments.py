"""The experiments of the book as declared specs: a name, the configurations it needs, and one
``run()`` that trains what is missing (on Dask, reusing every finished run folder, so rebuilding a
figure never retrains) and returns tidy pandas tables.

Run folders are ``<runs_dir>/<dataset>/<method>-k<bits>-s<seed>-<identity>``: the identity is a
digest of the whole configuration, so a changed parameter (``epochs`` too) is a new run, runtime
settings (threads, compile, device, workers) are never part of it, and two pages that need the same
configuration share its run (the tuned models of the study pages and of the Euclidean protocol, the
patents' settings of embodiment 2 and of the CIFAR-10 study).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..config import Config, Runtime, make_config
from ..data.task import data_key
from ..train.rundir import read_runs


@dataclass
class Results:
    """What an experiment's runs produced: one row per evaluation (``curves``) and per run (``finals``)."""
    dirs: list[Path]
    curves: pd.DataFrame
    finals: pd.DataFrame

    def dir_of(self, run: str) -> Path:
        return next(d for d in self.dirs if d.name == run)


@dataclass
class Experiment:
    name: str  # what the experiment is (for messages)
    variants: list[tuple[str, Config]]  # (variant label, configuration)
    runs_dir: str | Path = "runs"
    data_root: str | None = None
    runtime: Runtime = field(default_factory=lambda: Runtime(progress=False))

    def dirs(self) -> list[Path]:
        return [Path(self.runs_dir) / cfg.dataset / cfg.run_name() for _, cfg in self.variants]

    def run(self, scheduler: str | None = None, progress: bool = False) -> Results:
        from ..train.rundir import RunDir
        from ..train.task import task_data
        from .schedule import train_runs

        dirs = self.dirs()
        if not all(RunDir(d).is_finished() for d in dirs):  # fill the feature caches once, here, not per worker
            for key in {data_key(c): c for _, c in self.variants}.values():
                task_data(key, self.data_root, progress=False)
        train_runs(list(zip((c for _, c in self.variants), dirs)), self.data_root, self.runtime, scheduler,
                   progress=progress)
        curves, finals = read_runs(dirs, [v for v, _ in self.variants])
        return Results(dirs, curves, finals)


def e1_configs(seeds: Sequence[int], epochs: int, **overrides) -> list[tuple[str, Config]]:
    return [("default", make_config(name, dict(overrides, seed=s, epochs=epochs)))
            for name in ("e1-sgh", "e1-rsgh") for s in seeds]


def retrieval_configs(presets: Sequence[str], bits: Sequence[int], seeds: Sequence[int], epochs: int,
                      **overrides) -> list[tuple[str, Config]]:
    return [("default", make_config(name, dict(overrides, bits=b, seed=s, epochs=epochs)))
            for b in bits for name in presets for s in seeds]


def ablation_configs(base: str, seeds: Sequence[int], epochs: int, **overrides) -> list[tuple[str, Config]]:
    """SGH, R-SGH with the default readings, and R-SGH with each alternative reading of SPEC 3."""
    readings = {"default": {}, "tie-encoder": {"tie_target": "encoder"}, "redundancy-kl": {"redundancy": "kl"},
                "redundancy-correlation": {"redundancy": "correlation"},
                "step-sizes": {"coupling": "step_sizes"}}
    out = [("default", make_config(base.replace("rsgh", "sgh"), dict(overrides, seed=s, epochs=epochs)))
           for s in seeds]
    for name, reading in readings.items():
        out += [(name, make_config(base, dict(overrides, **reading, seed=s, epochs=epochs))) for s in seeds]
    return out


def baselines_name(cfg: Config, bits: Sequence[int], seeds: Sequence[int] = (0,),
                   names: Sequence[str] = ("LSH", "PCAH", "ITQ", "SH"), scaling: str = "none", part: str = "query") -> str:
    """The name of a baselines table in the results store: its data, split and parameters."""
    split = (f"q{cfg.queries_per_class}v{cfg.validation_per_class}" if not cfg.n_queries else
             f"n{cfg.n_queries}v{cfg.n_validation}") + f"s{cfg.split_seed}"
    return "-".join([cfg.dataset, cfg.features, split, scaling, part, "k" + "_".join(map(str, bits)),
                     "s" + "_".join(map(str, seeds)), "_".join(names).lower()])


def baselines_table(cfg: Config, bits: Sequence[int], seeds: Sequence[int] = (0,), data_root=None,
                    names: Sequence[str] = ("LSH", "PCAH", "ITQ", "SH"), scaling: str = "none",
                    part: str = "query", cache: bool = True) -> pd.DataFrame:
    """The classic baselines on the same features and split as a retrieval configuration, measured on
    the ``part`` queries ("query": the test queries; "validation"). ``scaling``: the features they are
    fitted on ("none": the raw features, as in the published calibration).

    With ``cache`` the table is saved under ``cache_dir()/baselines``, keyed by the features, labels,
    split, code lengths, seeds, methods, scaling and the source of the code that computes it; the
    ``seconds`` column then tells how long each fit took when it was computed."""
    from ..data.features import apply_scaling, array_digest, cache_key, code_digest, fit_scaling
    from ..eval import baselines, metrics, retrieval
    from ..eval.baselines import fit_baseline
    from ..eval.retrieval import retrieval_report
    from ..files import atomic_text
    from ..paths import cache_dir
    from ..train.task import task_data

    r = task_data(cfg, data_root, progress=False).retrieval
    path = None
    if cache:
        key = cache_key(array_digest(r.raw_features, r.labels, r.split.query, r.split.validation, r.split.database),
                        repr(list(bits)), repr(list(seeds)), repr(list(names)), scaling, part,
                        code_digest(baselines, metrics, retrieval))
        path = cache_dir() / "baselines" / f"{key}.csv"
        if path.exists():
            return pd.read_csv(path)
    fitted = fit_scaling(r.x("database", raw=True), scaling)
    db, q = apply_scaling(r.x("database", raw=True), fitted), apply_scaling(r.x(part, raw=True), fitted)
    rows = []
    for name in names:
        for k in bits:
            for s in (seeds if name in ("LSH", "ITQ") else seeds[:1]):  # PCAH and SH are deterministic
                t0 = time.perf_counter()
                model = fit_baseline(name.lower(), db, k, seed=s)
                rep = retrieval_report(model.encode(q), model.encode(db), r, part=part)
                recall = rep["recall10_at_n"]
                rows.append({"method": name, "bits": k, "seed": s, "map": rep["map"],
                             "precision_radius2": rep["precision_radius2"],
                             **{f"p@{kk}": v for kk, v in rep["precision_at_k"].items()},
                             **{f"recall10@{n}": v for n, v in zip(recall["N"], recall["recall"])},
                             "seconds": time.perf_counter() - t0, "scaling": scaling, "source": r.source})
    table = pd.DataFrame(rows)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_text(path, table.to_csv(index=False))
    return table
