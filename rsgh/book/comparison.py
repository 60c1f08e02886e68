"""The fair comparison of the book: every arm tuned with the same budget on validation queries, then
measured once on the test queries.

- :func:`ensure_study` reads (or runs, or continues) the Optuna study of one arm;
- :func:`tuned_experiment` retrains each arm's best configuration at every code length and seed;
- :func:`patents_experiment` is the same data and split at the patents' settings;
- :func:`tuned_baselines` gives ITQ (and LSH, PCAH, SH) their one choice, the feature scaling, on the
  validation queries, then measures the chosen scaling on the test queries.

Where results come from (the results store, or training) is the page's :class:`~rsgh.book.store.Source`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..config import Runtime
from . import study as st
from .experiments import Experiment, Results, baselines_name, baselines_table
from .pages import retrieval_configs
from .store import Source

SCALINGS = ("none", "center", "standardize", "whiten")


def ensure_study(source: Source, dataset: str, arm: str, bits: int, trials: int, max_epochs: int = 0) -> Path:
    """The study folder of ``arm``: read from the store, or (modes ``study`` and ``publish``) run or continued
    to ``trials`` finished trials first, a new one with the dataset's protocol (``max_epochs``, if not 0, the
    trials' maximum epochs instead). A study with fewer trials than ``trials`` is not read as if it had
    them."""
    name = st.study_name(arm, dataset, bits)
    folder = source.study_folder(name)
    if source.mode in ("study", "publish"):
        study = st.open_study(arm, dataset, bits, folder)
        c = st.counts(study)
        if c["complete"] + c["pruned"] < trials or not (folder / "best.json").exists():
            keep = Path(source.store) / "trials" / name if source.mode == "publish" else None
            st.run_study(arm, dataset, bits, trials, max_epochs or None, folder, source.studies_dir, source.data_root,
                         progress=False, keep_trials=keep)
        return folder
    study = st.open_study(arm, dataset, bits, folder, create=False)
    c = st.counts(study)
    if c["complete"] + c["pruned"] < trials:
        raise FileNotFoundError(f"{folder}: the study {name} has {c['complete'] + c['pruned']} finished trials, "
                                f"not the {trials} asked for; run it (python -m rsgh study --arm {arm} --dataset "
                                f"{dataset} --bits {bits} --trials {trials} --out {folder})")
    return folder


def tuned_experiment(source: Source, dataset: str, bits: Sequence[int], seeds: Sequence[int], study_bits: int,
                     arms: Sequence[str] = tuple(st.ARMS)) -> Experiment:
    """Each arm's best configuration (from its study at ``study_bits``) at every code length and seed, trained
    with its study's budget (its trials' maximum epochs and patience); the variant of each run is its arm's
    label."""
    folders = {a: source.study_folder(st.study_name(a, dataset, study_bits)) for a in arms}
    best = {a: st.best_configs(folders[a], a, dataset, bits, seeds) for a in arms}
    variants = [(st.ARMS[a], best[a][k, s]) for k in bits for a in arms for s in seeds]
    return Experiment(f"tuned-{dataset}", variants, source.runs_dir, source.data_root,
                      Runtime(progress=False, compile_step=True))


def tuned_results(source: Source, experiment: Experiment) -> Results:
    """The tuned runs, each named by its arm (``method``), the model kept being that of its best
    validation epoch (``map`` is its test mAP; ``map_final`` the last epoch's)."""
    res = source.runs(experiment)
    finals = res.finals.assign(method=res.finals["variant"], map_final=res.finals["map"], map=res.finals["map_best"])
    curves = res.curves.assign(method=res.curves["variant"])
    return Results(res.dirs, curves, finals)


def patents_experiment(source: Source, dataset: str, bits: Sequence[int], seeds: Sequence[int], epochs: int,
                       eval_epochs: int) -> Experiment:
    """The patents' settings (embodiment 2's network and training) on the study's data and split: for
    CIFAR-10 exactly the runs of the embodiment 2 page, for MNIST and Fashion-MNIST those of their pixels
    pages."""
    data = dict(st.DATASETS[dataset])
    page = "e2" if dataset == "cifar10" else f"{dataset.replace('-mnist', '')}-pixels"
    overrides = {"eval_epochs": eval_epochs}
    if dataset != "cifar10":
        overrides.update(dataset=data["dataset"], features="pixels", feature_scaling="none")
    variants = retrieval_configs(["e2-sgh", "e2-rsgh"], bits, seeds, epochs, data["validation_per_class"], overrides)
    return Experiment(page, variants, source.runs_dir, source.data_root, Runtime(compile_step=True, progress=False))


def baselines(source: Source, cfg, bits: Sequence[int], seeds: Sequence[int], scaling: str = "none",
              part: str = "query") -> pd.DataFrame:
    """The classic baselines' table on ``cfg``'s data and split (from the store, or fitted)."""
    return source.table(baselines_name(cfg, bits, seeds, scaling=scaling, part=part),
                        lambda: baselines_table(cfg, list(bits), list(seeds), source.data_root, scaling=scaling,
                                                part=part))


def tuned_baselines(source: Source, cfg, bits: Sequence[int], seeds: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test table, choices): each baseline's feature scaling chosen per code length by its mean
    validation mAP, and its test mAP with that scaling."""
    val = pd.concat([baselines(source, cfg, bits, seeds, s, "validation") for s in SCALINGS])
    choice = (val.groupby(["method", "bits", "scaling"])["map"].mean().reset_index()
              .sort_values("map", ascending=False).drop_duplicates(["method", "bits"]))
    tests = {s: baselines(source, cfg, bits, seeds, s, "query") for s in sorted(set(choice["scaling"]))}
    rows = [tests[c.scaling][(tests[c.scaling]["method"] == c.method) & (tests[c.scaling]["bits"] == c.bits)]
            for c in choice.itertuples()]
    return pd.concat(rows, ignore_index=True), choice.rename(columns={"map": "validation_map"}).reset_index(drop=True)


def best_params_table(folders: dict) -> pd.DataFrame:
    """The best trial's parameters of each study (arm -> study folder), one column per arm."""
    cols = {}
    for arm, folder in folders.items():
        doc = json.loads((Path(folder) / "best.json").read_text())
        cols[st.ARMS[arm]] = dict(doc["params"], validation_map=round(doc["validation_map"], 4))
    return pd.DataFrame(cols).fillna("").rename_axis("parameter")


def top_trials(study, n: int = 5) -> pd.DataFrame:
    """The ``n`` best finished trials of a study with their parameters: what the best configurations share."""
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    frame = frame[frame["state"] == "COMPLETE"].sort_values("value", ascending=False).head(n)
    frame.columns = [c.replace("params_", "").replace("user_attrs_", "") for c in frame.columns]
    keep = [c for c in frame.columns if c not in ("state", "run", "requeued_from")]
    frame = frame[keep].set_index("number").dropna(axis=1, how="all").round(4)
    # a parameter that a trial's choices leave out (the linear family has no depth): shown as "—", not NaN
    return frame.astype(object).where(frame.notna(), "—")


def top_trials_by_parameter(study, n: int = 5) -> pd.DataFrame:
    """:func:`top_trials` turned for the page: one row per parameter, one column per trial (best first), values
    to 3 significant digits (a row per trial was wider than the page's column)."""
    top = top_trials(study, n)
    out = top.T.map(lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))
    out.columns = [f"trial {c}" for c in out.columns]
    names = {"value": "validation mAP", "best_epoch": "best epoch", "epochs": "epochs run", "seconds": "seconds"}
    return out.rename(index=lambda r: names.get(r, r)).rename_axis("parameter")
