"""The nuclei stage: the nuclei model block by block over the ROI (or all tissue) -> QuPath nuclei, streamed.

:func:`segment_nuclei` cuts the slide at the nuclei model's um/px into blocks (:class:`qpbridge.tiling.BlockGrid`,
``block_px`` each); each block is worked on with a *seam halo* (:attr:`NucleiOptions.halo_um`, wider than the
largest nucleus, plus twice the cell expansion). The network's windows lie on **one grid over the whole slide**
(the card's tile, stepped as MONAI's sliding window steps, from the slide's corner; a block reads every window
of that grid that covers a pixel of its worked-on window, and windows are skipped only where they touch no
tissue of the slide): so every pixel's probabilities are the same whatever the blocks, and a block's nuclei are
those a whole-slide run would find. Per block: sliding-window probabilities (:class:`~qpbridge.predict.
segmenter.BlockSegmenter` on that fixed grid, only where windows touch tissue, and the ROI grown by the seam
halo) -> :func:`~qpbridge.nuclei.postprocess.instances_from_probabilities` -> :func:`~qpbridge.nuclei.
clean_instances` -> outlines (:func:`~qpbridge.nuclei.nuclei_from_labels`) and measurements (:func:`~qpbridge.
nuclei.measure_nuclei`), all vectorized over the block -> the nuclei whose centroid lies in the block's own
rectangle (:func:`~qpbridge.nuclei.keep_owned`: a nucleus cut by a block edge is found once, whole) and inside
the gate -> QuPath detections (or cells with ``nucleusGeometry``, ``cell_expansion_um``), classified by the
region class under their centroid (:class:`RegionClasses`), to ``emit``. Memory is bounded by the block: no
list of all nuclei.

Example
-------
>>> result = segment_nuclei(slide, nuclei_model, tissue, gate, settings, NucleiOptions(),   # doctest: +SKIP
...                         emit=writer.write_many)
>>> result.nuclei, result.blocks_read                                                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import shapely

from qpbridge.cards import NucleiParams
from qpbridge.models import LoadedModel
from qpbridge.nuclei import clean_instances, keep_owned, measure_nuclei, nuclei_from_labels
from qpbridge.nuclei.postprocess import instances_from_probabilities
from qpbridge.predict.config import Progress
from qpbridge.predict.roi import RoiGate
from qpbridge.predict.sampling import block_mask
from qpbridge.predict.segmenter import BlockSegmenter, SegmenterSettings
from qpbridge.qupath import Feature
from qpbridge.slide import Slide
from qpbridge.tiling import BlockGrid, Window, window_affine
from qpbridge.tissue import TissueMask

__all__ = [
    "DETECTION_PROBABILITY",
    "NUCLEUS_GRID_PX",
    "NucleiOptions",
    "NucleiResult",
    "RegionClasses",
    "nuclei_features",
    "nuclei_mpp",
    "segment_nuclei",
]

#: Nucleus and cell outlines are snapped to this grid of level-0 px (0.025 um at 40x): a tenth of what a nuclei
#: model resolves, and one digit less per coordinate in the GeoJSON (~40 bytes per nucleus).
NUCLEUS_GRID_PX = 0.1

#: The measurement of each nucleus's mean nucleus probability (1 - P(background)) over its pixels.
DETECTION_PROBABILITY = "Detection probability"

#: What the overlay hears of each block: the level-0 centroids ``(n, 2)`` of its nuclei and their classes.
PaintNuclei = Callable[[np.ndarray, list[str | None]], None]


@dataclass(frozen=True)
class NucleiOptions:
    """How the nuclei stage cuts the slide and what it writes."""

    block_px: int = 2048  #: block side (its own rectangle) in pixels at the nuclei model's um/px
    halo_um: float = 16.0  #: seam halo: wider than the largest nucleus (plus twice the cell expansion)
    cell_expansion_um: float | None = None  #: grow each nucleus into a cell by this much (None: detections)


@dataclass
class NucleiResult:
    """What the nuclei stage did and what it cost."""

    nuclei: int = 0  #: nuclei written
    by_class: dict[str, int] = field(default_factory=dict)  #: nuclei per region class ("Unclassified": none)
    blocks_total: int = 0
    blocks_read: int = 0
    windows_run: int = 0
    forward_s: float = 0.0
    pixels_run: int = 0
    layout: str = ""


class RegionClasses:
    """The class regions the cell stage wrote (level-0 polygons and class names), to classify points by.

    A point inside no region gets ``default`` (the cell model's label 0, e.g. ``Normal``, where it ran); with
    no cell model at all, ``default`` is None and so is every class.

    >>> regions = RegionClasses(default="Normal")
    >>> regions.add([Feature(shapely.box(0, 0, 10, 10), "Invasive carcinoma")])
    >>> regions.classify(np.array([[5.0, 5.0], [20.0, 5.0]]))
    ['Invasive carcinoma', 'Normal']
    """

    def __init__(self, default: str | None = None) -> None:
        self.default = default
        self._geoms: list[shapely.Geometry] = []
        self._names: list[str] = []
        self._tree: shapely.STRtree | None = None

    def add(self, features: list[Feature]) -> None:
        """Remember the class regions among ``features`` (tiles and unclassified ones are left out)."""
        for feature in features:
            if feature.object_type in ("annotation", "detection") and feature.class_name:
                self._geoms.append(feature.geometry)
                self._names.append(feature.class_name)
        self._tree = None

    def classify(self, xy: np.ndarray) -> list[str | None]:
        """The class of the region under each level-0 point ``(n, 2)``."""
        out: list[str | None] = [self.default] * len(xy)
        if not self._geoms or not len(xy):
            return out
        if self._tree is None:
            self._tree = shapely.STRtree(self._geoms)
        points, poly = self._tree.query(shapely.points(xy), predicate="within")
        found = np.array(out, dtype=object)
        found[points] = np.array(self._names, dtype=object)[poly]
        return list(found)


def nuclei_mpp(slide: Slide, model: LoadedModel) -> float:
    """The um/px the nuclei stage runs at: always the card's. A model sees nuclei at the size it was trained on;
    a slide coarser than that (a 20x scan, 0.5 um/px, for a 0.25 um/px model) is read upsampled (bilinear)."""
    del slide  # the slide's resolution never changes the model's
    return model.card.mpp


class _NucleusBlocks:
    """The nuclei stage's blocks: own rectangle, worked-on window (seam halo), read window (the slide-wide
    window grid's windows that cover the worked-on window)."""

    def __init__(self, slide: Slide, mpp: float, segmenter: BlockSegmenter, tissue: TissueMask,
                 gate: RoiGate | None, options: NucleiOptions) -> None:
        self.slide, self.mpp, self.segmenter, self.tissue = slide, mpp, segmenter, tissue
        self.width, self.height = slide.size_at_mpp(mpp)
        self.affine = slide.affine_at(mpp)
        expansion = options.cell_expansion_um or 0.0
        self.halo_px = int(np.ceil((options.halo_um + 2 * expansion) / mpp))
        self.grid = BlockGrid(self.width, self.height, options.block_px)
        self.tile_px = segmenter.tile_px
        self.stride_px = max(1, int(segmenter.tile_px * (1 - segmenter.overlap_frac)))  # as MONAI steps
        # The network works on the gate grown by the seam halo: a nucleus on the gate's edge is seen whole.
        self.gate = gate
        self.work_gate = (None if gate is None
                          else RoiGate(gate.polygons, margin_px=self.halo_px * mpp / slide.mpp))

    def _span(self, start: int, end: int) -> tuple[int, int]:
        """The pixels ``[lo, hi)`` of the slide-wide windows (starts at multiples of the stride) that cover
        ``[start, end)``; ``hi - lo - tile`` is a multiple of the stride, so MONAI places exactly those."""
        tile, stride = self.tile_px, self.stride_px
        return ((start - tile) // stride + 1) * stride, ((end - 1) // stride) * stride + tile

    def windows(self, own: Window) -> tuple[Window, Window]:
        work = own.expand(self.halo_px, self.width, self.height)
        x0, x1 = self._span(work.x_px, work.x_end_px)
        y0, y1 = self._span(work.y_px, work.y_end_px)
        return work, Window(x0, y0, x1 - x0, y1 - y0)

    def active(self, own: Window) -> np.ndarray:
        """Where the slide has tissue (inside the grown gate), on the read window's grid: the same mask for
        every block, so a window is skipped or run whatever the block."""
        _, read = self.windows(own)
        mask = block_mask(self.tissue.tissue, self.tissue.affine, self.affine, read, read)
        if self.work_gate is not None and mask.any():
            mask &= self.work_gate.mask(window_affine(self.affine, read), read.shape)
        return mask

    def has_work(self, own: Window) -> bool:
        """Whether the worked-on window of a block holds tissue (inside the grown gate)."""
        work, read = self.windows(own)
        rows, cols = work.relative_to(read).slices
        return bool(self.active(own)[rows, cols].any())

    def read(self, own: Window) -> np.ndarray:
        _, read = self.windows(own)
        return self.slide.read_region_at(read.x_px, read.y_px, read.width_px, read.height_px, self.mpp)

    def in_gate(self, xy: np.ndarray) -> np.ndarray:
        """Which level-0 points lie inside the (grown) ROI gate (all, without a gate)."""
        if self.gate is None or not len(xy):
            return np.ones(len(xy), dtype=bool)
        inside = np.zeros(len(xy), dtype=bool)
        hits = self.gate.tree.query(shapely.points(xy), predicate="within")
        inside[hits[0]] = True
        return inside


def _block_nuclei(
    blocks: _NucleusBlocks, own: Window, rgb: np.ndarray, active: np.ndarray, params: NucleiParams,
    expansion_um: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[dict[str, float]]]:
    """One block's owned nuclei: level-0 outlines, centroids, cell outlines (or None) and measurements."""
    work, read = blocks.windows(own)
    result = blocks.segmenter.predict(rgb, active)  # the fixed, slide-wide window grid (no fitted windows)
    rows, cols = work.relative_to(read).slices
    probs, inside, pixels = result.probabilities[:, rows, cols], active[rows, cols], rgb[rows, cols]
    probs[0][~inside], probs[1][~inside], probs[2][~inside] = 1.0, 0.0, 0.0
    labels = clean_instances(instances_from_probabilities(probs, params, blocks.mpp))
    affine = window_affine(blocks.affine, work)
    nuclei = nuclei_from_labels(labels, affine, clean=False)
    x0, y0 = blocks.affine @ (own.x_px, own.y_px)
    x1, y1 = blocks.affine @ (own.x_end_px, own.y_end_px)
    keep = keep_owned(nuclei, (x0, y0, x1, y1)) & blocks.in_gate(nuclei.centroids_xy)
    nuclei = nuclei.subset(keep)
    if not len(nuclei):
        return np.empty(0, object), np.empty((0, 2)), None, []
    table = measure_nuclei(labels, pixels, blocks.mpp, clean=False).rows_for(nuclei.ids)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=int(flat.max()) + 1)
    sums = np.bincount(flat, weights=1.0 - probs[0].ravel(), minlength=counts.size)
    detection = sums[nuclei.ids] / np.maximum(counts[nuclei.ids], 1)
    records = table.records()
    for record, value in zip(records, detection.tolist(), strict=True):
        record[DETECTION_PROBABILITY] = round(float(value), 4)
    cells = None
    if expansion_um:
        from skimage.segmentation import expand_labels

        grown = expand_labels(labels, distance=expansion_um / blocks.mpp)
        traced = nuclei_from_labels(grown, affine)
        cells = traced.polygons[np.searchsorted(traced.ids, nuclei.ids)]
    polygons = shapely.set_precision(nuclei.polygons, NUCLEUS_GRID_PX)  # valid on the grid, shorter numbers
    if cells is not None:
        cells = shapely.set_precision(cells, NUCLEUS_GRID_PX)
    return polygons, nuclei.centroids_xy, cells, records


def nuclei_features(
    polygons: np.ndarray, classes: list[str | None], records: list[dict[str, float]], cells: np.ndarray | None,
    colors: dict[str, tuple[int, int, int]],
) -> list[Feature]:
    """A block's nuclei as QuPath detections (or cells around them, with ``nucleusGeometry``).

    >>> [(f.object_type, f.class_name) for f in nuclei_features(np.array([shapely.box(0, 0, 4, 4)]), ["Benign"],
    ...                                                          [{"Nucleus: Area": 4.0}], None, {})]
    [('detection', 'Benign')]
    """
    features = []
    for i, (polygon, name, record) in enumerate(zip(polygons, classes, records, strict=True)):
        color = colors.get(name) if name is not None else None
        if cells is None:
            features.append(Feature(polygon, name, color, object_type="detection", measurements=record))
        else:
            features.append(Feature(cells[i], name, color, object_type="cell", measurements=record,
                                    nucleus_geometry=polygon))
    return features


def segment_nuclei(
    slide: Slide, model: LoadedModel, tissue: TissueMask, gate: RoiGate | None, settings: SegmenterSettings,
    options: NucleiOptions, *, emit: Callable[[list[Feature]], None], regions: RegionClasses | None = None,
    colors: dict[str, tuple[int, int, int]] | None = None, paint: PaintNuclei | None = None,
    progress: Progress | None = None, trim: Callable[[], object] | None = None,
) -> NucleiResult:
    """The nuclei model block by block over tissue inside ``gate`` (None: all tissue); nuclei stream to
    ``emit``, classified by ``regions`` (None: unclassified). ``paint`` gets each block's centroids (level 0)
    and classes (the overlay); ``progress`` hears ``("nuclei", blocks done, blocks to read, windows run)``."""
    params = model.card.nuclei or NucleiParams()
    mpp = nuclei_mpp(slide, model)
    segmenter = replace(settings, max_fit_um=0.0).segmenter(model, mpp)  # the fixed window grid only
    blocks = _NucleusBlocks(slide, mpp, segmenter, tissue, gate, options)
    out = NucleiResult(blocks_total=len(blocks.grid))
    todo = [w for w in blocks.grid.windows() if blocks.has_work(w)]
    if progress is not None and todo:
        progress("nuclei", 0, len(todo), 0)
    with ThreadPoolExecutor(max_workers=1) as pool:  # read the next block while the network runs
        pending: Future[np.ndarray] | None = pool.submit(blocks.read, todo[0]) if todo else None
        for index, own in enumerate(todo):
            assert pending is not None
            rgb = pending.result()
            pending = pool.submit(blocks.read, todo[index + 1]) if index + 1 < len(todo) else None
            polygons, centroids, cells, records = _block_nuclei(blocks, own, rgb, blocks.active(own), params,
                                                                options.cell_expansion_um)
            classes: list[str | None] = (regions.classify(centroids) if regions is not None
                                         else [None] * len(polygons))
            emit(nuclei_features(polygons, classes, records, cells, colors or {}))
            for name in classes:
                key = name or "Unclassified"
                out.by_class[key] = out.by_class.get(key, 0) + 1
            out.nuclei += len(polygons)
            if paint is not None and len(polygons):
                paint(centroids, classes)
            out.blocks_read += 1
            del rgb
            if trim is not None:
                trim()
            if progress is not None:
                progress("nuclei", index + 1, len(todo), segmenter.windows_run)
    out.windows_run, out.forward_s = segmenter.windows_run, segmenter.forward_seconds
    out.pixels_run, out.layout = segmenter.pixels_run, segmenter.layout
    return out
