"""Labelled image collections for the retrieval embodiments (E2 CIFAR-10, E3 Caltech-256), and
their query / database splits.

Everything is read straight from the archives (never unpacked: the data root may be read-only):

- :func:`load_cifar10` -- the official ``cifar-10-python.tar.gz`` (pickled batches) or, failing
  that, the lossy JPEG copy ``cifar10-jpeg.tar.gz``; results from the copy are labelled
  ``"CIFAR-10 (JPEG copy)"``, never plain ``"CIFAR-10"``. Decoded arrays are cached under
  :func:`rsgh.paths.cache_dir`, keyed by the archive md5.
- :func:`load_caltech256` -- the official ``256_ObjectCategories.tar`` (or a synthetic archive in
  its layout, labelled as not official).
- :func:`load_image_folder` -- any ``root/<class>/<image>`` folder or .tar/.tar.gz/.zip of one.
- :func:`retrieval_split` -- the SPEC's query / database split (the database is also the
  training set), with :meth:`Split.save` / :meth:`Split.load` for provenance.

md5 digests of archives are remembered in ``cache_dir()/md5-memo.json`` keyed by
(path, size, mtime), so a large archive is hashed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import pickle
import re
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .files import atomic_write_file
from .paths import cache_dir, data_root

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

CALTECH256_FILE = "256_ObjectCategories.tar"
CALTECH256_URL = "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar"
CALTECH256_MD5 = "67b4f42ca05d46448c6bb8ecd2220f6d"
CALTECH256_SIZE = 1_183_006_720

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm")
_CACHE_VERSION = 1


class ImageDatasetWarning(UserWarning):
    """Something was skipped or is not the official data; the load went on."""


def _where_to_put(what: str, path: Path, url: str) -> str:
    return (f"{what} not found at {path}: download it from {url} into that folder, or point "
            f"--data-root / RSGH_DATA at the folder that holds it")


# ----------------------------------------------------------------------------------------------
# The result


@dataclass
class ImageSet:
    """Labelled images. ``images`` is uint8 (N, H, W, 3) when all images share a size, otherwise a
    list of uint8 (H_i, W_i, 3) arrays. ``source`` is the label to show with any result."""

    images: np.ndarray | list
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    names: list[str]  # member / file name of each image
    source: str
    checksum: str  # md5 of the archive, or "filelist:<md5>" of a folder's file list

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "ImageSet":
        """The images at ``indices`` (same classes, source and checksum)."""
        idx = np.asarray(indices, dtype=np.int64)
        images = (self.images[idx] if isinstance(self.images, np.ndarray)
                  else [self.images[i] for i in idx])
        return ImageSet(images, self.labels[idx], list(self.class_names), [self.names[i] for i in idx],
                        self.source, self.checksum)


# ----------------------------------------------------------------------------------------------
# Files: the md5 memo


def _cache_folder() -> Path | None:
    try:
        return cache_dir()
    except OSError as err:
        warnings.warn(f"no writable cache folder ({err}); set RSGH_CACHE to one", ImageDatasetWarning,
                      stacklevel=3)
        return None


def _md5_key(path: Path) -> str:
    st = path.stat()
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


def file_md5(path: str | os.PathLike, memo: bool = True) -> str:
    """md5 of a file; remembered in ``cache_dir()/md5-memo.json`` keyed by (path, size, mtime)."""
    path = Path(path)
    key = _md5_key(path)
    folder = _cache_folder() if memo else None
    memo_path = folder / "md5-memo.json" if folder else None
    if memo_path is not None:
        known = _read_json_dict(memo_path)
        if isinstance(known.get(key), str):
            return known[key]
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    md5 = digest.hexdigest()
    if memo_path is not None:
        known = _read_json_dict(memo_path)  # again: another process may have added entries
        known[key] = md5
        with contextlib.suppress(OSError):
            atomic_write_file(memo_path, lambda fh: fh.write(json.dumps(known, indent=0).encode()))
    return md5


def _read_json_dict(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------------------------
# Archive readers: a folder, a zip, or a tar (plain, gz, bz2, xz), read in place

try:
    from lzma import LZMAError
except ImportError:  # a Python without lzma reads no .xz
    LZMAError = OSError

# what tarfile, zipfile and the decompressors raise for a truncated or corrupt archive
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, LZMAError)


class _CorruptArchive(ValueError):
    pass


def _corrupt(path: Path, err) -> _CorruptArchive:
    if isinstance(err, tarfile.ReadError) and err.__cause__ is not None:
        err = err.__cause__  # "not a gzip file" from a truncated one: say what went wrong
    return _CorruptArchive(f"{path}: the archive is truncated or corrupt ({type(err).__name__}: {err}); "
                           "delete it and download / copy it again")


class _Reader:
    """Regular files of a folder or archive: ``names()`` (posix paths, in storage order) and
    ``read(names)`` -> (name, bytes) pairs (in storage order for a tar)."""

    def __init__(self, path: Path):
        self.path = path

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, wanted: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _FolderReader(_Reader):
    def names(self):
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.path)
            out.extend((rel / f).as_posix() for f in sorted(filenames))
        return out

    def read(self, wanted):
        for name in wanted:
            yield name, (self.path / name).read_bytes()


class _ZipReader(_Reader):
    def __init__(self, path):
        super().__init__(path)
        try:
            self.zf = zipfile.ZipFile(path)
        except _ARCHIVE_ERRORS as err:
            raise _corrupt(path, err) from None

    def names(self):
        return [i.filename for i in self.zf.infolist() if not i.is_dir()]

    def read(self, wanted):
        for name in wanted:
            try:
                yield name, self.zf.read(name)
            except _ARCHIVE_ERRORS as err:
                raise _corrupt(self.path, err) from None

    def close(self):
        self.zf.close()


class _TarReader(_Reader):
    """A tar in any of tarfile's compressions, indexed once by ``tarfile``; members are read in
    storage order, so a compressed tar is decompressed once for the index and once for the data."""

    def __init__(self, path, mode: str):
        super().__init__(path)
        self.tf = None
        try:
            self.tf = tarfile.open(path, mode)
            self.members = {m.name: m for m in self.tf.getmembers() if m.isfile()}
            # tarfile takes a missing or damaged header for the end of the archive: insist on the
            # end-of-archive block, then read to the end so that gzip checks its CRC
            self.tf.fileobj.seek(self.tf.offset)
            if self.tf.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
                raise EOFError("no end-of-archive marker after the last member")
            while self.tf.fileobj.read(8 << 20):
                pass
        except _ARCHIVE_ERRORS as err:
            self.close()
            raise _corrupt(path, err) from None

    def names(self):
        return list(self.members)

    def read(self, wanted):
        for member in sorted((self.members[n] for n in wanted), key=lambda m: m.offset_data):
            try:
                yield member.name, self.tf.extractfile(member).read()
            except _ARCHIVE_ERRORS as err:
                raise _corrupt(self.path, err) from None

    def close(self):
        if self.tf is not None:
            self.tf.close()


def _open_reader(path: Path) -> _Reader:
    """A reader for a folder, a zip, or a tar (plain, gz, bz2, xz)."""
    if path.is_dir():
        return _FolderReader(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (an interrupted download?); delete it and get it again")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _ZipReader(path)
    for magic, mode in ((b"\x1f\x8b", "r:gz"), (b"BZh", "r:bz2"), (b"\xfd7zXZ\x00", "r:xz")):
        if head.startswith(magic):
            return _TarReader(path, mode)
    if head[257:262] == b"ustar" or path.suffix.lower() == ".tar":
        return _TarReader(path, "r:")
    raise ValueError(f"{path}: unknown archive type (not a folder, .zip, .tar, .tar.gz/.tgz, .tar.bz2 "
                     "or .tar.xz)")


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") for p in parts) or "__MACOSX" in parts


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _strip_common_top(parts_list: list[list[str]], depth: int) -> list[list[str]]:
    """Drop leading folders shared by every entry while entries are deeper than ``depth``."""
    while parts_list and all(len(p) > depth for p in parts_list) and len({p[0] for p in parts_list}) == 1:
        parts_list = [p[1:] for p in parts_list]
    return parts_list


# ----------------------------------------------------------------------------------------------
# Decoding


_JPEG_EXT = (".jpg", ".jpeg")


def decode_image(data: bytes, name: str = "", image_size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, 3) from encoded bytes: grey, palette, RGBA (alpha dropped), CMYK, 16-bit grey
    converted to RGB; optionally resized to ``image_size = (h, w)`` with PIL bilinear. Raises
    ``OSError`` / ``ValueError`` (from PIL) for undecodable data."""
    from PIL import Image

    formats = ["JPEG"] if name.lower().endswith(_JPEG_EXT) else None
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except OSError:
        if formats is None:
            raise
        im = Image.open(io.BytesIO(data))  # a misnamed file
    with im:
        im.load()
        if im.mode.startswith("I;16"):
            im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
        elif im.mode in ("I", "F"):
            im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L")
        elif im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        elif im.mode in ("PA", "La"):
            im = im.convert("RGBA")
        if im.mode != "RGB":
            im = im.convert("RGB")
        if image_size is not None:
            h, w = image_size
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
        return np.array(im, dtype=np.uint8)


