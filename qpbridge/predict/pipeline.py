"""The DeepBatch cascade over slides: the only module that composes the steps.

slide -> tissue & pen mask (thumbnail scale, :mod:`qpbridge.tissue`) -> ROI U-Net (low magnification, over
tissue only, :mod:`qpbridge.predict.roi`) -> ROI regions, grown by a margin into a gate -> cell U-Net (high
magnification, MONAI sliding window, block by block, only around the ROI, :mod:`qpbridge.predict.cells`) ->
polygons (seams merged) -> QuPath GeoJSON, streamed; plus ``<out>.meta.json`` (written last: it marks the run
finished) and, optionally, a thumbnail overlay (:mod:`qpbridge.predict.overlay`).

Memory is bounded by the block: the high-magnification image is never held whole; the only whole-slide
arrays are the tissue mask (thumbnail scale) and the overlay thumbnail; the ROI is kept as polygons.

:func:`predict_slides` is the batch over many slides (folders expanded, output names chosen, finished outputs
skipped, each slide's failure reported and counted); :func:`predict_slide` is one slide.

Example
-------
>>> from qpbridge.predict import PredictConfig, predict_slide
>>> summary = predict_slide("slide.svs", "slide.geojson", PredictConfig())     # doctest: +SKIP
>>> summary.features_written                                                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import shapely
import shapely.affinity
import torch

from qpbridge import __version__
from qpbridge.atomic import atomic_write_text, output_lock, remove_stale_temporaries
from qpbridge.device import configure_threads, resolve_device
from qpbridge.errors import InputError, ModelError, OutputError, QpbridgeError
from qpbridge.memory import HeapTrimmer
from qpbridge.models import LoadedModel, inference_network, load_model
from qpbridge.predict.cells import CellOptions, CellResult, cell_mpp, segment_cells
from qpbridge.predict.config import DEFAULT_NUCLEI_MODEL, PredictConfig, PredictSummary, Progress
from qpbridge.predict.nuclei import NucleiOptions, NucleiResult, RegionClasses, segment_nuclei
from qpbridge.predict.overlay import Overlay
from qpbridge.predict.rasters import RasterWriter, check_raster_targets
from qpbridge.predict.roi import RoiGate, RoiResult, detect_roi
from qpbridge.predict.segmenter import SegmenterSettings, native_bf16
from qpbridge.qupath import (
    Feature,
    GeoJSONWriter,
    find_project_file,
    prediction_filename,
    prediction_properties,
    predictions_dir,
    read_project,
)
from qpbridge.qupath import meta_path as meta_path_for
from qpbridge.qupath.objects import object_role  # out.geojson -> out.geojson.meta.json
from qpbridge.slide import SLIDE_SUFFIXES, Slide, dicom_member, has_slide_suffix, open_slide
from qpbridge.tissue import TissueMask, detect_tissue

__all__ = [
    "BatchPlan",
    "BatchSummary",
    "SlideJob",
    "SlideOutcome",
    "expand_slides",
    "is_finished",
    "plan_batch",
    "predict_slide",
    "predict_slides",
    "run_id",
]


def is_finished(output: str | os.PathLike[str]) -> bool:
    """A finished prediction is one fact: its meta sidecar (written last) says ``finished`` and records the size
    of the GeoJSON beside it, which matches. A GeoJSON without its sidecar (a run killed between the two), or
    beside the sidecar of another run, is not finished; ``import_predictions.groovy`` applies the same rule.

    >>> is_finished("/nonexistent/slide.geojson")
    False
    """
    meta = meta_path_for(output)
    try:
        record = json.loads(meta.read_text())
        size = Path(output).stat().st_size
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("finished") is not True:
        return False
    return record.get("geojson_bytes") in (None, size)


def _check_output(output: Path, overlay: Path | None) -> None:
    if overlay is not None and {overlay.resolve()} & {output.resolve(), meta_path_for(output).resolve()}:
        raise InputError(f"--overlay {overlay} is the output itself: give the overlay its own name, e.g. "
                         f"{output.name.split('.')[0]}.overlay.png")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist: create it first or choose another -o")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {folder} is not writable: choose another -o")
    name = output.name.lower()
    if not (name.endswith(".geojson") or name.endswith(".geojson.gz") or name.endswith(".json")):
        raise OutputError(f"output {output} must end in .geojson or .geojson.gz (what QuPath imports)")


#: Options that do not change what a run writes into the GeoJSON: left out of its run id (the same slide predicted
#: serially or by a Dask worker with fewer threads is the same prediction).
_NOT_IN_RUN_ID = ("threads", "overlay", "overlay_max_px", "labels", "probabilities")


def run_id(slide_path: Path, config: PredictConfig, models: Sequence[LoadedModel]) -> str:
    """The id every feature of a run carries (16 hex digits): the same slide, options and model weights give
    the same id, so a re-run marks its predictions alike.

    >>> len(run_id(Path("slide.svs"), PredictConfig(), []))
    16
    """
    digest = hashlib.sha256()
    digest.update(str(slide_path.resolve()).encode())
    options = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_RUN_ID}
    digest.update(json.dumps(options, default=str, sort_keys=True).encode())
    for model in models:
        digest.update(model.card.weights_sha256.encode())
    return digest.hexdigest()[:16]


@dataclass
class _Models:
    roi: LoadedModel | None
    cell: LoadedModel | None
    nuclei: LoadedModel | None = None

    @property
    def loaded(self) -> list[LoadedModel]:
        return [m for m in (self.roi, self.cell, self.nuclei) if m is not None]


def _load_nuclei(config: PredictConfig, device: torch.device, load: Callable[..., LoadedModel]) -> LoadedModel:
    """The nuclei model; the shipped one by default, with a clear message where it is not installed."""
    try:
        return load(config.model_nuclei, role="nuclei", device=device)
    except ModelError as exc:
        if config.model_nuclei != DEFAULT_NUCLEI_MODEL or not str(exc).startswith("no model named"):
            raise
        raise ModelError(f"nuclei need a nuclei model, and the default {DEFAULT_NUCLEI_MODEL!r} is not installed: "
                         "give one with --model-nuclei NAME|DIR (qpbridge models lists those found), or leave out "
                         "--nuclei") from None


def _load_models(
    config: PredictConfig, device: torch.device, load: Callable[..., LoadedModel] = load_model
) -> _Models:
    regions = not config.nuclei_only  # --nuclei-only: tissue -> nuclei, no region model
    roi = load(config.model_roi, role="roi", device=device) if config.use_roi and regions else None
    cell = load(config.model_cell, role="cell", device=device) if regions and not config.roi_only else None
    nuclei = _load_nuclei(config, device, load) if config.wants_nuclei else None
    models = _Models(roi, cell, nuclei)
    for model in models.loaded:
        model.network = inference_network(model.card, model.network)
    return models


class _Emitter:
    """Features to the writer: shifted into QuPath's frame, marked as this run's predictions, counted."""

    def __init__(self, writer: GeoJSONWriter, offset_xy_px: tuple[int, int], marker: dict[str, Any]) -> None:
        self.writer, self.offset_xy_px, self.marker = writer, offset_xy_px, marker
        self.by_class: dict[str, int] = {}  #: class regions, ROI and heat-map tiles (the nuclei count their own)
        self.regions: RegionClasses | None = None  #: set while the cell stage runs: its regions classify nuclei

    def __call__(self, features: list[Feature]) -> None:
        ox, oy = self.offset_xy_px
        if self.regions is not None:
            self.regions.add(features)  # before the shift: the nuclei stage works in level 0
        for feature in features:
            if (ox, oy) != (0, 0):
                feature.geometry = shapely.affinity.translate(feature.geometry, -ox, -oy)
                if feature.nucleus_geometry is not None:
                    feature.nucleus_geometry = shapely.affinity.translate(feature.nucleus_geometry, -ox, -oy)
            feature.measurements.update(self.marker["measurements"])
            if feature.object_type == "annotation":  # QuPath 0.5 logs a stack trace per detection with metadata
                feature.metadata.update(self.marker["metadata"])
            if object_role(feature.object_type, feature.measurements) == "nucleus":
                continue
            key = "heatmap tiles" if feature.object_type == "tile" else (feature.class_name or "")
            self.by_class[key] = self.by_class.get(key, 0) + 1
        self.writer.write_many(features)


def _run_stages(
    slide: Slide, tissue: TissueMask, models: _Models, config: PredictConfig, settings: SegmenterSettings,
    emit: _Emitter, overlay: Overlay | None, progress: Progress | None, trimmer: HeapTrimmer,
    timings: dict[str, float], rasters: RasterWriter | None = None,
) -> tuple[RoiResult | None, CellResult | None, NucleiResult | None]:
    """ROI -> gate -> cells -> nuclei over a slide with tissue; features go to ``emit`` as the stages make
    them."""
    roi = cells = None
    gate: RoiGate | None = None  # None: the cell model runs over all tissue (--no-roi)
    if models.roi is not None:
        clock = time.perf_counter()
        roi = detect_roi(slide, models.roi, tissue, settings, min_area_um2=config.roi_min_area_um2,
                         simplify_um=config.simplify_um, progress=progress, trim=trimmer)
        timings["roi_s"] = time.perf_counter() - clock
        emit(roi.features)
        roi.features.clear()  # written: the polygons stay for the gate
        if overlay is not None:
            overlay.roi = RoiGate(roi.polygons).mask(overlay.affine, overlay.shape)
        gate = RoiGate(roi.polygons, margin_px=config.roi_margin_um / slide.mpp,
                       tolerance_px=0.5 * models.roi.card.mpp / slide.mpp)
        trimmer.now()  # the ROI stage's and the buffering's temporaries
    if models.cell is not None:
        clock = time.perf_counter()
        options = CellOptions(block_px=config.block_px, object_type=config.object_type,
                              min_area_um2=config.min_area_um2, simplify_um=config.simplify_um,
                              heatmap_um=config.heatmap_um if config.heatmap else None)
        if models.nuclei is not None:  # the cell stage's regions classify the nuclei
            emit.regions = RegionClasses(default=models.cell.card.classes[0].name)
        cells = segment_cells(slide, models.cell, tissue, gate, settings, options, emit=emit,
                              paint=overlay.paint if overlay is not None else None, progress=progress, trim=trimmer,
                              write_block=rasters.write_block if rasters is not None else None)
        timings["cells_s"] = time.perf_counter() - clock
    regions, emit.regions = emit.regions, None
    nuclei = (_run_nuclei(slide, tissue, models, config, settings, emit, gate, regions, overlay, progress, trimmer,
                          timings) if models.nuclei is not None else None)
    return roi, cells, nuclei


def _run_nuclei(
    slide: Slide, tissue: TissueMask, models: _Models, config: PredictConfig, settings: SegmenterSettings,
    emit: _Emitter, gate: RoiGate | None, regions: RegionClasses | None, overlay: Overlay | None,
    progress: Progress | None, trimmer: HeapTrimmer, timings: dict[str, float],
) -> NucleiResult:
    """The nuclei stage inside ``gate`` (None: all tissue), classified by the cell stage's ``regions``."""
    assert models.nuclei is not None
    clock = time.perf_counter()
    options = NucleiOptions(block_px=config.nuclei_block_px, cell_expansion_um=config.cell_expansion_um)
    colors = {c.name: c.color for c in models.cell.card.classes} if models.cell is not None else {}
    nuclei = segment_nuclei(slide, models.nuclei, tissue, gate, settings, options, emit=emit, regions=regions,
                            colors=colors, paint=overlay.mark_nuclei if overlay is not None else None,
                            progress=progress, trim=trimmer)
    timings["nuclei_s"] = time.perf_counter() - clock
    return nuclei


