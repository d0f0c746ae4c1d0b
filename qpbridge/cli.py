"""The ``qpbridge`` command line: a thin Typer app over the library.

Each command lives in a small module of :mod:`qpbridge.commands` that parses options, calls the
library and prints. Library failures (:class:`qpbridge.errors.QpbridgeError`) become one readable
line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import os

# Before torch is imported: OpenMP threads that wait passively keep inference fast when another process holds a
# core (shared cluster nodes are the normal case; spin-waiting fell 5-7x there, design.md). Users may override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qpbridge.memory import set_cache_defaults  # noqa: E402

set_cache_defaults()  # bound oneDNN's per-shape caches (memory stays flat over big slides)

import typer  # noqa: E402

from qpbridge import __version__  # noqa: E402

__all__ = ["COMMAND_MODULES", "app", "main"]

app = typer.Typer(
    name="qpbridge",
    help=(
        "Move deep-learning segmentations of whole-slide images into QuPath, "
        "and pathologists' corrections back into training.\n\n"
        "Examples:\n\n"
        "  qpbridge synth demo/slide.svs --width 8000 --height 6000\n\n"
        "  qpbridge info demo/slide.svs\n\n"
        "  qpbridge predict demo/slide.svs -o demo/slide.geojson --overlay demo/overlay.png"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: Command modules, in the order they appear in ``qpbridge --help``. Each has ``register(app)``.
COMMAND_MODULES = (
    "synth",
    "info",
    "predict",
    "validate",
    "convert",
    "masks",
    "diff",
    "train",
    "evaluate",
    "models",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"qpbridge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """qpbridge: whole-slide segmentation <-> QuPath."""


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"qpbridge.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command not written yet
        if exc.name != f"qpbridge.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    """Entry point of the ``qpbridge`` console script."""
    app(prog_name="qpbridge")


if __name__ == "__main__":  # pragma: no cover
    main()
