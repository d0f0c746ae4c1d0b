"""``qpbridge synth OUT.svs``: write a synthetic H&E-like Aperio slide and its ground truth."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from qpbridge.commands._common import err_console, reported_errors
from qpbridge.synth import STAIN_NAMES, SynthResult, write_synthetic_slide

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to ``app``."""

    @app.command(
        "synth",
        help=(
            "Write a synthetic H&E-like whole-slide image (pyramidal Aperio SVS, 0.25 um/px, 40x) with its "
            "ground truth beside it: OUT.truth.geojson (Tissue, Pen mark and one annotation per Benign, "
            "In situ carcinoma and Invasive carcinoma region; Normal = tissue minus lesions) and "
            "OUT.truth.meta.json. The same seed always gives the same slide.\n\n"
            "Examples:\n\n  qpbridge synth demo/slide.svs\n\n"
            "  qpbridge synth demo/faded.svs --width 8000 --height 6000 --seed 7 --stain faded"
        ),
    )
    def synth_cmd(
        out: Path = typer.Argument(..., metavar="OUT.svs", help="Slide to write (.svs, .tif or .tiff)."),
        width: int = typer.Option(12000, "--width", help="Level-0 width in pixels (>= 512)."),
        height: int = typer.Option(9000, "--height", help="Level-0 height in pixels (>= 512)."),
        seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same slide and truth."),
        stain: str = typer.Option("standard", "--stain", help=f"Stain look: {', '.join(STAIN_NAMES)}."),
        lesion_fraction: float = typer.Option(
            0.10, "--lesion-fraction", help="Fraction of the tissue covered by lesions (0 to 0.5)."
        ),
        nuclei: bool = typer.Option(False, "--nuclei", help="Also write OUT.nuclei.geojson (every nucleus)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing slide and truth."),
    ) -> None:
        with reported_errors(out):
            progress = Progress(
                TextColumn("writing {task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
                disable=not err_console.is_terminal,
            )
            with progress:
                task = progress.add_task(out.name, total=None)

                def report(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                result = write_synthetic_slide(
                    out,
                    width_px=width,
                    height_px=height,
                    seed=seed,
                    stain=stain,
                    lesion_fraction=lesion_fraction,
                    nuclei=nuclei,
                    overwrite=overwrite,
                    progress=report,
                )
        typer.echo(_summary(result))


def _summary(r: SynthResult) -> str:
    levels = ", ".join(f"{w}x{h}" for w, h in r.level_dimensions)
    lines = [
        f"slide:    {r.slide_path} ({r.width_px} x {r.height_px} px, {r.mpp} um/px, 40x, {r.level_count} levels: "
        f"{levels})",
        f"stain:    {r.stain}, seed {r.seed}",
        f"truth:    {r.truth_path}",
        f"meta:     {r.meta_path}",
    ]
    if r.nuclei_path is not None:
        lines.append(f"nuclei:   {r.nuclei_path} ({r.nuclei_count} nuclei)")
    lines.append(
        f"tissue:   {r.tissue_area_um2 / 1e6:.3f} mm^2, lesions {100 * r.lesion_fraction:.1f}% of tissue, "
        f"{r.pen_strokes} pen stroke(s)"
    )
    for name, area_um2 in r.class_areas_um2.items():
        count = r.lesion_counts.get(name)
        regions = f" in {count} region(s)" if count is not None else ""
        lines.append(f"  {name + ':':<20} {area_um2 / 1e6:8.4f} mm^2{regions}")
    return "\n".join(lines)
