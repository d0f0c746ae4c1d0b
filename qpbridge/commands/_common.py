"""What every command shares: turning library errors into one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from qpbridge.errors import QpbridgeError

#: Progress and messages go to stderr so that stdout stays clean for --json output.
err_console = Console(stderr=True, highlight=False)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Run a command body; a :class:`QpbridgeError` becomes ``error: ...`` on stderr and its exit code.

    Ctrl-C exits with 130 and a short message instead of a traceback.
    """
    try:
        yield
    except QpbridgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing half-written was left behind", err=True)
        raise typer.Exit(130) from None


def warn(message: str) -> None:
    """Print one warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr)
