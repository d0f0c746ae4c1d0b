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
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit",
    "temporaries_of",
    "temporary_path",
]


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def temporary_path(target: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``target`` (same folder, so the final rename is atomic)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def temporaries_of(target: str | os.PathLike[str]) -> list[Path]:
    """Temporaries of ``target`` that exist now (a running writer's, or a killed run's)."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f".{_glob_escape(target.name)}.*.tmp"))


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


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
