"""Features: how images become the network's inputs, for training, evaluation and the index alike.

- pixels scaled to [0, 1], or GIST-512 (``rsgh.data.gist``);
- GIST of a whole collection is computed once and cached under ``cache_dir()/features/``, keyed by
  the collection's checksum, the GIST parameters and the source of ``gist.py`` and ``gist_bank.py``
  (a change of the code is never masked by a stale file); a damaged cache file is detected, said, and
  rebuilt;
- feature scaling (none, center, standardize, whiten), fitted on the training set and saved with
  each run as ``feature_scaling.npz``, so that new images get exactly the training transform.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write_file
from ..paths import cache_dir
from . import datasets


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


def cached(name: str, key_parts: tuple[str, ...], compute, shape: tuple | None = None,
           folder: Path | None = None) -> np.ndarray:
    """``compute()`` once per key; later calls load the saved array (a few ms). A cache file that
    cannot be read, or holds another ``shape``, is reported and computed again."""
    folder = (folder or cache_dir()) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{cache_key(*key_parts)}.npy"
    if path.exists():
        try:
            array = np.load(path, allow_pickle=False)
            if shape is not None and array.shape != tuple(shape):
                raise ValueError(f"shape {array.shape}, expected {tuple(shape)}")
            return array
        except (OSError, ValueError, EOFError) as err:
            warnings.warn(f"the feature cache {path} is damaged ({err}); computing the features again",
                          stacklevel=2)
    array = np.ascontiguousarray(compute())
    atomic_write_file(path, lambda fh: np.save(fh, array))
    return array


def gist_features(images, checksum: str, image_size: tuple[int, int] | None = None,
                  progress: bool = True) -> np.ndarray:
    """GIST-512 (float32, (N, 512)) of ``images`` (uint8 (N, H, W[, 3]) or a list of such
    arrays of mixed sizes when ``image_size`` is given), cached by ``checksum`` and parameters."""
    from . import gist as gist_module
    from . import gist_bank
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

    key = (checksum, params.key(), size_key, str(len(images)), code_digest(gist_module, gist_bank))
    return cached("gist", key, compute,
                  shape=(len(images), params.n_features))


def collection_features(cfg, images, checksum: str, progress: bool = True) -> np.ndarray:
    """float32 (N, D) features of a whole collection as ``cfg.features`` says (before scaling)."""
    if cfg.features == "gist":
        return gist_features(images, checksum, datasets.gist_size(cfg), progress=progress)
    if isinstance(images, list):
        raise ValueError("images of mixed sizes have no common pixel features; use features=gist")
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# New images, one batch at a time (the index)


@dataclass(frozen=True)
class FeatureSpec:
    """What a model's inputs are: how an image becomes its feature vector."""

    kind: str  # "pixels" or "gist"
    mode: str  # images are converted to "L" (grey) or "RGB"
    size: tuple[int, int]  # (height, width) the images are resized to (PIL bilinear) when they differ
    dim: int  # length of the feature vector (the model's input size)
    gist: str | None  # rsgh.data.gist.GistParams().key() for GIST features
    scaling: str  # the run's feature_scaling (with its feature_scaling.npz)
    dataset: str  # what the model was trained on (for messages)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


def feature_spec(cfg, input_dim: int) -> FeatureSpec:
    """The feature pipeline of a run, with a clear error when it cannot produce ``input_dim`` values."""
    mode, size = datasets.image_geometry(cfg, input_dim)
    gist_key = None
    if cfg.features == "gist":
        from .gist import GistParams

        params = GistParams()
        gist_key, dim = params.key(), params.n_features
    else:
        dim = size[0] * size[1] * (1 if mode == "L" else 3)
    if dim != input_dim:
        raise ValueError(f"the model takes {input_dim} inputs but its configuration (dataset={cfg.dataset}, "
                         f"features={cfg.features}) gives {dim} features per image: the run directory's "
                         "model.pt and config do not belong together")
    return FeatureSpec(cfg.features, mode, size, dim, gist_key, cfg.feature_scaling, cfg.dataset)


