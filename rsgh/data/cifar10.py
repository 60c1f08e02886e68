"""CIFAR-10: the official ``cifar-10-python.tar.gz`` (pickled batches) or, failing that, the lossy
JPEG copy ``cifar10-jpeg.tar.gz``; results from the copy are labelled ``"CIFAR-10 (JPEG copy)"``,
never plain ``"CIFAR-10"``. Decoded arrays are cached under :func:`rsgh.paths.cache_dir`, keyed by
the archive md5.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..files import atomic_write_file
from ..paths import data_root
from .archives import (ImageDatasetWarning, ImageSet, Reader, cache_folder, decode_members, file_md5, is_hidden,
                       is_image_name, name_parts, open_reader, strip_common_top)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_FILE = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                   "test_batch")
CIFAR10_JPEG_FILE = "cifar10-jpeg.tar.gz"
CIFAR10_JPEG_MD5 = "0d11abded7da73ed95b60c470137a5e6"
CIFAR10_JPEG_SPLITS = ("train", "test")
_CACHE_VERSION = 1



def load_cifar10(root: str | os.PathLike | None = None, source: str = "auto", *, download: bool = True,
                 verify: bool = True, use_cache: bool = True,
                 limit_per_class: int | None = None) -> ImageSet:
    """All 60,000 CIFAR-10 images (the 50,000 training images, then the 10,000 test images).

    ``source``: ``"official"`` (``<root>/cifar-10-python.tar.gz``, downloaded with pooch when absent
    unless ``download=False`` or ``RSGH_OFFLINE=1``), ``"jpeg"`` (``<root>/cifar10-jpeg.tar.gz``, the
    lossy copy, labelled ``"CIFAR-10 (JPEG copy)"``), or ``"auto"`` (official if present, else the
    JPEG copy, else a download of the official archive). ``verify=False`` accepts an archive whose
    md5 is not the official one (a synthetic or custom one; its ``source`` then says so).
    ``limit_per_class``: only the first images of each class in each of train / test (a quick
    look at a real archive; not cached)."""
    if source not in ("auto", "official", "jpeg"):
        raise ValueError(f"source must be 'auto', 'official' or 'jpeg', got {source!r}")
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be >= 1, got {limit_per_class}")
    root = data_root(root)
    official, jpeg = root / CIFAR10_FILE, root / CIFAR10_JPEG_FILE
    asked = source
    if source == "auto":
        source = "official" if official.is_file() or not jpeg.is_file() else "jpeg"
    if source == "jpeg":
        if not jpeg.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 JPEG copy not found at {jpeg}: point --data-root / RSGH_DATA at the folder "
                f"that holds {CIFAR10_JPEG_FILE} (on these machines: ../shared/data), or use the "
                f"official archive {CIFAR10_URL} (source='official')")
        return _load_cifar10_archive(jpeg, "jpeg", verify, use_cache, limit_per_class)
    if not official.is_file():
        downloaded = _download_cifar10(root) if download and not os.environ.get("RSGH_OFFLINE") else None
        if downloaded is None:
            why = "offline, download=False or RSGH_OFFLINE=1"
            if asked == "auto":
                raise FileNotFoundError(
                    f"CIFAR-10 not found: neither {official} nor {jpeg} exists, and no download ({why}). "
                    f"Download {CIFAR10_URL} into {root}, or point --data-root / RSGH_DATA at a folder "
                    f"holding {CIFAR10_FILE} or {CIFAR10_JPEG_FILE} (on these machines: ../shared/data)")
            raise FileNotFoundError(
                f"CIFAR-10 archive not found at {official}, and no download ({why}). Download "
                f"{CIFAR10_URL} into {root}, or point --data-root / RSGH_DATA at a folder holding "
                f"{CIFAR10_FILE}" + (f" (or use source='jpeg' for the lossy copy {jpeg})" if jpeg.is_file() else ""))
        official = downloaded
    return _load_cifar10_archive(official, "official", verify, use_cache, limit_per_class)


def _download_cifar10(root: Path) -> Path | None:
    """The official archive via pooch (which checks its md5); None when it cannot be fetched."""
    import pooch

    try:
        return Path(pooch.retrieve(CIFAR10_URL, known_hash=f"md5:{CIFAR10_MD5}", fname=CIFAR10_FILE,
                                   path=root, progressbar=False))
    except PermissionError as err:
        raise PermissionError(f"cannot download CIFAR-10 into {root} ({err}): point --data-root / "
                              "RSGH_DATA at a writable folder") from None
    except Exception as err:  # any network failure: the caller gives the clear message
        if "hash" in str(err).lower() or "md5" in str(err).lower():
            raise ValueError(f"the downloaded {CIFAR10_FILE} does not match the official md5 "
                             f"{CIFAR10_MD5}: {err}") from None
        return None


def _load_cifar10_archive(path: Path, kind: str, verify: bool, use_cache: bool,
                          limit_per_class: int | None) -> ImageSet:
    expected = CIFAR10_MD5 if kind == "official" else CIFAR10_JPEG_MD5
    what = "the official CIFAR-10 archive" if kind == "official" else "the known CIFAR-10 JPEG copy"
    md5 = file_md5(path)
    if md5 != expected:
        if verify:
            raise ValueError(
                f"{path}: md5 is {md5}, expected {expected} ({what}); the file is truncated, corrupt or "
                "another archive: delete it and "
                + (f"download it again from {CIFAR10_URL}" if kind == "official" else "copy it again")
                + " (a custom archive in its layout is read from Python: load_cifar10(..., verify=False))")
        warnings.warn(f"{path} is not {what} (md5 {md5}, expected {expected})", ImageDatasetWarning,
                      stacklevel=3)
    notes = (([] if kind == "official" else ["JPEG copy"])
             + ([] if md5 == expected else [f"non-official archive md5 {md5[:8]}"]))
    label = "CIFAR-10" + (f" ({', '.join(notes)})" if notes else "")

    cache_file = None
    if use_cache and limit_per_class is None and (folder := cache_folder()) is not None:
        cache_file = folder / f"cifar10-{kind}-{md5}-v{_CACHE_VERSION}.npz"
        cached = _read_cache(cache_file)
        if cached is not None:
            images, labels, names, class_names = cached
            return ImageSet(images, labels, class_names, names, label, md5)

    with open_reader(path) as reader:
        if kind == "official":
            images, labels, names, class_names = _read_cifar_batches(path, reader, limit_per_class)
        else:
            images, labels, names, class_names = _read_cifar_jpeg(path, reader, limit_per_class)
    if cache_file is not None:
        try:
            atomic_write_file(cache_file, lambda fh: np.savez(
                fh, images=images, labels=labels, names=np.asarray(names, dtype=str),
                class_names=np.asarray(class_names, dtype=str)))
        except OSError as err:
            warnings.warn(f"could not cache the decoded images in {cache_file}: {err}",
                          ImageDatasetWarning, stacklevel=3)
    return ImageSet(images, labels, class_names, names, label, md5)


def _read_cache(path: Path):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"].astype(np.int64)
            names, class_names = z["names"].tolist(), z["class_names"].tolist()
        if images.dtype != np.uint8 or images.ndim != 4 or not len(images) == len(labels) == len(names):
            raise ValueError("inconsistent arrays")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        warnings.warn(f"ignoring the unreadable cache {path} ({err}); decoding again", ImageDatasetWarning,
                      stacklevel=4)
        return None
    return images, labels, names, class_names


class _BatchUnpickler(pickle.Unpickler):
    """Only what CIFAR batches hold (dicts, lists, bytes, numbers, numpy arrays): unpickling an
    archive whose md5 was not verified must not run arbitrary code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")


