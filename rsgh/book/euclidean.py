"""SGH under its own protocol (Dai et al. 2017): Euclidean neighbour search, Recall10@N.

For each test query, its 10 nearest database items in Euclidean distance of the input features
(before any scaling) are the truth; every method's codes rank the database by Hamming distance, and
Recall10@N is the expected fraction of the 10 found in the top N (exact under a random order within
ties, ``rsgh.eval.neighbours``). The methods: linear SGH with the published code's choices
(``sgh-reference``: batch 500, 5,000 iterations, Adam 1e-2), SGH and R-SGH at the configurations
their studies chose (depth is one of the studies' choices: tuned SGH may be linear), and ITQ, LSH, PCAH
and SH fitted on the raw features.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..config import Runtime, make_config
from ..eval.baselines import fit_baseline
from ..eval.neighbours import euclidean_neighbours, recall_at_n
from ..eval.retrieval import model_codes
from ..train.rundir import BEST, RunDir
from . import study as st
from .comparison import study_dir
from .experiments import Experiment

NS = np.unique(np.round(np.logspace(0, 4, 33)).astype(int))  # N = 1 .. 10,000
REFERENCE_SCALING = {"cifar10": "standardize"}  # raw GIST gives every image the same code; pixels are in [0, 1]


def reference_config(dataset: str, bits: int, seed: int):
    """The published linear SGH code's choices (SPEC section 2) on a study's data and split."""
    data = dict(st.DATASETS[dataset], task="retrieval", feature_scaling=REFERENCE_SCALING.get(dataset, "none"))
    return make_config("sgh-reference", dict(data, bits=bits, seed=seed))


def experiment(dataset: str, bits: Sequence[int], seeds: Sequence[int], max_epochs: int, study_bits: int,
               studies_dir, runs_dir, data_root=None) -> Experiment:
    dirs = {m: study_dir(studies_dir, dataset, m, study_bits) for m in ("sgh", "rsgh")}
    variants = []
    for k in bits:
        variants += [("linear SGH (reference code)", reference_config(dataset, k, s)) for s in seeds]
        variants += [(f"{'SGH' if m == 'sgh' else 'R-SGH'} (tuned)",
                      st.trial_config(st.best_params(dirs[m], m), m, dataset, k, max_epochs, seed=s))
                     for m in ("sgh", "rsgh") for s in seeds]
    return Experiment(f"euclidean-{dataset}", variants, runs_dir, data_root, Runtime(progress=False))


def recall_table(dataset: str, results, data, seeds: Sequence[int], baselines=("ITQ", "LSH", "PCAH", "SH")) -> pd.DataFrame:
    """Long table (dataset, method, bits, seed, N, recall) for every run of ``results`` and the baselines."""
    r = data.retrieval
    truth = euclidean_neighbours(r.x("query", raw=True), r.x("database", raw=True), r=10)
    rows = []

    def add(method, bits, seed, qc, dbc):
        for n, value in zip(NS, recall_at_n(qc, dbc, truth, NS)):
            rows.append({"dataset": dataset, "method": method, "bits": bits, "seed": seed, "N": int(n),
                         "recall": float(value)})

    for d, (_, run) in zip(results.dirs, results.finals.iterrows()):
        rd = RunDir(d)
        model, cfg = rd.load_model(name=BEST if cfg_patience(rd) else "model.pt")
        add(run["variant"], cfg.bits, cfg.seed, model_codes(model, r, "query"), model_codes(model, r, "database"))
    db_raw, q_raw = r.x("database", raw=True), r.x("query", raw=True)
    for name in baselines:
        for k in sorted(results.finals["bits"].unique()):
            for s in (seeds if name in ("LSH", "ITQ") else seeds[:1]):
                model = fit_baseline(name.lower(), db_raw, int(k), seed=s)
                add(name, int(k), s, model.encode(q_raw), model.encode(db_raw))
    return pd.DataFrame(rows)


def cfg_patience(run: RunDir) -> bool:
    """Runs trained with early stopping are represented by their best-validation model."""
    return run.read_config().patience > 0 and run.file(BEST).exists()


def at_n(table: pd.DataFrame, n: int = 100) -> pd.DataFrame:
    """Recall10@n, one row per (dataset, method, bits, seed)."""
    return table[table["N"] == n]
