"""Atomic file writes: a reader never sees a half-written file, and a process killed while
writing leaves the previous version of the file in place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp_path)`` into a new temporary file beside ``path``, fsync it, then rename it
    over ``path``. The temporary file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_file(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Like :func:`atomic_write`, for writers that take an open binary file (``np.save``...)."""
    def through_file(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    atomic_write(path, through_file)


def atomic_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))
