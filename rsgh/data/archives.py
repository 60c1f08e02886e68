"""Reading labelled image collections in place: folders and archives (zip, tar in any compression),
member names, image decoding, and the md5 memo of large archives.

Everything is read straight from the archives (never unpacked: the data root may be read-only).
md5 digests of archives are remembered in ``cache_dir()/md5-memo.json`` keyed by (path, device,
inode, size, mtime, ctime), so a large archive is hashed once, and again whenever it was rewritten (a
restored mtime does not restore the ctime).

Received archives cannot exhaust memory: a member (or file) whose size exceeds
``$RSGH_MAX_IMAGE_BYTES`` (default 256 MiB, far above any real image) is refused before it is read
(a tar's headers as they are scanned, before the scan skips a member's data), and never more than
that is read even when its header lies; decoded pixels are bounded by the bytes read
(``rsgh.data.decoding``). Only regular files are read: a FIFO, socket or device is skipped or refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..files import atomic_write_file, is_regular, open_regular, printable
from ..paths import cache_dir, env_positive_int

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm")


class ImageDatasetWarning(UserWarning):
    """Something was skipped or is not the official data; the load went on."""


def where_to_put(what: str, path: Path, url: str) -> str:
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
    checksum: str  # md5 of the archive, or "sha256:<hex>" of a folder's image files (names, sizes, bytes)

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


def cache_folder() -> Path | None:
    try:
        return cache_dir()
    except OSError as err:
        warnings.warn(f"no writable cache folder ({err}); set RSGH_CACHE to one", ImageDatasetWarning,
                      stacklevel=3)
        return None


def _md5_key(path: Path) -> str:
    """What a file's md5 is remembered by: its path, device, inode, size, mtime and ctime. A tool that
    restores an mtime (``touch -r``, ``rsync -t``, ``tar x``) cannot restore the ctime, which the kernel
    sets on every change of the file's content or metadata, so a rewritten file is hashed again."""
    st = path.stat()
    return f"{os.path.realpath(path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def file_md5(path: str | os.PathLike, memo: bool = True) -> str:
    """md5 of a file; remembered in ``cache_dir()/md5-memo.json`` keyed by :func:`_md5_key`."""
    path = Path(path)
    key = _md5_key(path)
    folder = cache_folder() if memo else None
    memo_path = folder / "md5-memo.json" if folder else None
    if memo_path is not None:
        known = _read_json_dict(memo_path)
        if isinstance(known.get(key), str):
            return known[key]
    digest = hashlib.md5()
    with open_regular(path) as fh:
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


class CorruptArchive(ValueError):
    pass


MAX_BYTES_VAR = "RSGH_MAX_IMAGE_BYTES"
DEFAULT_MAX_BYTES = 256 << 20  # no real image file comes near it; a decompression bomb would


def max_member_bytes() -> int:
    """The largest member (image file) read, in bytes: ``$RSGH_MAX_IMAGE_BYTES`` or 256 MiB."""
    return env_positive_int(MAX_BYTES_VAR, DEFAULT_MAX_BYTES)


def _too_large(path: Path, name: str, size: int, limit: int) -> ValueError:
    return ValueError(f"{path}: member {name} is {size:,} bytes uncompressed, more than the limit of {limit:,} "
                      f"bytes for one image (a decompression bomb?); if it is a genuine image, raise the limit "
                      f"with {MAX_BYTES_VAR}=<bytes>")


def _bounded_read(fh, path: Path, name: str, declared: int, limit: int) -> bytes:
    """A member's bytes, refused before reading when it declares more than ``limit`` and never read
    past ``limit`` (a header that lies about the size cannot exhaust memory)."""
    if declared > limit:
        raise _too_large(path, name, declared, limit)
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise _too_large(path, name, len(data), limit)
    return data


def read_file(path: Path, what: str = "image file") -> bytes:
    """The bytes of one regular file, refused when larger than :func:`max_member_bytes`."""
    with open_regular(path, what) as fh:
        return _bounded_read(fh, path.parent, path.name, os.fstat(fh.fileno()).st_size, max_member_bytes())


def _corrupt(path: Path, err) -> CorruptArchive:
    if isinstance(err, tarfile.ReadError) and err.__cause__ is not None:
        err = err.__cause__  # "not a gzip file" from a truncated one: say what went wrong
    return CorruptArchive(f"{path}: the archive is truncated or corrupt ({type(err).__name__}: {err}); "
                           "delete it and download / copy it again")


class Reader:
    """Regular files of a folder or archive: ``names()`` (posix paths, in storage order) and
    ``read(names)`` -> (name, bytes) pairs (in storage order for a tar). A member larger than
    :func:`max_member_bytes` is refused before it is read."""

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


