"""``qpbridge masks SLIDE GEOJSON -o DIR``: (corrected) QuPath objects -> label masks and training tiles."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from qpbridge.classes import IGNORE_LABEL
from qpbridge.commands._common import err_console, reported_errors, warn
from qpbridge.commands._options import (
    class_map_option,
    deprecated_option,
    merge_deprecated,
    mpp_option,
    output_option,
    tile_mpp_option,
    warn_mpp_meaning,
)
from qpbridge.errors import InputError
from qpbridge.formats import pair_slides
from qpbridge.qupath import (
    corrections_dir,
    corrections_sidecar_path,
    find_project_file,
    read_corrections_sidecar,
    read_project,
)
from qpbridge.rasterize import ClassMap, parse_class_map, parse_class_option
from qpbridge.slide import dicom_member
from qpbridge.tiles import (
    DEFAULT_MPP,
    DEFAULT_QA_MPP,
    DEFAULT_TILE_PX,
    DatasetSummary,
    MaskConfig,
    build_tile_dataset,
    load_card_config,
)

_HELP = f"""Turn a slide and its (corrected) QuPath GeoJSON into training tiles: RGB and label-mask PNGs,
manifest.csv and dataset.json (the tile dataset `qpbridge train` reads). The annotations may also be ASAP or
ImageScope XML, DSA JSON or a class label image (read by content). SLIDE may be a folder of slides: each is
paired with <slide>.geojson, .xml or .json beside it (or --annotations DIR or PATTERN, e.g. '{{stem}}.xml'),
slides without one are skipped, and all go into one dataset. SLIDE may also be a QuPath project (project.qpproj
or its folder): every image with corrections exported by groovy/export_corrections.groovy
(<project>/qpbridge/corrections/<image>.geojson) goes into the dataset, the others are listed and skipped.

Classes: a model card's classes and aliases (--model), else the DeepBatch classes (0 Normal, 1 Benign,
2 In situ carcinoma, 3 Invasive carcinoma; "Tissue" = 0). Map other QuPath classes with --class "NAME=LABEL"
(or =ignore, =region, =skip) or --class-map ('NAME=LABEL,...', a JSON file, a dataset.json/card.json or a
model name). "Pen mark*"/"Ignore*" objects are 255 (ignored); "Region*" objects mark the reviewed area
(outside it: 255). Overlaps: the higher label wins (--overlap later-wins: the later object in the file).

Resolution: --model gives its um/px and tile size; otherwise {DEFAULT_MPP} um/px and {DEFAULT_TILE_PX} px
tiles (--tile-mpp, --tile-px). --mpp is the slide's own pixel size (level 0), when its metadata lacks it or
is wrong. Tiles are kept when labelled and on tissue; --max-per-class N samples at most N tiles per majority
class (seeded). Runs into the same DIR append slides to one dataset.

Examples:

  qpbridge masks slide.svs slide.geojson -o tiles/

  qpbridge masks slide.svs corrected.geojson -o tiles/ --model my-cell-model --max-per-class 500

  qpbridge masks slide.svs slide.geojson --dry-run --class "Tumor=3" --class "Stroma=0"

  qpbridge masks slide.svs slide.geojson -o tiles/ --tile-mpp 1 --class-map "Tumor=3,Stroma=ignore"

  qpbridge masks WSI/ --annotations '{{stem}}.xml' -o tiles/ --class-map "Carcinoma in situ=2,Carcinoma invasive=3"

  qpbridge masks study/project.qpproj -o tiles/
"""


class _RateColumn(ProgressColumn):
    """Blocks per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} blocks/s" if speed else "- blocks/s")


