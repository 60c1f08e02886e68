"""Model and checkpoint files received from someone else: read as tensors and plain data only (a file
cannot run code), and never costing more memory than their size.

- a file must be a torch zip archive whose records are stored, not compressed (torch and rsgh write
  them so; a deflated record may inflate to gigabytes, and the legacy format allocates what its pickle
  declares), of at most ``$RSGH_MAX_MODEL_BYTES`` bytes (default 1 GiB: an E2 checkpoint at 128 bits
  is a few MB);
- ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts, no other object;
- a model's tensors are checked against the shapes its configuration implies before the model is
  built (a configuration may declare a model of gigabytes beside a small state).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch

from ..config import Config
from ..paths import env_positive_int


class DamagedRunError(ValueError):
    """A file of a run folder cannot be read, or does not belong to this run."""


MAX_MODEL_VAR = "RSGH_MAX_MODEL_BYTES"
DEFAULT_MAX_MODEL = 1 << 30  # an E2 checkpoint at 128 bits is a few MB


def check_torch_zip(path: Path) -> None:
    """Refuse, before torch reads it, a file that could cost more memory than its size: not a torch zip
    (the legacy format allocates what its pickle declares), a record that is compressed (rsgh and torch
    store them; a deflated one may inflate to gigabytes), or a file larger than the limit."""
    limit = env_positive_int(MAX_MODEL_VAR, DEFAULT_MAX_MODEL)
    size = path.stat().st_size
    if size > limit:
        raise DamagedRunError(f"{path} is {size:,} bytes, more than the limit of {limit:,} for a model or "
                              f"checkpoint; if it is a genuine rsgh file, raise the limit with {MAX_MODEL_VAR}=<bytes>")
    try:
        with zipfile.ZipFile(path) as zf:
            packed = [i.filename for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED]
            declared = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DamagedRunError(f"{path} is not a readable rsgh file ({err}: not a torch zip archive); it is "
                              "truncated or damaged: get an intact copy") from None
    if packed:
        raise DamagedRunError(f"{path} is not an rsgh file: its record {packed[0]} is compressed (rsgh and torch "
                              "store records uncompressed; a compressed one may inflate far beyond the file's size); "
                              "ask for a file written by rsgh")
    if declared > size:
        raise DamagedRunError(f"{path} is damaged: its records declare {declared:,} bytes in a file of {size:,}; "
                              "get an intact copy")


def _safe_load(path: Path, device="cpu"):
    """``torch.load`` of tensors and plain data only: never unpickles an object, and reads only a
    torch zip of stored records (:func:`check_torch_zip`)."""
    check_torch_zip(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated zip, a pickled object (refused), garbage: many kinds
        text = str(err).strip()
        if "Weights only load failed" in text and "GLOBAL" in text:
            raise DamagedRunError(f"{path} is not an rsgh file: it holds Python objects other than tensors and "
                                  "plain data, which rsgh never unpickles (they could run code); do not use it, "
                                  "ask for a file written by rsgh") from None
        if "Weights only load failed" in text:  # torch's advice (weights_only=False) must not be followed here
            why = next((t.split(":", 1)[1].strip() for t in text.splitlines() if "Unpickler error" in t),
                       "an entry rsgh does not read")
            raise DamagedRunError(f"{path} is not an rsgh file: it holds data other than tensors and plain values "
                                  f"({why}), which rsgh never unpickles; do not use it, ask for a file written by "
                                  "rsgh") from None
        lines = [t.strip() for t in text.splitlines() if t.strip() and not t.startswith(("Please file", "Check the"))]
        first = lines[0] if lines else type(err).__name__
        raise DamagedRunError(f"{path} is not a readable rsgh file ({first}); it is truncated or damaged: "
                              "get an intact copy") from None


def model_shapes(cfg: Config, input_dim: int) -> dict[str, tuple[int, ...]]:
    """The shape of each parameter of one model of ``cfg`` with ``input_dim`` inputs (as
    ``HashModel`` builds it), computed without allocating anything."""
    if cfg.arch == "reference":
        d, k = input_dim, cfg.bits
        return {"W": (d, k), "b": (1, k), "U": (k, d), "scale": (1, d), "shift": (1, d)}
    inner = [cfg.width] * max(cfg.hidden_layers - 1, 0) + [cfg.bits] * min(cfg.hidden_layers, 1)
    shapes = {}
    for side, sizes in (("enc", [input_dim, *inner, cfg.bits]), ("dec", [cfg.bits, *inner, input_dim])):
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            shapes[f"{side}{i}_weight"], shapes[f"{side}{i}_bias"] = (fan_in, fan_out), (1, fan_out)
    return shapes


def check_shapes(cfg: Config, input_dim: int, state, path: Path) -> None:
    """A clear error, before any model is built, when a saved state's tensors are not those its
    configuration implies (a configuration may declare a model of gigabytes beside a small state)."""
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise DamagedRunError(f"{path} is not an rsgh model (its state_dict is not a dict of tensors)")
    if input_dim < 1:
        raise DamagedRunError(f"{path} is not an rsgh model (input_dim={input_dim})")
    want, have = model_shapes(cfg, input_dim), {name: tuple(t.shape) for name, t in state.items()}
    if want != have:
        diff = next(f"{k}: file {have.get(k)} vs configuration {want.get(k)}" for k in sorted(set(want) | set(have))
                    if want.get(k) != have.get(k))
        raise DamagedRunError(f"{path} is damaged: its tensors are not those of its configuration ({diff}); get an "
                              "intact copy")
