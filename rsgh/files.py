"""Files written safely: atomic writes (a reader never sees a half-written file, and a process killed
while writing leaves the previous version in place) and advisory folder locks (one writer at a time).

Temporary files carry the project's own prefix (``.rsgh-tmp-``), so that cleaning up after a killed
writer never touches a file of the user's.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import BusyError

TMP_PREFIX = ".rsgh-tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp_path)`` into a new temporary file beside ``path``, fsync it, then rename it
    over ``path``. The temporary file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=".tmp")
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


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files left in ``folder`` by a killed writer (only the project's own; hold the lock)."""
    for stale in folder.glob(f"{TMP_PREFIX}*.tmp"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str):
    """Hold an advisory lock on ``folder/.lock`` (POSIX ``flock``), or raise :class:`BusyError`
    naming ``what`` is using it. The lock dies with its process, so a killed writer never leaves
    a folder locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BusyError(f"{folder} is in use by another process ({what}); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
