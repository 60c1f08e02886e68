"""Reading an index's files as received from someone else: the manifest checked field by field, the
shards' codes read from the faiss file format by hand, the name lists bounded.

What an index may cost is stated, and checked before anything is allocated:

- ``manifest.json``: at most 16 MiB; every field of the expected type; the shards named
  ``shard-NNNNN.faissbin`` / ``shard-NNNNN.csv`` by their position (so every path of an index lies
  inside it: ``../other/shard`` or ``/etc/passwd`` is refused before anything is opened);
- a shard's codes: the faiss ``IndexBinaryFlat`` header (``IBxF``, dimension, code size, count) must
  match the manifest, and the file must be exactly the size they imply: its codes are then read as
  they lie in the file (never through faiss, whose reader allocates what a header declares);
- a shard's list: one row per code, each field at most 4,096 characters;
- no file of an index is a symbolic link.
"""

from __future__ import annotations

import csv
import json
import os
import re
import struct
from pathlib import Path

import numpy as np

from ..files import open_regular
from .encoder import SearchError

FORMAT = "rsgh-hash-index-v1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_FIELD = 4096  # characters of a name or label in a shard's list
HEADER = struct.Struct("<4siiqBiQ")  # fourcc, d, code_size, ntotal, is_trained, metric, bytes of the codes
_SHA256 = re.compile(r"[0-9a-f]{64}")


def shard_files(i: int) -> tuple[str, str]:
    return f"shard-{i:05d}.faissbin", f"shard-{i:05d}.csv"


def read_manifest(path: Path) -> dict | None:
    """The manifest of the index folder ``path`` (None when it has none), checked field by field."""
    file = path / MANIFEST
    if not file.exists() and not file.is_symlink():
        return None
    try:
        own_file(file)
        with open_regular(file, "manifest") as fh:
            text = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES:,} bytes")
        manifest = json.loads(text.decode("utf-8"))
    except (OSError, ValueError) as err:
        raise SearchError(f"{file} is not a readable rsgh index manifest ({type(err).__name__}: {err})") from None
    check_manifest(manifest, file)
    return manifest


def _field(manifest, name: str, kind, where: Path, low: int | None = None, high: int | None = None):
    value = manifest.get(name) if isinstance(manifest, dict) else None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if ok and low is not None:
        ok = low <= value <= high
    if not ok:
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        bounds = f" in {low}..{high}" if low is not None else ""
        raise SearchError(f"{where} is not a valid rsgh index manifest: field {name!r} should be a {want}{bounds}, "
                          f"not {_shown(value)}; the index is damaged: rebuild it")
    return value


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_manifest(manifest, file: Path) -> None:
    """A SearchError naming the first field of ``manifest`` that is missing or of the wrong type or range."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise SearchError(f"{file} is not a readable rsgh index manifest (format is {_shown(found)}, expected "
                          f"{FORMAT!r})")
    model = _field(manifest, "model", dict, file)
    for key in ("model_sha256", "scaling_sha256"):
        value = model.get(key)
        if not (isinstance(value, str) and _SHA256.fullmatch(value)) and not (key == "scaling_sha256" and value is None):
            raise SearchError(f"{file} is not a valid rsgh index manifest: field 'model.{key}' should be a sha256, not "
                              f"{_shown(value)}; the index is damaged: rebuild it")
    _field(model, "run_dir", str, file)
    _field(manifest, "features", dict, file)
    bits = _field(manifest, "bits", int, file, 1, 4096)
    _field(manifest, "code_size", int, file, -(-bits // 8), -(-bits // 8))
    count = _field(manifest, "count", int, file, 0, 2**40)
    _field(manifest, "labelled", int, file, 0, count)
    shards = _field(manifest, "shards", list, file)
    total = 0
    for i, shard in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(shard, dict):
            raise SearchError(f"{file} is not a valid rsgh index manifest: {where} should be an object; rebuild it")
        codes, listing = shard_files(i)
        for key, name in (("codes", codes), ("list", listing)):
            if shard.get(key) != name:  # every path of an index is its own, by position
                raise SearchError(f"{file} is not a valid rsgh index manifest: {where}.{key} is {_shown(shard.get(key))}, "
                                  f"expected {name!r} (an index names only its own files); rebuild it")
        for key in ("codes_sha256", "list_sha256"):
            if not (isinstance(shard.get(key), str) and _SHA256.fullmatch(shard[key])):
                raise SearchError(f"{file} is not a valid rsgh index manifest: {where}.{key} should be a sha256, not "
                                  f"{_shown(shard.get(key))}; rebuild it")
        total += _field(shard, "count", int, f"{file} ({where})", 0, 2**40)
    if total != count:
        raise SearchError(f"{file} is not a valid rsgh index manifest: its shards hold {total} codes, its count is "
                          f"{count}; rebuild it")


def own_file(file: Path) -> None:
    """Refuse a file of an index that is a symbolic link (an index holds only its own files)."""
    if file.is_symlink():
        raise SearchError(f"index {file.parent} is damaged: {file.name} is a symbolic link (an index holds only its "
                          "own files); rebuild it")


def read_codes(file: Path, count: int, code_size: int) -> np.ndarray:
    """The packed codes (count, code_size) of a shard, read from its faiss ``IndexBinaryFlat`` file after
    checking that its header matches the manifest and that the file is exactly that size."""
    own_file(file)
    want = HEADER.size + count * code_size
    with open_regular(file, "shard") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(HEADER.size)
        fourcc, d, size_, ntotal, _, _, nbytes = HEADER.unpack(head) if len(head) == HEADER.size else (b"",) + (0,) * 6
        if fourcc != b"IBxF" or (d, size_, ntotal, nbytes) != (code_size * 8, code_size, count, count * code_size):
            raise SearchError(f"index {file.parent} is damaged: {file.name} is not a faiss IndexBinaryFlat of {count} "
                              f"codes of {code_size} bytes (its header says {ntotal} of {size_}); rebuild the index")
        if size != want:
            raise SearchError(f"index {file.parent} is damaged: {file.name} is {size:,} bytes, its header implies "
                              f"{want:,}; rebuild the index")
        data = fh.read(count * code_size)
    return np.frombuffer(data, np.uint8).reshape(count, code_size)


def read_list(file: Path) -> list[list[str]]:
    """The rows (name, label, sha1) of a shard's list; a field over :data:`MAX_FIELD` characters, a bad
    encoding or another layout is a SearchError naming the file."""
    own_file(file)
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(MAX_FIELD)
        with open_regular(file, "shard list") as raw:
            rows = list(csv.reader((line.decode("utf-8") for line in raw)))
    except (csv.Error, UnicodeDecodeError) as err:
        raise SearchError(f"index {file.parent} is damaged: {file.name} is not a name,label,sha1 list "
                          f"({' '.join(str(err).split())[:100]}); rebuild the index") from None
    finally:
        csv.field_size_limit(limit)
    if not rows or rows[0] != ["name", "label", "sha1"] or any(len(r) != 3 for r in rows[1:]):
        raise SearchError(f"index {file.parent} is damaged: {file.name} is not a name,label,sha1 list")
    return rows[1:]
