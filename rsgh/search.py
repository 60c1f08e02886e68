"""Use a trained hash model on your own images: encode them into an index, search it, evaluate it.

    python -m rsgh encode --model RUN_DIR --images PATH --out INDEX     # build, or add to, an index
    python -m rsgh search --index INDEX QUERY_IMAGE... [--top 10]        # nearest images by Hamming distance
    python -m rsgh evaluate --index INDEX --queries PATH                 # mAP etc. of labelled queries

``PATH`` is a folder of images or a .tar / .tar.gz / .zip of one. An image's label is the name of
the folder that directly holds it (``PATH/<class>/<image>``); images at the top level have none.

Features are computed exactly as in training: the run's feature kind (pixels or GIST-512, with
this package's GIST parameters), its image size rule (MNIST models see 28 x 28 grey images, CIFAR-10
models 32 x 32 RGB, Caltech-256 / folder GIST models ``image_size`` x ``image_size`` RGB), then the
run's feature scaling, then the model's deterministic code. Images of another mode (grey, RGBA,
palette, CMYK, ...) are converted and images of another size resized with PIL bilinear, and
``encode`` says how many.

An index is a folder:

- ``manifest.json``: the model's identity (run directory, sha256 of ``model.pt``, configuration),
  the feature parameters, the code length, and the list of shards with their checksums. It is
  the index's commit point: only what it lists is part of the index.
- ``model.pt`` (and ``feature_scaling.npz``): copies of the run's files, so that ``search`` and
  ``evaluate`` need nothing but the index.
- ``shard-NNNNN.faissbin`` (a faiss ``IndexBinaryFlat``, exact Hamming search) and
  ``shard-NNNNN.csv`` (name, label and a content hash of each image), one pair per ``encode``.

Every file is written through a temporary file and renamed into place, and the manifest last:
a run killed at any moment leaves the previous index intact. Adding images writes a new shard
and never rewrites an existing one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .files import atomic_write

FORMAT = "rsgh-hash-index-v1"
MANIFEST = "manifest.json"
MODEL_COPY, SCALING_COPY = "model.pt", "feature_scaling.npz"
BATCH = 1024  # images decoded, featurised and hashed per step
TIE_NOTE = "ties in distance are listed in insertion order (the order images were added to the index)"


class SearchError(ValueError):
    """A user-facing problem with an index, a model or images (printed as one line)."""


# ----------------------------------------------------------------------------------------------
# Small helpers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _shown(items: Sequence[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _say(text: str, quiet: bool = False) -> None:
    """Notes about what was done (to stderr, so stdout holds only results)."""
    if not quiet:
        print(text, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# The model and how it sees images


@dataclass(frozen=True)
class FeatureSpec:
    """What a model's inputs are: how an image becomes its feature vector."""

    kind: str  # "pixels" or "gist"
    mode: str  # images are converted to "L" (grey) or "RGB"
    size: tuple[int, int]  # (height, width) the images are resized to (PIL bilinear) when they differ
    dim: int  # length of the feature vector (the model's input size)
    gist: str | None  # rsgh.gist.GistParams().key() for GIST features
    scaling: str  # "none" or "standardize" (with the run's feature_scaling.npz)
    dataset: str  # what the model was trained on (for messages)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