def _check_image_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def _decode_members(reader: _Reader, members: Sequence[str], image_size, skip_bad: bool,
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode ``members``; undecodable ones are returned in a list when ``skip_bad``, else raise."""
    decoded, bad = {}, []
    for name, data in reader.read(members):
        try:
            decoded[name] = decode_image(data, name, image_size)
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, EOFError, ...
            if not skip_bad:
                raise ValueError(f"{reader.path}: member {name} is not a decodable image ({err}); "
                                 "the archive is corrupt") from None
            bad.append(name)
    return decoded, bad


def _warn_skipped(path: Path, bad: list[str], what: str) -> None:
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} {what}: {shown}", ImageDatasetWarning, stacklevel=3)


def _stack(images: list[np.ndarray]) -> np.ndarray | list:
    if images and len({im.shape for im in images}) == 1:
        return np.stack(images)
    return images


# ----------------------------------------------------------------------------------------------
# CIFAR-10


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
                + " (or pass verify=False for a custom archive)")
        warnings.warn(f"{path} is not {what} (md5 {md5}, expected {expected})", ImageDatasetWarning,
                      stacklevel=3)
    notes = (([] if kind == "official" else ["JPEG copy"])
             + ([] if md5 == expected else [f"non-official archive md5 {md5[:8]}"]))
    label = "CIFAR-10" + (f" ({', '.join(notes)})" if notes else "")

    cache_file = None
    if use_cache and limit_per_class is None and (folder := _cache_folder()) is not None:
        cache_file = folder / f"cifar10-{kind}-{md5}-v{_CACHE_VERSION}.npz"
        cached = _read_cache(cache_file)
        if cached is not None:
            images, labels, names, class_names = cached
            return ImageSet(images, labels, class_names, names, label, md5)

    with _open_reader(path) as reader:
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


def _read_cifar_batches(path: Path, reader: _Reader, limit_per_class: int | None):
    by_base: dict[str, str] = {}
    for name in reader.names():
        by_base.setdefault((_parts(name) or [name])[-1], name)
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
    items = [(n, parts) for n in names if _is_image_name(n) for parts in (_parts(n),) if not _is_hidden(parts)]
    if not items:
        raise ValueError(f"{path}: unknown layout: no image members (expected train/<class>/NNNN.jpg)")
    stripped = _strip_common_top([p for _, p in items], 3)
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
    with _open_reader(path) as reader:
        return _cifar_jpeg_entries(path, reader.names())


def _read_cifar_jpeg(path: Path, reader: _Reader, limit_per_class: int | None):
    entries = _cifar_jpeg_entries(path, reader.names())
    if limit_per_class is not None:  # the entries come grouped by (split, label)
        entries = [e for _, group in itertools.groupby(entries, key=lambda e: e[1:])
                   for e in itertools.islice(group, limit_per_class)]
    decoded, _ = _decode_members(reader, [e[0] for e in entries], None, skip_bad=False)
    shapes = {a.shape for a in decoded.values()}
    if shapes != {(32, 32, 3)}:
        raise ValueError(f"{path}: expected 32 x 32 images, found shapes {sorted(shapes)[:5]}")
    images = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
    for i, (name, _, _) in enumerate(entries):
        images[i] = decoded.pop(name)
    labels = np.fromiter((e[2] for e in entries), dtype=np.int64, count=len(entries))
    return images, labels, [e[0] for e in entries], list(CIFAR10_CLASSES)


# ----------------------------------------------------------------------------------------------
# Caltech-256

_CALTECH_FOLDER = re.compile(r"^(\d+)\.(.+)$")


def load_caltech256(root: str | os.PathLike | None = None, include_clutter: bool = False,
                    image_size: tuple[int, int] | None = None) -> ImageSet:
    """Caltech-256 from ``<root>/256_ObjectCategories.tar`` (folders ``NNN.name/`` inside
    ``256_ObjectCategories/``), read in place. Classes in folder-number order, labels 0..;
    ``257.clutter`` only with ``include_clutter``. Images converted to RGB; ``image_size = (h, w)``
    resizes with PIL bilinear (SPEC: 128 x 128 for GIST), otherwise a list of arrays of varying size
    is returned (memory-hungry for the full set). The md5 is checked when the file has the official
    size; any other archive is loaded as a custom one, with a warning and a ``source`` that says so.
    Non-image files are ignored; undecodable images are skipped with a warning."""
    image_size = _check_image_size(image_size)
    path = data_root(root) / CALTECH256_FILE
    if not path.is_file():
        raise FileNotFoundError(_where_to_put("Caltech-256 archive " + CALTECH256_FILE, path, CALTECH256_URL)
                                + f" (1.2 GB, md5 {CALTECH256_MD5}; it is not downloaded automatically)")
    md5 = file_md5(path)
    size = path.stat().st_size
    official = size == CALTECH256_SIZE
    if official and md5 != CALTECH256_MD5:
        raise ValueError(f"{path}: md5 is {md5}, expected {CALTECH256_MD5} (the official archive has this "
                         f"size); the file is corrupt: delete it and download it again from {CALTECH256_URL}")
    if not official:
        warnings.warn(f"{path} is not the official Caltech-256 archive ({size} bytes, official "
                      f"{CALTECH256_SIZE}); loading it as a custom archive in the same layout (md5 {md5})",
                      ImageDatasetWarning, stacklevel=2)
    with _open_reader(path) as reader:
        names = [n for n in reader.names() if not _is_hidden(_parts(n))]
        images_named = [n for n in names if _is_image_name(n)]
        if not images_named:
            raise ValueError(f"{path}: unknown layout: no images (expected "
                             "256_ObjectCategories/NNN.name/NNN_NNNN.jpg)")
        stripped = _strip_common_top([_parts(n) for n in images_named], 2)
        folders: dict[str, tuple[int, str]] = {}
        members: dict[str, list[str]] = {}
        for name, parts in zip(images_named, stripped):
            match = _CALTECH_FOLDER.match(parts[0]) if len(parts) == 2 else None
            if match is None:
                raise ValueError(f"{path}: unknown layout: member {name} is not "
                                 "256_ObjectCategories/NNN.name/<image>")
            folders[parts[0]] = (int(match.group(1)), match.group(2))
            members.setdefault(parts[0], []).append(name)
        numbers = [num for num, _ in folders.values()]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"{path}: unknown layout: two class folders share a number")
        ordered = sorted(folders, key=lambda f: folders[f][0])
        ordered = [f for f in ordered if include_clutter or folders[f][1] != "clutter"]
        class_names = [folders[f][1] for f in ordered]
        wanted = [(n, label) for label, f in enumerate(ordered) for n in sorted(members[f])]
        decoded, bad = _decode_members(reader, [n for n, _ in wanted], image_size, skip_bad=True)
    _warn_skipped(path, bad, "undecodable images")
    kept = [(n, label) for n, label in wanted if n in decoded]
    extras = ((["with clutter"] if include_clutter else [])
              + ([] if official else [f"non-official archive md5 {md5[:8]}"]))
    source = "Caltech-256" + (f" ({', '.join(extras)})" if extras else "")
    return ImageSet(_stack([decoded.pop(n) for n, _ in kept]),
                    np.fromiter((label for _, label in kept), dtype=np.int64, count=len(kept)),
                    class_names, [n for n, _ in kept], source, md5)


# ----------------------------------------------------------------------------------------------
# Any image folder


def load_image_folder(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> ImageSet:
    """Images in ``path/<class>/<image>``, or in a .tar / .tar.gz / .zip of that layout (a single
    top folder is allowed). Classes sorted by name (labels 0..), files sorted within a class. Any
    format PIL decodes; grey / RGBA / palette / CMYK converted to RGB. Undecodable files are
    skipped with a warning; files without an image extension are ignored with a warning. Mixed
    sizes give a list of arrays unless ``image_size = (h, w)`` is given."""
    image_size = _check_image_size(image_size)
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image folder or archive {path} does not exist: give a folder "
                                "<root>/<class>/<image> or a .tar/.tar.gz/.zip of one")
    with _open_reader(path) as reader:
        names = [n for n in reader.names() if not _is_hidden(_parts(n))]
        images_named = [n for n in names if _is_image_name(n)]
        others = [n for n in names if not _is_image_name(n)]
        if not images_named:
            raise ValueError(f"{path}: no image files (by extension: {', '.join(IMAGE_EXTENSIONS)}); "
                             "expected the layout <root>/<class>/<image>")
        stripped = _strip_common_top([_parts(n) for n in images_named], 2)
        members: dict[str, list[str]] = {}
        for name, parts in zip(images_named, stripped):
            if len(parts) != 2:
                raise ValueError(f"{path}: unknown layout: image {name} is not at <class>/<image> (expected "
                                 "every image one folder deep, the folder naming its class)")
            members.setdefault(parts[0], []).append(name)
        class_names = sorted(members)
        wanted = [(n, label) for label, c in enumerate(class_names) for n in sorted(members[c])]
        decoded, bad = _decode_members(reader, [n for n, _ in wanted], image_size, skip_bad=True)
    if others:
        _warn_skipped(path, others, "files without an image extension")
    _warn_skipped(path, bad, "undecodable files")
    kept = [(n, label) for n, label in wanted if n in decoded]
    if not kept:
        raise ValueError(f"{path}: none of the {len(wanted)} image files could be decoded")
    if path.is_dir():
        listing = "".join(f"{n}\t{(path / n).stat().st_size}\n" for n, _ in wanted)
        checksum = "filelist:" + hashlib.md5(listing.encode()).hexdigest()
    else:
        checksum = file_md5(path)
    return ImageSet(_stack([decoded.pop(n) for n, _ in kept]),
                    np.fromiter((label for _, label in kept), dtype=np.int64, count=len(kept)),
                    class_names, [n for n, _ in kept], f"image folder {path}", checksum)


# ----------------------------------------------------------------------------------------------
# Query / database splits


def _labels_md5(labels: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def _as_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64)


@dataclass
class Split:
    """Query and database indices (int64, sorted, disjoint, together 0..n-1). The database is also
    the training set (SPEC section 4)."""

    query: np.ndarray
    database: np.ndarray
    n: int
    seed: int
    per_class: int | None = None
    n_queries: int | None = None
    labels_md5: str | None = None  # of the labels it was drawn from, to catch a mismatched dataset
    format: str = field(default="rsgh-retrieval-split-v1", repr=False)

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
        doc = {"format": self.format, "n": int(self.n), "seed": int(self.seed),
               "per_class": self.per_class, "n_queries": self.n_queries, "labels_md5": self.labels_md5,
               "query": [int(i) for i in self.query], "database": [int(i) for i in self.database]}
        atomic_write_file(Path(path), lambda fh: fh.write(json.dumps(doc, separators=(",", ":")).encode()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != "rsgh-retrieval-split-v1":
                raise ValueError(f"format is {doc.get('format')!r}")
            split = cls(np.asarray(doc["query"], dtype=np.int64), np.asarray(doc["database"], dtype=np.int64),
                        int(doc["n"]), int(doc["seed"]), doc.get("per_class"), doc.get("n_queries"),
                        doc.get("labels_md5"))
        except FileNotFoundError:
            raise FileNotFoundError(f"split file {path} does not exist") from None
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a saved rsgh retrieval split ({err})") from None
        joined = np.concatenate([split.query, split.database])
        if (len(joined) != split.n or not np.array_equal(np.sort(joined), np.arange(split.n))
                or np.any(np.diff(split.query) <= 0) or np.any(np.diff(split.database) <= 0)):
            raise ValueError(f"{path}: query and database are not sorted disjoint sets covering 0..{split.n - 1}")
        return split


def retrieval_split(labels, *, per_class: int | None = None, n_queries: int | None = None,
                    seed: int = 0) -> Split:
    """Queries drawn with ``numpy.random.default_rng(seed)``: ``per_class`` from every class
    (CIFAR-10: 100), or ``n_queries`` uniformly at random (Caltech-256: 1,000); the database (and
    training set) is everything else."""
    labels = _as_labels(labels)
    if (per_class is None) == (n_queries is None):
        raise ValueError("give exactly one of per_class (CIFAR-10: 100) or n_queries (Caltech-256: 1000)")
    rng = np.random.default_rng(seed)
    n = len(labels)
    if per_class is not None:
        if int(per_class) != per_class or per_class < 1:
            raise ValueError(f"per_class must be a positive integer, got {per_class}")
        per_class = int(per_class)
        classes, counts = np.unique(labels, return_counts=True)
        small = [(int(c), int(k)) for c, k in zip(classes, counts) if k < per_class + 1]
        if small:
            shown = ", ".join(f"class {c} has {k}" for c, k in small[:5])
            raise ValueError(f"per_class={per_class} needs at least {per_class + 1} images in every class "
                             f"(one left for the database): {shown}")
        query = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                for c in classes])
    else:
        if int(n_queries) != n_queries or n_queries < 1:
            raise ValueError(f"n_queries must be a positive integer, got {n_queries}")
        n_queries = int(n_queries)
        if n_queries >= n:
            raise ValueError(f"n_queries={n_queries} must be smaller than the number of images ({n})")
        query = rng.choice(n, n_queries, replace=False)
    query = np.sort(query).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[query] = False
    return Split(query, np.flatnonzero(mask).astype(np.int64), n, int(seed), per_class, n_queries,
                 _labels_md5(labels))