class _FolderReader(Reader):
    """The regular files of a folder (a link is followed to a regular file); a FIFO, a socket or a device
    is skipped with a warning, never opened (a FIFO named ``x.png`` would block a read forever)."""

    def names(self):
        out, special = [], []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.path)
            for f in sorted(filenames):
                (out if is_regular(Path(dirpath) / f) else special).append((rel / f).as_posix())
        if special:
            shown = ", ".join(map(printable, special[:5])) + (", ..." if len(special) > 5 else "")
            warnings.warn(f"{self.path}: skipped {len(special)} entries that are not regular files (FIFOs, sockets, "
                          f"devices or broken links): {shown}", ImageDatasetWarning, stacklevel=3)
        return out

    def read(self, wanted):
        limit = max_member_bytes()
        for name in wanted:
            with open_regular(self.path / name, "image file") as fh:
                data = _bounded_read(fh, self.path, name, os.fstat(fh.fileno()).st_size, limit)
            yield name, data


class _ZipReader(Reader):
    def __init__(self, path):
        super().__init__(path)
        try:
            self.zf = zipfile.ZipFile(path)
        except _ARCHIVE_ERRORS as err:
            raise _corrupt(path, err) from None

    def names(self):
        return [i.filename for i in self.zf.infolist() if not i.is_dir()]

    def read(self, wanted):
        limit = max_member_bytes()
        for name in wanted:
            try:
                info = self.zf.getinfo(name)
                self._check_readable(info)
                with self.zf.open(info) as fh:
                    data = _bounded_read(fh, self.path, name, info.file_size, limit)
            except _ARCHIVE_ERRORS as err:
                raise _corrupt(self.path, err) from None
            yield name, data

    def _check_readable(self, info: zipfile.ZipInfo) -> None:
        """A clear error for a member that zipfile cannot read: encrypted, or of another compression."""
        if info.flag_bits & 0x1:
            raise ValueError(f"{self.path}: member {info.filename} is encrypted (password-protected); rsgh reads no "
                             "encrypted archives: give an unencrypted copy")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
            method = zipfile.compressor_names.get(info.compress_type, f"method {info.compress_type}")
            raise ValueError(f"{self.path}: member {info.filename} is compressed with {method}, which Python's zipfile "
                             "does not read; repack the archive with deflate (zip -r) or as a .tar.gz")

    def close(self):
        self.zf.close()


class _TarReader(Reader):
    """A tar in any of tarfile's compressions, indexed once by ``tarfile``; members are read in
    storage order, so a compressed tar is decompressed once for the index and once for the data."""

    def __init__(self, path, mode: str):
        super().__init__(path)
        self.tf = None
        try:
            self.tf = tarfile.open(path, mode)
            self.members = self._scan()
            # tarfile takes a missing or damaged header for the end of the archive: insist on the
            # end-of-archive block, then read to the end so that gzip checks its CRC (at most TRAILING bytes)
            self.tf.fileobj.seek(self.tf.offset)
            if self.tf.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
                raise EOFError("no end-of-archive marker after the last member")
            if len(self.tf.fileobj.read(self.TRAILING + 1)) > self.TRAILING:
                raise EOFError(f"more than {self.TRAILING:,} bytes after the end of the archive")
        except _ARCHIVE_ERRORS as err:
            self.close()
            raise _corrupt(path, err) from None
        except BaseException:
            self.close()
            raise

    TRAILING = 16 << 20  # tar pads to its record size (10 KiB by default, 1 MiB at the largest blocking factor)

    def _scan(self) -> dict:
        """The regular members by name, each header's declared size checked as it is read: a member over
        the limit is refused before the scan skips over its data (decompressing it, for a .tar.bz2)."""
        limit, members = max_member_bytes(), {}
        for m in self.tf:
            if m.size > limit:
                raise _too_large(self.path, m.name, m.size, limit)
            if m.isfile():
                members[m.name] = m
        return members

    def names(self):
        return list(self.members)

    def read(self, wanted):
        limit = max_member_bytes()
        for member in sorted((self.members[n] for n in wanted), key=lambda m: m.offset_data):
            try:
                data = _bounded_read(self.tf.extractfile(member), self.path, member.name, member.size, limit)
            except _ARCHIVE_ERRORS as err:
                raise _corrupt(self.path, err) from None
            yield member.name, data

    def close(self):
        if self.tf is not None:
            self.tf.close()


def open_reader(path: Path) -> Reader:
    """A reader for a folder, a zip, or a tar (plain, gz, bz2, xz)."""
    if path.is_dir():
        return _FolderReader(path)
    with open_regular(path, "archive") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ValueError(f"{path} is empty (an interrupted download?); delete it and get it again")
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


def name_parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") for p in parts) or "__MACOSX" in parts


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def strip_common_top(parts_list: list[list[str]], depth: int) -> list[list[str]]:
    """Drop leading folders shared by every entry while entries are deeper than ``depth``."""
    while parts_list and all(len(p) > depth for p in parts_list) and len({p[0] for p in parts_list}) == 1:
        parts_list = [p[1:] for p in parts_list]
    return parts_list


# ----------------------------------------------------------------------------------------------
# Decoding (rsgh.data.decoding), here for the modules that import it from here

from .decoding import (check_image_size, decode_image, decode_members, image_mode, no_bombs,  # noqa: E402,F401
                       pixel_bytes)


def warn_skipped(path: Path, bad: list[str], what: str) -> None:
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} {what}: {shown}", ImageDatasetWarning, stacklevel=3)


def stack_images(images: list[np.ndarray]) -> np.ndarray | list:
    if images and len({im.shape for im in images}) == 1:
        return np.stack(images)
    return images
