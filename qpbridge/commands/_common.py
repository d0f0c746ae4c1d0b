"""What every command shares: turning library errors into one line and an exit code."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from qpbridge.atomic import target_of_temporary
from qpbridge.errors import QpbridgeError

__all__ = ["describe_os_error", "err_console", "reported_errors", "warn"]

#: Progress and messages go to stderr so that stdout stays clean for --json output.
err_console = Console(stderr=True, highlight=False)

_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
_LEFT = "nothing half-written was left"


def describe_os_error(exc: OSError, output: str | os.PathLike[str] | None = None) -> str:
    """One line for an :class:`OSError` (disk full, read-only file system, permissions...), without ``error:``.

    The file named is the error's own (a temporary is named by the file it stands for), else ``output``.

    >>> import errno
    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device"), "tiles")
    'no space left on the device writing tiles: free some space or choose another output; nothing half-written was left'
    >>> describe_os_error(OSError(errno.EDQUOT, "Disk quota exceeded", "out/.a.geojson.12-0a1b2c3d.tmp"), "x")
    'disk quota exceeded writing out/a.geojson: free some space or choose another output; nothing half-written was left'
    >>> describe_os_error(OSError(errno.EROFS, "Read-only file system"), "o.svs")
    'read-only file system writing o.svs: choose another output; nothing half-written was left'
    >>> describe_os_error(PermissionError(errno.EACCES, "Permission denied", "out/a.geojson"))
    'permission denied: out/a.geojson: check its permissions, or choose another path'
    >>> describe_os_error(OSError(errno.EIO, "Input/output error", "a.svs"))
    'a.svs: Input/output error'
    """
    name = exc.filename
    path: str | None = None
    if isinstance(name, (str, os.PathLike)) and str(name):
        target = target_of_temporary(name)
        path = str(target if target is not None else Path(name))
    elif output is not None:
        path = str(output)
    where = f" writing {path}" if path else " writing the output"
    if exc.errno in _FULL:
        return f"{_FULL[exc.errno]}{where}: free some space or choose another output; {_LEFT}"
    if exc.errno == errno.EROFS:
        return f"read-only file system{where}: choose another output; {_LEFT}"
    if exc.errno == errno.EFBIG:
        return f"file too large for its file system{where}: choose another output; {_LEFT}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path or 'the output'}: check its permissions, or choose another path"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{path}: {reason}" if path else reason


@contextmanager
def reported_errors(output: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Run a command body; a :class:`QpbridgeError` becomes ``error: ...`` on stderr and its exit code.

    An :class:`OSError` (a full disk or quota, a read-only file system, a permission) becomes one line that
    names the file, else ``output`` (what the command writes; :func:`describe_os_error`), and exit code 1:
    the writers have removed what they wrote by then (:mod:`qpbridge.atomic`). Ctrl-C exits with 130 and a
    short message instead of a traceback.
    """
    try:
        yield
    except QpbridgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing half-written was left behind", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:
        typer.echo(f"error: {describe_os_error(exc, output)}", err=True)
        raise typer.Exit(1) from None


def warn(message: str) -> None:
    """Print one warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr)
