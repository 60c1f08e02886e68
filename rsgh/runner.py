"""Run a group of configurations end to end: load the data the task needs, train the group in
lock-step, and write the task's results into each run directory.

For retrieval runs this adds ``split.json`` (the query / database indices used) and
``retrieval.json`` (mAP, precision@k, precision within Hamming radius 2 and precision-recall
points of the final codes), ``feature_scaling.npz`` (the training features' mean and standard
deviation, when standardized) and a ``map`` column in ``metrics.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import Config
from .files import atomic_text, atomic_write_file
from .train import finished_runs, load_model, train_group


# Every field that load_task_data reads: configurations equal on these get the same data.
DATA_FIELDS = ("task", "dataset", "folder", "cifar_source", "include_clutter", "image_size", "features",
               "feature_scaling", "split_seed", "n_queries", "queries_per_class")


def data_key(cfg: Config) -> tuple:
    return tuple(getattr(cfg, f) for f in DATA_FIELDS)


def load_task_data(cfg: Config, data_root=None, progress: bool = True):
    """(TrainData, RetrievalData or None) for a configuration."""
    if cfg.task == "retrieval":
        from .retrieval import load_retrieval_data

        rdata = load_retrieval_data(cfg, data_root, progress=progress)
        return rdata.train_data(), rdata
    from .data import load_mnist_like
    from .train import TrainData

    d = load_mnist_like(cfg.dataset, data_root)
    return TrainData(d.train_x, d.test_x, d.source, d.checksums), None


def run_group(configs: Sequence[Config], outs: Sequence[str | Path], data_root=None, resume: bool = False,
              progress: bool = True, prepared=None) -> list[dict]:
    """Train ``configs`` together (one model per run directory in ``outs``); returns summaries.

    ``prepared``: the result of :func:`load_task_data`, to share loaded data between groups.
    """
    also = ("retrieval.json",) if configs[0].task == "retrieval" else ()
    if resume and (done := finished_runs(configs, outs, also)) is not None:
        return done
    if any(data_key(c) != data_key(configs[0]) for c in configs[1:]):
        raise ValueError("models of one group must use the same data, features and split")
    train_data, rdata = prepared or load_task_data(configs[0], data_root, progress)
    extra = None
    if rdata is not None:
        from .retrieval import map_evaluator
        from .train import pick_device

        extra = map_evaluator(rdata, pick_device(configs[0].device))
    summaries = train_group(configs, train_data, outs, resume=resume, progress=progress, extra_eval=extra)
    if rdata is not None:
        import torch

        from .retrieval import retrieval_report

        for out, summary in zip(map(Path, outs), summaries):
            model, _ = load_model(out)
            q = torch.as_tensor(rdata.features[rdata.query])
            db = torch.as_tensor(rdata.features[rdata.database])
            report = retrieval_report(model.hash(q)[0].numpy(), model.hash(db)[0].numpy(), rdata)
            atomic_text(out / "retrieval.json", json.dumps(report, indent=2))
            rdata.split.save(out / "split.json")
            if rdata.scaling:  # what `encode` applies to new images' features
                atomic_write_file(out / "feature_scaling.npz", lambda fh: np.savez(fh, **rdata.scaling))
            summary["retrieval"] = {k: report[k] for k in ("map", "precision_at_k", "precision_radius2")}
            atomic_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return summaries