def _unpickle(path: Path, member: str, raw: bytes) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # pickle raises many kinds
        raise ValueError(f"{path}: member {member} is not a readable CIFAR batch ({type(err).__name__}: "
                         f"{err}); the archive is corrupt") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: member {member} holds a {type(obj).__name__}, not a CIFAR batch dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_cifar_batches(path: Path, reader: Reader, limit_per_class: int | None):
    by_base: dict[str, str] = {}
    for name in reader.names():
        by_base.setdefault((name_parts(name) or [name])[-1], name)
    missing = [b for b in CIFAR10_BATCHES if b not in by_base]
    if missing:
        raise ValueError(f"{path}: unknown layout: no member {', '.join(missing)} (expected "
                         "cifar-10-batches-py/data_batch_1..5 and test_batch)")
    wanted = [by_base[b] for b in CIFAR10_BATCHES] + ([by_base["batches.meta"]] if "batches.meta" in by_base else [])
    raw = dict(reader.read(wanted))
    class_names = list(CIFAR10_CLASSES)
    if "batches.meta" in by_base:
        meta = _unpickle(path, by_base["batches.meta"], raw[by_base["batches.meta"]])
        if "label_names" in meta:
            class_names = [_text(n) for n in meta["label_names"]]
    images, labels, names, is_test = [], [], [], []
    for batch in CIFAR10_BATCHES:
        d = _unpickle(path, by_base[batch], raw.pop(by_base[batch]))
        key = next((k for k in ("labels", "fine_labels", "fine") if k in d), None)
        if "data" not in d or key is None:
            raise ValueError(f"{path}: {batch} lacks the 'data' or 'labels' entry (has {sorted(d)})")
        data = np.asarray(d["data"])
        y = np.asarray(d[key], dtype=np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(y):
            raise ValueError(f"{path}: {batch} holds data {data.dtype} {data.shape} and {len(y)} labels; "
                             "expected uint8 (N, 3072) and N labels")
        files = d.get("filenames")
        files = ([_text(f) for f in files] if files is not None and len(files) == len(y)
                 else [str(i) for i in range(len(y))])
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # 1024 R, 1024 G, 1024 B
        labels.append(y)
        names.extend(f"{batch}/{f}" for f in files)
        is_test.append(np.full(len(y), batch == "test_batch"))
    images, labels, is_test = np.concatenate(images), np.concatenate(labels), np.concatenate(is_test)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"{path}: labels outside 0..{len(class_names) - 1} (the archive has "
                         f"{len(class_names)} class names)")
    if limit_per_class is not None:  # the first images of each class in train, then in test
        keep = np.sort(np.concatenate([np.flatnonzero((labels == c) & (is_test == t))[:limit_per_class]
                                       for t in (False, True) for c in np.unique(labels)]))
        images, labels, names = images[keep], labels[keep], [names[i] for i in keep]
    return np.ascontiguousarray(images), labels, names, class_names


