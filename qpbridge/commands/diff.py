"""``qpbridge diff PREDICTED CORRECTED``: what the pathologist changed, by area per class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from qpbridge.commands._common import reported_errors, warn
from qpbridge.commands._options import CLASS_MAP_HELP, class_map_option, mpp_option, output_option
from qpbridge.diff import BatchResult, DiffResult, NucleiDiff, diff_files, diff_pairs, write_changed_only
from qpbridge.errors import InputError, OutputError
from qpbridge.rasterize import ClassMap, parse_class_map

__all__ = ["register"]

HELP = """Compare a prediction with the pathologist's corrections: per tissue class, the area added (drawn
where nothing was predicted), removed (predicted, then deleted), relabelled from one class to another (a
matrix) and unchanged, in um^2 (px^2 when no pixel size is known) and as a share of the predicted class area;
ROI annotations in a section of their own. Within one file, overlapping classes resolve as in qpbridge masks:
the higher class wins (Normal < Benign < In situ carcinoma < Invasive carcinoma, or the --classes order).
Region*, Ignore*, Pen mark* objects are left out. Class names are matched as qpbridge masks matches them
(exactly, then in any case, then the first part of a derived class; "Tissue" is Normal); --model and
--class-map match them with a model's classes and aliases, as they do for masks.

Nuclei (predict's nuclei stage, QuPath's cell detection, StarDist: detections with "Nucleus: ..."
measurements, or cells) are compared one by one: a predicted and a corrected nucleus are the same when their
IoU is above 0.5, and per class the table counts nuclei unchanged, reshaped (IoU < 0.9), relabelled, removed
(deleted) and added (drawn: an annotation up to 400 um^2 in the corrected file is a drawn nucleus).

The pixel size comes from --mpp, else --slide, else the corrections sidecar <base>.json that
export_corrections.groovy writes, else the prediction's <file>.meta.json.

Several slides: --pairs PRED_DIR CORR_DIR [PRED_DIR2 CORR_DIR2 ...] (or two folders) pairs <slide>.geojson
files by slide name and ranks the slides by changed share, most corrected first.

--changed-only -o OUT.geojson writes, for qpbridge masks: "Region*" annotations covering the changed area
(added + removed + relabelled, widened by --margin-um), and detections inside it: added and relabelled
pieces with their corrected class, removed pieces as --removed-class (default Normal, label 0), and with a
margin the corrected classes in the margin. masks then trains only there (everything else is 255). With
several slides, -o is a folder that gets <slide>.geojson per slide.

