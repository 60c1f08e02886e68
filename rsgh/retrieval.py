"""The retrieval embodiments' data pipeline (SPEC sections 4 to 7): images -> features -> split.

A retrieval run splits a labelled collection into queries and a database (which is also the
training set), trains on the database, and measures mAP of the queries' codes against the
database's codes over the full Hamming ranking (``rsgh.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .config import Config
from .paths import data_root


@dataclass
class RetrievalData:
    features: np.ndarray  # float32 (N, D), scaled as the config says
    labels: np.ndarray  # int64 (N,)
    query: np.ndarray  # indices
    database: np.ndarray  # indices (also the training set)
    source: str  # e.g. "CIFAR-10 (JPEG copy)"
    checksums: dict = field(default_factory=dict)
    names: list = field(default_factory=list)  # per image, for showing results
    class_names: list = field(default_factory=list)
    split: object = None  # image_datasets.Split, saved with each run
    raw_features: np.ndarray | None = None  # before feature_scaling (the baselines use these)
    scaling: dict = field(default_factory=dict)  # {"mean", "std"} of feature_scaling=standardize

    def train_data(self):
        from .train import TrainData

        return TrainData(self.features[self.database], self.features[self.query], self.source, self.checksums)


def _images(cfg: Config, root):
    """uint8 images (N, H, W[, 3]) or a list of them, labels, source, checksum, names, class names."""
    from . import image_datasets as ids

    if cfg.dataset in ("mnist", "fashion-mnist"):
        from .data import load_mnist_like

        d = load_mnist_like(cfg.dataset, root)
        pixels = np.concatenate([d.train_x, d.test_x])
        images = np.rint(pixels * 255).astype(np.uint8).reshape(-1, 28, 28)
        labels = np.concatenate([d.train_y, d.test_y])
        names = [f"train/{i}" for i in range(len(d.train_y))] + [f"test/{i}" for i in range(len(d.test_y))]
        classes = [str(c) for c in range(10)]
        return images, labels, d.source, "|".join(d.checksums.values()), names, classes, d.checksums
    if cfg.dataset == "cifar10":
        s = ids.load_cifar10(root, source=cfg.cifar_source)
    elif cfg.dataset == "caltech256":
        s = ids.load_caltech256(root, include_clutter=cfg.include_clutter)
    else:
        s = ids.load_image_folder(cfg.folder)
    return s.images, s.labels, s.source, s.checksum, s.names, s.class_names, {s.source: s.checksum}


def feature_size(cfg: Config, images) -> tuple[int, int] | None:
    """The size GIST sees: native for MNIST and CIFAR-10, image_size for Caltech-256 and folders."""
    if cfg.dataset in ("caltech256", "folder"):
        return (cfg.image_size, cfg.image_size)
    return None


def load_retrieval_data(cfg: Config, root=None, progress: bool = True) -> RetrievalData:
    from .features import gist_features
    from .image_datasets import retrieval_split

    images, labels, source, checksum, names, classes, checksums = _images(cfg, data_root(root))
    if cfg.features == "gist":
        features = gist_features(images, checksum, feature_size(cfg, images), progress=progress)
    else:
        if isinstance(images, list):
            raise ValueError(f"{source}: images of mixed sizes have no common pixel features; use features=gist")
        features = images.reshape(len(images), -1).astype(np.float32) / 255.0
    if cfg.n_queries > 0:
        split = retrieval_split(labels, n_queries=cfg.n_queries, seed=cfg.split_seed)
    else:
        split = retrieval_split(labels, per_class=cfg.queries_per_class, seed=cfg.split_seed)
    features = raw = np.asarray(features, dtype=np.float32)
    scaling = {}
    if cfg.feature_scaling == "standardize":
        train = features[split.database]
        scaling = {"mean": train.mean(0), "std": np.where(train.std(0) > 0, train.std(0), 1.0)}
        features = scale_features(features, scaling)
    return RetrievalData(features.astype(np.float32), np.asarray(labels, dtype=np.int64), split.query,
                         split.database, source, checksums, list(names), list(classes), split, raw, scaling)


def scale_features(features: np.ndarray, scaling: dict) -> np.ndarray:
    """Apply a run's feature scaling (empty dict: none) to raw features."""
    if not scaling:
        return np.asarray(features, dtype=np.float32)
    return ((features - scaling["mean"]) / scaling["std"]).astype(np.float32)


def map_evaluator(data: RetrievalData, device="cpu"):
    """``extra_eval`` for training: the mAP of every model of a group, queries vs database."""
    from .metrics import mean_average_precision

    q = torch.as_tensor(data.features[data.query], device=device)
    db = torch.as_tensor(data.features[data.database], device=device)
    q_labels, db_labels = data.labels[data.query], data.labels[data.database]

    def evaluate(model) -> list[dict]:
        qc, dbc = model.hash(q).cpu().numpy(), model.hash(db).cpu().numpy()
        return [{"map": mean_average_precision(qc[g], dbc[g], q_labels, db_labels)} for g in range(model.groups)]

    return evaluate


def retrieval_report(query_codes, db_codes, data: RetrievalData, ks=(100, 500, 1000)) -> dict:
    """mAP, precision@k, precision within Hamming radius 2 and the precision-recall points."""
    from .metrics import retrieval_summary

    s = retrieval_summary(query_codes, db_codes, data.labels[data.query], data.labels[data.database], ks=ks)
    return {"map": s["map"], "precision_at_k": {str(k): v for k, v in s["precision_at_k"].items()},
            "precision_radius2": s["precision_within_radius"],
            "pr_curve": s["pr_curve"].to_dict(orient="list"),
            "n_queries": int(len(data.query)), "n_database": int(len(data.database)),
            "bits": int(np.asarray(query_codes).shape[1]), "source": data.source}
