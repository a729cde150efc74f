"""Atomic outputs: write to a temporary sibling, then rename into place.

A crash part-way leaves either the previous file or nothing, never a truncated file
that a later step would take as complete. A write that fails for want of room (a full disk,
a quota, a read-only file system) ends in :class:`OutputWriteError`, which names the output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from crosstrace.errors import CrosstraceError, OutputWriteError

# errors that say the output has no room, whichever library raised them (pyarrow, safetensors,
# DuckDB and torch put the OS message in their own exception types)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def no_room(exc: BaseException) -> str | None:
    """The OS's words when ``exc`` says a write found no room, else None."""
    if isinstance(exc, CrosstraceError):
        return None
    if isinstance(exc, OSError) and exc.errno in NO_ROOM:
        return os.strerror(exc.errno)
    text = str(exc)
    return next((os.strerror(c) for c in NO_ROOM if os.strerror(c) in text), None)


@contextlib.contextmanager
def _named(final: Path) -> Iterator[None]:
    """Re-raise a no-room error of the block as :class:`OutputWriteError` naming ``final``."""
    try:
        yield
    except Exception as exc:
        reason = no_room(exc)
        if reason is None:
            raise
        raise OutputWriteError(
            f"could not write {final}: {reason} (nothing of it was left; free space or raise "
            "the quota, then rerun)"
        ) from exc


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent, suffix=path.suffix)
    os.close(fd)
    os.unlink(name)  # writers create the file themselves
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    final = Path(path)
    with _named(final):
        tmp = _tmp_sibling(final, is_dir=False)
        try:
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"atomic_file: the writer did not create {tmp}")
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                _remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``path``; swap it into place if the block succeeds.

    An existing folder at ``path`` is replaced only after the new one is complete.
    """
    final = Path(path)
    with _named(final):
        tmp = _tmp_sibling(final, is_dir=True)
        try:
            yield tmp
            old: Path | None = None
            if final.exists():
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                _remove(old)
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                _remove(old)
        finally:
            if tmp.exists():
                _remove(tmp)
