"""Features for the retrieval embodiments, cached on disk.

GIST-512 descriptors of a labelled image collection are computed once and stored under
``cache_dir()/features/``, keyed by the collection's checksum, the GIST parameters and the source of
``gist.py``, so no notebook or run recomputes them and a change of the code is never masked
by a stale file. The cache file is written atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .files import atomic_write_file
from .paths import cache_dir


def cache_key(*parts: str) -> str:
    """A short file-name-safe digest of the strings that identify a cached result."""
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def code_digest(*modules) -> str:
    """sha1 of the source files of ``modules``: part of a cache key, so that results computed by
    an earlier version of the code are never reused after it changes."""
    h = hashlib.sha1()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()[:16]


def array_digest(*arrays: np.ndarray) -> str:
    """sha1 of the arrays' shapes, dtypes and bytes."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def cached(name: str, key_parts: tuple[str, ...], compute, folder: Path | None = None) -> np.ndarray:
    """``compute()`` once per key; later calls load the saved array (a few ms)."""
    folder = (folder or cache_dir()) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{cache_key(*key_parts)}.npy"
    if path.exists():
        return np.load(path)
    array = np.ascontiguousarray(compute())
    atomic_write_file(path, lambda fh: np.save(fh, array))
    return array


def gist_features(images, checksum: str, image_size: tuple[int, int] | None = None,
                  progress: bool = True) -> np.ndarray:
    """GIST-512 (float32, (N, 512)) of ``images`` (uint8 (N, H, W[, 3]) or a list of such
    arrays of mixed sizes when ``image_size`` is given), cached by ``checksum`` and parameters."""
    from . import gist as gist_module
    from .gist import GistParams, gist

    params = GistParams()
    size_key = "native" if image_size is None else f"{image_size[0]}x{image_size[1]}"

    def compute():
        if isinstance(images, list):
            if image_size is None:
                raise ValueError("images of mixed sizes need an image_size to compute GIST")
            from PIL import Image

            resized = np.stack([np.asarray(Image.fromarray(im).resize(image_size[::-1], Image.BILINEAR))
                                for im in images])
            return gist(resized, progress=progress)
        return gist(images, image_size=image_size, progress=progress)

    return cached("gist", (checksum, params.key(), size_key, str(len(images)), code_digest(gist_module)), compute)
