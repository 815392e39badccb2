"""Crash-safe file writing shared by checkpoints, logs, run files and results, the
writable-folder check every run makes before it writes anything, and the cleaning
of temporary files that a killed write left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import SelmaskError


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (with parents) and check a file can be written in it.

    Runs call this first, so an unwritable output folder is one clear error
    before any training, not a failure hours later at the first checkpoint.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise SelmaskError(f"directory {path} is not writable: {err.strerror or err}") from err
    return path


# The temporary file of ``atomic_write(folder/name)`` is ``folder/.<name>.<random>.tmp``:
# hidden, named after its target, with mkstemp's random letters. Both helpers below
# build or match that one pattern, so the writer and the cleaner cannot drift apart.
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]+" + re.escape(TEMP_SUFFIX))


def _temp_prefix(name: str) -> str:
    return f".{name}."


def is_temp_file(name: str) -> bool:
    """True if ``name`` is the name :func:`atomic_write` gives its temporary files."""
    return _TEMP_NAME.fullmatch(name) is not None


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` and its subfolders.

    A process killed mid-write leaves its temp file behind (a checkpoint's is
    ~300 MB). Call this only while no other process can be writing in
    ``folder`` (a run holds its lock), or a live write would lose its file.
    Returns the deleted paths.
    """
    removed = []
    for parent, _, names in os.walk(folder):  # does not follow symlinks out of the folder
        for name in filter(is_temp_file, names):
            path = Path(parent) / name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Write a file so that ``path`` always holds the old content or the new, never half of one.

    ``write(file)`` fills a temporary file in the same directory; it is
    fsynced and renamed over ``path`` (``os.replace``). The file gets the
    usual permissions (0666 minus the umask), not mkstemp's private 0600, so
    runs on a shared machine stay readable by the team.
    """
    path = Path(path)
    try:
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=TEMP_SUFFIX)
    except OSError as error:
        reason = _disk_problem(error)
        if reason is None:
            raise
        raise SelmaskError(f"cannot write {path}: {reason}; choose another output folder") from None
    try:
        os.fchmod(handle, 0o666 & ~_current_umask())
        text_options = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(handle, "wb" if binary else "w", **text_options) as tmp_file:
            write(tmp_file)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        written = _size(tmp_name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        reason = _disk_problem(error)
        if reason is None:
            raise
        raise SelmaskError(f"cannot write {path}: {reason} ({written} bytes written before it failed, "
                           f"{_free_bytes(path.parent)} bytes free there); free some space or choose another output folder; "
                           f"{path} still holds its previous content, if any") from None
    _fsync_dir(path.parent)
    return path


def append_text(path: str | Path, text: str) -> Path:
    """Append ``text`` (UTF-8) to ``path``, for logs that grow a row at a time.

    A full, read-only or forbidden disk is one SelmaskError naming the file
    and the bytes needed, and the file is cut back to its old length first:
    the failed write may have stored part of ``text``, and half a row would
    corrupt the log for the next reader (shrinking a file needs no space).
    """
    path = Path(path)
    old_size = _size(path) if path.exists() else None
    try:
        with open(path, "a", encoding="utf-8", newline="") as file:
            file.write(text)
    except OSError as error:
        _restore_length(path, old_size)
        reason = _disk_problem(error)
        if reason is None:
            raise
        raise SelmaskError(f"cannot write {path}: {reason} ({len(text.encode())} bytes needed, "
                           f"{_free_bytes(path.parent)} bytes free there); free some space or choose another "
                           f"output folder; {path} keeps its previous content") from None
    return path


def _restore_length(path: Path, old_size: int | None) -> None:
    """Undo a failed append: back to ``old_size`` bytes, or no file if there was none."""
    with contextlib.suppress(OSError):
        if old_size is None:
            path.unlink()
        else:
            os.truncate(path, old_size)


def _free_bytes(folder: Path) -> int | str:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return "unknown"


_DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}


def _disk_problem(error: BaseException) -> str | None:
    """What went wrong, in words, when ``error`` is the disk's fault (full, read-only, no permission)."""
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return _DISK_ERRNOS[error.errno]
    # torch.save's stream writer: a write that failed, or one that stored fewer bytes than it was given
    # ("unexpected pos": what it says when the disk fills up under it)
    if isinstance(error, RuntimeError) and ("write failed" in str(error) or "unexpected pos" in str(error)):
        return "the write failed (is the disk full?)"
    return None


def _size(name: str) -> int:
    try:
        return os.path.getsize(name)
    except OSError:
        return 0


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` for text (UTF-8, newlines as given)."""
    return atomic_write(path, lambda file: file.write(text), binary=False)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories can't be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
