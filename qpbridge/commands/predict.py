"""``qpbridge predict SLIDE... -o OUT``: options -> :class:`qpbridge.predict.PredictConfig` ->
:func:`qpbridge.predict.predict_slides` -> one line per slide (progress bars and messages stay here)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from qpbridge.commands._common import err_console, reported_errors, warn
from qpbridge.commands._options import DEVICE_HELP, mpp_option, output_option

if TYPE_CHECKING:  # torch and the pipeline are imported when the command runs, not at CLI start-up
    from qpbridge.predict import Progress as StageProgress
    from qpbridge.predict.pipeline import SlideJob, SlideOutcome

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to ``app``."""

    @app.command(
        "predict",
        help=(
            "Run the DeepBatch cascade (tissue -> ROI U-Net -> cell U-Net inside the ROI) over slides and write "
            "QuPath GeoJSON: ROI and class regions as annotations (the objects a pathologist reshapes), with area "
            "and mean probability; provenance and timings go to <out>.meta.json.\n\n"
            "One slide writes the file given by -o; several slides (or a folder) write <image name>.geojson into "
            "the folder given by -o, skipping slides whose finished output exists (unless --overwrite).\n\n"
            "Examples:\n\n"
            "  qpbridge predict slide.svs -o slide.geojson --overlay slide.png\n\n"
            "  qpbridge predict slides/ -o predictions/ --device cuda\n\n"
            "  qpbridge predict slide.svs -o slide.geojson --no-roi --min-area-um2 50"
        ),
    )
    def predict_cmd(
        slides: list[Path] = typer.Argument(..., metavar="SLIDE...", help="Slide files or folders of slides."),
        output: Path = output_option("Output .geojson(.gz) (one slide) or folder.", required=True),
        model_roi: str = typer.Option("deepbatch-synth-roi", "--model-roi", help="ROI model: name or path."),
        model_cell: str = typer.Option("deepbatch-synth-cell", "--model-cell", help="Cell model: name or path."),
        mpp: float | None = mpp_option(),
        device: str = typer.Option("cpu", "--device", help=DEVICE_HELP + "."),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Windows per forward pass [default: 4 on CPU, 64 on GPU]."
        ),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
        no_roi: bool = typer.Option(False, "--no-roi", help="Run the cell model over all tissue."),
        roi_only: bool = typer.Option(False, "--roi-only", help="Stop after ROI detection."),
        roi_margin_um: float = typer.Option(8.0, "--roi-margin-um", help="Grow the ROI by this much (um)."),
        roi_min_area_um2: float = typer.Option(2000.0, "--roi-min-area-um2", help="Drop smaller ROI pieces."),
        context_um: float = typer.Option(
            16.0, "--context-um", help="Context the cell model sees around the (dilated) ROI, in um."),
        layout: str = typer.Option(
            "auto", "--layout", help="Network memory layout: auto (time both, keep the faster), nchw, channels_last."),
        precision: str = typer.Option(
            "auto", "--precision",
            help="Forward pass precision: auto (fp16 on a GPU, fp32 on a CPU), fp32, or bf16 (bfloat16: forward "
                 "passes 1.2-1.5x faster on CPUs with AVX512-BF16 or AMX, slower on others; outputs differ "
                 "slightly from fp32)."),
        object_type: str = typer.Option(
            "annotation", "--object-type",
            help="QuPath object type of the class regions: annotation (editable with the brush and wand tools) or "
                 "detection (lighter for very many regions)."),
        min_area_um2: float = typer.Option(20.0, "--min-area-um2", help="Drop class regions smaller than this."),
        simplify_um: float = typer.Option(0.0, "--simplify-um", help="Simplify outlines (tolerance in um)."),
        heatmap: bool = typer.Option(False, "--heatmap", help="Also write tiles with class probabilities."),
        overlay: Path | None = typer.Option(None, "--overlay", help="Write a thumbnail PNG with predictions."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace finished outputs."),
    ) -> None:
        from qpbridge.predict import PredictConfig, predict_slides

        with reported_errors(output):
            config = PredictConfig(
                model_roi=model_roi, model_cell=model_cell, mpp=mpp, device=device, batch_size=batch_size,
                threads=threads, use_roi=not no_roi, roi_only=roi_only, roi_margin_um=roi_margin_um,
                roi_min_area_um2=roi_min_area_um2, context_um=context_um, layout=layout, precision=precision,
                object_type=object_type, min_area_um2=min_area_um2, simplify_um=simplify_um, heatmap=heatmap,
                overlay=overlay,
            )
            batch = predict_slides(slides, output, config, overwrite=overwrite, progress=_progress_bar, warn=warn,
                                   report=_report)
            if failures := batch.count("failed"):
                typer.echo(f"{failures} of {len(batch.outcomes)} slides failed", err=True)
                raise typer.Exit(1)


@contextmanager
def _progress_bar(job: SlideJob) -> Iterator[StageProgress]:
    """A transient progress bar per stage of one slide, with the stage's own rate (windows since it began)."""
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}
        began: dict[str, float] = {}  # the rate is the stage's own: windows since the stage began

        def progress(stage: str, done: int, total: int, windows: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{job.slide.name}: {stage}", total=total, rate="")
                began[stage] = time.perf_counter()
            elapsed = max(time.perf_counter() - began[stage], 1e-9)
            bar.update(tasks[stage], completed=done, total=total, rate=f"{windows / elapsed:.1f} tiles/s")

        yield progress


def _report(outcome: SlideOutcome) -> None:
    """One line per slide: what it wrote (stdout), or why it was skipped or failed (stderr)."""
    slide_path, target = outcome.job.slide, outcome.job.output
    if outcome.status == "skipped":
        err_console.print(f"skip {slide_path}: {target} is finished (use --overwrite to redo it)")
        return
    if outcome.status == "failed":
        typer.echo(f"error: {slide_path}: {outcome.error}", err=True)
        return
    summary = outcome.summary
    assert summary is not None
    by_class = ", ".join(f"{name} {count}" for name, count in sorted(summary.features_by_class.items())) or "none"
    roi = (f", ROI {summary.roi_fraction_of_tissue:.1%} of tissue" if summary.roi_fraction_of_tissue is not None
           else "")
    saved = (f", ROI gate saved {summary.high_mag_saved_frac:.0%} of the high-mag work"
             if summary.high_mag_saved_frac is not None else "")
    typer.echo(
        f"{slide_path} -> {target}: {summary.features_written} features ({by_class}); tissue "
        f"{summary.tissue_fraction:.1%} of slide{roi}{saved}; {summary.windows_run} windows "
        f"({summary.network_mpx:.1f} MP) in "
        f"{summary.timings_s.get('total_s', 0):.1f} s"
    )