Examples:

  qpbridge diff qpbridge/slide1.geojson qpbridge/corrections/slide1.geojson --slide slide1.svs

  qpbridge diff pred.geojson corrected.geojson --mpp 0.25 --json

  qpbridge diff --pairs project/qpbridge project/qpbridge/corrections

  qpbridge diff pred.geojson corrected.geojson --mpp 0.25 --changed-only -o changed.geojson --margin-um 20"""


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _share(share: float | None, changed_px2: float) -> str:
    """A changed share; ``new`` for a change where nothing was predicted (no share of nothing)."""
    return "new" if share is None and changed_px2 > 0 else _pct(share)


def _table(rows: list[list[str]], right_from: int = 1) -> list[str]:
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = []
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(w) if k < right_from else cell.rjust(w) for k, (cell, w) in pairs]
        lines.append("  ".join(cells).rstrip())
    return lines


def _print_result(result: DiffResult) -> None:
    unit = result.area_unit
    a = result.area
    source = f"{result.mpp:g} um/px from {result.mpp_source}" if result.mpp is not None else "no pixel size"
    typer.echo(
        f"{result.name}: {result.predicted_source} -> {result.corrected_source} (areas in {unit}, {source})"
    )
    if result.per_class:
        header = ["class", "predicted", "corrected", "unchanged", "added", "removed", "relabelled out"]
        header += ["relabelled in", "changed"]
        rows = [header]
        for name, c in result.per_class.items():
            values = [c.predicted_px2, c.corrected_px2, c.unchanged_px2, c.added_px2, c.removed_px2]
            values += [c.relabelled_out_px2, c.relabelled_in_px2]
            rows.append([name, *(_fmt(a(v)) for v in values), _share(c.changed_share, c.changed_px2)])
        for line in _table(rows):
            typer.echo(line)
    for before, row in result.relabelled_px2.items():
        for after, value in row.items():
            typer.echo(f"relabelled: {before} -> {after}: {_fmt(a(value))} {unit}")
    if result.roi is not None:
        r = result.roi
        typer.echo(
            f"ROI: predicted {_fmt(a(r.predicted_px2))}, corrected {_fmt(a(r.corrected_px2))}, "
            f"added {_fmt(a(r.added_px2))}, removed {_fmt(a(r.removed_px2))} {unit}"
        )
    share = result.changed_share
    share_text = f" ({_pct(share)} of the predicted area)" if share is not None else ""
    typer.echo(
        f"total: predicted {_fmt(a(result.predicted_px2))} {unit}, "
        f"corrected {_fmt(a(result.corrected_px2))} {unit}; "
        f"changed {_fmt(a(result.changed_px2))} {unit}{share_text}: added {_fmt(a(result.added_px2))}, "
        f"removed {_fmt(a(result.removed_px2))}, relabelled {_fmt(a(result.relabelled_total_px2))}"
    )
    o = result.objects
    line = (
        f"objects: {o['predicted']} predicted, {o['corrected']} corrected "
        f"({o['corrected_unchanged_predictions']} untouched predictions, "
        f"{o['corrected_edited_or_new']} edited or new)"
    )
    if result.excluded:
        line += "; left out: " + ", ".join(f"{k} ({v})" for k, v in sorted(result.excluded.items()))
    typer.echo(line)
    if result.nuclei is not None:
        _print_nuclei(result.nuclei)
    if result.identical:
        typer.echo("no changes: the corrected objects cover the predicted ones exactly")


def _print_nuclei(nuclei: NucleiDiff) -> None:
    """The nuclei table: counts per class of kept, reshaped, relabelled, removed and drawn nuclei."""
    header = ["nuclei", "predicted", "corrected", "unchanged", "reshaped", "relabelled out", "relabelled in"]
    header += ["removed", "added"]
    rows = [header]
    for name, c in nuclei.per_class.items():
        values = [c.predicted, c.corrected, c.unchanged, c.reshaped, c.relabelled_out, c.relabelled_in]
        rows.append([name, *(f"{v:,}" for v in (*values, c.removed, c.added))])
    for line in _table(rows):
        typer.echo(line)
    for before, row in nuclei.relabelled.items():
        for after, count in row.items():
            typer.echo(f"nuclei relabelled: {before} -> {after}: {count:,}")
    iou = f", matched at mean IoU {nuclei.mean_matched_iou:.3f}" if nuclei.mean_matched_iou is not None else ""
    typer.echo(
        f"nuclei: {nuclei.total('predicted'):,} predicted, {nuclei.total('corrected'):,} corrected; "
        f"{nuclei.total('removed'):,} removed, {nuclei.total('added'):,} added, "
        f"{nuclei.total('relabelled_out'):,} relabelled, {nuclei.total('reshaped'):,} reshaped "
        f"(same nucleus: IoU > {nuclei.iou_threshold:g}{iou})"
    )


def _print_batch(batch: BatchResult) -> None:
    rows = [
        [
            "rank",
            "slide",
            "unit",
            "predicted",
            "corrected",
            "changed",
            "share",
            "added",
            "removed",
            "relabelled",
        ]
    ]
    for rank, r in enumerate(batch.results, start=1):
        a = r.area
        rows.append(
            [
                str(rank),
                r.name or "?",
                r.area_unit,
                _fmt(a(r.predicted_px2)),
                _fmt(a(r.corrected_px2)),
                _fmt(a(r.changed_px2)),
                _share(r.changed_share, r.changed_px2),
                _fmt(a(r.added_px2)),
                _fmt(a(r.removed_px2)),
                _fmt(a(r.relabelled_total_px2)),
            ]
        )
    if batch.results:
        for line in _table(rows, right_from=3):
            typer.echo(line)
    if batch.predicted_only:
        typer.echo(f"predictions without corrections (not compared): {', '.join(batch.predicted_only)}")
    if batch.corrected_only:
        typer.echo(f"corrections without a prediction (not compared): {', '.join(batch.corrected_only)}")


def register(app: typer.Typer) -> None:
    """Add the ``diff`` command to ``app``."""

    @app.command("diff", help=HELP)
    def diff_cmd(
        paths: list[Path] = typer.Argument(
            None,
            metavar="PREDICTED CORRECTED",
            help="Prediction and corrections (two files, or two folders).",
        ),
        pairs: bool = typer.Option(
            False,
            "--pairs",
            help="The arguments are pairs PRED CORR (folders paired by slide name, or files).",
        ),
        slide: Path | None = typer.Option(None, "--slide", help="The slide: pixel size and bounds check."),
        mpp: float | None = mpp_option(),
        classes: list[str] | None = typer.Option(
            None,
            "--classes",
            help="Tissue classes, lowest priority first, comma-separated or repeated; strict: any other "
            "class is an error. Default: Normal,Benign,In situ carcinoma,Invasive carcinoma (others too).",
        ),
        object_type: list[str] | None = typer.Option(
            None,
            "--object-type",
            help="Object types compared (repeatable; default annotation and detection).",
        ),
        model: str | None = typer.Option(
            None, "--model", help="Match class names with this model's classes and aliases (as qpbridge masks)."
        ),
        class_map: str | None = class_map_option(
            CLASS_MAP_HELP + " Matched as in qpbridge masks; ignore, region and skip classes are left out."
        ),
        changed_only: bool = typer.Option(
            False, "--changed-only", help="Write the changed area for qpbridge masks to -o (see above)."
        ),
        output: Path | None = output_option("Output of --changed-only: a .geojson (a folder with several slides)."),
        margin_um: float = typer.Option(
            0.0, "--margin-um", min=0.0, help="Widen the Region* area by this much."
        ),
        removed_class: str = typer.Option(
            "Normal", "--removed-class", help="Class of removed pieces in -o; '' leaves them out."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
        as_json: bool = typer.Option(False, "--json", help="Print everything as JSON on stdout."),
    ) -> None:
        with reported_errors(output):
            paths = list(paths or [])
            class_list = _parse_classes(classes)
            types = tuple(object_type) if object_type else ("annotation", "detection")
            if changed_only and output is None:
                raise InputError("--changed-only needs an output: add -o CHANGED.geojson")
            if output is not None and not changed_only:
                raise InputError(
                    f"-o {output} is only used with --changed-only: add --changed-only or drop -o"
                )
            kw: dict[str, Any] = {
                "classes": class_list,
                "object_types": types,
                "class_map": _class_map(model, class_map),
            }
            batch_mode = pairs or (len(paths) == 2 and all(p.is_dir() for p in paths))
            if not batch_mode:
                if len(paths) != 2:
                    raise InputError(
                        f"give PREDICTED and CORRECTED (2 paths, got {len(paths)}), or --pairs PRED CORR ..."
                    )
                result = diff_files(paths[0], paths[1], mpp=mpp, slide=slide, **kw)
                written = None
                if output is not None:
                    written = write_changed_only(
                        output,
                        result,
                        margin_um=margin_um,
                        removed_class=removed_class or None,
                        overwrite=overwrite,
                    )
                for message in result.warnings:
                    warn(message)
                if as_json:
                    data = result.to_dict()
                    if output is not None:
                        data["changed_only"] = {"output": str(output), "features": written}
                    typer.echo(json.dumps(data, indent=2))
                else:
                    _print_result(result)
                    if output is not None:
                        typer.echo(
                            f"wrote {output}: {written} features (Region* areas and the changed pieces)"
                        )
                return
            if slide is not None:
                raise InputError(
                    "--slide is for one pair of files; with several slides give --mpp or sidecars"
                )
            if not paths or len(paths) % 2:
                raise InputError(f"--pairs needs pairs PRED CORR: got {len(paths)} path(s)")
            batch = diff_pairs([(paths[k], paths[k + 1]) for k in range(0, len(paths), 2)], mpp=mpp, **kw)
            outputs: dict[str, str] = {}
            if output is not None:
                outputs = _write_batch(batch, output, margin_um, removed_class or None, overwrite)
            for message in batch.warnings:
                warn(message)
            for r in batch.results:
                for message in r.warnings:
                    warn(f"{r.name}: {message}")
            if as_json:
                data = batch.to_dict()
                if outputs:
                    data["changed_only"] = outputs
                typer.echo(json.dumps(data, indent=2))
            else:
                _print_batch(batch)
                for name, path in outputs.items():
                    typer.echo(f"wrote {path} ({name})")
            for name, message, _ in batch.failures:
                typer.echo(f"error: {name}: {message}", err=True)
            if batch.failures:
                raise typer.Exit(max(code for _, _, code in batch.failures))


def _class_map(model: str | None, spec: str | None) -> ClassMap | None:
    """The class map of ``--model`` (a card's classes and aliases), with ``--class-map`` on top."""
    if model is None and spec is None:
        return None
    cmap = ClassMap.deepbatch()
    if model is not None:
        from qpbridge.models import load_card, resolve_model_path

        cmap = ClassMap.from_card(load_card(resolve_model_path(model)))
    return cmap.with_overrides(parse_class_map(spec)) if spec is not None else cmap


def _parse_classes(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not names:
        raise InputError(
            "--classes is empty: give class names, e.g. --classes 'Normal,Benign,Invasive carcinoma'"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"--classes lists {', '.join(duplicates)} more than once: give each class once")
    return names


def _write_batch(
    batch: BatchResult, folder: Path, margin_um: float, removed_class: str | None, overwrite: bool
) -> dict[str, str]:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"-o {folder} must be a folder with several slides: give a folder path")
    targets = {r.name or "slide": folder / f"{r.name}.geojson" for r in batch.results}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise OutputError(
            f"{', '.join(existing)} exist: add --overwrite to replace them, or choose another folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for r in batch.results:
        write_changed_only(
            targets[r.name or "slide"],
            r,
            margin_um=margin_um,
            removed_class=removed_class,
            overwrite=overwrite,
        )
    return {name: str(path) for name, path in targets.items()}
