"""Files written safely: atomic writes (a reader never sees a half-written file, and a process killed
while writing leaves the previous version in place) and advisory folder locks (one writer at a time).

Temporary files carry the project's own prefix (``.rsgh-tmp-``), so that cleaning up after a killed
writer never touches a file of the user's. Lock files are opened without following a symbolic link,
and files are read only when they are regular files (a FIFO or a device named ``*.png`` is refused,
never waited on). Names from received files are made printable before they reach the terminal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import BusyError, UserError

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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


class NotRegularFile(UserError):
    """A path that should be a regular file is a FIFO, a device, a socket, a folder or a link."""


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """``open(path, "rb")`` of a regular file only: a FIFO, a device or a socket is refused at once
    (opened without blocking, then checked), never read or waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{printable(os.fspath(path))} is {_kind(mode)}, not a regular {what}; "
                                 "give a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` (followed if a link) is a regular file, without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _open_lock(folder: Path, create: bool) -> int | None:
    """The descriptor of ``folder/.lock``, opened without following a link (a ``.lock`` that is a
    symbolic link, a FIFO or anything but a regular file is refused); None when absent and not ``create``."""
    path = folder / ".lock"
    flags = os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
            mode = os.lstat(path).st_mode
            raise NotRegularFile(f"{printable(str(path))} is {_kind(mode)}, not rsgh's lock file; remove it "
                                 "(rsgh never follows a link there)") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(f"{printable(str(path))} is {_kind(mode)}, not rsgh's lock file; remove it")
    return fd


def is_locked(folder: Path) -> bool:
    """Whether another process holds the lock of ``folder`` now (creates nothing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        fd = _open_lock(folder, create=False)
    except NotRegularFile:
        raise
    except OSError:
        return False
    if fd is None:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str):
    """Hold an advisory lock on ``folder/.lock`` (POSIX ``flock``), or raise :class:`BusyError`
    naming ``what`` is using it. The lock dies with its process, so a killed writer never leaves
    a folder locked. The lock file is opened without following a symbolic link."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = _open_lock(folder, create=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BusyError(f"{folder} is in use by another process ({what}); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# Characters that change what a terminal shows: C0/C1 controls (escape sequences, newlines, carriage
# returns) and the bidirectional overrides and isolates (a right-to-left override makes "gpj.exe" read
# "exe.jpg").
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text) -> str:
    """``text`` safe to print: every control, format or bidirectional-override character written as
    its escape (``\\x1b``, ``\\n``, ``\\u202e``), so a name from a received file can neither move
    the cursor, change colours, start a new line, nor reverse the text around it."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if _unsafe(ch) else ch for ch in text)


def _unsafe(ch: str) -> bool:
    return ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
