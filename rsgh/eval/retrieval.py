"""The retrieval protocol (SPEC section 5): queries' codes ranked against the database's codes over
the full Hamming ranking; relevant = same label.

During training only the validation queries are looked at (:func:`map_evaluator`), so that the
epoch to keep is chosen on them; the test queries are measured once, on the model finally kept
(:func:`retrieval_report`). A run without a validation set is evaluated on its test queries
during training, as the patents' protocol has no validation set, and selects nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.task import RetrievalData
from .metrics import mean_average_precision, retrieval_summary
from .neighbours import euclidean_neighbours, recall_at_n

RECALL_NS = np.unique(np.round(np.logspace(0, 4, 33)).astype(int))  # N = 1 .. 10,000 of Recall10@N


# Queries per block of the exact mAP's Hamming distances (``rsgh.eval.metrics``): 64 rows of a database of
# 68,000 (17 MiB of distances) stay in the cache for their histograms, where 256 did not (measured at
# MNIST's size, in turns: 26% less time).
MAP_BLOCK = 64


def map_evaluator(data: RetrievalData, device="cpu", queries=None, database=None):
    """``extra_eval`` for training: each model's mAP of the selection queries against the database,
    as ``{"val_map": ...}`` (validation queries) or ``{"map": ...}`` (no validation set).
    ``queries``, ``database``: those features where the caller has them already (the training task's
    arrays), else they are taken from ``data``."""
    part = data.selection_part
    column = "val_map" if part == "validation" else "map"
    q = torch.as_tensor(data.x(part) if queries is None else queries, device=device)
    db = torch.as_tensor(data.x("database") if database is None else database, device=device)
    q_labels, db_labels = data.y(part), data.y("database")

    def evaluate(model) -> list[dict]:
        qc, dbc = model.hash(q).cpu().numpy(), model.hash(db).cpu().numpy()
        return [{column: mean_average_precision(qc[g], dbc[g], q_labels, db_labels, block=MAP_BLOCK)}
                for g in range(model.groups)]

    return evaluate


def model_codes(model, data: RetrievalData, part: str) -> np.ndarray:
    """{0,1} uint8 codes (n, K) of one part of the collection by a single trained model."""
    return model.hash(torch.as_tensor(data.x(part)))[0].numpy()


def euclidean_truth(data: RetrievalData, part: str = "query", r: int = 10) -> np.ndarray:
    """The ``r`` nearest database items of each ``part`` query in Euclidean distance of the features
    before scaling (SGH's protocol), computed once per process and collection."""
    key = ("euclidean", part, r)
    if key not in data.derived:
        data.derived[key] = euclidean_neighbours(data.x(part, raw=True), data.x("database", raw=True), r=r)
    return data.derived[key]


def retrieval_report(query_codes, db_codes, data: RetrievalData, part: str = "query",
                     ks=(100, 500, 1000), euclidean: bool = True) -> dict:
    """mAP, precision@k, precision within Hamming radius 2 and the precision-recall points of the
    ``part`` queries (default: the test queries) against the database; with ``euclidean`` also
    Recall10@N of their Euclidean neighbours (N in ``RECALL_NS``)."""
    s = retrieval_summary(query_codes, db_codes, data.y(part), data.y("database"), ks=ks)
    report = {"map": s["map"], "precision_at_k": {str(k): v for k, v in s["precision_at_k"].items()},
              "precision_radius2": s["precision_within_radius"],
              "pr_curve": s["pr_curve"].to_dict(orient="list"),
              "queries": part, "n_queries": int(len(data.indices(part))),
              "n_database": int(len(data.split.database)), "bits": int(np.asarray(query_codes).shape[1]),
              "source": data.source}
    if euclidean and len(data.split.database) >= 10:  # Recall10@N needs ten true neighbours per query
        ns = RECALL_NS[RECALL_NS <= len(data.split.database)]
        recall = recall_at_n(query_codes, db_codes, euclidean_truth(data, part), ns)
        report["recall10_at_n"] = {"N": [int(n) for n in ns], "recall": [float(v) for v in recall]}
    return report