def _print_summary(summary: DatasetSummary) -> None:
    names = {c["label"]: c["name"] for c in summary.classes}
    names[IGNORE_LABEL] = "(ignore)"
    total_px = sum(summary.pixels_by_label.values()) or 1
    w, h = summary.slide_size_px
    gw, gh = summary.grid_size_px
    reviewed = summary.reviewed_effective
    lines = [
        f"slide {summary.slide_id}: {w} x {h} px at {summary.slide_mpp:.4g} um/px -> {gw} x {gh} px at "
        f"{summary.mpp:g} um/px, {summary.tiles_total} tiles of {summary.tile_px} px "
        f"(stride {summary.stride_px})",
        f"objects: {summary.objects_painted} labelled, {summary.objects_regions} region; reviewed area: {reviewed}",
        f"{'label':>5}  {'class':<22} {'pixels':>14} {'share':>7} {'tiles kept':>11} "
        f"{'selected' if summary.dry_run else 'written':>8}",
    ]
    for label in sorted(summary.pixels_by_label):
        px = summary.pixels_by_label[label]
        kept = summary.kept_by_class.get(label)
        written = summary.written_by_class.get(label)
        lines.append(
            f"{label:>5}  {names.get(label, '?'):<22} {px:>14,} {100 * px / total_px:>6.1f}% "
            f"{'' if kept is None else kept:>11} {'' if written is None else written:>8}"
        )
    if summary.dry_run:
        lines.append(
            f"dry run: {summary.tiles_selected} tiles would be written ({summary.tiles_kept} pass the "
            "filters); nothing written"
        )
    else:
        lines.append(
            f"wrote {summary.tiles_written} tiles to {summary.out_dir} (manifest.csv, dataset.json)"
            f" in {summary.seconds:.1f} s"
        )
        if summary.qa_mask:
            lines.append(f"QA label mask: {summary.qa_mask}")
    typer.echo("\n".join(lines))


def _project_jobs(project_file: Path) -> tuple[list[tuple[Path, Path]], int]:
    """``(slide, corrections)`` of every image of a QuPath project with exported corrections; the images without
    are listed in one warning, those whose slide is not here get one error line each (and are counted)."""
    project = read_project(project_file)
    found, without = project.corrections()
    folder = corrections_dir(project.folder)
    if not found:
        raise InputError(f"no image of QuPath project {project.file} has exported corrections (looked for "
                         f"{folder}/<image name>.geojson): run groovy/export_corrections.groovy in QuPath first "
                         "(Run > Run for project exports every image)")
    if without:
        names = ", ".join(repr(image.name) for image in without)
        warn(f"{len(without)} of {len(project.images)} images have no corrections in {folder}, skipped: {names}")
    jobs: list[tuple[Path, Path]] = []
    unresolved = 0
    for item in found:
        try:
            jobs.append((item.slide(), item.geojson))
        except InputError as exc:
            typer.echo(f"error: {exc}", err=True)
            unresolved += 1
    return jobs, unresolved


