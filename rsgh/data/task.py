"""The inputs of one training task, from a configuration: images -> features -> split -> scaling.

- ``task=reconstruction`` (embodiment 1): the official MNIST / Fashion-MNIST train and test pixels;
- ``task=retrieval`` (embodiments 2 and 3, the other pages): a labelled collection split into test
  queries, validation queries and the database (= training set); features scaled with statistics
  of the training set only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .datasets import load_images, load_train_test
from .features import apply_scaling, collection_features, fit_scaling
from .split import Split, retrieval_split

# Every field that load_task_data reads: configurations equal on these get the same data.
DATA_FIELDS = ("task", "dataset", "folder", "cifar_source", "include_clutter", "image_size", "features",
               "feature_scaling", "split_seed", "n_queries", "queries_per_class", "validation_per_class",
               "n_validation")


def data_key(cfg) -> tuple:
    return tuple(getattr(cfg, f) for f in DATA_FIELDS)


@dataclass
class RetrievalData:
    """A split labelled collection: features of every image, scaled as the configuration says."""
    features: np.ndarray  # float32 (N, D), scaled
    raw_features: np.ndarray  # before scaling (the classic baselines use these)
    labels: np.ndarray  # int64 (N,)
    split: Split
    scaling: dict  # what was applied (empty: none); saved with each run for the index
    source: str  # e.g. "CIFAR-10 (JPEG copy)"
    names: list = field(default_factory=list)
    class_names: list = field(default_factory=list)
    derived: dict = field(default_factory=dict)  # computed once per process from these data (e.g. neighbours)

    def indices(self, part: str) -> np.ndarray:
        """Indices of ``part``: "query" (test), "validation" or "database"."""
        return {"query": self.split.query, "validation": self.split.validation,
                "database": self.split.database}[part]

    def x(self, part: str, raw: bool = False) -> np.ndarray:
        return (self.raw_features if raw else self.features)[self.indices(part)]

    def y(self, part: str) -> np.ndarray:
        return self.labels[self.indices(part)]

    @property
    def selection_part(self) -> str:
        """Where model selection looks: the validation queries when there are any, else the test queries
        (a run without a validation set selects nothing)."""
        return "validation" if len(self.split.validation) else "query"


@dataclass
class TaskData:
    """Training and evaluation inputs as float32 (n, D) arrays, with provenance."""
    train_x: np.ndarray
    eval_x: np.ndarray  # where collapse and reconstruction are measured during training
    source: str = ""
    checksums: dict = field(default_factory=dict)
    retrieval: RetrievalData | None = None


def load_task_data(cfg, root=None, progress: bool = True) -> TaskData:
    if cfg.task == "reconstruction":
        d = load_train_test(cfg, root)
        return TaskData(d.train_x, d.test_x, d.source, d.checksums)
    images, checksums = load_images(cfg, root)
    if len(np.unique(images.labels)) < 2:
        raise ValueError(f"{images.source}: all {len(images):,} images are in one class "
                         f"({', '.join(images.class_names) or 'none'}); retrieval needs at least two classes (with "
                         "one, every image is relevant and mAP is 1.0 whatever the codes): give a folder with two "
                         "or more <class>/<image> folders")
    raw = np.asarray(collection_features(cfg, images.images, images.checksum, progress), dtype=np.float32)
    kwargs = ({"n_queries": cfg.n_queries, "n_validation": cfg.n_validation} if cfg.n_queries > 0 else
              {"per_class": cfg.queries_per_class, "validation_per_class": cfg.validation_per_class})
    split = retrieval_split(images.labels, seed=cfg.split_seed, **kwargs)
    scaling = fit_scaling(raw[split.database], cfg.feature_scaling)
    r = RetrievalData(apply_scaling(raw, scaling), raw, np.asarray(images.labels, dtype=np.int64), split, scaling,
                      images.source, list(images.names), list(images.class_names))
    return TaskData(r.x("database"), r.x(r.selection_part), r.source, checksums, r)
