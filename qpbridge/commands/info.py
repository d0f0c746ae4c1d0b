"""``qpbridge info SLIDE``: what a slide is made of (levels, um/px, vendor, bounds, associated images)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qpbridge.commands._common import reported_errors
from qpbridge.commands._options import mpp_option
from qpbridge.slide import open_slide

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``info`` command to ``app``."""

    @app.command(
        "info",
        help=(
            "Show a slide's dimensions, levels, downsamples, um/px, vendor, bounds and associated images.\n\n"
            "Examples:\n\n  qpbridge info slide.svs\n\n  qpbridge info slide.svs --json"
        ),
    )
    def info_cmd(
        slide_path: Path = typer.Argument(..., metavar="SLIDE", help="Slide or image file."),
        mpp: float | None = mpp_option(),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        with reported_errors(), open_slide(slide_path, mpp=mpp) as slide:
            info = slide.info()
        if as_json:
            typer.echo(json.dumps(info.to_dict(), indent=2))
            return
        mpp_text = f"{info.mpp:.4g} um/px ({info.mpp_source})" if info.mpp else "unknown (give --mpp)"
        mag_text = f"{info.magnification:g}x" if info.magnification else "unknown"
        lines = [
            f"path:           {info.path}",
            f"reader:         {info.reader}" + (f" (vendor {info.vendor})" if info.vendor else ""),
            f"dimensions:     {info.width_px} x {info.height_px} px",
            f"pixel size:     {mpp_text}",
            f"magnification:  {mag_text}",
            f"bounds offset:  x={info.bounds_xy_px[0]} y={info.bounds_xy_px[1]} px"
            + (
                f" (QuPath shows level-0 pixel {info.qupath_offset_xy_px} as 0,0)"
                if info.qupath_offset_xy_px != (0, 0)
                else ""
            ),
            f"levels:         {info.level_count}",
        ]
        for level, ((w, h), ds) in enumerate(zip(info.level_dimensions_px, info.level_downsamples, strict=True)):
            level_mpp = f", {info.mpp * ds:.4g} um/px" if info.mpp else ""
            lines.append(f"  level {level}:      {w} x {h} px, downsample {ds:g}{level_mpp}")
        lines.append(f"associated:     {', '.join(info.associated_images) or 'none'}")
        typer.echo("\n".join(lines))
