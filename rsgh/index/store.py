"""An index on disk: a folder of faiss ``IndexBinaryFlat`` shards (exact Hamming search), the names
and labels of the images, a copy of the model, and a manifest that commits them.

- ``manifest.json``: the model's identity (run folder, sha256 of ``model.pt``, configuration), the
  feature parameters, the code length, and the list of shards with their checksums. It is the
  index's commit point: only what it lists is part of the index.
- ``model.pt`` (and ``feature_scaling.npz``): copies of the run's files, so that ``search`` and
  ``evaluate`` need nothing but the index.
- ``shard-NNNNN.faissbin`` and ``shard-NNNNN.csv`` (name, label and a content hash of each image),
  one pair per ``encode``.

Every file is written through a temporary file and renamed into place, and the manifest last: a run
killed at any moment leaves the previous index intact. Adding images writes a new shard and never
rewrites an existing one. One writer at a time (a lock), and ``encode`` writes only into a new or
empty folder, an existing index, or the folder of an encode that was killed before its first commit
(recognised by the marker ``.rsgh-index``, written before anything else): files it did not write are
never changed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import TMP_PREFIX, atomic_text, atomic_write, folder_lock, is_regular, remove_stale_temporaries
from ..paths import check_outside_book
from .encoder import (SCALING_FILE, Collection, Encoder, SearchError, encode_collection, load_encoder, open_images,
                      say, sha256, shown)
from .manifest import FORMAT, MANIFEST, own_file, read_codes, read_list, read_manifest, shard_files

MODEL_COPY = "model.pt"
MARKER = ".rsgh-index"  # the first file an encode writes into a folder: what is there beside it is its own


def _write_atomic(path: Path, write) -> None:
    """``write(tmp_path)``, then fsync and rename over ``path`` (a seam the tests use to simulate
    failures between the steps of an index write)."""
    atomic_write(path, write)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class HashIndex:
    """A loaded index: the codes of every image in insertion order, their names and labels."""

    path: Path
    manifest: dict
    packed: np.ndarray  # uint8 (n, code_size), faiss binary layout
    names: list[str]
    labels: list[str | None]
    hashes: list[str]
    sources: list[int]  # shard of each item

    @property
    def bits(self) -> int:
        return int(self.manifest["bits"])

    def __len__(self) -> int:
        return len(self.names)

    def faiss_index(self):
        import faiss

        index = faiss.IndexBinaryFlat(self.packed.shape[1] * 8)
        index.add(self.packed)
        return index

    def encoder(self) -> Encoder:
        """The index's model (its own copy), checked against the manifest."""
        m = self.manifest["model"]
        scaling = self.path / SCALING_FILE if m.get("scaling_sha256") else None
        for file, want in ((self.path / MODEL_COPY, m["model_sha256"]), (scaling, m.get("scaling_sha256"))):
            if file is None:
                continue
            own_file(file)
            if not file.is_file():
                raise SearchError(f"index {self.path} is damaged: {file.name} is missing")
            if sha256(file) != want:
                raise SearchError(f"index {self.path} is damaged: {file.name} does not match its sha256 in "
                                  f"{MANIFEST}")
        enc = load_encoder(self.path)
        check_compatible(self.manifest, enc, self.path)
        return enc

    def search(self, query_codes: np.ndarray, top: int, faiss_index=None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (nq, min(top, n)): exact Hamming ranking, ties by insertion order."""
        from ..eval.metrics import pack_codes

        top = min(int(top), len(self))
        index = faiss_index or self.faiss_index()
        q = pack_codes(query_codes)
        if q.shape[1] != self.packed.shape[1]:
            raise SearchError(f"queries have {query_codes.shape[1]}-bit codes, the index {self.bits}-bit codes")
        with _faiss_threads(1 if len(q) < 32 else None):
            dist, ids = index.search(q, top)
        # faiss keeps the smallest ids among equal distances; sort (distance, id) to make it explicit
        order = np.lexsort((ids, dist), axis=1)
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)


@contextlib.contextmanager
def _faiss_threads(n: int | None):
    """A few queries scan 59,000 codes in ~0.1 ms on one thread; waking an OpenMP team costs more than
    that, and up to ~20 ms on a busy machine. So small batches run on one thread."""
    import faiss

    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def load_index(path: str | os.PathLike) -> HashIndex:
    """Read and verify an index folder (its manifest field by field, every shard's checksum, header and
    count: ``rsgh.index.manifest``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"index {path} does not exist (build one with: python -m rsgh encode --model RUN "
                                f"--images PATH --out {path})")
    manifest = read_manifest(path)
    if manifest is None:
        raise SearchError(f"{path} is not an rsgh index: it has no {MANIFEST} (an encode into it never finished?)")
    packed, names, labels, hashes, sources = [], [], [], [], []
    code_size = manifest["code_size"]
    for i, shard in enumerate(manifest["shards"]):
        bin_path, csv_path = path / shard["codes"], path / shard["list"]
        for file, key in ((bin_path, "codes_sha256"), (csv_path, "list_sha256")):
            own_file(file)
            if not file.is_file():
                raise SearchError(f"index {path} is damaged: {file.name} (listed in {MANIFEST}) is missing")
            if sha256(file) != shard[key]:
                raise SearchError(f"index {path} is damaged: {file.name} does not match its sha256 in {MANIFEST}; "
                                  "restore the file or rebuild the index")
        codes = read_codes(bin_path, shard["count"], code_size)
        rows = read_list(csv_path)
        if len(rows) != shard["count"]:
            raise SearchError(f"index {path} is damaged: {csv_path.name} holds {len(rows)} rows; {MANIFEST} says "
                              f"{shard['count']}")
        packed.append(codes)
        names += [r[0] for r in rows]
        labels += [r[1] or None for r in rows]
        hashes += [r[2] for r in rows]
        sources += [i] * len(rows)
    packed = np.ascontiguousarray(np.concatenate(packed)) if packed else np.zeros((0, code_size), np.uint8)
    return HashIndex(path, manifest, packed, names, labels, hashes, sources)


def _read_manifest(path: Path) -> dict | None:
    return read_manifest(path)


def check_compatible(manifest: dict, encoder: Encoder, path: Path) -> None:
    """Refuse a model or feature pipeline other than the one the index was built with."""
    m = manifest["model"]
    if encoder.model_sha256 != m["model_sha256"] or encoder.scaling_sha256 != m.get("scaling_sha256"):
        raise SearchError(f"index {path} was built with another model (run {m['run_dir']}, model.pt sha256 "
                          f"{m['model_sha256'][:12]}), not {encoder.model_path} (sha256 {encoder.model_sha256[:12]}); "
                          "codes of different models cannot be compared: use that model or a new --out")
    want, have = manifest["features"], encoder.spec.to_dict()
    if want != have:
        diff = ", ".join(f"{k}: index {want.get(k)!r} vs now {have.get(k)!r}" for k in sorted(set(want) | set(have))
                         if want.get(k) != have.get(k))
        raise SearchError(f"index {path} was built with other feature parameters ({diff}); codes would not be "
                          "comparable: rebuild the index with this version of rsgh")


def _foreign_files(out: Path) -> list[str]:
    """What a folder that is not an index yet holds beyond the lock and the project's temporary files:
    nothing when it is empty, or when an encode made it (its marker) and was killed before committing."""
    names = sorted(p.name for p in out.iterdir() if p.name != ".lock" and not p.name.startswith(TMP_PREFIX))
    if MARKER in names and is_regular(out / MARKER) and not (out / MARKER).is_symlink():
        return []
    return names


def _ours(out: Path) -> list[Path]:
    """The files an uncommitted encode wrote into ``out``."""
    return [p for p in out.iterdir() if p.name in (MARKER, ".lock", MODEL_COPY, SCALING_FILE)
            or p.name.startswith((TMP_PREFIX, "shard-"))]


def encode(model: str | os.PathLike | None, images: str | os.PathLike, out: str | os.PathLike,
           progress: bool = True, quiet: bool = False) -> dict:
    """Add the images of ``images`` (names not yet present) to the index ``out``, creating it with
    ``model`` when it does not exist. Returns ``{"manifest": the committed manifest, "added": number
    of images added, "seconds": time to read, featurise and hash them}``."""
    out = Path(out)
    check_outside_book(out)
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {out} is a file, not an index folder")
    is_index = (out / MANIFEST).exists()
    if is_index:
        read_manifest(out)  # a damaged or foreign manifest is said before anything (even the lock) is written
    if model is None and not is_index:
        raise SearchError(f"{out} is not an index yet: give --model RUN_DIR to create it")
    if out.is_dir() and not is_index:
        foreign = _foreign_files(out)
        if foreign:
            raise SearchError(f"--out {out} is a folder that holds other files ({shown(foreign, 3)}); "
                              "give a new or empty folder, or an existing index (nothing was written)")
    encoder = load_encoder(model) if model is not None else None
    with open_images(images) as collection:  # checked before anything is created
        created, fresh = not out.exists(), not is_index
        out.mkdir(parents=True, exist_ok=True)
        try:
            with folder_lock(out, "an encode"):
                if fresh:
                    atomic_text(out / MARKER, "an rsgh index folder (python -m rsgh encode)\n")
                return _encode_locked(out, encoder, model, collection, progress, quiet)
        except BaseException:
            if fresh and not (out / MANIFEST).exists():  # nothing was committed: leave nothing behind
                if created:
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    for p in _ours(out):
                        p.unlink(missing_ok=True)
            raise


def _encode_locked(out: Path, encoder: Encoder | None, model, collection: Collection, progress: bool,
                   quiet: bool) -> dict:
    existing = _read_manifest(out)
    if existing is None:
        if encoder is None:
            raise SearchError(f"{out} is not an index yet: give --model RUN_DIR to create it")
        present: set[str] = set()
        run_dir = str(Path(model).resolve())
    else:
        index = load_index(out)
        if encoder is None:
            encoder = index.encoder()
        else:
            check_compatible(existing, encoder, out)
        present = set(index.names)
        run_dir = existing["model"]["run_dir"]
    remove_stale_temporaries(out)  # left by a killed writer (we hold the lock)
    if collection.ignored:
        say(f"ignored {len(collection.ignored)} file(s) without an image extension: "
             f"{shown(collection.ignored, 3)}", quiet)
    new = [n for n in collection.names if n not in present]
    if len(new) < len(collection.names):
        say(f"skipped {len(collection.names) - len(new)} image(s) whose names are already in the index", quiet)
    if not new:
        say(f"nothing to add: all {len(collection.names)} images of {collection.path} are in {out}", quiet)
        return {"manifest": existing, "added": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    codes, names, hashes, prep = encode_collection(encoder, collection, new, progress)
    seconds = time.perf_counter() - t0
    prep.report(quiet)
    if not names:
        raise SearchError(f"none of the {len(new)} image files in {collection.path} could be decoded; "
                          "nothing was written")
    labels = [collection.labels[n] for n in names]
    if existing is None:
        existing = _new_manifest(encoder, run_dir)
        _copy_model(encoder, out)
    manifest = _add_shard(out, existing, codes, names, labels, hashes, collection.path, seconds)
    _write_manifest(out, manifest)
    return {"manifest": manifest, "added": len(names), "seconds": seconds}


def _new_manifest(encoder: Encoder, run_dir: str) -> dict:
    from .. import __version__

    code_size = -(-encoder.bits // 8)
    return {"format": FORMAT, "rsgh_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": encoder.identity(run_dir), "features": encoder.spec.to_dict(), "bits": encoder.bits,
            "code_size": code_size, "faiss_index": f"IndexBinaryFlat(d={code_size * 8})", "count": 0,
            "labelled": 0, "memory_bytes": 0, "shards": []}


def _copy_model(encoder: Encoder, out: Path) -> None:
    _write_atomic(out / MODEL_COPY, lambda p: shutil.copyfile(encoder.model_path, p))
    if encoder.scaling_path is not None:
        _write_atomic(out / SCALING_FILE, lambda p: shutil.copyfile(encoder.scaling_path, p))


def _add_shard(out: Path, manifest: dict, codes: np.ndarray, names: list[str], labels: list, hashes: list[str],
               source: Path, seconds: float) -> dict:
    """Write a new shard (codes, list) atomically; returns the manifest that lists it (not yet written)."""
    import faiss

    from ..eval.metrics import pack_codes

    packed = pack_codes(codes)
    bin_name, csv_name = shard_files(len(manifest["shards"]))
    index = faiss.IndexBinaryFlat(manifest["code_size"] * 8)
    index.add(np.ascontiguousarray(packed))
    data = faiss.serialize_index_binary(index).tobytes()  # then a Python write: a full disk is an OSError
    _write_atomic(out / bin_name, lambda p: p.write_bytes(data))

    def write_list(p):
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["name", "label", "sha1"])
            w.writerows([n, lab or "", h] for n, lab, h in zip(names, labels, hashes))

    _write_atomic(out / csv_name, write_list)
    manifest = json.loads(json.dumps(manifest))  # a copy: the caller's stays the committed one
    manifest["shards"].append({
        "codes": bin_name, "list": csv_name, "count": len(names),
        "codes_sha256": sha256(out / bin_name), "list_sha256": sha256(out / csv_name),
        "source": str(Path(source).resolve()), "added": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "encode_seconds": round(seconds, 3)})
    manifest["count"] += len(names)
    manifest["labelled"] += sum(lab is not None for lab in labels)
    manifest["memory_bytes"] = manifest["count"] * manifest["code_size"]
    return manifest


def _write_manifest(out: Path, manifest: dict) -> None:
    """The commit point: until this rename, readers see the previous index."""
    _write_atomic(out / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2)))
    _fsync_dir(out)
