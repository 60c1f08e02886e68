"""Files written safely: atomic writes (a reader never sees a half-written file, and a process killed
while writing leaves the previous version in place) and advisory folder locks (one writer at a time).

Temporary files carry the project's own prefix (``.rsgh-tmp-``), so that cleaning up after a killed
writer never touches a file of the user's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import BusyError

TMP_PREFIX = ".rsgh-tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp_path)`` into a new temporary file beside ``path``, fsync it, then rename it
    over ``path``. The temporary file is removed if ``write`` fails; an ``OSError`` (a full disk, a
    read-only folder) names ``path``, not the temporary file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(err, OSError) and err.errno is not None and err.filename != str(path):
            try:
                named = type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path))
            except Exception:  # an OSError subclass with another constructor: as it is
                raise err from None
            raise named from err
        raise


def atomic_write_file(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Like :func:`atomic_write`, for writers that take an open binary file (``np.save``...)."""
    def through_file(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    atomic_write(path, through_file)


def atomic_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def check_writable(path: str | os.PathLike) -> None:
    """Raise the ``OSError`` that creating ``path`` would raise (a read-only filesystem, a folder
    without write permission, a file where a folder should be), before anything is computed."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    folder = existing if existing.is_dir() else existing.parent
    read_only = False
    with contextlib.suppress(OSError, AttributeError):  # statvfs: POSIX only
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    if read_only:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files left in ``folder`` by a killed writer (only the project's own; hold the lock)."""
    for stale in folder.glob(f"{TMP_PREFIX}*.tmp"):
        stale.unlink(missing_ok=True)


def is_locked(folder: Path) -> bool:
    """Whether another process holds the lock of ``folder`` now (creates nothing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        fh = open(folder / ".lock", "rb")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


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