def image_features(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """float32 (n, D) features of prepared uint8 images (at the model's size), before scaling."""
    if spec.kind == "pixels":
        return images.reshape(len(images), -1).astype(np.float32) / 255.0
    from .gist import gist

    return np.asarray(gist(images), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Scaling


def fit_scaling(train: np.ndarray, kind: str) -> dict:
    """The scaling of ``kind`` fitted on the training features: {} for none, else {"mean", "std"}
    (an elementwise transform) or {"mean", "whiten"} (a D x D matrix)."""
    if kind == "none":
        return {}
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(0)
    if kind == "center":
        return {"mean": mean, "std": np.ones_like(mean)}
    if kind == "standardize":
        std = train.std(0)
        return {"mean": mean, "std": np.where(std > 0, std, 1.0)}
    if kind == "whiten":
        # PCA whitening: rotate onto the principal axes and divide each by its standard deviation
        # (directions of (near) zero variance are left unscaled rather than blown up)
        centred = train - mean
        eigval, eigvec = np.linalg.eigh(centred.T @ centred / len(train))
        scale = np.where(eigval > 1e-10 * eigval.max(), 1 / np.sqrt(np.maximum(eigval, 1e-300)), 1.0)
        return {"mean": mean, "whiten": eigvec[:, ::-1] * scale[::-1]}
    raise ValueError(f"unknown feature scaling {kind!r}")


def apply_scaling(features: np.ndarray, scaling: dict) -> np.ndarray:
    """A run's feature scaling (empty dict: none) applied to raw features, as float32."""
    if not scaling:
        return np.asarray(features, dtype=np.float32)
    centred = np.asarray(features, dtype=np.float64) - scaling["mean"]
    if "whiten" in scaling:
        return (centred @ scaling["whiten"]).astype(np.float32)
    return (centred / scaling["std"]).astype(np.float32)


def save_scaling(path: Path, scaling: dict) -> None:
    atomic_write_file(path, lambda fh: np.savez(fh, **scaling))


SCALING_SHAPES = {"mean": 1, "std": 1, "whiten": 2}  # the arrays of a scaling file and their dimensions


def load_scaling(path: Path, dim: int) -> dict:
    """A saved scaling, checked: shapes match ``dim`` features, every value finite, std > 0. Each array's
    size is checked before it is read (the zip's declared size, then the array's own header), so a
    received file cannot cost more than ``dim`` x ``dim`` numbers, whatever it declares or inflates to."""
    try:
        saved = _read_scaling(path, dim)
    except ValueError:
        raise
    except Exception as err:  # a damaged .npz: OSError, BadZipFile, KeyError, EOFError, ...
        raise ValueError(f"{path} is not a readable feature scaling file ({type(err).__name__}: {err})") from None
    if "mean" not in saved or not (("std" in saved) ^ ("whiten" in saved)):
        raise ValueError(f"{path}: expected the arrays mean and std (or mean and whiten), found {sorted(saved)}")
    for key, value in saved.items():
        if not np.isfinite(value).all():
            raise ValueError(f"{path}: {key} holds NaN or infinite values")
    if "std" in saved and not (saved["std"] > 0).all():
        raise ValueError(f"{path}: std holds non-positive values (scaled features would be infinite)")
    return saved


def _read_scaling(path: Path, dim: int) -> dict:
    import zipfile

    from ..files import open_regular

    out = {}
    with open_regular(path, "feature scaling file") as fh, zipfile.ZipFile(fh) as zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if key not in SCALING_SHAPES:
                raise ValueError(f"{path}: unexpected array {info.filename!r}; expected mean and std (or whiten)")
            shape = (dim,) * SCALING_SHAPES[key]
            most = 8 * int(np.prod(shape)) + 4096  # float64 values and the .npy header
            if info.file_size > most:
                raise ValueError(f"{path}: {key} declares {info.file_size:,} bytes, more than {most:,} for {dim} "
                                 "features; the file does not belong to this model")
            with zf.open(info) as member:
                fmt = np.lib.format
                read = fmt.read_array_header_1_0 if fmt.read_magic(member) == (1, 0) else fmt.read_array_header_2_0
                have, _, dtype = read(member)
                if tuple(have) != shape or dtype.kind != "f" or dtype.itemsize > 8:
                    raise ValueError(f"{path}: {key} has shape {tuple(have)} ({dtype}), the features have {dim} "
                                     "values")
            with zf.open(info) as member:
                out[key] = np.lib.format.read_array(member, allow_pickle=False).astype(np.float64)
    return out
