"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed into place.

An interrupted run therefore leaves either the old file or the new one, never half a file that looks finished.
Every module that writes results (GeoJSON and its sidecars, model cards and weights, tile manifests and tiles,
label-mask TIFFs, synthetic slides and their truth, overlays, prediction metadata) goes through here:
:func:`atomic_write_bytes` / :func:`atomic_write_text` for data in hand, :func:`atomic_path` for a writer that
streams into a path, :func:`temporary_path` + :func:`commit` for a writer that holds its file open across calls.
Temporaries are named :func:`temporary_path` style (``.<name>.<pid>-<random>.tmp``), so that
:func:`temporaries_of` finds those a killed run left behind.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.json"
>>> atomic_write_text(target, '{"ok": true}\\n')
>>> target.read_text()
'{"ok": true}\\n'
>>> with atomic_path(target) as tmp:
...     _ = tmp.write_text("streamed")
>>> target.read_text(), temporaries_of(target)
('streamed', [])
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qpbridge.errors import OutputError

__all__ = [
    "OutputLocked",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit",
    "output_lock",
    "remove_stale_temporaries",
    "target_of_temporary",
    "temporaries_of",
    "temporary_path",
]


_TEMPORARY = re.compile(r"\.(.+)\.[0-9]+-[0-9a-f]{8}\.tmp")


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def temporary_path(target: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``target`` (same folder, so the final rename is atomic)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def target_of_temporary(path: str | os.PathLike[str]) -> Path | None:
    """The target a :func:`temporary_path` stands for, or ``None`` when ``path`` is no such temporary.

    >>> target_of_temporary("out/.slide.geojson.4242-0a1b2c3d.tmp"), target_of_temporary("out/slide.geojson")
    (PosixPath('out/slide.geojson'), None)
    """
    path = Path(path)
    match = _TEMPORARY.fullmatch(path.name)
    return None if match is None else path.with_name(match[1])


def temporaries_of(target: str | os.PathLike[str]) -> list[Path]:
    """Temporaries of ``target`` that exist now (a running writer's, or a killed run's)."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        return []
    mine = re.compile(rf"\.{re.escape(target.name)}\.[0-9]+-[0-9a-f]{{8}}\.tmp")
    return sorted(path for path in folder.iterdir() if mine.fullmatch(path.name))


def commit(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Flush the finished file ``tmp`` to disk, give it a plain file's mode (0666 & ~umask) and rename it over
    ``target``. On failure ``tmp`` is removed and ``target`` is left as it was."""
    tmp, target = Path(tmp), Path(target)
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path to write ``target`` through: committed over ``target`` when the block ends cleanly,
    removed when it raises (``target`` is then left as it was). Writers that pick a format by extension must be
    told the format (the temporary ends in ``.tmp``)."""
    tmp = temporary_path(target)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, target)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (mode 0666 & ~umask, like a plain ``open``)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically (newlines written as given)."""
    atomic_write_bytes(target, text.encode("utf-8"))


class OutputLocked(OutputError):
    """Another process holds the lock of an output (it is writing it now)."""


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextmanager
def output_lock(target: str | os.PathLike[str], what: str = "qpbridge") -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a hidden ``.<name>.lock`` beside it) while writing it.

    A second writer of the same output fails at once with :class:`OutputLocked`, naming the process that holds
    it; the lock goes with the process (``flock``), so a killed run never leaves it held. On systems without
    ``fcntl`` the lock is a no-op.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "slide.geojson"
    >>> with output_lock(out):
    ...     with output_lock(out):  # doctest: +ELLIPSIS
    ...         pass
    Traceback (most recent call last):
    ...
    qpbridge.atomic.OutputLocked: ...slide.geojson is being written by another qpbridge run (pid ...): wait for ...
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        yield
        return
    target = Path(target)
    lock = _lock_path(target)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputLocked(f"{target} is being written by another {what} run (pid {holder}): wait for it to "
                               "finish, or choose another output") from None
        try:  # the holder before us may have removed the file after we opened it: lock the one that is there
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def remove_stale_temporaries(*targets: str | os.PathLike[str]) -> int:
    """Remove the temporaries a killed run left beside ``targets``; call it while holding their
    :func:`output_lock` (then no live writer owns them). Returns how many were removed."""
    removed = 0
    for target in targets:
        for tmp in temporaries_of(target):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
