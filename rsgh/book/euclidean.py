"""SGH under its own protocol (Dai et al. 2017): Euclidean neighbour search, Recall10@N.

For each test query, its 10 nearest database items in Euclidean distance of the input features
(before any scaling) are the truth; every method's codes rank the database by Hamming distance, and
Recall10@N is the expected fraction of the 10 found in the top N (exact under a random order within
ties, ``rsgh.eval.neighbours``). Every retrieval run measures it at its end (``recall10_at_n`` in its
retrieval reports, :func:`rsgh.eval.retrieval.retrieval_report`), and so does the baselines' table: this
module only reads them. The methods: linear SGH with the published code's choices (``sgh-reference``:
batch 500, 5,000 iterations, Adam 1e-2), the three tuned arms at the configurations their studies chose,
and ITQ, LSH, PCAH and SH fitted on the raw features.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..config import Runtime, make_config
from ..train.rundir import RunDir
from . import study as st
from .experiments import Experiment, Results
from .store import Source

REFERENCE = "linear SGH (reference code)"
REFERENCE_SCALING = {"cifar10": "standardize"}  # raw GIST gives every image the same code; pixels are in [0, 1]


def reference_config(dataset: str, bits: int, seed: int):
    """The published linear SGH code's choices (SPEC section 2) on a study's data and split."""
    data = dict(st.DATASETS[dataset], task="retrieval", feature_scaling=REFERENCE_SCALING.get(dataset, "none"))
    return make_config("sgh-reference", dict(data, bits=bits, seed=seed))


def experiment(source: Source, dataset: str, bits: Sequence[int], seeds: Sequence[int], study_bits: int,
               arms: Sequence[str] = tuple(st.ARMS)) -> Experiment:
    """The reference code's linear SGH and each arm's best configuration at every code length and seed (with
    its study's budget, as :func:`rsgh.book.comparison.tuned_experiment`)."""
    folders = {a: source.study_folder(st.study_name(a, dataset, study_bits)) for a in arms}
    best, variants = {a: st.best_configs(folders[a], a, dataset, bits, seeds) for a in arms}, []
    for k in bits:
        variants += [(REFERENCE, reference_config(dataset, k, s)) for s in seeds]
        variants += [(st.ARMS[a], best[a][k, s]) for a in arms for s in seeds]
    return Experiment(f"euclidean-{dataset}", variants, source.runs_dir, source.data_root,
                      Runtime(progress=False, compile_step=True))


def recall_table(dataset: str, results: Results, baselines: pd.DataFrame) -> pd.DataFrame:
    """Long table (dataset, method, bits, seed, N, recall) of every run of ``results`` (its kept model: the
    best-validation one where it stopped early, else the final one) and of the baselines' table."""
    rows = []
    for d, (_, run) in zip(results.dirs, results.finals.iterrows()):
        rd = RunDir(d)
        report = rd.read_retrieval(best=kept_best(rd))
        if report is None or "recall10_at_n" not in report:
            raise FileNotFoundError(f"{d}: no Recall10@N in its retrieval report (a run of an older rsgh); "
                                    "train it again")
        curve = report["recall10_at_n"]
        rows += [{"dataset": dataset, "method": run["variant"], "bits": int(run["bits"]), "seed": int(run["seed"]),
                  "N": n, "recall": r} for n, r in zip(curve["N"], curve["recall"])]
    columns = [c for c in baselines.columns if c.startswith("recall10@")]
    for b in baselines.to_dict("records"):
        rows += [{"dataset": dataset, "method": b["method"], "bits": int(b["bits"]), "seed": int(b["seed"]),
                  "N": int(c.split("@")[1]), "recall": b[c]} for c in columns]
    return pd.DataFrame(rows)


def kept_best(run: RunDir) -> bool:
    """Runs trained with early stopping are represented by their best-validation model."""
    return run.read_config().patience > 0 and run.read_retrieval(best=True) is not None


def at_n(table: pd.DataFrame, n: int = 100) -> pd.DataFrame:
    """Recall10@n, one row per (dataset, method, bits, seed)."""
    return table[table["N"] == n]
