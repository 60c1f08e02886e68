"""The datasets by name: the one place that knows what ``dataset=...`` means.

To add a dataset: a loader in its own module (like ``cifar10.py``) that returns an
:class:`~rsgh.data.archives.ImageSet`, a branch in :func:`load_images`, its image geometry in
:func:`image_geometry`, and its name in ``Config.dataset``'s choices.
"""

from __future__ import annotations

import math

import numpy as np

from ..paths import data_root
from .archives import ImageSet

GREY = ("mnist", "fashion-mnist")  # IDX images, grey 28 x 28; everything else is RGB


def load_images(cfg, root=None) -> tuple[ImageSet, dict]:
    """Every labelled image of ``cfg.dataset`` as uint8 arrays, and the checksums of the files read
    ({file or archive: md5})."""
    root = data_root(root)
    if cfg.dataset in GREY:
        from .mnist import load_mnist_like

        d = load_mnist_like(cfg.dataset, root)
        pixels = np.concatenate([d.train_x, d.test_x])
        images = np.rint(pixels * 255).astype(np.uint8).reshape(-1, 28, 28)
        names = [f"train/{i}" for i in range(len(d.train_y))] + [f"test/{i}" for i in range(len(d.test_y))]
        labels = np.concatenate([d.train_y, d.test_y])
        return (ImageSet(images, labels, [str(c) for c in range(10)], names, d.source,
                         "|".join(d.checksums.values())), dict(d.checksums))
    if cfg.dataset == "cifar10":
        from .cifar10 import load_cifar10

        s = load_cifar10(root, source=cfg.cifar_source)
    elif cfg.dataset == "caltech256":
        from .collections import load_caltech256

        s = load_caltech256(root, include_clutter=cfg.include_clutter, pixels=_pixels(cfg))
    elif cfg.dataset == "folder":
        from .collections import load_image_folder

        s = load_image_folder(cfg.folder, pixels=_pixels(cfg))
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    return s, {s.source: s.checksum}


def _pixels(cfg) -> int | None:
    """The largest image a collection's pixel features accept (its header checked before decoding)."""
    from .decoding import max_pixels

    return max_pixels() if cfg.features == "pixels" else None


def load_train_test(cfg, root=None):
    """The official train / test split of MNIST or Fashion-MNIST (the reconstruction task)."""
    if cfg.dataset not in GREY:
        raise ValueError(f"{cfg.dataset} has no official train / test split: use task=retrieval")
    from .mnist import load_mnist_like

    return load_mnist_like(cfg.dataset, data_root(root))


def gist_size(cfg) -> tuple[int, int] | None:
    """The size GIST sees: native for MNIST and CIFAR-10, ``image_size`` for Caltech-256 and folders."""
    if cfg.dataset in ("caltech256", "folder"):
        return (cfg.image_size, cfg.image_size)
    return None


def image_geometry(cfg, input_dim: int) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (height, width)) of the images a model of ``cfg`` was trained on, so that new
    images are converted and resized to match (``rsgh.index``)."""
    mode = "L" if cfg.dataset in GREY else "RGB"
    if cfg.dataset in GREY:
        return mode, (28, 28)
    if cfg.dataset == "cifar10":
        return mode, (32, 32)
    if cfg.features == "gist":
        return mode, (cfg.image_size, cfg.image_size)
    side = math.isqrt(input_dim // 3)  # pixels of a caltech256 / folder run: the (square) training size
    if side * side * 3 != input_dim:
        raise ValueError(f"cannot tell the image size of a {cfg.dataset} pixel model with {input_dim} inputs "
                         "(not 3 x side x side); only square RGB images are supported")
    return mode, (side, side)
