"""The retrieval split of a labelled collection (SPEC sections 4 and 5): test queries, validation
queries carved from the database side, and the database (which is also the training set).

The test queries are drawn first, exactly as without a validation set, so adding one never changes
which images are test queries. The validation queries are then drawn by the same rule from what is
left (per class, or uniformly), and removed from the database: a model never trains on an image it
is selected by, nor on a test query.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import atomic_write_file

FORMAT = "rsgh-retrieval-split-v2"


def _labels_md5(labels: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def _as_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64)


@dataclass
class Split:
    """Query, validation and database indices (int64, sorted, disjoint, together 0..n-1). The
    database is also the training set (SPEC section 4)."""

    query: np.ndarray
    database: np.ndarray
    n: int
    seed: int
    per_class: int | None = None
    n_queries: int | None = None
    labels_md5: str | None = None  # of the labels it was drawn from, to catch a mismatched dataset
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    format: str = field(default=FORMAT, repr=False)

    @property
    def train(self) -> np.ndarray:
        return self.database

    def check(self, labels) -> None:
        """Raise ``ValueError`` unless this split was drawn from these labels."""
        labels = _as_labels(labels)
        if len(labels) != self.n or (self.labels_md5 and _labels_md5(labels) != self.labels_md5):
            raise ValueError(f"this split was drawn from {self.n} labels with md5 {self.labels_md5}, not from "
                             f"these {len(labels)} labels (md5 {_labels_md5(labels)})")

    def save(self, path: str | os.PathLike) -> None:
        doc = {"format": FORMAT, "n": int(self.n), "seed": int(self.seed),
               "per_class": self.per_class, "n_queries": self.n_queries, "labels_md5": self.labels_md5,
               "query": [int(i) for i in self.query], "validation": [int(i) for i in self.validation],
               "database": [int(i) for i in self.database]}
        atomic_write_file(Path(path), lambda fh: fh.write(json.dumps(doc, separators=(",", ":")).encode()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") not in ("rsgh-retrieval-split-v1", FORMAT):
                raise ValueError(f"format is {doc.get('format')!r}")
            split = cls(np.asarray(doc["query"], dtype=np.int64), np.asarray(doc["database"], dtype=np.int64),
                        int(doc["n"]), int(doc["seed"]), doc.get("per_class"), doc.get("n_queries"),
                        doc.get("labels_md5"), np.asarray(doc.get("validation", []), dtype=np.int64))
        except FileNotFoundError:
            raise FileNotFoundError(f"split file {path} does not exist") from None
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a saved rsgh retrieval split ({err})") from None
        parts = (split.query, split.validation, split.database)
        joined = np.concatenate(parts)
        if (len(joined) != split.n or not np.array_equal(np.sort(joined), np.arange(split.n))
                or any(np.any(np.diff(p) <= 0) for p in parts)):
            raise ValueError(f"{path}: query, validation and database are not sorted disjoint sets covering "
                             f"0..{split.n - 1}")
        return split


def _draw(rng, labels: np.ndarray, pool: np.ndarray, per_class: int | None, count: int | None,
          what: str) -> np.ndarray:
    """Indices drawn from ``pool``: ``per_class`` of every class, or ``count`` uniformly."""
    if per_class is not None:
        if int(per_class) != per_class or per_class < 1:
            raise ValueError(f"{what} per class must be a positive integer, got {per_class}")
        classes, counts = np.unique(labels[pool], return_counts=True)
        small = [(int(c), int(k)) for c, k in zip(classes, counts) if k < per_class + 1]
        if small:
            shown = ", ".join(f"class {c} has {k}" for c, k in small[:5])
            raise ValueError(f"{what}: {per_class} per class needs at least {per_class + 1} images left in every "
                             f"class (one for the database): {shown}")
        return np.concatenate([rng.choice(pool[labels[pool] == c], per_class, replace=False) for c in classes])
    if int(count) != count or count < 1:
        raise ValueError(f"{what}: the number must be a positive integer, got {count}")
    if count >= len(pool):
        raise ValueError(f"{what}: {count} must be smaller than the {len(pool)} images left")
    return pool[rng.choice(len(pool), int(count), replace=False)]


def retrieval_split(labels, *, per_class: int | None = None, n_queries: int | None = None,
                    seed: int = 0, validation_per_class: int = 0, n_validation: int = 0) -> Split:
    """Queries drawn with ``numpy.random.default_rng(seed)``: ``per_class`` from every class
    (CIFAR-10: 100), or ``n_queries`` uniformly at random (Caltech-256: 1,000); then, from the rest,
    ``validation_per_class`` (or ``n_validation``) validation queries; the database (and training
    set) is everything else."""
    labels = _as_labels(labels)
    if (per_class is None) == (n_queries is None):
        raise ValueError("give exactly one of per_class (CIFAR-10: 100) or n_queries (Caltech-256: 1000)")
    if (validation_per_class and per_class is None) or (n_validation and n_queries is None):
        raise ValueError("validation queries are drawn like the test queries: validation_per_class with "
                         "per_class, n_validation with n_queries")
    rng = np.random.default_rng(seed)
    n = len(labels)
    everything = np.arange(n)
    query = np.sort(_draw(rng, labels, everything, per_class, n_queries, "test queries")).astype(np.int64)
    rest = np.setdiff1d(everything, query)
    validation = np.zeros(0, dtype=np.int64)
    if validation_per_class or n_validation:
        validation = np.sort(_draw(rng, labels, rest, validation_per_class or None, n_validation or None,
                                   "validation queries")).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[query] = False
    mask[validation] = False
    return Split(query, np.flatnonzero(mask).astype(np.int64), n, int(seed),
                 int(per_class) if per_class is not None else None,
                 int(n_queries) if n_queries is not None else None, _labels_md5(labels), validation)