def feature_spec(cfg, input_dim: int) -> FeatureSpec:
    """The feature pipeline of a run, with a clear error when it cannot produce ``input_dim`` values."""
    grey = cfg.dataset in ("mnist", "fashion-mnist")  # the IDX images are grey; the others are RGB
    mode = "L" if grey else "RGB"
    if cfg.dataset in ("mnist", "fashion-mnist"):
        size = (28, 28)
    elif cfg.dataset == "cifar10":
        size = (32, 32)
    elif cfg.features == "gist":  # caltech256 and folder: resized for GIST (rsgh.retrieval.feature_size)
        size = (cfg.image_size, cfg.image_size)
    else:  # pixels of a caltech256 / folder run: the training images' (square) size
        side = math.isqrt(input_dim // 3)
        if side * side * 3 != input_dim:
            raise SearchError(f"cannot tell the image size of a {cfg.dataset} pixel model with {input_dim} "
                              "inputs (not 3 x side x side); only square RGB images are supported")
        size = (side, side)
    gist_key = None
    if cfg.features == "gist":
        try:
            from .gist import GistParams
        except ImportError as err:
            raise SearchError(f"this model uses GIST features but rsgh.gist cannot be imported ({err})") from None
        params = GistParams()
        gist_key, dim = params.key(), params.n_features
    else:
        dim = size[0] * size[1] * (1 if grey else 3)
    if dim != input_dim:
        raise SearchError(f"the model takes {input_dim} inputs but its configuration (dataset={cfg.dataset}, "
                          f"features={cfg.features}) gives {dim} features per image: the run directory's "
                          "model.pt and config do not belong together")
    return FeatureSpec(cfg.features, mode, size, dim, gist_key, cfg.feature_scaling, cfg.dataset)


@dataclass
class Encoder:
    """A trained model ready to encode images: the model, its feature pipeline and scaling."""

    model: object  # rsgh.model.HashModel
    cfg: object  # rsgh.config.Config
    spec: FeatureSpec
    scaling: dict  # {"mean", "std"} or {}
    model_path: Path
    model_sha256: str
    scaling_path: Path | None
    scaling_sha256: str | None

    @property
    def bits(self) -> int:
        return int(self.model.bits)

    def identity(self, run_dir: str) -> dict:
        return {"run_dir": run_dir, "model_sha256": self.model_sha256, "scaling_sha256": self.scaling_sha256,
                "input_dim": int(self.model.input_dim), "bits": self.bits, "method": self.cfg.method,
                "config": self.cfg.to_dict()}

    def codes(self, images: np.ndarray) -> np.ndarray:
        """{0,1} uint8 codes (n, K) of prepared uint8 images (n, H, W[, 3])."""
        import torch

        x = features(images, self.spec)
        if self.scaling:
            from .retrieval import scale_features

            x = scale_features(x, self.scaling)
        if x.shape[1] != self.model.input_dim:
            raise SearchError(f"features have {x.shape[1]} values, the model takes {self.model.input_dim}")
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise SearchError(f"{int(bad.sum())} of {len(x)} feature vectors contain NaN or infinite values "
                              "(the feature scaling or the features are broken)")
        return self.model.hash(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[0].numpy()


def load_encoder(run_dir: str | os.PathLike) -> Encoder:
    """The model of a finished run directory (or of an index, which keeps copies of the same
    files) and its feature pipeline."""
    run_dir = Path(run_dir)
    model_path = run_dir / "model.pt"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"model run directory {run_dir} does not exist")
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: is {run_dir} a finished run directory "
                                "(python -m rsgh train ... writes model.pt at the end)?")
    from .train import load_model  # imports torch: after the quick checks

    try:
        model, cfg = load_model(run_dir)
    except Exception as err:  # torch.load / unpickling / a config of another version: many kinds
        raise SearchError(f"{model_path} is not a readable rsgh model ({type(err).__name__}: "
                          f"{_first_line(err)})") from None
    spec = feature_spec(cfg, int(model.input_dim))
    scaling, scaling_path, scaling_sha = {}, None, None
    if cfg.feature_scaling == "standardize":
        scaling_path = run_dir / SCALING_COPY
        if not scaling_path.is_file():
            raise FileNotFoundError(f"{scaling_path} not found: the run standardizes its features "
                                    "(feature_scaling=standardize) and encoding needs the saved mean and std")
        scaling = _load_scaling(scaling_path, spec.dim)
        scaling_sha = _sha256(scaling_path)
    return Encoder(model, cfg, spec, scaling, model_path, _sha256(model_path), scaling_path, scaling_sha)


def _load_scaling(path: Path, dim: int) -> dict:
    try:
        with np.load(path) as z:
            saved = {"mean": z["mean"], "std": z["std"]}
        mean, std = saved["mean"].astype(np.float64), saved["std"].astype(np.float64)
    except Exception as err:  # a damaged .npz: OSError, BadZipFile, ValueError, KeyError, ...
        raise SearchError(f"{path} is not a readable feature scaling file ({_first_line(err)})") from None
    if mean.shape != (dim,) or std.shape != (dim,):
        raise SearchError(f"{path}: mean / std have shapes {mean.shape} / {std.shape}, the features have {dim} "
                          "values")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise SearchError(f"{path}: the feature scaling holds NaN, infinite or non-positive values "
                          "(scaled features would be NaN or infinite)")
    return saved  # as saved, so that scale_features computes exactly what training computed


# ----------------------------------------------------------------------------------------------
# Images: listing, decoding, converting, features


@dataclass
class Collection:
    """The image files of a folder, an archive or a single image, open for reading."""

    path: Path  # as given
    names: list[str]  # relative posix names, in listing order
    labels: dict[str, str | None]  # name -> the folder holding it (None at the top level)
    members: dict[str, str]  # name -> member name in the folder / archive that ``reader`` reads
    reader: object  # an open rsgh.image_datasets reader (an archive is indexed once)
    ignored: list[str] = field(default_factory=list)  # files without an image extension


