"""A trained model ready for new images: the model of a run folder (or of an index, which keeps
copies of its files), the shared feature pipeline (``rsgh.data.features``), and the images of a
folder or archive, decoded and converted to what the model was trained on.

Features are computed exactly as in training: the run's feature kind (pixels or GIST-512), its image
geometry (``rsgh.data.datasets.image_geometry``), then the run's feature scaling, then the model's
deterministic code. Images of another mode (grey, RGBA, palette, CMYK, ...) are converted and images
of another size resized with PIL bilinear, and the commands say how many.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..data.archives import (IMAGE_EXTENSIONS, decode_image, image_mode, is_hidden, is_image_name, name_parts,
                             open_reader, read_file)
from ..data.features import FeatureSpec, apply_scaling, feature_spec, image_features, load_scaling
from ..files import open_regular, printable

BATCH = 1024  # images decoded, featurised and hashed per step
SCALING_FILE = "feature_scaling.npz"


class SearchError(ValueError):
    """A user-facing problem with an index, a model or images (printed as one line)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shown(items: Sequence[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def say(text: str, quiet: bool = False) -> None:
    """Notes about what was done (to stderr, so stdout holds only results)."""
    if not quiet:
        print(printable(text), file=sys.stderr)  # names come from received archives and indexes

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

        x = apply_scaling(image_features(images, self.spec), self.scaling)
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
    from ..train.rundir import DamagedRunError, load_model  # imports torch: after the quick checks

    try:
        model, cfg = load_model(run_dir)  # tensors and plain data only: a received file runs no code
    except DamagedRunError as err:  # its message names the file already
        raise SearchError(str(err)) from None
    except (ValueError, KeyError, TypeError) as err:
        raise SearchError(f"{model_path} is not a readable rsgh model ({first_line(err)})") from None
    try:
        spec = feature_spec(cfg, int(model.input_dim))
    except ValueError as err:
        raise SearchError(str(err)) from None
    scaling, scaling_path, scaling_sha = {}, None, None
    if cfg.feature_scaling != "none":
        scaling_path = run_dir / SCALING_FILE
        if not scaling_path.is_file():
            raise FileNotFoundError(f"{scaling_path} not found: the run scales its features "
                                    f"(feature_scaling={cfg.feature_scaling}) and encoding needs the saved scaling")
        try:
            scaling = load_scaling(scaling_path, spec.dim)
        except ValueError as err:
            raise SearchError(str(err)) from None
        scaling_sha = sha256(scaling_path)
    return Encoder(model, cfg, spec, scaling, model_path, sha256(model_path), scaling_path, scaling_sha)


@dataclass
class Collection:
    """The image files of a folder, an archive or a single image, open for reading."""

    path: Path  # as given
    names: list[str]  # relative posix names, in listing order
    labels: dict[str, str | None]  # name -> the folder holding it (None at the top level)
    members: dict[str, str]  # name -> member name in the folder / archive that ``reader`` reads
    reader: object  # an open rsgh.data.archives reader (an archive is indexed once)
    ignored: list[str] = field(default_factory=list)  # files without an image extension


@contextlib.contextmanager
def open_images(path: str | os.PathLike) -> Iterator[Collection]:
    """The images of a folder / archive (or one image file), labelled by their parent folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a folder of images, a .tar/.tar.gz/.zip of one, "
                                "or an image file")
    if path.is_file() and is_image_name(path.name):
        with open_reader(path.parent) as reader:
            yield Collection(path, [path.name], {path.name: None}, {path.name: path.name}, reader)
        return
    with open_reader(path) as reader:
        names = [n for n in reader.names() if not is_hidden(name_parts(n))]
        images = [n for n in names if is_image_name(n)]
        if not images:
            raise SearchError(f"{path}: no image files (by extension: {', '.join(IMAGE_EXTENSIONS)})")
        members = {"/".join(name_parts(n)): n for n in images}
        if len(members) != len(images):
            raise SearchError(f"{path}: some image names occur twice in the archive")
        labels = {n: (n.rsplit("/", 2)[-2] if "/" in n else None) for n in members}
        yield Collection(path, list(members), labels, members, reader, [n for n in names if not is_image_name(n)])


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

        try:
            mode = image_mode(data)
            rgb = decode_image(data, name)  # grey, palette, RGBA (alpha dropped), CMYK, 16 bit -> RGB
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, EOFError, ...
            from PIL import UnidentifiedImageError

            why = "not an image file PIL can read" if isinstance(err, UnidentifiedImageError) else first_line(err)
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
            say(f"converted {sum(self.converted.values())} image(s) to {what}, as the model was trained on "
                 f"{what} {s.dataset} images: {modes}", quiet)
        if self.resized:
            sizes = ", ".join(f"{sz} x{k}" for sz, k in self.resized.most_common(5))
            say(f"resized {sum(self.resized.values())} image(s) to {s.size[0]}x{s.size[1]} with PIL bilinear "
                 f"(the model's input size); sizes seen (height x width): {sizes}", quiet)
        if self.bad:  # always said, --quiet or not
            say(f"skipped {len(self.bad)} undecodable file(s): "
                 + shown([f"{n} ({why})" for n, why in self.bad], 3))


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


def encode_files(encoder: Encoder, paths: Sequence[str | os.PathLike], quiet: bool = False,
                 ) -> tuple[np.ndarray, list[str]]:
    """Codes of single image files (undecodable ones reported and skipped; an error if none is left)."""
    prep = Preparer(encoder.spec)
    images, kept = [], []
    for p in map(Path, paths):
        if p.is_dir():
            raise SearchError(f"query {p} is a folder: give image files (evaluate takes a folder of labelled queries)")
        if not p.exists():
            raise FileNotFoundError(f"query image {p} does not exist")
        image = prep(str(p), read_file(p, "query image"))
        if image is not None:
            images.append(image)
            kept.append(str(p))
    prep.report(quiet)
    if not images:
        raise SearchError(f"none of the {len(paths)} query image(s) could be decoded")
    return encoder.codes(np.stack(images)), kept
