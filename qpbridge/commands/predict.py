"""``qpbridge predict SLIDE... -o OUT``: options -> :class:`qpbridge.predict.PredictConfig` ->
:func:`qpbridge.predict.predict_slides` -> one line per slide (progress bars and messages stay here)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
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
            "  qpbridge predict slide.svs -o slide.geojson --no-roi --min-area-um2 50\n\n"
            "Nuclei (off unless asked for): --nuclei adds each nucleus inside the ROI as a detection classified by "
            "the region class under it, with QuPath's nucleus measurements; --nuclei-only finds them over all "
            "tissue without the region models; --cell-expansion-um 3 writes cells around them:\n\n"
            "  qpbridge predict slide.svs -o slide.geojson --nuclei --model-nuclei models/monuseg-nuclei\n\n"
            "  qpbridge predict slide.svs -o slide.geojson --nuclei-only --cell-expansion-um 3\n\n"
            "  qpbridge predict slide.svs -o slide.geojson --labels slide.labels.ome.tif "
            "--probabilities slide.probs.ome.tif\n\n"
            "A QuPath project (its project.qpproj, or its folder) predicts each of its images into "
            "<project>/qpbridge/<image name>.geojson, where groovy/import_predictions.groovy looks (Run > Run for "
            "project imports them all); --images NAME... predicts only those (exact image names). An image whose "
            "file is missing or not on this machine (OMERO, http) fails alone, with the reason:\n\n"
            "  qpbridge predict study/project.qpproj\n\n"
            "  qpbridge predict study/ --images 'Case 1.svs' 'Case 7.ndpi' --workers 2\n\n"
            "Many slides at once, on a Dask cluster of this machine (--workers: on 4 GPUs, one worker each) or a "
            "running one (--scheduler); needs pip install 'qpbridge[distributed]'; the run's summary goes to "
            "<folder>/qpbridge-run.json:\n\n"
            "  qpbridge predict slides/ -o predictions/ --workers 4\n\n"
            "  qpbridge predict slides/ -o predictions/ --device cuda --workers 4\n\n"
            "  qpbridge predict slides/ -o predictions/ --scheduler tcp://head-node:8786"
        ),
    )
    def predict_cmd(
        slides: list[Path] = typer.Argument(
            ..., metavar="SLIDE...",
            help="Slide files or folders of slides, or a QuPath project (project.qpproj or its folder) alone."),
        output: Path | None = output_option(
            "Output .geojson(.gz) (one slide) or folder; a QuPath project: a folder, by default "
            "<project>/qpbridge (where import_predictions.groovy looks)."),
        images: list[str] | None = typer.Option(
            None, "--images", metavar="NAME...",
            help="A QuPath project: predict only the images of these exact names (as QuPath shows them; names "
                 "after the first may follow it, or repeat --images)."),
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
        labels: Path | None = typer.Option(
            None, "--labels",
            help="Also write the cell model's class labels as a pyramidal OME-TIFF (.ome.tif) at its um/px "
                 "(uint8; 0 where it did not run; class names and colours in the OME-XML). One slide only."),
        probabilities: Path | None = typer.Option(
            None, "--probabilities",
            help="Also write the cell model's class probabilities as a pyramidal OME-TIFF (.ome.tif) at its um/px: "
                 "one uint8 channel (0-255) per class, named and coloured as the class. One slide only."),
        nuclei: bool = typer.Option(
            False, "--nuclei/--no-nuclei",
            help="Also find nuclei (inside the ROI; all tissue with --no-roi): QuPath detections classified by the "
                 "region class under their centroid, with nucleus measurements and Detection probability."),
        model_nuclei: str = typer.Option(
            "monuseg-nuclei", "--model-nuclei", help="Nuclei model: name or path (used with --nuclei)."),
        nuclei_only: bool = typer.Option(
            False, "--nuclei-only", help="Only nuclei, over all tissue: no ROI or cell model, nuclei unclassified."),
        cell_expansion_um: float | None = typer.Option(
            None, "--cell-expansion-um",
            help="Write cells (the nucleus grown by this many um, cells never overlapping) with the nucleus as "
                 "their nucleusGeometry, instead of nucleus detections."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace finished outputs."),
        workers: int = typer.Option(
            1, "--workers",
            help="Slides at a time, each in a worker process of a Dask cluster started on this machine (needs "
                 "qpbridge[distributed]). Each worker gets cores // N threads (or --threads); with --device cuda, "
                 "worker i gets GPU i mod (GPUs). 1: one slide after the other, in this process."),
        scheduler: str | None = typer.Option(
            None, "--scheduler", envvar="QPBRIDGE_SCHEDULER",
            help="Run the slides on a running Dask cluster: its scheduler's address (e.g. tcp://head-node:8786)."),
    ) -> None:
        from qpbridge.predict import PredictConfig, predict_slides
        from qpbridge.qupath import find_project_file

        with reported_errors(output):
            projects = [path for path in slides if find_project_file(path) is not None]
            if images and len(projects) == 1 and len(slides) > 1:
                # `--images a.svs b.svs`: the names after the first land among SLIDE...
                images = [*images, *(str(path) for path in slides if path is not projects[0])]
                slides = projects
            config = PredictConfig(
                model_roi=model_roi, model_cell=model_cell, mpp=mpp, device=device, batch_size=batch_size,
                threads=threads, use_roi=not no_roi, roi_only=roi_only, roi_margin_um=roi_margin_um,
                roi_min_area_um2=roi_min_area_um2, context_um=context_um, layout=layout, precision=precision,
                object_type=object_type, min_area_um2=min_area_um2, simplify_um=simplify_um, heatmap=heatmap,
                overlay=overlay, labels=labels, probabilities=probabilities, nuclei=nuclei,
                model_nuclei=model_nuclei, nuclei_only=nuclei_only, cell_expansion_um=cell_expansion_um,
            )
            with _SlidesBar() as slides_bar:  # lines go above it while it shows (a batch on Dask)
                batch = predict_slides(slides, output, config, images=images, overwrite=overwrite,
                                       progress=_progress_bar,
                                       warn=slides_bar.warn, report=lambda o: _report(o, slides_bar.echo),
                                       workers=workers, scheduler=scheduler or None,
                                       slides_progress=slides_bar.update)
            if failures := batch.count("failed"):
                what = "images" if any(o.job.image is not None for o in batch.outcomes) else "slides"
                typer.echo(f"{failures} of {len(batch.outcomes)} {what} failed", err=True)
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


class _SlidesBar:
    """Progress across slides (a batch on Dask): slides done / to run, slides per minute, ETA; started by the
    first update, so that a serial batch (which shows each slide's stages instead) never opens it. While it
    shows, :meth:`echo` and :meth:`warn` print above it (stdout lines too, when stdout is the terminal)."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.began = 0.0

    def __enter__(self) -> _SlidesBar:
        return self

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            columns = (TextColumn("slides"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self.bar = Progress(*columns, console=err_console, transient=True, redirect_stdout=False,
                                redirect_stderr=False)
            self.bar.start()
            self.task = self.bar.add_task("slides", total=total, rate="")
            self.began = time.perf_counter()
        assert self.task is not None
        minutes = max(time.perf_counter() - self.began, 1e-9) / 60
        self.bar.update(self.task, completed=done, total=total, rate=f"{done / minutes:.1f} slides/min")

    def echo(self, line: str, err: bool = False) -> None:
        """``typer.echo(line, err=err)``, above the bar while it shows."""
        if self.bar is not None and (err or sys.stdout.isatty()):
            self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(line, err=err)

    def warn(self, message: str) -> None:
        """One warning line on stderr (above the bar while it shows)."""
        if self.bar is not None:
            self.echo(f"warning: {message}", err=True)
        else:
            warn(message)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.stop()


def _report(outcome: SlideOutcome, echo: Callable[..., None] = typer.echo) -> None:
    """One line per slide (a project's: per image, by its name): what it wrote (stdout), or why it was skipped or
    failed (stderr)."""
    slide_path, target = outcome.job.image or outcome.job.slide, outcome.job.output
    if outcome.status == "skipped":
        err_console.print(f"skip {slide_path}: {target} is finished (use --overwrite to redo it)")
        return
    if outcome.status == "failed":
        echo(f"error: {slide_path}: {outcome.error}", err=True)
        return
    summary = outcome.summary
    assert summary is not None
    where = f" on {outcome.worker}" if outcome.worker else ""
    parts = []
    if summary.features_by_class or not summary.nuclei_by_class:
        by_class = ", ".join(f"{name} {count}" for name, count in sorted(summary.features_by_class.items()))
        parts.append(f"{summary.features_written - summary.nuclei_written} regions ({by_class or 'none'})")
    if summary.nuclei_by_class:
        per = ", ".join(f"{name} {count}" for name, count in summary.nuclei_by_class.items())
        parts.append(f"{summary.nuclei_written} nuclei ({per})")
    roi = (f", ROI {summary.roi_fraction_of_tissue:.1%} of tissue" if summary.roi_fraction_of_tissue is not None
           else "")
    saved = (f", ROI gate saved {summary.high_mag_saved_frac:.0%} of the high-mag work"
             if summary.high_mag_saved_frac is not None else "")
    work = []
    if summary.windows_run:
        work.append(f"{summary.windows_run} cell windows ({summary.network_mpx:.1f} MP)")
    if summary.nuclei_windows_run:
        work.append(f"{summary.nuclei_windows_run} nuclei windows ({summary.nuclei_network_mpx:.1f} MP)")
    echo(
        f"{slide_path} -> {target}: {'; '.join(parts)}; tissue {summary.tissue_fraction:.1%} of slide{roi}{saved}; "
        f"{', '.join(work) or '0 windows'} in {summary.timings_s.get('total_s', 0):.1f} s{where}"
    )
