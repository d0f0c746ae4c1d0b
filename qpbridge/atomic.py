"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed into place.

An interrupted run therefore leaves either the old file or the new one, never half a file that looks finished.
Every module that writes results (GeoJSON sidecars, model cards and weights, tile manifests, synthetic truth,
prediction metadata) goes through here.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.json"
>>> atomic_write_text(target, '{"ok": true}\\n')
>>> target.read_text()
'{"ok": true}\\n'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (mode 0666 & ~umask, like a plain ``open``)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically (newlines written as given)."""
    atomic_write_bytes(target, text.encode("utf-8"))
