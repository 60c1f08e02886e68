"""The fair comparison of the book: every method tuned with the same budget on validation queries,
then measured once on the test queries.

- :func:`ensure_study` runs (or continues, or reuses) the Optuna study of one method;
- :func:`tuned_experiment` retrains each method's best configuration at every code length and seed;
- :func:`patents_experiment` is the same data and split at the patents' settings;
- :func:`tuned_baselines` gives ITQ (and LSH, PCAH, SH) their one choice, the feature scaling, on the
  validation queries, then measures the chosen scaling on the test queries.

Study folders are ``<studies_dir>/<dataset>-k<bits>-<method>``; the retrained runs go to
``<runs_dir>/<dataset>/`` like every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..config import Runtime
from . import study as st
from .experiments import Experiment, baselines_table
from .pages import retrieval_configs

SCALINGS = ("none", "center", "standardize", "whiten")


def study_dir(studies_dir: str | Path, dataset: str, method: str, bits: int) -> Path:
    return Path(studies_dir) / f"{dataset}-k{bits}-{method}"


def ensure_study(dataset: str, method: str, bits: int, trials: int, max_epochs: int, studies_dir: str | Path,
                 data_root=None) -> Path:
    """The study folder, its study run to ``trials`` finished trials first if it has fewer."""
    folder = study_dir(studies_dir, dataset, method, bits)
    if (folder / "best.json").exists():
        s = st.open_study(method, dataset, bits, folder)
        c = st.counts(s)
        if c["complete"] + c["pruned"] >= trials:
            st.write_best(s, folder)
            return folder
    st.run_study(method, dataset, bits, trials, max_epochs, folder, data_root=data_root, progress=False)
    return folder


def tuned_experiment(dataset: str, bits: Sequence[int], seeds: Sequence[int], max_epochs: int, study_bits: int,
                     studies_dir: str | Path, runs_dir: str | Path, data_root=None,
                     methods: Sequence[str] = ("sgh", "rsgh")) -> Experiment:
    """Each method's best configuration (from its study at ``study_bits``) at every code length and seed."""
    dirs = {m: study_dir(studies_dir, dataset, m, study_bits) for m in methods}
    variants = [("tuned", st.trial_config(st.best_params(dirs[m], m), m, dataset, k, max_epochs, seed=s))
                for k in bits for m in methods for s in seeds]
    return Experiment(f"tuned-{dataset}", variants, runs_dir, data_root, Runtime(progress=False))


def patents_experiment(dataset: str, bits: Sequence[int], seeds: Sequence[int], epochs: int, eval_epochs: int,
                       runs_dir: str | Path, data_root=None, compile_step: bool = True) -> Experiment:
    """The patents' settings (embodiment 2's network and training) on the study's data and split: for
    CIFAR-10 exactly the runs of the embodiment 2 page."""
    data = dict(st.DATASETS[dataset])
    page = "e2" if dataset == "cifar10" else f"{dataset.replace('-mnist', '')}-pixels"
    overrides = {"eval_epochs": eval_epochs}
    if dataset != "cifar10":
        overrides.update(dataset=data["dataset"], features="pixels", feature_scaling="none")
    variants = retrieval_configs(["e2-sgh", "e2-rsgh"], bits, seeds, epochs, data["validation_per_class"], overrides)
    return Experiment(page, variants, runs_dir, data_root, Runtime(compile_step=compile_step, progress=False))


def tuned_baselines(cfg, bits: Sequence[int], seeds: Sequence[int], data_root=None,
                    scheduler: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test table, choices): each baseline's feature scaling chosen per code length by its mean
    validation mAP, and its test mAP with that scaling. One Dask task per scaling and part (the fits of a
    table are many ITQ iterations on the whole database: minutes per scaling at 5 seeds on CIFAR-10)."""
    from .schedule import get_client

    client = get_client(scheduler)

    def tables(part: str, scalings: Sequence[str]) -> dict:
        futures = [client.submit(baselines_table, cfg, list(bits), list(seeds), data_root, scaling=s, part=part,
                                 pure=False) for s in scalings]
        return dict(zip(scalings, client.gather(futures)))

    val = pd.concat(tables("validation", SCALINGS).values())
    choice = (val.groupby(["method", "bits", "scaling"])["map"].mean().reset_index()
              .sort_values("map", ascending=False).drop_duplicates(["method", "bits"]))
    tests = tables("query", sorted(set(choice["scaling"])))
    rows = [tests[c.scaling][(tests[c.scaling]["method"] == c.method) & (tests[c.scaling]["bits"] == c.bits)]
            for c in choice.itertuples()]
    return pd.concat(rows, ignore_index=True), choice.rename(columns={"map": "validation_map"}).reset_index(drop=True)


def best_params_table(studies: dict) -> pd.DataFrame:
    """The best trial's parameters of each study (method -> study folder), one column per method."""
    import json

    cols = {}
    for method, folder in studies.items():
        doc = json.loads((Path(folder) / "best.json").read_text())
        cols[method.upper().replace("RSGH", "R-SGH")] = dict(doc["params"], validation_map=round(doc["validation_map"], 4))
    return pd.DataFrame(cols).fillna("")


def top_trials(study, n: int = 5) -> pd.DataFrame:
    """The ``n`` best finished trials of a study with their parameters: what the best configurations share."""
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    frame = frame[frame["state"] == "COMPLETE"].sort_values("value", ascending=False).head(n)
    frame.columns = [c.replace("params_", "").replace("user_attrs_", "") for c in frame.columns]
    keep = [c for c in frame.columns if c not in ("state", "run", "requeued_from")]
    frame = frame[keep].set_index("number").dropna(axis=1, how="all").round(4)
    # a parameter that a trial's choices leave out (the linear family has no depth): shown as "—", not NaN
    return frame.astype(object).where(frame.notna(), "—")
