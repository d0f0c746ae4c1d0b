"""``qpbridge evaluate PRED TRUTH``: IoU, Dice, sensitivity, specificity, AUC of a prediction against truth."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from qpbridge.commands._common import err_console, reported_errors
from qpbridge.commands._options import class_map_option, grid_mpp_option, mpp_option, warn_mpp_meaning
from qpbridge.errors import InputError

__all__ = ["register"]


@contextmanager
def _block_progress() -> Iterator[Callable[[int, int], None]]:
    """A transient bar on stderr for comparisons of more than one block (only on a terminal)."""
    bar = Progress(TextColumn("comparing"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks, ETA"),
                   TimeRemainingColumn(), console=err_console, transient=True, disable=not err_console.is_terminal)
    task: list[TaskID] = []

    def progress(done: int, total: int) -> None:
        if total < 2:
            return
        if not task:
            bar.start()  # only once there is something to show
            task.append(bar.add_task("compare", total=total))
        bar.update(task[0], completed=done)

    try:
        yield progress
    finally:
        if task:
            bar.stop()


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to ``app``."""

    @app.command(
        "evaluate",
        help=(
            "Compare a prediction with the truth, per class and overall: IoU, Dice (F1), pixel accuracy, "
            "sensitivity, specificity, precision, and AUC when --probs is given. Label masks (PNG/TIFF of the "
            "same size) or annotation files: QuPath GeoJSON, ASAP or ImageScope XML, DSA JSON (rasterized over "
            "--slide on a grid of --grid-mpp um/px). Truth pixels labelled 255 are ignored.\n\n"
            "Examples:\n\n"
            "  qpbridge evaluate pred.png truth.png --class-map 'Normal=0,Benign=1,In situ carcinoma=2,"
            "Invasive carcinoma=3'\n\n"
            "  qpbridge evaluate pred.geojson truth.geojson --slide slide.svs --grid-mpp 2 --json\n\n"
            "  qpbridge evaluate pred.geojson A01.xml --slide A01.svs --grid-mpp 2\n\n"
            "  qpbridge evaluate pred.geojson truth.geojson --slide slide.svs --grid-mpp 2 --role roi\n\n"
            "Nuclei (--instances): pixel Dice, AJI, PQ (SQ, RQ) and F1 at IoU > 0.5 between predicted and reference "
            "instances, each an annotation file (GeoJSON detections, cells by their nucleus, annotations; ASAP or "
            "ImageScope XML such as MoNuSeg's outlines; DSA JSON) or an instance mask (PNG/TIFF, one id per "
            "nucleus); polygons are rasterized on level-0 pixels, or on --grid-mpp um/px:\n\n"
            "  qpbridge evaluate nuclei.geojson truth.geojson --instances --json\n\n"
            "  qpbridge evaluate nuclei.geojson TCGA-B0-5698-01Z-00-DX1.xml --instances\n\n"
            "  qpbridge evaluate nuclei.geojson truth_instances.tif --instances --slide slide.svs --grid-mpp 0.5"
        ),
    )
    def evaluate_cmd(
        pred: Path = typer.Argument(..., metavar="PRED", help="Predicted label mask or annotation file."),
        truth: Path = typer.Argument(
            ..., metavar="TRUTH", help="True label mask or annotation file (GeoJSON, ASAP/ImageScope XML, DSA JSON)."
        ),
        slide: Path | None = typer.Option(None, "--slide", help="The slide (GeoJSON inputs: extent and um/px)."),
        mpp: float | None = mpp_option(),
        grid_mpp: float | None = grid_mpp_option(
            "GeoJSON inputs: compare on a grid of this um/px, not finer than the slide (default: full resolution); "
            "needs --slide or --mpp."
        ),
        class_map: str | None = class_map_option(),
        probs: Path | None = typer.Option(None, "--probs", help="Masks: class probabilities (C x H x W .npy/TIFF)."),
        role: str = typer.Option(
            "cell", "--role",
            help="GeoJSON: cell (the four DeepBatch classes) or roi (predicted ROI regions vs the truth's lesions).",
        ),
        instances: bool = typer.Option(
            False, "--instances", help="Score nuclei as instances (Dice, AJI, PQ, F1) instead of class regions."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        if instances:
            _evaluate_instances(pred, truth, slide, mpp, grid_mpp, as_json,
                                other=[f for f, v in (("--class-map", class_map), ("--probs", probs)) if v is not None]
                                + (["--role"] if role != "cell" else []))
            return
        with reported_errors():
            from qpbridge.metrics import evaluate_geojson, evaluate_masks
            from qpbridge.qupath.project import is_annotation_path
            from qpbridge.rasterize import parse_class_map

            warn_mpp_meaning("evaluate", mpp, "comparison grid's um/px", "--grid-mpp", now_given=grid_mpp is not None)
            mapping = parse_class_map(class_map) if class_map else None
            geo = [is_annotation_path(pred), is_annotation_path(truth)]
            if any(geo) and not all(geo):
                raise InputError(
                    f"compare like with like: {pred} and {truth} are not both GeoJSON or both masks (annotation "
                    "files: GeoJSON, ASAP or ImageScope XML, DSA JSON); turn a mask into GeoJSON with qpbridge convert"
                )
            if all(geo):
                if probs is not None:
                    raise InputError("--probs applies to label masks, not annotation files")
                with _block_progress() as progress:
                    result = evaluate_geojson(
                        pred, truth, class_map=mapping, slide=slide, slide_mpp=mpp, grid_mpp=grid_mpp, role=role,
                        progress=progress,
                    )
            else:
                if slide is not None or mpp is not None or grid_mpp is not None:
                    raise InputError(
                        "--slide, --mpp and --grid-mpp apply to GeoJSON inputs; masks are compared pixel by pixel"
                    )
                result = evaluate_masks(pred, truth, class_map=mapping, probs_path=probs)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
            return
        Console(width=160).print(result.table(title=f"{pred} vs {truth}"))
        typer.echo(f"pixels compared: {result.n_pixels} ({result.n_ignored} ignored)")


def _evaluate_instances(pred: Path, truth: Path, slide: Path | None, mpp: float | None, grid_mpp: float | None,
                        as_json: bool, other: list[str]) -> None:
    """``evaluate --instances``: the scores as JSON or one line each."""
    with reported_errors():
        from qpbridge.instance_eval import evaluate_instances

        if other:
            raise InputError(f"{' and '.join(other)} score class regions, not --instances: leave them out")
        scores = evaluate_instances(pred, truth, slide=slide, slide_mpp=mpp, grid_mpp=grid_mpp)
    if as_json:
        typer.echo(json.dumps(scores.to_dict(), indent=2))
        return
    typer.echo(f"{pred} vs {truth}: {scores.n_pred} predicted, {scores.n_ref} reference nuclei")
    typer.echo(f"Dice {scores.dice:.4f}  AJI {scores.aji:.4f}  PQ {scores.pq:.4f} (SQ {scores.sq:.4f}, "
               f"RQ {scores.rq:.4f})")
    typer.echo(f"F1@{scores.iou_threshold:g} {scores.f1:.4f}: TP {scores.tp}, FP {scores.fp}, FN {scores.fn} "
               f"(precision {scores.precision:.4f}, recall {scores.recall:.4f})")
