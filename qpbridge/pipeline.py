"""The DeepBatch cascade over a whole slide: the only module that composes the steps.

slide -> tissue & pen mask (thumbnail scale) -> ROI U-Net (low magnification, over tissue only) -> ROI regions,
grown by a margin -> cell U-Net (high magnification, MONAI sliding window, block by block, only around the ROI)
-> class labels per block -> polygons (seams merged) -> QuPath GeoJSON, streamed; plus ``<out>.meta.json``.

Memory is bounded by the block: the high-magnification image is never held whole; the only whole-slide
arrays are the tissue mask (thumbnail scale) and the overlay thumbnail; the ROI is kept as polygons.

Example
-------
>>> from qpbridge.pipeline import PredictConfig, predict_slide
>>> summary = predict_slide("slide.svs", "slide.geojson", PredictConfig())     # doctest: +SKIP
>>> summary.features_written                                                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine
from scipy import ndimage

from qpbridge import __version__
from qpbridge.atomic import atomic_path, atomic_write_text
from qpbridge.device import configure_threads, resolve_device
from qpbridge.errors import InputError, OutputError
from qpbridge.inference import (
    PRECISIONS,
    BlockSegmenter,
    Region,
    argmax_labels,
    native_bf16,
)
from qpbridge.memory import HeapTrimmer
from qpbridge.models import LoadedModel, inference_network, load_model
from qpbridge.naming import prediction_properties
from qpbridge.qupath import Feature, GeoJSONWriter
from qpbridge.qupath_write import meta_path as meta_path_for  # out.geojson -> out.geojson.meta.json
from qpbridge.slide import Slide, check_mpp, open_slide
from qpbridge.tiling import BlockGrid, Window, apply_affine, window_affine
from qpbridge.tissue import DEFAULT_TISSUE_MPP, TissueMask, detect_tissue
from qpbridge.vectorize import BlockVectorizer, ClassPolygons

DEFAULT_ROI_MODEL = "deepbatch-synth-roi"
DEFAULT_CELL_MODEL = "deepbatch-synth-cell"

#: Progress callback: (stage, blocks done, blocks total, windows run so far).
Progress = Callable[[str, int, int, int], None]


@dataclass
class PredictConfig:
    """Options of :func:`predict_slide` (the CLI's ``qpbridge predict`` flags)."""

    model_roi: str = DEFAULT_ROI_MODEL
    model_cell: str = DEFAULT_CELL_MODEL
    mpp: float | None = None  #: slide pixel size override (um/px at level 0)
    device: str = "cpu"
    batch_size: int | None = None
    threads: int | None = None
    use_roi: bool = True  #: False = ``--no-roi``: the cell model over all tissue
    roi_only: bool = False  #: True = ``--roi-only``: stop after the ROI
    roi_margin_um: float = 8.0  #: the ROI is grown by this much before gating the cell model
    roi_min_area_um2: float = 2000.0  #: ROI pieces smaller than this are dropped (holes in the ROI are filled)
    tissue_mpp: float = DEFAULT_TISSUE_MPP
    #: cell-stage block side in pixels at the cell model's um/px, with its context on both sides (a block of
    #: tissue and its context then fills a whole number of the card's sliding windows)
    block_px: int = 1024
    context_um: float = 16.0  #: context the networks see around their gate (tissue, dilated ROI)
    max_fit_um: float | None = None  #: gate pieces up to this size run as one fitted window (default 2 tiles)
    layout: str = "auto"  #: network memory layout: auto (timed), nchw or channels_last
    precision: str = "auto"  #: forward pass precision: auto (fp16 on a GPU, fp32 on a CPU), fp32 or bf16
    overlap_frac: float | None = None  #: override the cards' sliding-window overlap
    object_type: str = "detection"  #: QuPath object type of the cell-level class regions
    min_area_um2: float = 20.0
    simplify_um: float = 0.0
    heatmap: bool = False
    heatmap_um: float = 64.0
    overlay: Path | None = None
    overlay_max_px: int = 1600

    def check(self) -> None:
        """Raise :class:`InputError` for out-of-range options."""
        if self.mpp is not None:
            check_mpp(self.mpp)
        if self.roi_only and not self.use_roi:
            raise InputError("--roi-only and --no-roi exclude each other: choose one")
        if self.object_type not in ("detection", "annotation"):
            raise InputError(f"--object-type must be detection or annotation, got {self.object_type!r}")
        for name, value in (("--min-area-um2", self.min_area_um2), ("--simplify-um", self.simplify_um),
                            ("--roi-margin-um", self.roi_margin_um), ("--roi-min-area-um2", self.roi_min_area_um2)):
            if not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be >= 0, got {value}")
        if self.block_px < 256:
            raise InputError(f"--block-px must be >= 256, got {self.block_px}")
        if not math.isfinite(self.context_um) or self.context_um < 0:
            raise InputError(f"--context-um must be >= 0, got {self.context_um}")
        if self.max_fit_um is not None and (not math.isfinite(self.max_fit_um) or self.max_fit_um < 0):
            raise InputError(f"--max-fit-um must be >= 0, got {self.max_fit_um}")
        if self.layout not in ("auto", "nchw", "channels_last"):
            raise InputError(f"--layout must be auto, nchw or channels_last, got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.heatmap_um <= 0:
            raise InputError(f"--heatmap-um must be > 0, got {self.heatmap_um}")


@dataclass
class PredictSummary:
    """What :func:`predict_slide` did (also written, with provenance, to ``<out>.meta.json``)."""

    slide: str
    output: str
    slide_mpp: float
    width_px: int
    height_px: int
    tissue_fraction: float
    roi_fraction_of_tissue: float | None
    features_written: int
    features_by_class: dict[str, int]
    blocks_total: int
    blocks_read: int  #: blocks of which the part around the gate was read at high magnification
    blocks_skipped: int
    windows_run: int  #: cell-model windows run (high magnification; fitted windows vary in size)
    windows_skipped: int  #: windows of the fixed grid over the read blocks that the gate spared
    high_mag_saved_frac: float | None  #: share of the cell-model work over all tissue that the ROI gate saved
    timings_s: dict[str, float]
    forward_s: float  #: seconds in the cell model's forward passes
    roi_windows_run: int = 0
    roi_forward_s: float = 0.0
    read_mpx: float = 0.0  #: megapixels read at the cell model's um/px
    network_mpx: float = 0.0  #: cell-model input megapixels (its windows x their area): the high-mag work
    tissue_network_mpx: float = 0.0  #: what the cell model's work over all tissue would be (``--no-roi``)
    roi_network_mpx: float = 0.0  #: ROI-model input megapixels
    layouts: dict[str, str] = field(default_factory=dict)  #: memory layout each model ran in (timed on the CPU)
    warnings: list[str] = field(default_factory=list)


def is_finished(output: str | os.PathLike[str]) -> bool:
    """A finished prediction has its GeoJSON and its meta sidecar (written last) and the sidecar says so."""
    meta = meta_path_for(output)
    if not (Path(output).is_file() and meta.is_file()):
        return False
    try:
        return bool(json.loads(meta.read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def _check_output(output: Path) -> None:
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist: create it first or choose another -o")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {folder} is not writable: choose another -o")
    name = output.name.lower()
    if not (name.endswith(".geojson") or name.endswith(".geojson.gz") or name.endswith(".json")):
        raise OutputError(f"output {output} must end in .geojson or .geojson.gz (what QuPath imports)")


def _nearest_index(
    source_shape: tuple[int, ...], source_affine: Affine, out_affine: Affine, out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour lookup between two axis-aligned grids (via level-0 coordinates).

    Returns ``(out_rows, out_cols, source_rows, source_cols)``: the output rows/columns whose pixel centres fall
    inside the source, and the source row/column each one reads.
    """
    height, width = out_shape
    to_source = ~source_affine @ out_affine
    cols = np.floor(to_source.a * (np.arange(width) + 0.5) + to_source.c).astype(np.int64)
    rows = np.floor(to_source.e * (np.arange(height) + 0.5) + to_source.f).astype(np.int64)
    out_cols = np.flatnonzero((cols >= 0) & (cols < source_shape[1]))
    out_rows = np.flatnonzero((rows >= 0) & (rows < source_shape[0]))
    return out_rows, out_cols, rows[out_rows], cols[out_cols]


def sample_mask(mask: np.ndarray, mask_affine: Affine, out_affine: Affine, out_shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour sample of a boolean mask onto another axis-aligned grid (via level-0 coordinates).

    Output pixel centres are mapped to level 0 by ``out_affine`` and into ``mask`` by ``~mask_affine``;
    centres outside ``mask`` read False.

    >>> m = np.zeros((2, 2), bool); m[0, 1] = True
    >>> sample_mask(m, Affine.scale(4), Affine.scale(2), (4, 4)).astype(int).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    """
    out = np.zeros(out_shape, dtype=bool)
    out_rows, out_cols, rows, cols = _nearest_index(mask.shape, mask_affine, out_affine, out_shape)
    if len(out_rows) and len(out_cols):
        # Output rows/columns inside the source are contiguous runs: slice them (fancy indexing on both axes at
        # once is ~10x slower on 1024^2 blocks); the source is cut to the part read first (indices are monotonic).
        part = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        if part.any():  # a block away from the tissue: nothing to sample
            out[out_rows[0]:out_rows[-1] + 1, out_cols[0]:out_cols[-1] + 1] = (
                part.take(rows - rows[0], axis=0).take(cols - cols[0], axis=1))
    return out


class _ProbabilityLedger:
    """Mean class probability of each polygon, also when a polygon is merged from pieces of several blocks.

    Per block, every connected piece of a class (4-connectivity, as the vectorizer) gets its probability sum
    and pixel count. A polygon emitted from inside the block is matched to its piece by a point on its surface;
    pieces touching the block border also leave a record (a pixel centre inside the piece, in level 0) that the
    polygon they end up in collects when the seams are merged.
    """

    def __init__(self) -> None:
        self.points = np.empty((0, 2))
        self.labels = np.empty(0, dtype=np.int64)
        self.sums = np.empty(0)
        self.counts = np.empty(0)
        self._block: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._affine = Affine.identity()
        self._shape = (0, 0)

    def add_block(self, labels: np.ndarray, probs: np.ndarray, affine: Affine, emit: tuple[int, ...]) -> None:
        structure = ndimage.generate_binary_structure(2, 1)
        self._block, self._affine, self._shape = {}, affine, labels.shape
        height, width = labels.shape
        border_rows = np.concatenate([np.zeros(width, np.int64), np.full(width, height - 1), np.arange(height),
                                      np.arange(height)])
        border_cols = np.concatenate([np.arange(width), np.arange(width), np.zeros(height, np.int64),
                                      np.full(height, width - 1)])
        parts = [(self.points, self.labels, self.sums, self.counts)]
        for label in emit:
            where = labels == label
            inside = np.flatnonzero(where)  # sums run over the class's pixels only, not the whole block
            if not len(inside):
                continue
            components, count = ndimage.label(where, structure=structure)
            ids = components.ravel()[inside]
            counts = np.bincount(ids, minlength=count + 1).astype(np.float64)
            sums = np.bincount(ids, weights=probs[label].ravel()[inside], minlength=count + 1)
            self._block[label] = (components, sums, counts)
            # A piece touching the block border is recorded by one of its border pixels (looked up on the
            # border only: a unique over the whole block would sort every pixel).
            edge_ids, first = np.unique(components[border_rows, border_cols], return_index=True)
            first, edge_ids = first[edge_ids > 0], edge_ids[edge_ids > 0]
            if len(edge_ids):
                xs, ys = apply_affine(affine, border_cols[first] + 0.5, border_rows[first] + 0.5)
                parts.append((np.column_stack([xs, ys]), np.full(len(edge_ids), label), sums[edge_ids],
                              counts[edge_ids]))
        self.points = np.concatenate([p[0] for p in parts])
        self.labels = np.concatenate([p[1] for p in parts])
        self.sums = np.concatenate([p[2] for p in parts])
        self.counts = np.concatenate([p[3] for p in parts])

    def settle(self, emitted: ClassPolygons, *, last: bool = False) -> np.ndarray:
        """Mean probability per emitted polygon (NaN where nothing matched)."""
        means = np.full(len(emitted), np.nan)
        if not len(emitted):
            return means
        rest = np.ones(len(emitted), dtype=bool)
        if self._block and not last:
            height, width = self._shape
            x0, y0 = self._affine @ (0, 0)
            x1, y1 = self._affine @ (width, height)
            bounds = shapely.bounds(emitted.polygons)
            inside = (bounds[:, 0] > x0) & (bounds[:, 1] > y0) & (bounds[:, 2] < x1) & (bounds[:, 3] < y1)
            if inside.any():
                where = np.flatnonzero(inside)
                xy = shapely.get_coordinates(shapely.point_on_surface(emitted.polygons[where]))
                cols, rows = apply_affine(~self._affine, xy[:, 0], xy[:, 1])
                cols = np.clip(np.floor(cols).astype(np.int64), 0, width - 1)
                rows = np.clip(np.floor(rows).astype(np.int64), 0, height - 1)
                for label, (components, sums, counts) in self._block.items():
                    sel = emitted.labels[where] == label
                    ids = components[rows[sel], cols[sel]]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        means[where[sel]] = np.where(ids > 0, sums[ids] / np.maximum(counts[ids], 1), np.nan)
                rest[where] = False
        if rest.any() and len(self.points):
            where = np.flatnonzero(rest)
            tree = shapely.STRtree(emitted.polygons[where])
            pairs = tree.query(shapely.points(self.points), predicate="within")
            ok = self.labels[pairs[0]] == emitted.labels[where][pairs[1]]
            rec, poly = pairs[0][ok], pairs[1][ok]
            total = np.bincount(poly, weights=self.sums[rec], minlength=len(where))
            n = np.bincount(poly, weights=self.counts[rec], minlength=len(where))
            with np.errstate(invalid="ignore", divide="ignore"):
                means[where] = np.where(n > 0, total / n, np.nan)
            keep = np.ones(len(self.points), dtype=bool)
            keep[rec] = False
            self.points, self.labels = self.points[keep], self.labels[keep]
            self.sums, self.counts = self.sums[keep], self.counts[keep]
        return means


class _Overlay:
    """A thumbnail with the predictions painted on, accumulated block by block (bounded memory)."""

    def __init__(self, slide: Slide, max_px: int) -> None:
        width, height = slide.dimensions
        self.mpp = max(slide.mpp * max(width, height) / max_px, slide.mpp)
        self.rgb, self.affine = slide.read_whole_at(self.mpp)
        shape = (int(self.rgb.shape[0]), int(self.rgb.shape[1]))
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.roi = np.zeros(shape, dtype=bool)

    def paint(self, labels: np.ndarray, labels_affine: Affine) -> None:
        out_rows, out_cols, rows, cols = _nearest_index(labels.shape, labels_affine, self.affine, self.labels.shape)
        if len(out_rows) and len(out_cols):
            self.labels[out_rows[0]:out_rows[-1] + 1, out_cols[0]:out_cols[-1] + 1] = (
                labels.take(rows, axis=0).take(cols, axis=1))

    def save(self, path: Path, colors: dict[int, tuple[int, int, int]], roi_color: tuple[int, int, int]) -> None:
        from PIL import Image
        from skimage.segmentation import find_boundaries

        out = self.rgb.astype(np.float32)
        for label, color in colors.items():
            where = self.labels == label
            out[where] = 0.5 * out[where] + 0.5 * np.asarray(color, dtype=np.float32)
        edge = find_boundaries(self.roi, mode="outer")
        out[edge] = roi_color
        with atomic_path(path) as tmp:
            Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(tmp, format="PNG")


def _run_id(slide_path: Path, config: PredictConfig, models: list[LoadedModel]) -> str:
    digest = hashlib.sha256()
    digest.update(str(slide_path.resolve()).encode())
    digest.update(json.dumps(asdict(config), default=str, sort_keys=True).encode())
    for model in models:
        digest.update(model.card.weights_sha256.encode())
    return digest.hexdigest()[:16]


def predict_slide(
    slide_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: PredictConfig | None = None,
    *,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> PredictSummary:
    """Run the DeepBatch cascade over one slide and write QuPath GeoJSON (+ ``<output>.meta.json``).

    The GeoJSON is written to a temporary file and renamed when complete; the meta sidecar is written last
    and marks the run finished, so an interrupted run never looks finished.
    """
    config = config or PredictConfig()
    config.check()
    if config.overlay is not None:
        config.overlay = Path(config.overlay)
    slide_path, output = Path(slide_path), Path(output)
    _check_output(output)
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
    roi_model = load_model(config.model_roi, role="roi", device=device) if config.use_roi else None
    cell_model = None if config.roi_only else load_model(config.model_cell, role="cell", device=device)
    for model in (roi_model, cell_model):
        if model is not None:
            model.network = inference_network(model.card, model.network)
    timings["load_models_s"] = time.perf_counter() - clock

    with open_slide(slide_path, mpp=config.mpp) as slide:
        slide_mpp = slide.mpp  # raises a clear error when the slide has no pixel size
        width, height = slide.dimensions
        ox, oy = slide.qupath_offset_xy_px
        run_id = _run_id(slide_path, config, [m for m in (roi_model, cell_model) if m is not None])
        marker = prediction_properties(run_id)

        clock = time.perf_counter()
        tissue = detect_tissue(slide, mpp=config.tissue_mpp)
        timings["tissue_s"] = time.perf_counter() - clock
        trimmer = HeapTrimmer()  # freed block memory goes back to the system (peak memory flat over slide size)
        trimmer.now()  # the tissue thumbnail's memory
        if not tissue.tissue.any():
            _warn(f"no tissue found in {slide_path}: the output is an empty FeatureCollection")

        overlay = _Overlay(slide, config.overlay_max_px) if config.overlay is not None else None
        colors: dict[str, tuple[int, int, int]] = {}
        for model in (roi_model, cell_model):
            if model is not None:
                colors.update({c.name: c.color for c in model.card.classes})

        stats: dict[str, Any] = {"blocks_total": 0, "blocks_read": 0, "windows_run": 0, "windows_skipped": 0,
                                 "tissue_px": 0, "pixels_run": 0, "read_px": 0, "forward_s": 0.0, "roi_windows_run": 0,
                                 "roi_forward_s": 0.0, "roi_px": 0, "layouts": {}}
        by_class: dict[str, int] = {}
        roi_fraction: float | None = None
        with GeoJSONWriter(output, default_color=colors) as writer:

            def emit(features: list[Feature]) -> None:
                for feature in features:
                    if (ox, oy) != (0, 0):
                        feature.geometry = shapely.affinity.translate(feature.geometry, -ox, -oy)
                    feature.measurements.update(marker["measurements"])
                    feature.metadata.update(marker["metadata"])
                    key = "heatmap tiles" if feature.object_type == "tile" else (feature.class_name or "")
                    by_class[key] = by_class.get(key, 0) + 1
                writer.write_many(features)

            gate: RoiGate | None = None  # None: the cell model runs over all tissue (--no-roi)
            if roi_model is not None and tissue.tissue.any():
                clock = time.perf_counter()
                roi = _detect_roi(slide, roi_model, tissue, config, device, progress, trimmer)
                timings["roi_s"] = time.perf_counter() - clock
                stats["roi_forward_s"] += roi.forward_s
                stats["roi_windows_run"] += roi.windows_run
                stats["roi_px"] += roi.pixels_run
                stats["layouts"]["roi"] = roi.layout
                roi_fraction = roi.area_um2 / max(tissue.tissue_area_um2, 1e-9)
                emit(roi.features)
                roi.features.clear()  # written: the polygons stay for the gate
                if overlay is not None:
                    overlay.roi = RoiGate(roi.polygons).mask(overlay.affine, overlay.labels.shape)
                gate = RoiGate(roi.polygons, margin_px=config.roi_margin_um / slide_mpp,
                               tolerance_px=0.5 * roi_model.card.mpp / slide_mpp)
                trimmer.now()  # the ROI stage's and the buffering's temporaries

            if cell_model is not None and tissue.tissue.any():
                clock = time.perf_counter()
                _segment_cells(slide, cell_model, tissue, gate, config, device, emit, stats, overlay, progress,
                               trimmer)
                timings["cells_s"] = time.perf_counter() - clock
        if overlay is not None and config.overlay is not None:
            class_colors = {c.label: c.color for c in cell_model.card.classes if c.emit} if cell_model else {}
            roi_color = roi_model.card.classes[-1].color if roi_model else (255, 215, 0)
            overlay.save(config.overlay, class_colors, roi_color)

    timings["total_s"] = sum(timings.values())
    saved = None
    if config.use_roi and cell_model is not None and stats["tissue_px"]:
        saved = 1.0 - stats["pixels_run"] / stats["tissue_px"]
    summary = PredictSummary(
        slide=str(slide_path), output=str(output), slide_mpp=slide_mpp, width_px=width, height_px=height,
        tissue_fraction=tissue.tissue_fraction, roi_fraction_of_tissue=roi_fraction,
        features_written=writer.summary.written, features_by_class=by_class,
        blocks_total=stats["blocks_total"], blocks_read=stats["blocks_read"],
        blocks_skipped=stats["blocks_total"] - stats["blocks_read"], windows_run=stats["windows_run"],
        windows_skipped=stats["windows_skipped"], high_mag_saved_frac=saved, timings_s=timings,
        forward_s=stats["forward_s"], roi_windows_run=stats["roi_windows_run"], roi_forward_s=stats["roi_forward_s"],
        read_mpx=stats["read_px"] / 1e6, network_mpx=stats["pixels_run"] / 1e6,
        tissue_network_mpx=stats["tissue_px"] / 1e6,
        roi_network_mpx=stats["roi_px"] / 1e6, layouts=stats["layouts"], warnings=warnings,
    )
    meta = {
        "qpbridge_version": __version__, "run_id": run_id, "finished": True,
        "slide": str(slide_path.resolve()), "config": {k: (str(v) if isinstance(v, Path) else v)
                                                        for k, v in asdict(config).items()},
        "threads": threads, "device": str(device),
        "models": {m.card.role: {"name": m.card.name, "path": str(m.path), "sha256": m.card.weights_sha256,
                                 "mpp": m.card.mpp} for m in (roi_model, cell_model) if m is not None},
        "qupath_offset_xy_px": [ox, oy], "summary": asdict(summary),
    }
    atomic_write_text(meta_path_for(output), json.dumps(meta, indent=2, default=str) + "\n")
    return summary


#: The cell stage reads a block's region boxes one by one (not the box around them all) when they cover less
#: than this share of it.
READ_BOXES_BELOW = 0.6

#: ROI-stage block side in px at the ROI model's um/px, with its context on both sides (2 mm at 2 um/px; small
#: enough that a small slide's blocks are as big as a large slide's, so peak memory is the same). Blocks are
#: read with a halo (:attr:`BlockSegmenter.halo_px`): windows at their edges see the neighbouring tissue.
ROI_BLOCK_PX = 1024


class RoiGate:
    """The ROI regions (level-0 polygons), simplified within ``tolerance_px`` and grown by a margin, drawn into
    any block on demand.

    This is what decides which high-magnification pixels the cell model works on; it is drawn at each block's
    own resolution and holds no whole-slide array (memory does not grow with the slide).

    >>> gate = RoiGate(np.array([shapely.box(10, 10, 30, 30)]), margin_px=2)
    >>> int(gate.mask(Affine.scale(4), (16, 16)).sum())   # 8..32 in level 0 -> 2..8 at 4 px per px
    36
    """

    def __init__(self, polygons: np.ndarray, margin_px: float = 0.0, tolerance_px: float = 0.0) -> None:
        if tolerance_px > 0 and len(polygons):  # pixel-staircase outlines: far fewer vertices, same region
            polygons = shapely.simplify(polygons, tolerance_px, preserve_topology=True)
        # 4 segments per quarter circle: corners of a margin of a few um are off by < 8% of it, at half the cost
        self.polygons = (shapely.buffer(polygons, margin_px, quad_segs=4) if margin_px > 0 and len(polygons)
                         else polygons)
        self.tree = shapely.STRtree(self.polygons)

    def mask(self, affine: Affine, shape: tuple[int, int]) -> np.ndarray:
        """Bool mask of the (grown) ROI on the grid ``affine`` (pixel -> level 0) of ``shape`` (rows, cols)."""
        height, width = shape
        x0, y0 = affine @ (0, 0)
        x1, y1 = affine @ (width, height)
        hits = self.tree.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        if not len(hits):
            return np.zeros(shape, dtype=bool)
        return rasterio.features.rasterize(
            ((p, 1) for p in self.polygons[hits]), out_shape=shape, transform=affine, dtype=np.uint8
        ).astype(bool)


def _inside_only(window: Window, outer: Window, mask: np.ndarray) -> np.ndarray:
    """``mask`` (on ``outer``'s grid) with everything outside ``window`` cleared."""
    inner = window.relative_to(outer).slices
    out = np.zeros_like(mask)
    out[inner] = mask[inner]
    return out


@dataclass
class _RoiResult:
    features: list[Feature]
    polygons: np.ndarray  #: the ROI regions (holes filled, small pieces dropped) in level-0 px
    area_um2: float
    forward_s: float
    windows_run: int
    pixels_run: int
    layout: str


def _segmenter(model: LoadedModel, mpp: float, device: Any, config: PredictConfig) -> BlockSegmenter:
    max_fit_px = None if config.max_fit_um is None else int(config.max_fit_um / mpp)
    return BlockSegmenter(model, device=device, batch_size=config.batch_size, overlap_frac=config.overlap_frac,
                          layout=config.layout, context_px=int(round(config.context_um / mpp)), max_fit_px=max_fit_px,
                          precision=config.precision)


def _detect_roi(
    slide: Slide, model: LoadedModel, tissue: TissueMask, config: PredictConfig, device: Any,
    progress: Progress | None, trimmer: HeapTrimmer,
) -> _RoiResult:
    """ROI regions of the whole slide at the ROI model's um/px, over tissue only, block by block.

    Thresholded probabilities are vectorized per block with seams merged; pieces under ``roi_min_area_um2`` are
    dropped and holes filled (a ROI is a region, not a speck).
    """
    card = model.card
    mpp = max(card.mpp, slide.mpp)
    width, height = slide.size_at_mpp(mpp)
    affine = slide.affine_at(mpp)
    segmenter = _segmenter(model, mpp, device, config)
    grid = BlockGrid(width, height, max(ROI_BLOCK_PX - 2 * segmenter.context_grown_px, segmenter.tile_px))
    vectorizer = BlockVectorizer(grid, affine, labels_to_vectorize=(1,), mpp=slide.mpp,
                                 min_area_um2=config.roi_min_area_um2)
    threshold = card.threshold if card.threshold is not None else 0.5
    pieces: list[ClassPolygons] = []

    def padded(window: Window) -> Window:  # the block and its halo: windows at its edges see real pixels
        return window.expand(segmenter.halo_px, width, height)

    def active_of(window: Window) -> np.ndarray:
        """Tissue of the block on its padded grid (none in the halo)."""
        outer = padded(window)
        tissue_px = sample_mask(tissue.tissue, tissue.affine, window_affine(affine, outer), outer.shape)
        return _inside_only(window, outer, tissue_px)

    def read(window: Window) -> np.ndarray:
        outer = padded(window)
        return slide.read_region_at(outer.x_px, outer.y_px, outer.width_px, outer.height_px, mpp)

    todo = [window for window in grid.windows() if active_of(window).any()]  # blocks with tissue
    if progress is not None and todo:
        progress("roi", 0, len(todo), 0)  # the stage begins (its bar and rate start now)
    with ThreadPoolExecutor(max_workers=1) as pool:  # read the next block while the network runs
        pending: Future[np.ndarray] | None = pool.submit(read, todo[0]) if todo else None
        for index, window in enumerate(todo):
            assert pending is not None
            rgb = pending.result()
            pending = pool.submit(read, todo[index + 1]) if index + 1 < len(todo) else None
            active = active_of(window)
            result = segmenter.predict(rgb, active)
            inner = window.relative_to(padded(window)).slices
            roi = (result.probabilities[0][inner] >= threshold) & active[inner]
            pieces.append(vectorizer.add(window, roi.astype(np.uint8)))
            del rgb, result
            trimmer()
            if progress is not None:
                progress("roi", index + 1, len(todo), segmenter.windows_run)
    pieces.append(vectorizer.finish())
    polygons = ClassPolygons.concat(pieces).polygons
    if len(polygons):
        polygons = shapely.polygons(shapely.get_exterior_ring(polygons))  # fill holes
        if config.simplify_um > 0:
            polygons = shapely.simplify(polygons, config.simplify_um / slide.mpp, preserve_topology=True)
    roi_class = next((c for c in card.classes if c.label == 1), card.classes[-1])
    features = [
        Feature(geometry=polygon, class_name=roi_class.name, color=roi_class.color, object_type="annotation",
                name=roi_class.name, measurements={"Area um^2": float(area) * slide.mpp**2})
        for polygon, area in zip(polygons, shapely.area(polygons), strict=True)
    ]
    area_um2 = float(shapely.area(polygons).sum()) * slide.mpp**2 if len(polygons) else 0.0
    return _RoiResult(features, np.asarray(polygons), area_um2, segmenter.forward_seconds, segmenter.windows_run,
                      segmenter.pixels_run, segmenter.layout)


def _segment_cells(
    slide: Slide, model: LoadedModel, tissue: TissueMask, gate: RoiGate | None, config: PredictConfig,
    device: Any, emit: Callable[[list[Feature]], None], stats: dict[str, Any], overlay: _Overlay | None,
    progress: Progress | None, trimmer: HeapTrimmer,
) -> None:
    """Cell U-Net block by block inside the gate; polygons stream to ``emit``."""
    card = model.card
    mpp = max(card.mpp, slide.mpp)
    slide_mpp = slide.mpp
    width, height = slide.size_at_mpp(mpp)
    affine = slide.affine_at(mpp)
    segmenter = _segmenter(model, mpp, device, config)
    heat_px = max(1, int(round(config.heatmap_um / mpp)))
    block_px = max(config.block_px - 2 * segmenter.context_grown_px, segmenter.tile_px)  # a large context
    if config.heatmap and block_px >= heat_px:  # heat map tiles never straddle two blocks
        block_px = block_px // heat_px * heat_px
    grid = BlockGrid(width, height, block_px)
    emit_classes = {c.label: c for c in card.classes if c.emit}
    vectorizer = BlockVectorizer(grid, affine, labels_to_vectorize=tuple(emit_classes), mpp=slide_mpp,
                                 simplify_um=config.simplify_um, min_area_um2=config.min_area_um2)
    ledger = _ProbabilityLedger()

    def padded(window: Window) -> Window:  # the block and its halo: windows at its edges see real pixels
        return window.expand(segmenter.halo_px, width, height)

    def masks(window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Tissue and active (gated) masks of a block, on its padded grid (nothing in the halo)."""
        outer = padded(window)
        outer_affine = window_affine(affine, outer)
        tissue_px = sample_mask(tissue.tissue, tissue.affine, outer_affine, outer.shape)
        tissue_block = _inside_only(window, outer, tissue_px)
        if gate is None or not tissue_block.any():  # no gate to draw where there is no tissue
            return tissue_block, tissue_block
        return tissue_block, gate.mask(outer_affine, outer.shape) & tissue_block

    def crop_of(window: Window, regions: list[Region]) -> Window:
        """The part of a padded block its regions cover: what is read and worked on."""
        outer = padded(window)
        top, left = outer.y_px + min(r.top for r in regions), outer.x_px + min(r.left for r in regions)
        bottom = outer.y_px + max(r.top + r.height for r in regions)
        right = outer.x_px + max(r.left + r.width for r in regions)
        if config.heatmap:  # heat map tiles stay on the block's grid: the crop's part of the block starts on it
            if top > window.y_px:
                top = window.y_px + (top - window.y_px) // heat_px * heat_px
            if left > window.x_px:
                left = window.x_px + (left - window.x_px) // heat_px * heat_px
        return Window(left, top, right - left, bottom - top)

    def read(crop: Window, regions: list[Region]) -> tuple[np.ndarray, int]:
        """The crop's pixels that its regions use, and how many px were read. When the regions' boxes cover
        much less than the crop (scattered ROI pieces), only the boxes are read; the rest stays white."""
        boxes, whole = sum(r.height * r.width for r in regions), crop.width_px * crop.height_px
        if boxes >= READ_BOXES_BELOW * whole:
            return slide.read_region_at(crop.x_px, crop.y_px, crop.width_px, crop.height_px, mpp), whole
        rgb = np.full((crop.height_px, crop.width_px, 3), 255, dtype=np.uint8)
        for r in regions:
            rgb[r.top:r.top + r.height, r.left:r.left + r.width] = slide.read_region_at(
                crop.x_px + r.left, crop.y_px + r.top, r.width, r.height, mpp)
        return rgb, boxes

    windows = grid.windows()
    stats["blocks_total"] = len(windows)
    # Which blocks to read at all, and their regions (planned once; masks are recomputed later and regions
    # keep their own pixels on a coarse grid, so memory stays per block).
    todo: list[tuple[Window, Window, list[Region]]] = []
    for window in windows:
        tissue_block, active = masks(window)
        if not tissue_block.any():
            continue
        tissue_regions = segmenter.plan(tissue_block)
        stats["tissue_px"] += sum(region.pixels for region in tissue_regions)
        regions = tissue_regions if gate is None else segmenter.plan(active) if active.any() else []
        if regions:
            crop = crop_of(window, regions)
            outer = padded(window)
            dy, dx = crop.y_px - outer.y_px, crop.x_px - outer.x_px
            todo.append((window, crop, [region.shifted(dy, dx) for region in regions]))
    if progress is not None and todo:
        progress("cells", 0, len(todo), 0)  # the stage begins (its bar and rate start now)
    with ThreadPoolExecutor(max_workers=1) as pool:  # read the next block while the network runs
        pending: Future[tuple[np.ndarray, int]] | None = pool.submit(read, *todo[0][1:]) if todo else None
        for index, (window, crop, regions) in enumerate(todo):
            assert pending is not None
            rgb, read_px = pending.result()
            pending = pool.submit(read, *todo[index + 1][1:]) if index + 1 < len(todo) else None
            _, active_padded = masks(window)
            # Only the part of the padded block around its active pixels is read and worked on (``crop``);
            # what comes out is the crop's part of the block (``part``).
            active = active_padded[crop.relative_to(padded(window)).slices]
            result = segmenter.predict(rgb, active, regions)
            part = crop.intersection(window)
            assert part is not None  # regions hold active pixels, which are all inside the block
            rows, cols = part.relative_to(crop).slices
            probabilities, active = result.probabilities[:, rows, cols], active[rows, cols]
            labels = argmax_labels(probabilities)
            labels[~active] = 0
            part_affine = window_affine(affine, part)
            ledger.add_block(labels, probabilities, part_affine, tuple(emit_classes))
            block_labels = np.zeros(window.shape, dtype=np.uint8)
            block_labels[part.relative_to(window).slices] = labels
            done = vectorizer.add(window, block_labels)
            emit(_cell_features(done, ledger.settle(done), emit_classes, config, slide_mpp))
            if config.heatmap:
                limit = (window.y_end_px - part.y_px, window.x_end_px - part.x_px)  # tiles end at the block's edge
                emit(_heatmap_features(probabilities, active, part_affine, heat_px, card, limit))
            if overlay is not None:
                overlay.paint(labels, part_affine)
            stats["blocks_read"] += 1
            stats["read_px"] += read_px
            del rgb, result, probabilities, labels, block_labels
            trimmer()
            if progress is not None:
                progress("cells", index + 1, len(todo), segmenter.windows_run)
    rest = vectorizer.finish()
    emit(_cell_features(rest, ledger.settle(rest, last=True), emit_classes, config, slide_mpp))
    stats["windows_run"] += segmenter.windows_run
    stats["windows_skipped"] += segmenter.windows_skipped
    stats["forward_s"] += segmenter.forward_seconds
    stats["pixels_run"] += segmenter.pixels_run
    stats["layouts"]["cell"] = segmenter.layout


def _cell_features(
    polygons: ClassPolygons, mean_probs: np.ndarray, classes: dict[int, Any], config: PredictConfig, slide_mpp: float
) -> list[Feature]:
    features = []
    areas = shapely.area(polygons.polygons) if len(polygons) else np.empty(0)
    for label, polygon, area_px, prob in zip(polygons.labels, polygons.polygons, areas, mean_probs, strict=True):
        cls = classes[int(label)]
        measurements = {"Area um^2": float(area_px) * slide_mpp**2}
        if np.isfinite(prob):
            measurements["Mean probability"] = float(prob)
        features.append(Feature(geometry=polygon, class_name=cls.name, color=cls.color,
                                object_type=config.object_type, measurements=measurements))
    return features


def _heatmap_features(
    probs: np.ndarray, active: np.ndarray, block_affine: Affine, heat_px: int, card: Any,
    limit_px: tuple[int, int] | None = None,
) -> list[Feature]:
    """Square tiles carrying the mean class probabilities as measurements (QuPath colours by measurement).

    Tiles start at pixel (0, 0) of ``probs`` and are whole up to ``limit_px`` (rows, cols; default: the
    array's size), where they are cut: ``probs`` may be a crop of a block whose tiles go on past it.
    """
    features = []
    channels, height, width = probs.shape
    max_y, max_x = limit_px if limit_px is not None else (height, width)
    for y in range(0, height, heat_px):
        for x in range(0, width, heat_px):
            sel = active[y:y + heat_px, x:x + heat_px]
            if not sel.any():
                continue
            patch = probs[:, y:y + heat_px, x:x + heat_px][:, sel]
            means = patch.mean(axis=1)
            x0, y0 = block_affine @ (x, y)
            x1, y1 = block_affine @ (min(x + heat_px, max_x), min(y + heat_px, max_y))
            best = card.classes[int(means.argmax())]
            features.append(Feature(
                geometry=shapely.box(x0, y0, x1, y1), class_name=best.name, color=best.color, object_type="tile",
                measurements={f"Probability {c.name}": float(means[i]) for i, c in enumerate(card.classes)},
            ))
    return features