def _save_overlay(overlay: Overlay, path: Path, models: _Models) -> None:
    class_colors = {c.label: c.color for c in models.cell.card.classes if c.emit} if models.cell else {}
    roi_color = models.roi.card.classes[-1].color if models.roi else (255, 215, 0)
    nucleus_colors = {c.name: c.color for c in models.cell.card.classes} if models.cell else {}
    overlay.save(path, class_colors, roi_color, nucleus_colors)


def predict_slide(
    slide_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: PredictConfig | None = None,
    *,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
    model_loader: Callable[..., LoadedModel] | None = None,
) -> PredictSummary:
    """Run the DeepBatch cascade over one slide and write QuPath GeoJSON (+ ``<output>.meta.json``).

    The GeoJSON is written to a temporary file and renamed when complete; the meta sidecar is written last,
    records the GeoJSON's size and marks the run finished (:func:`is_finished`), so an interrupted run never
    looks finished. The output is locked while the run writes it: a second run on the same output fails at
    once (:class:`qpbridge.atomic.OutputLocked`); temporaries a killed run left are removed. ``progress`` hears
    each stage's blocks (:data:`qpbridge.predict.config.Progress`); ``warn`` each warning (also in the summary).
    ``model_loader`` replaces :func:`qpbridge.models.load_model` (a worker's cache of loaded models:
    :class:`qpbridge.predict.distributed.ModelCache`).
    """
    config = config or PredictConfig()
    config.check()
    if config.overlay is not None:
        config = replace(config, overlay=Path(config.overlay))
    slide_path, output = Path(slide_path), Path(output)
    _check_output(output, config.overlay)
    check_raster_targets(config.labels, config.probabilities, output=output, overlay=config.overlay)
    extra = [path for path in (config.overlay, config.labels, config.probabilities) if path is not None]
    with output_lock(output, "qpbridge predict"):
        # Under the lock no live run writes these: what a killed run left is removed.
        remove_stale_temporaries(output, meta_path_for(output), *extra)
        return _predict_locked(slide_path, output, config, progress, warn, model_loader)