def register(app: typer.Typer) -> None:
    """Add the ``masks`` command to ``app``."""

    @app.command("masks", help=_HELP)
    def masks_cmd(
        slide_path: Path = typer.Argument(
            ..., metavar="SLIDE",
            help="The slide the GeoJSON belongs to (leave out for a QuPath export with its .json sidecar), or a "
            "folder of slides.",
        ),
        geojson_path: Path | None = typer.Argument(
            None, metavar="GEOJSON",
            help="Its objects (level-0 pixels): QuPath GeoJSON, ASAP/ImageScope XML, DSA JSON or a label image.",
        ),
        annotations: str | None = typer.Option(
            None, "--annotations",
            help="SLIDE a folder: where each slide's annotations are: a folder, or a pattern with {stem} (the "
            "slide's base name) or {name}, relative to the slide's folder (default: <stem>.geojson/.xml/.json "
            "beside it).",
        ),
        out_dir: Path | None = output_option(
            "Dataset folder (created; one that holds a dataset gets this slide added)."
        ),
        old_out_dir: Path | None = deprecated_option("--out", "-o/--output"),
        role: str = typer.Option(
            "cell", "--role", help="Without --model: cell (the four DeepBatch classes), roi (Background/ROI) or "
            "nuclei (16-bit instance tiles of the nucleus objects)."
        ),
        grow_instances_px: int = typer.Option(
            0, "--grow-instances-px", help="nuclei: grow every nucleus by N px into background."),
        model: str | None = typer.Option(
            None, "--model", help="Model name or directory: its classes, um/px and tile size."
        ),
        tile_mpp: float | None = tile_mpp_option(f"Tile um/px (default: the model's, else {DEFAULT_MPP})."),
        mpp: float | None = mpp_option(),
        old_slide_mpp: float | None = deprecated_option("--slide-mpp", "--mpp"),
        tile_px: int | None = typer.Option(
            None, "--tile-px", help=f"Tile side in px (default: the model's, else {DEFAULT_TILE_PX})."
        ),
        stride_px: int | None = typer.Option(None, "--stride-px", help="Step between tiles (default: tile side)."),
        class_opts: list[str] | None = typer.Option(
            None, "--class", help='Map a QuPath class: "NAME=LABEL", =ignore, =region or =skip (repeatable).'
        ),
        class_map_spec: str | None = class_map_option(),
        ignore_unknown: bool = typer.Option(
            False, "--ignore-unknown", help="Skip objects of unmapped classes instead of failing."
        ),
        overlap: str = typer.Option("priority", "--overlap", help="priority (higher label wins) or later-wins."),
        reviewed: str = typer.Option(
            "region",
            "--reviewed",
            help="region: outside Region* objects is 255 (all when there are none); all; "
            "annotated: only drawn objects are labelled.",
        ),
        region_class: list[str] | None = typer.Option(
            None, "--region-class", help="Class pattern(s) marking the reviewed area (default 'Region*')."
        ),
        min_labelled_frac: float = typer.Option(
            0.05, "--min-labelled-frac", help="Skip tiles with less than this fraction labelled (not 255)."
        ),
        min_tissue_frac: float = typer.Option(
            0.05,
            "--min-tissue-frac",
            help="Skip tiles with less tissue (or labelled lesion) than this; 0 = off.",
        ),
        max_per_class: int | None = typer.Option(
            None, "--max-per-class", help="At most N tiles per majority class (seeded sample)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the --max-per-class sample."),
        qa_mpp: float = typer.Option(
            DEFAULT_QA_MPP,
            "--qa-mpp",
            help="um/px of the QA label mask TIFF (qa/<slide>_label_mask.tiff); 0 = none.",
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print pixel and tile counts; write nothing."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace this slide's tiles if DIR has them."),
        allow_off_slide: bool = typer.Option(
            False, "--allow-off-slide",
            help="Label the part on the slide even when most of the labelled area lies off it, and leave out "
            "objects far outside it (warnings instead of errors: a GeoJSON of another slide is refused otherwise).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        unresolved = 0  # images of a QuPath project whose slide is not here
        with reported_errors(out_dir or old_out_dir):
            out_dir = merge_deprecated(out_dir, old_out_dir, "--out", "-o/--output")
            warn_mpp_meaning("masks", mpp, "tile um/px", "--tile-mpp", now_given=tile_mpp is not None)
            mpp = merge_deprecated(mpp, old_slide_mpp, "--slide-mpp", "--mpp")
            jobs: list[tuple[Path, Path]] = []
            project_file = find_project_file(slide_path)
            folder_mode = project_file is None and slide_path.is_dir() and dicom_member(slide_path) is None
            if project_file is not None:
                if geojson_path is not None or annotations is not None:
                    raise InputError(f"{slide_path} is a QuPath project, whose corrections are in "
                                     f"{corrections_dir(project_file.parent)}: give no GEOJSON or --annotations")
                jobs, unresolved = _project_jobs(project_file)
            elif folder_mode:
                if geojson_path is not None:
                    raise InputError(
                        f"{slide_path} is a folder of slides: give its annotations with --annotations DIR or "
                        "PATTERN (e.g. '{stem}.xml'), not a second argument"
                    )
                paired = pair_slides(slide_path, annotations)
                for unpaired in paired.missing:
                    warn(f"{unpaired.name}: no annotation file: skipped")
                for message in paired.warnings:
                    warn(message)
                jobs = paired.pairs
            elif annotations is not None:
                raise InputError("--annotations applies to a folder of slides: give SLIDE GEOJSON for one slide")
            elif geojson_path is None:
                # `qpbridge masks corrections/slide.geojson`: export_corrections.groovy recorded the slide beside it.
                geojson_path = slide_path
                sidecar = corrections_sidecar_path(geojson_path)
                if sidecar is None or not sidecar.is_file():
                    missing = f"sidecar {sidecar}" if sidecar is not None else "<name>.json sidecar (not a .geojson)"
                    raise InputError(
                        f"give the slide and the GeoJSON (qpbridge masks SLIDE GEOJSON): {geojson_path} has no "
                        f"{missing} recording its slide"
                    )
                slide_path = read_corrections_sidecar(sidecar)
            if not jobs and geojson_path is not None:
                jobs = [(slide_path, geojson_path)]
            if out_dir is None and not dry_run:
                raise InputError("give the dataset folder with -o DIR (or --dry-run to only count)")
            if model is not None:
                config = load_card_config(model, mpp=tile_mpp, tile_px=tile_px)
            else:
                if role not in ("cell", "roi", "nuclei"):
                    raise InputError(f"--role must be cell, roi or nuclei, got {role!r}")
                from qpbridge.tiles.instances import nuclei_class_map

                maps = {"roi": ClassMap.roi, "cell": ClassMap.deepbatch, "nuclei": nuclei_class_map}
                config = MaskConfig(
                    class_map=maps[role](),
                    mpp=DEFAULT_MPP if tile_mpp is None else tile_mpp,
                    tile_px=DEFAULT_TILE_PX if tile_px is None else tile_px,
                )
            class_map: ClassMap = config.class_map
            overrides: dict[str, int | str] = {}
            if class_map_spec is not None:
                overrides.update(parse_class_map(class_map_spec))
            for text in class_opts or []:
                name, value = parse_class_option(text)
                overrides[name] = value
            if overrides:
                class_map = class_map.with_overrides(overrides)
            if region_class:
                class_map = class_map.with_patterns(region=region_class)
            config = replace(
                config,
                class_map=class_map,
                stride_px=stride_px,
                slide_mpp=mpp,
                overlap=overlap,
                reviewed=reviewed,
                ignore_unknown=ignore_unknown,
                min_labelled_frac=min_labelled_frac,
                min_tissue_frac=min_tissue_frac,
                max_per_class=max_per_class,
                seed=seed,
                qa_mpp=None if qa_mpp == 0 else qa_mpp,
                dry_run=dry_run,
                overwrite=overwrite,
                allow_off_slide=allow_off_slide,
                grow_instances_px=grow_instances_px,
            )
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            )
            tasks: dict[str, TaskID] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if not err_console.is_terminal:
                    return
                if not tasks:
                    bar.start()  # only once there is something to show
                if stage not in tasks:
                    label = {"scan": "counting labels", "write": "writing tiles"}.get(stage, stage)
                    tasks[stage] = bar.add_task(label, total=total)
                bar.update(tasks[stage], completed=done)

            summaries: list[DatasetSummary] = []
            for job_slide, job_annotations in jobs:
                try:
                    summaries.append(
                        build_tile_dataset(job_slide, job_annotations, out_dir or Path("."), config, progress)
                    )
                finally:
                    if tasks:
                        bar.stop()
                        for task_id in tasks.values():
                            bar.remove_task(task_id)
                        tasks.clear()
                for message in summaries[-1].warnings:
                    warn(f"{job_slide.name}: {message}" if folder_mode or project_file else message)
        if as_json:
            data = [s.to_dict() for s in summaries]
            typer.echo(json.dumps(data if folder_mode or project_file else data[0], indent=2))
        else:
            for summary in summaries:
                _print_summary(summary)
        if unresolved:
            typer.echo(f"{unresolved} of {unresolved + len(summaries)} images with corrections failed", err=True)
            raise typer.Exit(1)
