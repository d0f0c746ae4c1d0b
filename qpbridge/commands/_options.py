"""Options that several commands share: one spelling and one meaning each (as rasterio's ``rio/options.py``).

* ``-o/--output``: where a command writes (a file or a folder, said by each command's help);
* ``--mpp``: **the slide's pixel size at full resolution (level 0), in um/px**, overriding its metadata;
  every command that takes a slide (or level-0 coordinates) reads it so. Other resolutions have their own
  names: ``masks --tile-mpp`` (the tiles), ``evaluate --grid-mpp`` (the comparison grid);
* ``--class-map``: QuPath class name -> label, in the one grammar of :func:`qpbridge.rasterize.parse_class_map`
  (``NAME=VALUE`` pairs, a JSON/YAML file, a ``dataset.json``/``card.json``, or a model name).

Spellings that changed keep working for one release, with one warning line on stderr
(:func:`deprecated_option` declares the old one, hidden from ``--help``; :func:`merge_deprecated` folds it
into the new one). ``masks --mpp`` and ``evaluate --mpp`` changed meaning rather than spelling (they were
the tile and the grid um/px): :func:`warn_mpp_meaning` says so when they are given.

Example
-------
>>> import typer
>>> app = typer.Typer()
>>> @app.command()
... def run(output: str | None = output_option("Output file."), mpp: float | None = mpp_option()) -> None:
...     pass
"""

from __future__ import annotations

from typing import Any, TypeVar

import typer

from qpbridge.commands._common import warn
from qpbridge.errors import InputError

#: What ``--device`` accepts (:func:`qpbridge.device.resolve_device`), for help texts.
DEVICE_HELP = "cpu, cuda, cuda:N or auto (a GPU when torch sees one, else the CPU)"

__all__ = [
    "CLASS_MAP_HELP",
    "DEVICE_HELP",
    "MPP_HELP",
    "class_map_option",
    "deprecated_option",
    "grid_mpp_option",
    "merge_deprecated",
    "mpp_option",
    "output_option",
    "tile_mpp_option",
    "warn_mpp_meaning",
]

T = TypeVar("T")

#: What ``--mpp`` means, in every command.
MPP_HELP = "The slide's pixel size at full resolution (level 0), in um/px; overrides the slide's metadata."

#: The ``--class-map`` grammar, for every command that takes one.
CLASS_MAP_HELP = (
    "QuPath class names -> labels: 'NAME=LABEL,...' (LABEL a number, ignore, region or skip), a JSON/YAML file "
    '{"name": label}, a dataset.json or card.json, or a model name.'
)


def output_option(help: str, *, required: bool = False) -> Any:
    """``-o/--output``, with the command's own ``help`` (what it writes there)."""
    return typer.Option(... if required else None, "-o", "--output", help=help)


def mpp_option(help: str = MPP_HELP) -> Any:
    """``--mpp``: the slide's level-0 pixel size in um/px (:data:`MPP_HELP`)."""
    return typer.Option(None, "--mpp", help=help)


def tile_mpp_option(help: str) -> Any:
    """``--tile-mpp``: the um/px of training tiles (``masks``)."""
    return typer.Option(None, "--tile-mpp", help=help)


def grid_mpp_option(help: str) -> Any:
    """``--grid-mpp``: the um/px of a comparison grid (``evaluate``)."""
    return typer.Option(None, "--grid-mpp", help=help)


def class_map_option(help: str = CLASS_MAP_HELP) -> Any:
    """``--class-map``: one value in the grammar of :func:`qpbridge.rasterize.parse_class_map`."""
    return typer.Option(None, "--class-map", help=help)


def deprecated_option(old: str, new: str) -> Any:
    """An old spelling of ``new``, hidden from ``--help``; fold it in with :func:`merge_deprecated`."""
    return typer.Option(None, old, hidden=True, help=f"Deprecated spelling of {new}.")


def merge_deprecated(value: T | None, old_value: T | None, old: str, new: str) -> T | None:
    """``value`` of option ``new``, or the value given with its deprecated spelling ``old`` (with a warning).

    Prints one line on stderr when ``old`` was given; giving both with different values is an
    :class:`~qpbridge.errors.InputError`.

    Examples
    --------
    >>> merge_deprecated(None, None, "--out", "-o/--output") is None
    True
    """
    if old_value is None:
        return value
    warn(f"{old} is deprecated and goes in the next release: use {new}")
    if value is not None and value != old_value:
        raise InputError(f"{old} {old_value} and {new} {value} are the same option: give only {new}")
    return old_value


def warn_mpp_meaning(command: str, mpp: float | None, was: str, now: str, now_given: bool = False) -> None:
    """One warning line when ``command --mpp`` is given without ``now`` (the option that took over its old
    meaning): it is the slide's level-0 pixel size, no longer ``was``. Whoever gives ``now`` as well knows.

    For the one release after the change (then the warning goes).
    """
    if mpp is not None and not now_given:
        warn(
            f"{command} --mpp {mpp:g} is now the slide's level-0 pixel size (um/px), as in every command; "
            f"the {was} it used to be is {now}"
        )
