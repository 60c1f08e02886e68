"""MNIST and Fashion-MNIST: IDX readers with md5 verification, and the official downloads.

Files live in ``<data root>/<MNIST|FashionMNIST>/raw/`` as the official ``*-ubyte.gz`` files or
their uncompressed ``*-ubyte`` twins. The md5 checked is that of the *uncompressed* content,
which identifies the data whatever gzip re-compressed it. On a machine with internet a missing
file is downloaded with pooch (which checks the official archive's md5), unless
``RSGH_OFFLINE=1``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import data_root
from ..files import open_regular
from .archives import MAX_BYTES_VAR, max_member_bytes

# name -> (folder, base url, {file stem: (md5 of the uncompressed file, md5 of the official .gz)})
REGISTRY = {
    "mnist": ("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", "ec29112dd5afa0611ce80d1b7f02629c"),
    }),
    "fashion-mnist": ("FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte": ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte": ("9018921c3c673c538a1fc5bad174d6f9", "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte": ("8181f5470baa50b63fa0f6fddb340f0a", "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte": ("15d484375f8d13e6eb1aabb0c3f46965", "bb300cfdad3c16e7a12a480ee83cd310"),
    }),
}

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(raw: bytes, what: str = "IDX data") -> np.ndarray:
    """Decode the IDX format (LeCun): 2 zero bytes, a type code, the number of dimensions, the
    big-endian uint32 sizes, then the data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{what} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{what} is truncated: its header needs {header} bytes, the file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{what} has {len(raw)} bytes but its header {shape} implies {expected}: "
                         "the file is truncated or corrupt; delete it and download it again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    limit = max_member_bytes()  # the largest official file inflates to 47 MB: a bigger one is refused unread
    try:
        with open_regular(path) as raw_fh, (gzip.GzipFile(fileobj=raw_fh) if path.suffix == ".gz" else raw_fh) as fh:
            raw = fh.read(limit + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a readable gzip file ({err}); delete it and download it again") from None
    if len(raw) > limit:
        raise ValueError(f"{path} holds more than {limit:,} bytes (uncompressed), more than any IDX file of these "
                         f"datasets; replace it with the official file (or raise {MAX_BYTES_VAR})")
    return raw


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(name: str, folder: Path, stem: str) -> Path | None:
    """The official .gz via pooch (checks its md5); None when offline."""
    import pooch

    _, url, files = REGISTRY[name]
    try:
        return Path(pooch.retrieve(url + stem + ".gz", known_hash=f"md5:{files[stem][1]}",
                                   fname=stem + ".gz", path=folder, progressbar=False))
    except Exception as err:  # any network failure: fall through to the clear message
        if "md5" in str(err).lower() or "hash" in str(err).lower():
            raise ValueError(f"downloaded {stem}.gz does not match the official md5: {err}") from None
        return None


def locate(name: str, root: Path, download: bool = True) -> dict[str, Path]:
    """Paths of all files of a dataset, downloading missing ones when possible (not with
    ``download=False`` or ``RSGH_OFFLINE=1``); one error listing everything still missing."""
    folder_name, url, files = REGISTRY[name]
    folder = root / folder_name / "raw"
    found = {stem: _find(folder, stem) for stem in files}
    if download and not os.environ.get("RSGH_OFFLINE"):
        found = {stem: path or _download(name, folder, stem) for stem, path in found.items()}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"{name}: missing {', '.join(m + '.gz' for m in missing)} in {folder}. Put the official files "
            f"there (from {url}), or point --data-root / RSGH_DATA at a folder holding "
            f"{folder_name}/raw/ (on these machines: ../shared/data)")
    return found


def read_idx_file(name: str, stem: str, root: Path, download: bool = True) -> np.ndarray:
    """One file of a dataset, decoded, after checking the md5 of its uncompressed content."""
    path = _find(root / REGISTRY[name][0] / "raw", stem) or locate(name, root, download)[stem]
    raw = _read_bytes(path)
    expected = REGISTRY[name][2][stem][0]
    digest = hashlib.md5(raw).hexdigest()
    if digest != expected:
        raise ValueError(f"{path}: md5 of the uncompressed content is {digest}, the official file has "
                         f"{expected}; the file is corrupt or not the official {stem}")
    return parse_idx(raw, str(path))


@dataclass
class ImageData:
    train_x: np.ndarray  # float32 (N, D) in [0, 1]
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # human label shown with results
    checksums: dict  # file -> md5 of the uncompressed content


def load_mnist_like(name: str = "mnist", root: str | Path | None = None, download: bool = True) -> ImageData:
    """MNIST or Fashion-MNIST as flat float32 pixels in [0, 1] (the SPEC's MNIST features)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    root = data_root(root)
    locate(name, root, download)  # every missing file named at once
    arrays = {stem: read_idx_file(name, stem, root, download=False) for stem in REGISTRY[name][2]}

    def images(stem):
        a = arrays[stem]
        if a.ndim != 3:
            raise ValueError(f"{stem}: expected a 3-D image array, got shape {a.shape}")
        return (a.reshape(len(a), -1).astype(np.float32) / 255.0)

    out = ImageData(images("train-images-idx3-ubyte"), arrays["train-labels-idx1-ubyte"].astype(np.int64),
                    images("t10k-images-idx3-ubyte"), arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
                    source={"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[name],
                    checksums={stem: REGISTRY[name][2][stem][0] for stem in REGISTRY[name][2]})
    for x, y, split in ((out.train_x, out.train_y, "train"), (out.test_x, out.test_y, "test")):
        if len(x) != len(y):
            raise ValueError(f"{name} {split}: {len(x)} images but {len(y)} labels")
    return out