@contextlib.contextmanager
def open_images(path: str | os.PathLike) -> Iterator[Collection]:
    """The images of a folder / archive (or one image file), labelled by their parent folder."""
    from .image_datasets import IMAGE_EXTENSIONS, _is_hidden, _is_image_name, _open_reader, _parts

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a folder of images, a .tar/.tar.gz/.zip of one, "
                                "or an image file")
    if path.is_file() and _is_image_name(path.name):
        with _open_reader(path.parent) as reader:
            yield Collection(path, [path.name], {path.name: None}, {path.name: path.name}, reader)
        return
    with _open_reader(path) as reader:
        names = [n for n in reader.names() if not _is_hidden(_parts(n))]
        images = [n for n in names if _is_image_name(n)]
        if not images:
            raise SearchError(f"{path}: no image files (by extension: {', '.join(IMAGE_EXTENSIONS)})")
        members = {"/".join(_parts(n)): n for n in images}
        if len(members) != len(images):
            raise SearchError(f"{path}: some image names occur twice in the archive")
        labels = {n: (n.rsplit("/", 2)[-2] if "/" in n else None) for n in members}
        yield Collection(path, list(members), labels, members, reader, [n for n in names if not _is_image_name(n)])


def read_images(collection: Collection, names: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """(name, encoded bytes) of ``names``, in the folder's or archive's reading order."""
    back = {collection.members[n]: n for n in names}
    for member, data in collection.reader.read(list(back)):
        yield back[member], data


class Preparer:
    """Decodes images and converts them to what the model expects, counting what it changed."""

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.converted: Counter = Counter()  # original mode -> count
        self.resized: Counter = Counter()  # original "HxW" -> count
        self.bad: list[tuple[str, str]] = []  # (name, reason)

    def __call__(self, name: str, data: bytes) -> np.ndarray | None:
        """uint8 (H, W) or (H, W, 3) at the model's size, or None (recorded) if undecodable."""
        from PIL import Image

        from .image_datasets import decode_image

        try:
            with Image.open(io.BytesIO(data)) as probe:
                mode = probe.mode
            rgb = decode_image(data, name)  # grey, palette, RGBA (alpha dropped), CMYK, 16 bit -> RGB
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, EOFError, ...
            from PIL import UnidentifiedImageError

            why = "not an image file PIL can read" if isinstance(err, UnidentifiedImageError) else _first_line(err)
            self.bad.append((name, why))
            return None
        im = Image.fromarray(rgb)
        if mode != self.spec.mode:
            self.converted[mode] += 1
        if self.spec.mode == "L":
            im = im.convert("L")  # ITU-R 601-2 luma; exact for grey images
        h, w = self.spec.size
        if im.size != (w, h):
            self.resized[f"{im.size[1]}x{im.size[0]}"] += 1
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    def report(self, quiet: bool = False) -> None:
        s = self.spec
        if self.converted:
            what = "grey" if s.mode == "L" else "RGB"
            modes = ", ".join(f"{m} {k}" + (" (alpha dropped)" if "A" in m else "")
                              for m, k in self.converted.most_common())
            _say(f"converted {sum(self.converted.values())} image(s) to {what}, as the model was trained on "
                 f"{what} {s.dataset} images: {modes}", quiet)
        if self.resized:
            sizes = ", ".join(f"{sz} x{k}" for sz, k in self.resized.most_common(5))
            _say(f"resized {sum(self.resized.values())} image(s) to {s.size[0]}x{s.size[1]} with PIL bilinear "
                 f"(the model's input size); sizes seen (height x width): {sizes}", quiet)
        if self.bad:  # always said, --quiet or not
            _say(f"skipped {len(self.bad)} undecodable file(s): "
                 + _shown([f"{n} ({why})" for n, why in self.bad], 3))


def features(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """float32 (n, D) features of prepared uint8 images, before scaling, as in training."""
    if spec.kind == "pixels":
        return images.reshape(len(images), -1).astype(np.float32) / 255.0
    from .gist import gist

    return np.asarray(gist(images), dtype=np.float32)  # native size: the images are at the model's size


def encode_collection(encoder: Encoder, collection: Collection, names: Sequence[str], progress: bool = True,
                      ) -> tuple[np.ndarray, list[str], list[str], Preparer]:
    """Codes (n, K), names and content hashes of the decodable images among ``names``."""
    from tqdm import tqdm

    prep = Preparer(encoder.spec)
    codes, kept, hashes = [], [], []
    batch, batch_names, batch_hashes = [], [], []

    def flush():
        if batch:
            codes.append(encoder.codes(np.stack(batch)))
            kept.extend(batch_names)
            hashes.extend(batch_hashes)
            batch.clear(), batch_names.clear(), batch_hashes.clear()

    with tqdm(total=len(names), unit="img", desc="encode", disable=not progress, file=sys.stderr) as bar:
        for name, data in read_images(collection, names):
            image = prep(name, data)
            if image is not None:
                batch.append(image)
                batch_names.append(name)
                batch_hashes.append(hashlib.sha1(data).hexdigest()[:16])
                if len(batch) == BATCH:
                    flush()
            bar.update(1)
        flush()
    empty = np.zeros((0, encoder.bits), np.uint8)
    return (np.concatenate(codes) if codes else empty), kept, hashes, prep


# ----------------------------------------------------------------------------------------------
# The index


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
        scaling = self.path / SCALING_COPY if m.get("scaling_sha256") else None
        for file, want in ((self.path / MODEL_COPY, m["model_sha256"]), (scaling, m.get("scaling_sha256"))):
            if file is None:
                continue
            if not file.is_file():
                raise SearchError(f"index {self.path} is damaged: {file.name} is missing")
            if _sha256(file) != want:
                raise SearchError(f"index {self.path} is damaged: {file.name} does not match its sha256 in "
                                  f"{MANIFEST}")
        enc = load_encoder(self.path)
        check_compatible(self.manifest, enc, self.path)
        return enc

    def search(self, query_codes: np.ndarray, top: int, faiss_index=None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (nq, min(top, n)): exact Hamming ranking, ties by insertion order."""
        from .metrics import pack_codes

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


def _shard_files(i: int) -> tuple[str, str]:
    return f"shard-{i:05d}.faissbin", f"shard-{i:05d}.csv"


def load_index(path: str | os.PathLike) -> HashIndex:
    """Read and verify an index folder (every shard's checksum and count)."""
    import faiss

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"index {path} does not exist (build one with: python -m rsgh encode --model RUN "
                                f"--images PATH --out {path})")
    manifest = _read_manifest(path)
    if manifest is None:
        raise SearchError(f"{path} is not an rsgh index: it has no {MANIFEST} (an encode into it never finished?)")
    packed, names, labels, hashes, sources = [], [], [], [], []
    code_size = int(manifest["code_size"])
    for i, shard in enumerate(manifest["shards"]):
        bin_path, csv_path = path / shard["codes"], path / shard["list"]
        for file, key in ((bin_path, "codes_sha256"), (csv_path, "list_sha256")):
            if not file.is_file():
                raise SearchError(f"index {path} is damaged: {file.name} (listed in {MANIFEST}) is missing")
            if _sha256(file) != shard[key]:
                raise SearchError(f"index {path} is damaged: {file.name} does not match its sha256 in {MANIFEST}; "
                                  "restore the file or rebuild the index")
        try:
            index = faiss.read_index_binary(str(bin_path))
            codes = faiss.vector_to_array(index.xb).reshape(-1, index.code_size)
        except (RuntimeError, AttributeError) as err:  # unreadable, or not an IndexBinaryFlat
            raise SearchError(f"index {path} is damaged: {bin_path.name} is not a faiss IndexBinaryFlat "
                              f"({_first_line(err)})") from None
        rows = _read_list(csv_path)
        if codes.shape != (shard["count"], code_size) or len(rows) != shard["count"]:
            raise SearchError(f"index {path} is damaged: {bin_path.name} holds {codes.shape[0]} codes of "
                              f"{codes.shape[1]} bytes and {csv_path.name} {len(rows)} rows; {MANIFEST} says "
                              f"{shard['count']} of {code_size} bytes")
        packed.append(codes)
        names += [r[0] for r in rows]
        labels += [r[1] or None for r in rows]
        hashes += [r[2] for r in rows]
        sources += [i] * len(rows)
    packed = np.ascontiguousarray(np.concatenate(packed)) if packed else np.zeros((0, code_size), np.uint8)
    if len(packed) != manifest["count"]:
        raise SearchError(f"index {path} is damaged: its shards hold {len(packed)} codes, {MANIFEST} says "
                          f"{manifest['count']}")
    return HashIndex(path, manifest, packed, names, labels, hashes, sources)


def _read_manifest(path: Path) -> dict | None:
    file = path / MANIFEST
    if not file.exists():
        return None
    try:
        manifest = json.loads(file.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
        for key in ("model", "features", "bits", "code_size", "count", "shards"):
            manifest[key]  # noqa: B018 - presence check
        for shard in manifest["shards"]:
            for key in ("codes", "list", "count", "codes_sha256", "list_sha256"):
                shard[key]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SearchError(f"{file} is not a readable rsgh index manifest ({type(err).__name__}: {err})") from None
    return manifest


def _read_list(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0] != ["name", "label", "sha1"] or any(len(r) != 3 for r in rows[1:]):
        raise SearchError(f"index {path.parent} is damaged: {path.name} is not a name,label,sha1 list")
    return rows[1:]


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


# ----------------------------------------------------------------------------------------------
# encode


_OURS = (MANIFEST, MODEL_COPY, SCALING_COPY, ".lock")


@contextlib.contextmanager
def _locked(path: Path):
    """One writer at a time per index (an advisory lock on ``INDEX/.lock``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SearchError(f"another encode is writing to {path}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_ours(name: str) -> bool:
    return name in _OURS or name.startswith("shard-") or (name.startswith(".") and name.endswith(".tmp"))


def encode(model: str | os.PathLike | None, images: str | os.PathLike, out: str | os.PathLike,
           progress: bool = True, quiet: bool = False) -> dict:
    """Add the images of ``images`` (names not yet present) to the index ``out``, creating it with
    ``model`` when it does not exist. Returns ``{"manifest": the committed manifest, "added": number
    of images added, "seconds": time to read, featurise and hash them}``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {out} is a file, not an index folder")
    is_index = (out / MANIFEST).exists()
    if model is None and not is_index:
        raise SearchError(f"{out} is not an index yet: give --model RUN_DIR to create it")
    if out.is_dir() and not is_index:
        foreign = sorted(p.name for p in out.iterdir() if not _is_ours(p.name))
        if foreign:
            raise SearchError(f"--out {out} is a folder that holds other files ({_shown(foreign, 3)}); "
                              "give a new or empty folder, or an existing index")
    encoder = load_encoder(model) if model is not None else None
    with open_images(images) as collection:  # checked before anything is created
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            with _locked(out):
                return _encode_locked(out, encoder, model, collection, progress, quiet)
        except BaseException:
            if created and not (out / MANIFEST).exists():  # nothing was committed: leave no folder behind
                shutil.rmtree(out, ignore_errors=True)
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
    for stale in out.glob(".*.tmp"):  # left by a killed writer (we hold the lock)
        stale.unlink(missing_ok=True)
    if collection.ignored:
        _say(f"ignored {len(collection.ignored)} file(s) without an image extension: "
             f"{_shown(collection.ignored, 3)}", quiet)
    new = [n for n in collection.names if n not in present]
    if len(new) < len(collection.names):
        _say(f"skipped {len(collection.names) - len(new)} image(s) whose names are already in the index", quiet)
    if not new:
        _say(f"nothing to add: all {len(collection.names)} images of {collection.path} are in {out}", quiet)
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
    from . import __version__

    code_size = -(-encoder.bits // 8)
    return {"format": FORMAT, "rsgh_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": encoder.identity(run_dir), "features": encoder.spec.to_dict(), "bits": encoder.bits,
            "code_size": code_size, "faiss_index": f"IndexBinaryFlat(d={code_size * 8})", "count": 0,
            "labelled": 0, "memory_bytes": 0, "shards": []}


def _copy_model(encoder: Encoder, out: Path) -> None:
    _write_atomic(out / MODEL_COPY, lambda p: shutil.copyfile(encoder.model_path, p))
    if encoder.scaling_path is not None:
        _write_atomic(out / SCALING_COPY, lambda p: shutil.copyfile(encoder.scaling_path, p))


def _add_shard(out: Path, manifest: dict, codes: np.ndarray, names: list[str], labels: list, hashes: list[str],
               source: Path, seconds: float) -> dict:
    """Write a new shard (codes, list) atomically; returns the manifest that lists it (not yet written)."""
    import faiss

    from .metrics import pack_codes

    packed = pack_codes(codes)
    bin_name, csv_name = _shard_files(len(manifest["shards"]))
    index = faiss.IndexBinaryFlat(manifest["code_size"] * 8)
    index.add(np.ascontiguousarray(packed))
    _write_atomic(out / bin_name, lambda p: faiss.write_index_binary(index, str(p)))

    def write_list(p):
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["name", "label", "sha1"])
            w.writerows([n, lab or "", h] for n, lab, h in zip(names, labels, hashes))

    _write_atomic(out / csv_name, write_list)
    manifest = json.loads(json.dumps(manifest))  # a copy: the caller's stays the committed one
    manifest["shards"].append({
        "codes": bin_name, "list": csv_name, "count": len(names),
        "codes_sha256": _sha256(out / bin_name), "list_sha256": _sha256(out / csv_name),
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


# ----------------------------------------------------------------------------------------------
# search and evaluate


def encode_files(encoder: Encoder, paths: Sequence[str | os.PathLike], quiet: bool = False,
                 ) -> tuple[np.ndarray, list[str]]:
    """Codes of single image files (undecodable ones reported and skipped; an error if none is left)."""
    prep = Preparer(encoder.spec)
    images, kept = [], []
    for p in map(Path, paths):
        if p.is_dir():
            raise SearchError(f"query {p} is a folder: give image files (evaluate takes a folder of labelled queries)")
        if not p.is_file():
            raise FileNotFoundError(f"query image {p} does not exist")
        image = prep(str(p), p.read_bytes())
        if image is not None:
            images.append(image)
            kept.append(str(p))
    prep.report(quiet)
    if not images:
        raise SearchError(f"none of the {len(paths)} query image(s) could be decoded")
    return encoder.codes(np.stack(images)), kept


def search(index_dir: str | os.PathLike, queries: Sequence[str | os.PathLike], top: int = 10,
           quiet: bool = False) -> list[dict]:
    """The ``top`` nearest indexed images of each query image: one dict per decodable query."""
    _check_top(top)
    return search_index(load_index(index_dir), queries, top, quiet)


def search_index(index: HashIndex, queries: Sequence[str | os.PathLike], top: int = 10,
                 quiet: bool = False) -> list[dict]:
    _check_top(top)
    if len(index) == 0:
        raise SearchError(f"index {index.path} is empty")
    codes, kept = encode_files(index.encoder(), queries, quiet)
    dist, ids = index.search(codes, top)
    return [{"query": q, "results": [{"rank": r + 1, "distance": int(d), "id": int(i), "name": index.names[i],
                                      "label": index.labels[i]} for r, (d, i) in enumerate(zip(drow, irow))]}
            for q, drow, irow in zip(kept, dist, ids)]


def _check_top(top) -> None:
    if not isinstance(top, (int, np.integer)) or isinstance(top, bool) or top < 1:
        raise SearchError(f"--top must be a positive integer, got {top!r}")


def evaluate(index_dir: str | os.PathLike, queries: str | os.PathLike, ks: Sequence[int] = (100, 500, 1000),
             radius: int = 2, progress: bool = True, quiet: bool = False) -> dict:
    """mAP (exact under random order within Hamming ties), precision@k and precision within
    ``radius`` of a labelled query collection against the labelled index."""
    import warnings

    from .metrics import retrieval_summary

    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise SearchError(f"--k must be positive integers, got {' '.join(map(str, ks))}")
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise SearchError(f"--radius must be a non-negative integer, got {radius}")
    index = load_index(index_dir)
    unlabelled = sum(lab is None for lab in index.labels)
    if len(index) == 0 or unlabelled:
        raise SearchError(f"index {index_dir} has {unlabelled:,} unlabelled image(s) of {len(index):,}: evaluate needs "
                          "every indexed image in a class folder (<class>/<image>)")
    encoder = index.encoder()
    with open_images(queries) as collection:
        missing = [n for n in collection.names if collection.labels[n] is None]
        if missing:
            raise SearchError(f"{queries}: {len(missing)} query image(s) have no label ({_shown(missing, 3)}); put "
                              "each query in a folder named after its class")
        codes, names, hashes, prep = encode_collection(encoder, collection, collection.names, progress)
    prep.report(quiet)
    if not names:
        raise SearchError(f"none of the {len(collection.names)} query images in {queries} could be decoded")
    q_labels = [collection.labels[n] for n in names]
    classes = sorted(set(index.labels) | set(q_labels))
    number = {c: i for i, c in enumerate(classes)}
    shared = set(q_labels) & set(index.labels)
    if not shared:
        raise SearchError(f"the query classes ({_shown(sorted(set(q_labels)), 5)}) share no class with the index "
                          f"({_shown(sorted(set(index.labels)), 5)})")
    alone = sum(lab not in shared for lab in q_labels)
    if alone:
        _say(f"note: {alone} query image(s) are in classes absent from the index; they count with AP 0", quiet)
    indexed = set(index.hashes)
    dup = sum(h in indexed for h in hashes)
    if dup:
        _say(f"note: {dup} query image(s) are byte-identical to indexed images (found at distance 0)", quiet)
    ndb = len(index)
    dropped = [k for k in ks if k > ndb]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note above says it already
        s = retrieval_summary(codes, _unpack(index.packed, index.bits), np.array([number[c] for c in q_labels]),
                              np.array([number[c] for c in index.labels]), ks=[k for k in ks if k <= ndb],
                              radius=radius)
    return {"map": s["map"], "precision_at_k": s["precision_at_k"], "radius": radius,
            "precision_within_radius": s["precision_within_radius"], "n_queries": len(names),
            "n_database": ndb, "bits": index.bits, "ks_dropped": dropped, "query_classes": len(set(q_labels)),
            "index_classes": len(set(index.labels)), "skipped": len(prep.bad)}


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1, bitorder="little")[:, :bits]


# ----------------------------------------------------------------------------------------------
# A picture of results


def result_grid(index_dir: str | os.PathLike, query_paths: Sequence[str | os.PathLike], top: int,
                out_png: str | os.PathLike) -> Path:
    """Save a PNG grid: one row per query, the query then its ``top`` results (Hamming distance and
    label above each; when the query's folder names a class of the index, a green frame around results
    of that class and a red one around the others)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    from .image_datasets import decode_image

    index = load_index(index_dir)
    results = search_index(index, query_paths, top, quiet=True)
    wanted: dict[int, set] = {}
    for r in results:
        for hit in r["results"]:
            wanted.setdefault(index.sources[hit["id"]], set()).add(hit["name"])
    pictures = {}
    for shard, names in wanted.items():
        source = Path(index.manifest["shards"][shard]["source"])
        with contextlib.suppress(Exception), open_images(source) as coll:  # a moved source: no thumbnails
            for name, data in read_images(coll, sorted(names)):
                pictures[(shard, name)] = decode_image(data, name)
    classes = set(index.labels) - {None}
    cols = 1 + max(len(r["results"]) for r in results)
    fig = Figure(figsize=(1.3 * cols, 1.5 * len(results)))
    axes = fig.subplots(len(results), cols, squeeze=False)
    for row, r in zip(axes, results):
        for ax in row:
            ax.axis("off")
        q_label = Path(r["query"]).parent.name
        with open(r["query"], "rb") as fh:
            row[0].imshow(decode_image(fh.read(), r["query"]))
        row[0].set_title(f"query\n{q_label}", fontsize=7)
        for ax, hit in zip(row[1:], r["results"]):
            image = pictures.get((index.sources[hit["id"]], hit["name"]))
            if image is None:
                ax.text(0.5, 0.5, hit["name"], ha="center", va="center", fontsize=5, wrap=True)
            else:
                ax.imshow(image)
            ax.set_title(f"d={hit['distance']}\n{hit['label'] or '-'}", fontsize=7)
            if hit["label"] is not None and q_label in classes:  # the query's folder names a class
                ax.axis("on")
                ax.set_xticks([]), ax.set_yticks([])
                colour = "tab:green" if hit["label"] == q_label else "tab:red"
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2)
    fig.suptitle(f"{Path(index_dir).name}: top {top} of {len(index):,} by Hamming distance "
                 f"({index.bits} bits; ties in insertion order)", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_png, lambda p: fig.savefig(p, dpi=130, format="png"))
    return out_png


# ----------------------------------------------------------------------------------------------
# Command line


def _user_errors(fn):
    """Turn OS errors (permissions, disk full, ...) into one-line errors main() prints."""
    def wrapped(args):
        try:
            return fn(args)
        except SearchError:
            raise
        except FileNotFoundError:
            raise
        except OSError as err:
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            raise SearchError(f"{where}{err.strerror or err}") from None
        except KeyboardInterrupt:
            print("interrupted: the index is as it was before this command; rerun it to continue", file=sys.stderr)
            return 130
    wrapped.__doc__ = fn.__doc__
    return wrapped


@_user_errors
def cmd_encode(args) -> int:
    result = encode(args.model, args.images, args.out, progress=not args.quiet, quiet=args.quiet)
    manifest = result["manifest"]
    n, k = manifest["count"], manifest["bits"]
    print(f"index {args.out}: {n:,} images ({manifest['labelled']:,} labelled), {k} bits, "
          f"{len(manifest['shards'])} shard(s); this encode added {result['added']:,} in {result['seconds']:.1f} s")
    print(f"memory for the codes: {n:,} x {k} bits / 8 = {manifest['memory_bytes']:,} bytes "
          f"({_human_bytes(manifest['memory_bytes'])})")
    return 0


@_user_errors
def cmd_search(args) -> int:
    results = search(args.index, args.queries, args.top, quiet=args.quiet)
    index = _read_manifest(Path(args.index))
    print(f"# {index['count']:,} indexed images, {index['bits']} bits; {TIE_NOTE}")
    for r in results:
        print(f"query {r['query']}: top {len(r['results'])}")
        width = max(len(h["name"]) for h in r["results"])
        print(f"  {'rank':>4}  {'distance':>8}  {'name':<{width}}  label")
        for h in r["results"]:
            print(f"  {h['rank']:>4}  {h['distance']:>8}  {h['name']:<{width}}  {h['label'] or '-'}")
    return 0


@_user_errors
def cmd_evaluate(args) -> int:
    s = evaluate(args.index, args.queries, ks=args.k, radius=args.radius, progress=not args.quiet, quiet=args.quiet)
    print(f"{s['n_queries']:,} queries ({s['query_classes']} classes) against {s['n_database']:,} indexed images "
          f"({s['index_classes']} classes), {s['bits']} bits")
    print(f"mAP (exact expectation over the order within Hamming ties): {s['map']:.4f}")
    for k, v in s["precision_at_k"].items():
        print(f"precision@{k}: {v:.4f}")
    if s["ks_dropped"]:
        print(f"(precision@k not computed for k > {s['n_database']:,}: {', '.join(map(str, s['ks_dropped']))})")
    print(f"precision within Hamming radius {s['radius']}: {s['precision_within_radius']:.4f}")
    return 0


def add_subcommands(sub) -> None:
    """Register ``encode``, ``search`` and ``evaluate`` on an argparse subparsers object."""
    import argparse

    fmt = argparse.RawDescriptionHelpFormatter
    e = sub.add_parser(
        "encode", help="hash a folder or archive of images into a searchable index (or add to one)",
        formatter_class=fmt, description=(
            "Compute each image's code with a trained model, exactly as in training (the run's feature kind,\n"
            "image size, grey/RGB handling and feature scaling; other sizes and modes are converted and\n"
            "counted), and store the codes in INDEX (a folder: faiss IndexBinaryFlat shards, name/label lists,\n"
            "manifest.json, a copy of the model). Encoding onto an existing INDEX adds the images whose names\n"
            "are not there yet, as a new shard, and refuses a different model or feature pipeline.\n"
            "Undecodable files are reported and skipped. A kill at any moment leaves the previous index intact."),
        epilog="labels: an image's label is the name of the folder holding it (PATH/<class>/<image>)")
    e.add_argument("--model", metavar="RUN_DIR",
                   help="finished run directory (model.pt, config.json[, feature_scaling.npz]); optional when "
                        "adding to an existing index (its own copy of the model is used)")
    e.add_argument("--images", required=True, metavar="PATH",
                   help="folder of images (flat or <class>/<image>), a .tar/.tar.gz/.zip of one, or one image")
    e.add_argument("--out", required=True, metavar="INDEX", help="index folder (new, empty, or an existing index)")
    e.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    e.set_defaults(func=cmd_encode)

    s = sub.add_parser(
        "search", help="nearest indexed images of query images, by Hamming distance",
        formatter_class=fmt, description=(
            "Encode each query image with the index's model and print its TOP nearest indexed images:\n"
            "rank, Hamming distance, file name and label. The search is exact (faiss IndexBinaryFlat);\n"
            "images at equal distance are listed in insertion order."))
    s.add_argument("--index", required=True, metavar="INDEX", help="index folder made by encode")
    s.add_argument("queries", nargs="+", metavar="QUERY_IMAGE", help="image file(s)")
    s.add_argument("--top", type=int, default=10, metavar="K", help="results per query (default 10)")
    s.add_argument("--quiet", action="store_true", help="no notes about converted images")
    s.set_defaults(func=cmd_search)

    v = sub.add_parser(
        "evaluate", help="mAP, precision@k and radius-2 precision of labelled queries against an index",
        formatter_class=fmt, description=(
            "Encode a labelled query collection (PATH/<class>/<image>, folder or archive) and rank the whole\n"
            "labelled index for each query: mAP (exact expectation over the order within Hamming ties,\n"
            "rsgh.metrics), precision@k and precision within Hamming radius R. A database image is relevant\n"
            "to a query when their class folder names are equal."))
    v.add_argument("--index", required=True, metavar="INDEX", help="index folder made by encode (labelled)")
    v.add_argument("--queries", required=True, metavar="PATH", help="labelled query images: <class>/<image>")
    v.add_argument("--k", type=int, nargs="+", default=[100, 500, 1000], help="precision@k (default 100 500 1000)")
    v.add_argument("--radius", type=int, default=2, help="Hamming radius of the radius precision (default 2)")
    v.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    v.set_defaults(func=cmd_evaluate)


def main(argv: list[str] | None = None) -> int:
    """``python -m rsgh.search encode|search|evaluate ...`` (the same as ``python -m rsgh ...``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rsgh", description=__doc__.split("\n\n")[0])
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
