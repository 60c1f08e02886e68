"""Where data lives: the data root, taken from ``--data-root``, else ``RSGH_DATA``, else ``data/cache``."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "RSGH_DATA"
# The project's own download cache (ignored by git), beside the package in a checkout.
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "cache"
# The published book: no command writes into it (only ``reproduce --publish``, for its maintainers).
BOOK = Path(__file__).resolve().parent.parent / "book"


def check_outside_book(path: str | os.PathLike, option: str = "--out", book: str | os.PathLike = BOOK) -> None:
    """A ValueError when ``path`` is the published book or lies inside it (links and ``..`` resolved)."""
    where, book = Path(path).expanduser().resolve(), Path(book).resolve()
    if where == book or book in where.parents:
        raise ValueError(f"{option} {path} is inside the published book ({book}), which commands never write "
                         "into; choose a folder outside it")


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder that holds datasets in the torchvision-like layout (``MNIST/raw/...``)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_ROOT


def cache_dir(root: Path | None = None) -> Path:
    """A writable folder for derived files (features, decompressed copies).

    Never inside a data root given by the user, which may be read-only (``../shared/data``
    in CI): ``RSGH_CACHE`` if set, else ``data/cache/derived`` of the checkout.
    """
    env = os.environ.get("RSGH_CACHE")
    path = Path(env).expanduser() if env else DEFAULT_ROOT / "derived"
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_positive_int(name: str, default: int) -> int:
    """A positive integer setting from the environment variable ``name`` (``default`` when unset or empty),
    or a ValueError that names the variable."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={text!r}: expected a positive integer")
    return value