def _cifar_jpeg_entries(path: Path, names: list[str]) -> list[tuple[str, str, int]]:
    """(member, split, label) of the JPEG copy, in load order: train then test, classes in the
    official order, files sorted within a class."""
    items = [(n, parts) for n in names if is_image_name(n) for parts in (name_parts(n),) if not is_hidden(parts)]
    if not items:
        raise ValueError(f"{path}: unknown layout: no image members (expected train/<class>/NNNN.jpg)")
    stripped = strip_common_top([p for _, p in items], 3)
    groups: dict[tuple[str, str], list[str]] = {}
    for (name, _), parts in zip(items, stripped):
        if len(parts) != 3 or parts[0] not in CIFAR10_JPEG_SPLITS:
            raise ValueError(f"{path}: unknown layout: member {name} is not train/<class>/<file> or "
                             "test/<class>/<file>")
        if parts[1] not in CIFAR10_CLASSES:
            raise ValueError(f"{path}: member {name} is in class folder {parts[1]!r}, which is not one of "
                             f"the 10 CIFAR-10 classes ({', '.join(CIFAR10_CLASSES)})")
        groups.setdefault((parts[0], parts[1]), []).append(name)
    absent = [f"{s}/{c}" for s in CIFAR10_JPEG_SPLITS for c in CIFAR10_CLASSES if (s, c) not in groups]
    if absent:
        raise ValueError(f"{path}: unknown layout: no images in {', '.join(absent)}")
    return [(name, split, label) for split in CIFAR10_JPEG_SPLITS
            for label, cls in enumerate(CIFAR10_CLASSES) for name in sorted(groups[(split, cls)])]


def cifar10_jpeg_index(root: str | os.PathLike | None = None) -> list[tuple[str, str, int]]:
    """(member, split, label) for every image of ``<root>/cifar10-jpeg.tar.gz`` in the order
    :func:`load_cifar10` loads them, without decoding anything."""
    path = data_root(root) / CIFAR10_JPEG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 JPEG copy not found at {path}: point --data-root / RSGH_DATA "
                                f"at the folder that holds {CIFAR10_JPEG_FILE}")
    with open_reader(path) as reader:
        return _cifar_jpeg_entries(path, reader.names())


def _read_cifar_jpeg(path: Path, reader: Reader, limit_per_class: int | None):
    entries = _cifar_jpeg_entries(path, reader.names())
    if limit_per_class is not None:  # the entries come grouped by (split, label)
        entries = [e for _, group in itertools.groupby(entries, key=lambda e: e[1:])
                   for e in itertools.islice(group, limit_per_class)]
    decoded, _ = decode_members(reader, [e[0] for e in entries], None, skip_bad=False)
    shapes = {a.shape for a in decoded.values()}
    if shapes != {(32, 32, 3)}:
        raise ValueError(f"{path}: expected 32 x 32 images, found shapes {sorted(shapes)[:5]}")
    images = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
    for i, (name, _, _) in enumerate(entries):
        images[i] = decoded.pop(name)
    labels = np.fromiter((e[2] for e in entries), dtype=np.int64, count=len(entries))
    return images, labels, [e[0] for e in entries], list(CIFAR10_CLASSES)