def _predict_locked(
    slide_path: Path, output: Path, config: PredictConfig, progress: Progress | None,
    warn: Callable[[str], None] | None, model_loader: Callable[..., LoadedModel] | None,
) -> PredictSummary:
    warnings: list[str] = []

    def _warn(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    device = resolve_device(config.device)
    threads = configure_threads(config.threads) if device.type == "cpu" else None
    if config.precision == "bf16" and device.type == "cpu" and not native_bf16():
        _warn("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so it runs slower than "
              "fp32; leave --precision out for fp32")
    models = _load_models(config, device, model_loader or load_model)
    timings["load_models_s"] = time.perf_counter() - clock
    synthetic = [m.card.name for m in models.loaded if m.card.domain == "synthetic"]
    if synthetic:
        _warn(f"{' and '.join(synthetic)} {'was' if len(synthetic) == 1 else 'were'} trained on synthetic slides "
              "(qpbridge synth): a demonstration, whose output on real H&E is confident nonsense; not for "
              "diagnosis or research results")
    settings = SegmenterSettings(device, batch_size=config.batch_size, overlap_frac=config.overlap_frac,
                                 layout=config.layout, precision=config.precision, context_um=config.context_um,
                                 max_fit_um=config.max_fit_um)

    with open_slide(slide_path, mpp=config.mpp) as slide:
        slide_mpp = slide.mpp  # raises a clear error when the slide has no pixel size
        width, height = slide.dimensions
        offset = slide.qupath_offset_xy_px
        run = run_id(slide_path, config, models.loaded)

        clock = time.perf_counter()
        tissue = detect_tissue(slide, mpp=config.tissue_mpp)
        timings["tissue_s"] = time.perf_counter() - clock
        trimmer = HeapTrimmer()  # freed block memory goes back to the system (peak memory flat over slide size)
        trimmer.now()  # the tissue thumbnail's memory
        if not tissue.tissue.any():
            _warn(f"no tissue found in {slide_path}: the output is an empty FeatureCollection")
        if models.nuclei is not None and slide_mpp > models.nuclei.card.mpp * 1.05:
            _warn(f"the slide ({slide_mpp:.4g} um/px) is coarser than the nuclei model's {models.nuclei.card.mpp:g} "
                  f"um/px: it is read upsampled {slide_mpp / models.nuclei.card.mpp:.1f}x for the nuclei, which are "
                  "then less exact than on a scan at the model's resolution")

        overlay = Overlay(slide, config.overlay_max_px) if config.overlay is not None else None
        colors: dict[str, tuple[int, int, int]] = {}
        for model in models.loaded:
            colors.update({c.name: c.color for c in model.card.classes})
        roi: RoiResult | None = None
        cells: CellResult | None = None
        nuclei: NucleiResult | None = None
        rasters = (RasterWriter.for_slide(config.labels, config.probabilities, slide, cell_mpp(slide, models.cell.card),
                                          models.cell.card.classes)
                   if models.cell is not None and (config.labels or config.probabilities) else None)
        # The rasters' pyramids are built and committed after the GeoJSON is (and removed if anything fails).
        with rasters if rasters is not None else nullcontext(), GeoJSONWriter(output, default_color=colors) as writer:
            emit = _Emitter(writer, offset, prediction_properties(run))
            if tissue.tissue.any():
                roi, cells, nuclei = _run_stages(slide, tissue, models, config, settings, emit, overlay, progress,
                                                 trimmer, timings, rasters)
            meta_path_for(output).unlink(missing_ok=True)  # an earlier run's output stops being finished now
        if rasters is not None:
            timings["rasters_s"] = rasters.close_s
        if overlay is not None and config.overlay is not None:
            _save_overlay(overlay, config.overlay, models)

    timings["total_s"] = sum(timings.values())
    summary = _summary(slide_path, output, slide_mpp, (width, height), tissue, roi, cells, config,
                       writer.summary.written, emit.by_class, timings, warnings)
    summary.rasters = [info.to_json() for info in rasters.infos] if rasters is not None else []
    if nuclei is not None:
        summary.nuclei_written, summary.nuclei_by_class = nuclei.nuclei, dict(sorted(nuclei.by_class.items()))
        summary.nuclei_windows_run, summary.nuclei_forward_s = nuclei.windows_run, nuclei.forward_s
        summary.nuclei_network_mpx = nuclei.pixels_run / 1e6
        summary.layouts["nuclei"] = nuclei.layout
    _write_meta(output, run, slide_path, config, threads, device, models, offset, summary)
    return summary


def _write_meta(
    output: Path, run: str, slide_path: Path, config: PredictConfig, threads: int | None, device: torch.device,
    models: _Models, offset: tuple[int, int], summary: PredictSummary,
) -> None:
    """``<output>.meta.json``: provenance, options and the summary; written last, it marks the run finished."""
    meta = {
        "qpbridge_version": __version__, "run_id": run, "finished": True,
        "slide": str(slide_path.resolve()), "config": {k: (str(v) if isinstance(v, Path) else v)
                                                        for k, v in asdict(config).items()},
        "threads": threads, "device": str(device),
        "models": {m.card.role: {"name": m.card.name, "path": str(m.path), "sha256": m.card.weights_sha256,
                                 "mpp": m.card.mpp, "domain": m.card.domain, "intended_use": m.card.intended_use}
                   for m in models.loaded},
        "qupath_offset_xy_px": list(offset), "geojson_bytes": output.stat().st_size, "summary": asdict(summary),
    }
    atomic_write_text(meta_path_for(output), json.dumps(meta, indent=2, default=str) + "\n")


def _summary(
    slide_path: Path, output: Path, slide_mpp: float, size_px: tuple[int, int], tissue: TissueMask,
    roi: RoiResult | None, cells: CellResult | None, config: PredictConfig, written: int, by_class: dict[str, int],
    timings: dict[str, float], warnings: list[str],
) -> PredictSummary:
    """The summary of one slide's run, from what its stages returned."""
    layouts = {}
    if roi is not None:
        layouts["roi"] = roi.layout
    if cells is not None:
        layouts["cell"] = cells.layout
    cell = cells or CellResult()
    saved = None
    if config.use_roi and cells is not None and cell.tissue_px:
        saved = 1.0 - cell.pixels_run / cell.tissue_px
    return PredictSummary(
        slide=str(slide_path), output=str(output), slide_mpp=slide_mpp, width_px=size_px[0], height_px=size_px[1],
        tissue_fraction=tissue.tissue_fraction,
        roi_fraction_of_tissue=None if roi is None else roi.area_um2 / max(tissue.tissue_area_um2, 1e-9),
        features_written=written, features_by_class=by_class,
        blocks_total=cell.blocks_total, blocks_read=cell.blocks_read,
        blocks_skipped=cell.blocks_total - cell.blocks_read, windows_run=cell.windows_run,
        windows_skipped=cell.windows_skipped, high_mag_saved_frac=saved, timings_s=timings,
        forward_s=cell.forward_s, roi_windows_run=roi.windows_run if roi else 0,
        roi_forward_s=roi.forward_s if roi else 0.0,
        read_mpx=cell.read_px / 1e6, network_mpx=cell.pixels_run / 1e6, tissue_network_mpx=cell.tissue_px / 1e6,
        roi_network_mpx=(roi.pixels_run if roi else 0) / 1e6, layouts=layouts, warnings=warnings,
    )


# ------------------------------------------------------------------------------------------- many slides
@dataclass(frozen=True)
class SlideJob:
    """One slide of a batch and the GeoJSON it writes; from a QuPath project, also the ``image`` name, and the
    ``error`` that the planning found (a missing file, an OMERO image...): such a job fails without running."""

    slide: Path
    output: Path
    image: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchPlan:
    """The slides of a batch; ``several``: several slides (or a folder, or a QuPath project) were given, so outputs
    go into a folder (``folder``, where known) and a slide's failure or finished output is reported, not raised."""

    jobs: list[SlideJob]
    several: bool
    folder: Path | None = None


def expand_slides(slides: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Slide paths, each folder replaced by the slides in it (sorted; slide suffixes of
    :data:`qpbridge.slide.SLIDE_SUFFIXES`). A DICOM slide is a folder of ``.dcm`` files: one slide, whether it
    is given itself or lies in the folder given.

    >>> expand_slides(["a.svs", "b.ndpi"])
    [PosixPath('a.svs'), PosixPath('b.ndpi')]
    """
    found: list[Path] = []
    for path in map(Path, slides):
        if path.is_dir() and dicom_member(path) is not None:
            found.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.iterdir() if (
                p.is_file() and has_slide_suffix(p) and p.suffix.lower() != ".dcm"
                or p.is_dir() and dicom_member(p) is not None))
            if not inside:
                raise InputError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in folder {path}")
            found.extend(inside)
        else:
            found.append(path)
    return found


def plan_batch(
    slides: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str] | None, *, overlay: bool = False,
    images: Sequence[str] | None = None,
) -> BatchPlan:
    """Which slide writes which file: one slide writes ``output`` (or ``<image name>.geojson`` into it when it
    is a folder); several slides, or a folder, write ``<image name>.geojson`` into the folder ``output``.
    A QuPath project (its ``.qpproj`` file or folder, given alone) writes ``<image name>.geojson`` per image
    (``images``: these only) into ``output``, by default ``<project>/qpbridge`` (:func:`_plan_project`).

    >>> plan_batch(["slide.svs"], "slide.geojson").jobs
    [SlideJob(slide=PosixPath('slide.svs'), output=PosixPath('slide.geojson'), image=None, error=None)]
    """
    project = next((f for f in map(find_project_file, slides) if f is not None), None)
    if project is not None:
        if len(slides) > 1:
            raise InputError(f"a QuPath project is predicted on its own: give {project} alone (select some of its "
                             "images with --images NAME)")
        return _plan_project(project, output, overlay=overlay, images=images)
    if images is not None:
        raise InputError("--images selects images of a QuPath project: give its project.qpproj (or its folder) "
                         "as the only SLIDE")
    if output is None:
        raise InputError("give the output with -o: a .geojson file for one slide, a folder for several")
    paths, output = expand_slides(slides), Path(output)
    several = len(paths) > 1 or any(Path(p).is_dir() for p in slides)
    if several:
        if output.suffix.lower() in (".geojson", ".gz", ".json"):
            raise OutputError(f"-o {output} looks like a file but several slides were given: give a folder")
        if not output.is_dir():
            raise OutputError(f"output folder {output} does not exist: create it first")
        if overlay:
            raise InputError("--overlay takes one slide; several were given")
        targets = [output / prediction_filename(p) for p in paths]
    else:
        targets = [output / prediction_filename(paths[0]) if output.is_dir() else output]
    return BatchPlan([SlideJob(p, t) for p, t in zip(paths, targets, strict=True)], several)


def _plan_project(
    project_file: Path, output: str | os.PathLike[str] | None, *, overlay: bool, images: Sequence[str] | None
) -> BatchPlan:
    """A QuPath project's images -> jobs (:meth:`qpbridge.qupath.QuPathProject.prediction_targets`); an image
    without a local file becomes a job that fails with the reason."""
    if overlay:
        raise InputError("--overlay takes one slide, and a QuPath project gives one per image: leave --overlay out")
    project = read_project(project_file)
    folder = predictions_dir(project.folder) if output is None else Path(output)
    if output is not None and not folder.is_dir():
        raise OutputError(f"-o {folder}: a QuPath project writes one file per image into a folder, and this is none "
                          f"(leave -o out for {predictions_dir(project.folder)}, where import_predictions.groovy "
                          "looks)")
    targets = project.prediction_targets(images, folder=folder)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}, where import_predictions.groovy looks: {exc}") from None
    jobs = [SlideJob(t.image.path or Path(t.image.name), t.output, image=t.image.name, error=t.problem)
            for t in targets]
    return BatchPlan(jobs, several=True, folder=folder)


@dataclass
class SlideOutcome:
    """What became of one slide of a batch: ``done`` (with its summary), ``skipped`` (its output was finished)
    or ``failed`` (with the error)."""

    job: SlideJob
    status: Literal["done", "skipped", "failed"]
    summary: PredictSummary | None = None
    error: QpbridgeError | None = None
    seconds: float | None = None  #: wall time of the slide's run (None: skipped)
    worker: str | None = None  #: the Dask worker's address (None: run in this process)
    attempts: int = 0  #: runs of the slide (a failed slide is tried twice on Dask)


@dataclass
class BatchSummary:
    """The outcomes of a batch, in slide order."""

    outcomes: list[SlideOutcome]

    def count(self, status: Literal["done", "skipped", "failed"]) -> int:
        """How many slides ended ``status`` (done, skipped, failed)."""
        return sum(1 for o in self.outcomes if o.status == status)


def predict_slides(
    slides: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str] | None,
    config: PredictConfig | None = None,
    *,
    images: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[SlideJob], AbstractContextManager[Progress | None]] | None = None,
    warn: Callable[[str], None] | None = None,
    report: Callable[[SlideOutcome], None] | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    slides_progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Run :func:`predict_slide` over slides and folders of slides (see :func:`plan_batch` for the outputs).

    Finished outputs are skipped unless ``overwrite``; with several slides, a slide's :class:`QpbridgeError`
    is reported and counted and the batch goes on (with one slide, both raise). ``progress`` opens, per slide,
    the context of that slide's progress callback (the CLI's progress bar); ``report`` hears each outcome as
    it happens. A QuPath project writes into ``<project>/qpbridge`` (``output`` None; ``images``: these images
    only), and its images without a local file fail with the reason. A batch into a folder writes
    ``qpbridge-run.json`` there
    (:func:`qpbridge.predict.distributed.write_run_summary`).

    Several slides with ``workers > 1`` or a ``scheduler`` run on Dask, one slide per task
    (:func:`qpbridge.predict.distributed.predict_batch`: ``slides_progress`` hears slides done / to run, and
    ``progress`` is not used); otherwise, here, one after the other, and Dask is not imported.

    >>> batch = predict_slides(["slides/"], "predictions/", report=print)            # doctest: +SKIP
    >>> batch.count("failed")                                                         # doctest: +SKIP
    0
    """
    config = config or PredictConfig()
    if workers != 1 or scheduler:
        from qpbridge.predict import distributed  # imports Dask only if the batch goes there

        distributed.require_distributed(workers, scheduler)
    plan = plan_batch(slides, output, overlay=config.overlay is not None, images=images)
    config.check()
    if plan.several and (config.labels is not None or config.probabilities is not None):
        raise InputError("--labels and --probabilities take one slide; several were given")
    if plan.several and (workers > 1 or scheduler):
        from qpbridge.predict.distributed import predict_batch

        return predict_batch(plan, config, workers=workers, scheduler=scheduler, overwrite=overwrite, warn=warn,
                             report=report, slides_progress=slides_progress)
    started = time.time()
    outcomes: list[SlideOutcome] = []
    for job in plan.jobs:
        if job.error is not None:
            outcome = SlideOutcome(job, "failed", error=InputError(job.error))
        elif is_finished(job.output) and not overwrite:
            if not plan.several:
                raise OutputError(f"{job.output} exists and is finished: use --overwrite to replace it")
            outcome = SlideOutcome(job, "skipped")
        else:
            clock = time.perf_counter()
            try:
                with progress(job) if progress is not None else nullcontext(None) as stage_progress:
                    summary = predict_slide(job.slide, job.output, config, progress=stage_progress, warn=warn)
                outcome = SlideOutcome(job, "done", summary=summary)
            except QpbridgeError as exc:
                if not plan.several:
                    raise
                outcome = SlideOutcome(job, "failed", error=exc)
            outcome.seconds, outcome.attempts = time.perf_counter() - clock, 1
        outcomes.append(outcome)
        if report is not None:
            report(outcome)
    folder = plan.folder or (Path(output) if output is not None and Path(output).is_dir() else None)
    if folder is not None:
        from qpbridge.predict.distributed import write_run_summary

        write_run_summary(folder, outcomes, engine="serial", started=started)
    return BatchSummary(outcomes)
