"""The cell stage: the cell U-Net block by block inside the gate -> class regions, their mean probability,
heat-map tiles; streamed out as QuPath features.

:func:`segment_cells` cuts the slide at the cell model's um/px into blocks (:class:`qpbridge.tiling.BlockGrid`),
keeps those whose tissue the gate (the grown ROI, or all tissue with ``--no-roi``) touches, plans each one's
windows once (:mod:`qpbridge.predict.regions`), and then reads only the part of each block around its regions
(the next block is read while the network runs). Per block: probabilities -> labels (clipped to the gate) ->
polygons (seams merged by :class:`qpbridge.vectorize.BlockVectorizer`) with their mean class probability
(:class:`ProbabilityLedger`) and, optionally, heat-map tiles; features go to ``emit`` as soon as they are final.
Memory is bounded by the block.

Example
-------
>>> result = segment_cells(slide, cell_model, tissue, gate, settings, CellOptions(),   # doctest: +SKIP
...                        emit=writer.write_many)
>>> result.blocks_read, result.windows_run                                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from scipy import ndimage

from qpbridge.models import CardClass, LoadedModel, ModelCard
from qpbridge.predict.config import Progress
from qpbridge.predict.regions import Region
from qpbridge.predict.roi import RoiGate
from qpbridge.predict.sampling import block_mask
from qpbridge.predict.segmenter import BlockSegmenter, SegmenterSettings, argmax_labels
from qpbridge.qupath import Feature
from qpbridge.slide import Slide
from qpbridge.tiling import BlockGrid, Window, apply_affine, window_affine
from qpbridge.tissue import TissueMask
from qpbridge.vectorize import BlockVectorizer, ClassPolygons

__all__ = [
    "READ_BOXES_BELOW",
    "CellOptions",
    "CellResult",
    "ProbabilityLedger",
    "cell_features",
    "cell_mpp",
    "heatmap_features",
    "segment_cells",
]

#: The cell stage reads a block's region boxes one by one (not the box around them all) when they cover less
#: than this share of it.
READ_BOXES_BELOW = 0.6


class ProbabilityLedger:
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
        """Record a block's pieces of the classes ``emit``: its ``labels`` (H, W), class probabilities
        ``probs`` (C, H, W) and ``affine`` (block pixel -> level 0). Call before :meth:`settle` of the
        polygons the vectorizer emits for this block."""
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
        """Mean probability per emitted polygon (NaN where nothing matched); ``last``: the polygons left at the
        end (the vectorizer's ``finish``), matched by their records only."""
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


@dataclass(frozen=True)
class CellOptions:
    """What the cell stage writes and how it cuts the slide."""

    #: block side in pixels at the cell model's um/px, with its context on both sides (a block of tissue and
    #: its context then fills a whole number of the card's sliding windows)
    block_px: int = 1024
    object_type: str = "annotation"  #: QuPath object type of the class regions
    min_area_um2: float = 20.0  #: class regions smaller than this are dropped
    simplify_um: float = 0.0  #: outline simplification tolerance
    heatmap_um: float | None = None  #: side of the heat-map tiles (None: no heat map)


@dataclass
class CellResult:
    """What the cell stage did and what it cost."""

    blocks_total: int = 0  #: blocks of the grid over the slide
    blocks_read: int = 0  #: blocks of which the part around the gate was read at high magnification
    windows_run: int = 0  #: cell-model windows run (fitted windows vary in size)
    windows_skipped: int = 0  #: windows of the fixed grid over the read blocks that the gate spared
    forward_s: float = 0.0  #: seconds in the cell model's forward passes
    pixels_run: int = 0  #: cell-model input pixels (its windows x their area): the high-mag work
    tissue_px: int = 0  #: what the cell model's work over all tissue would be (``--no-roi``)
    read_px: int = 0  #: pixels read at the cell model's um/px
    layout: str = ""  #: the memory layout the cell model ran in


@dataclass
class _Planned:
    """A block to read: its window, the part of its padded grid read (``crop``) and its regions there."""

    window: Window
    crop: Window
    regions: list[Region]


class _CellBlocks:
    """The cell stage's blocks over the slide at ``mpp``: their grid, masks, crops and reads (no network)."""

    def __init__(
        self, slide: Slide, mpp: float, segmenter: BlockSegmenter, tissue: TissueMask, gate: RoiGate | None,
        block_px: int, heat_px: int | None,
    ) -> None:
        self.slide, self.mpp, self.segmenter, self.tissue, self.gate = slide, mpp, segmenter, tissue, gate
        self.heat_px = heat_px
        self.width, self.height = slide.size_at_mpp(mpp)
        self.affine = slide.affine_at(mpp)
        block_px = max(block_px - 2 * segmenter.context_grown_px, segmenter.tile_px)  # a large context
        if heat_px is not None and block_px >= heat_px:  # heat map tiles never straddle two blocks
            block_px = block_px // heat_px * heat_px
        self.grid = BlockGrid(self.width, self.height, block_px)

    def padded(self, window: Window) -> Window:
        """The block and its halo: windows at its edges see real pixels."""
        return window.expand(self.segmenter.halo_px, self.width, self.height)

    def masks(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Tissue and active (gated) masks of a block, on its padded grid (nothing in the halo)."""
        outer = self.padded(window)
        tissue_block = block_mask(self.tissue.tissue, self.tissue.affine, self.affine, window, outer)
        if self.gate is None or not tissue_block.any():  # no gate to draw where there is no tissue
            return tissue_block, tissue_block
        return tissue_block, self.gate.mask(window_affine(self.affine, outer), outer.shape) & tissue_block

    def crop_of(self, window: Window, regions: list[Region]) -> Window:
        """The part of a padded block its regions cover: what is read and worked on."""
        outer = self.padded(window)
        top, left = outer.y_px + min(r.top for r in regions), outer.x_px + min(r.left for r in regions)
        bottom = outer.y_px + max(r.top + r.height for r in regions)
        right = outer.x_px + max(r.left + r.width for r in regions)
        heat_px = self.heat_px
        if heat_px is not None:  # heat map tiles stay on the block's grid: the crop's part of the block starts on it
            if top > window.y_px:
                top = window.y_px + (top - window.y_px) // heat_px * heat_px
            if left > window.x_px:
                left = window.x_px + (left - window.x_px) // heat_px * heat_px
        return Window(left, top, right - left, bottom - top)

    def read(self, crop: Window, regions: list[Region]) -> tuple[np.ndarray, int]:
        """The crop's pixels that its regions use, and how many px were read. When the regions' boxes cover
        much less than the crop (scattered ROI pieces), only the boxes are read; the rest stays white."""
        boxes, whole = sum(r.height * r.width for r in regions), crop.width_px * crop.height_px
        if boxes >= READ_BOXES_BELOW * whole:
            return self.slide.read_region_at(crop.x_px, crop.y_px, crop.width_px, crop.height_px, self.mpp), whole
        rgb = np.full((crop.height_px, crop.width_px, 3), 255, dtype=np.uint8)
        for r in regions:
            rgb[r.top:r.top + r.height, r.left:r.left + r.width] = self.slide.read_region_at(
                crop.x_px + r.left, crop.y_px + r.top, r.width, r.height, self.mpp)
        return rgb, boxes

    def plan(self) -> tuple[list[_Planned], int]:
        """Which blocks to read at all, and their regions (planned once; masks are recomputed later and regions
        keep their own pixels on a coarse grid, so memory stays per block); and the network pixels a run over
        all tissue would cost."""
        todo: list[_Planned] = []
        tissue_px = 0
        for window in self.grid.windows():
            tissue_block, active = self.masks(window)
            if not tissue_block.any():
                continue
            tissue_regions = self.segmenter.plan(tissue_block)
            tissue_px += sum(region.pixels for region in tissue_regions)
            regions = (tissue_regions if self.gate is None else self.segmenter.plan(active) if active.any()
                       else [])
            if regions:
                crop = self.crop_of(window, regions)
                outer = self.padded(window)
                dy, dx = crop.y_px - outer.y_px, crop.x_px - outer.x_px
                todo.append(_Planned(window, crop, [region.shifted(dy, dx) for region in regions]))
        return todo, tissue_px

    def labels_of(self, planned: _Planned, rgb: np.ndarray) -> tuple[Window, np.ndarray, np.ndarray, np.ndarray]:
        """Run the network over a planned block's crop: the crop's part of the block (``part``) and its class
        labels (clipped to the gate), probabilities and active mask."""
        window, crop = planned.window, planned.crop
        _, active_padded = self.masks(window)
        # Only the part of the padded block around its active pixels is read and worked on (``crop``);
        # what comes out is the crop's part of the block (``part``).
        active = active_padded[crop.relative_to(self.padded(window)).slices]
        result = self.segmenter.predict(rgb, active, planned.regions)
        part = crop.intersection(window)
        assert part is not None  # regions hold active pixels, which are all inside the block
        rows, cols = part.relative_to(crop).slices
        probabilities, active = result.probabilities[:, rows, cols], active[rows, cols]
        labels = argmax_labels(probabilities)
        labels[~active] = 0
        return part, labels, probabilities, active


def cell_mpp(slide: Slide, card: ModelCard) -> float:
    """The um/px the cell stage runs at: the card's, or the slide's level 0 where that is coarser (never
    upsampled). Its grid is the slide at this um/px (``slide.size_at_mpp``, ``slide.affine_at``).

    >>> from types import SimpleNamespace
    >>> cell_mpp(SimpleNamespace(mpp=0.25), SimpleNamespace(mpp=1.0)), cell_mpp(SimpleNamespace(mpp=2.0),
    ...                                                                          SimpleNamespace(mpp=1.0))
    (1.0, 2.0)
    """
    return max(card.mpp, slide.mpp)


def segment_cells(
    slide: Slide, model: LoadedModel, tissue: TissueMask, gate: RoiGate | None, settings: SegmenterSettings,
    options: CellOptions, *, emit: Callable[[list[Feature]], None],
    paint: Callable[[np.ndarray, Affine], None] | None = None, progress: Progress | None = None,
    trim: Callable[[], object] | None = None,
    write_block: Callable[[Window, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> CellResult:
    """Cell U-Net block by block inside ``gate`` (None: over all tissue); features stream to ``emit``.

    ``paint`` gets each block's labels and their affine (the overlay); ``write_block`` gets the part of each
    block the network worked on (a window of the grid at :func:`cell_mpp`), its labels, class probabilities and
    active mask (the label and probability rasters, :class:`qpbridge.predict.rasters.RasterWriter`); blocks
    without work are not passed. ``progress`` hears ``("cells", blocks done, blocks to read, windows run)``;
    ``trim`` is called after each block.
    """
    card = model.card
    mpp = cell_mpp(slide, card)
    segmenter = settings.segmenter(model, mpp)
    heat_px = None if options.heatmap_um is None else max(1, int(round(options.heatmap_um / mpp)))
    blocks = _CellBlocks(slide, mpp, segmenter, tissue, gate, options.block_px, heat_px)
    emit_classes = {c.label: c for c in card.classes if c.emit}
    vectorizer = BlockVectorizer(blocks.grid, blocks.affine, labels_to_vectorize=tuple(emit_classes), mpp=slide.mpp,
                                 simplify_um=options.simplify_um, min_area_um2=options.min_area_um2)
    ledger = ProbabilityLedger()
    out = CellResult(blocks_total=len(blocks.grid))
    todo, out.tissue_px = blocks.plan()
    if progress is not None and todo:
        progress("cells", 0, len(todo), 0)  # the stage begins (its bar and rate start now)
    with ThreadPoolExecutor(max_workers=1) as pool:  # read the next block while the network runs
        pending: Future[tuple[np.ndarray, int]] | None = (
            pool.submit(blocks.read, todo[0].crop, todo[0].regions) if todo else None)
        for index, planned in enumerate(todo):
            assert pending is not None
            rgb, read_px = pending.result()
            pending = (pool.submit(blocks.read, todo[index + 1].crop, todo[index + 1].regions)
                       if index + 1 < len(todo) else None)
            window = planned.window
            part, labels, probabilities, active = blocks.labels_of(planned, rgb)
            part_affine = window_affine(blocks.affine, part)
            ledger.add_block(labels, probabilities, part_affine, tuple(emit_classes))
            block_labels = np.zeros(window.shape, dtype=np.uint8)
            block_labels[part.relative_to(window).slices] = labels
            done = vectorizer.add(window, block_labels)
            emit(cell_features(done, ledger.settle(done), emit_classes, options.object_type, slide.mpp))
            if heat_px is not None:
                limit = (window.y_end_px - part.y_px, window.x_end_px - part.x_px)  # tiles end at the block's edge
                emit(heatmap_features(probabilities, active, part_affine, heat_px, card, limit))
            if paint is not None:
                paint(labels, part_affine)
            if write_block is not None:
                write_block(part, labels, probabilities, active)
            out.blocks_read += 1
            out.read_px += read_px
            del rgb, probabilities, labels, block_labels
            if trim is not None:
                trim()
            if progress is not None:
                progress("cells", index + 1, len(todo), segmenter.windows_run)
    rest = vectorizer.finish()
    emit(cell_features(rest, ledger.settle(rest, last=True), emit_classes, options.object_type, slide.mpp))
    out.windows_run, out.windows_skipped = segmenter.windows_run, segmenter.windows_skipped
    out.forward_s, out.pixels_run, out.layout = segmenter.forward_seconds, segmenter.pixels_run, segmenter.layout
    return out


def cell_features(
    polygons: ClassPolygons, mean_probs: np.ndarray, classes: dict[int, CardClass], object_type: str,
    slide_mpp: float,
) -> list[Feature]:
    """Class regions (level-0 px) as QuPath objects of ``object_type`` with their area and, where known, mean
    class probability.

    >>> from qpbridge.models import example_card
    >>> classes = {c.label: c for c in example_card("cell").classes}
    >>> polygons = ClassPolygons.from_lists([3], [shapely.box(0, 0, 10, 10)])
    >>> [(f.class_name, f.measurements) for f in cell_features(polygons, np.array([0.75]), classes, "detection",
    ...                                                         slide_mpp=0.5)]
    [('Invasive carcinoma', {'Area um^2': 25.0, 'Mean probability': 0.75})]
    """
    features = []
    areas = shapely.area(polygons.polygons) if len(polygons) else np.empty(0)
    for label, polygon, area_px, prob in zip(polygons.labels, polygons.polygons, areas, mean_probs, strict=True):
        cls = classes[int(label)]
        measurements = {"Area um^2": float(area_px) * slide_mpp**2}
        if np.isfinite(prob):
            measurements["Mean probability"] = float(prob)
        features.append(Feature(geometry=polygon, class_name=cls.name, color=cls.color,
                                object_type=object_type, measurements=measurements))
    return features


def heatmap_features(
    probs: np.ndarray, active: np.ndarray, block_affine: Affine, heat_px: int, card: ModelCard,
    limit_px: tuple[int, int] | None = None,
) -> list[Feature]:
    """Square tiles carrying the mean class probabilities as measurements (QuPath colours by measurement).

    Tiles start at pixel (0, 0) of ``probs`` and are whole up to ``limit_px`` (rows, cols; default: the
    array's size), where they are cut: ``probs`` may be a crop of a block whose tiles go on past it.

    >>> from qpbridge.models import example_card
    >>> probs = np.zeros((4, 8, 12), np.float32); probs[0] = 1.0
    >>> tiles = heatmap_features(probs, np.ones((8, 12), bool), Affine.scale(2), 8, example_card("cell"))  # cut at 12
    >>> [(t.object_type, t.class_name, t.geometry.bounds) for t in tiles]
    [('tile', 'Normal', (0.0, 0.0, 16.0, 16.0)), ('tile', 'Normal', (16.0, 0.0, 24.0, 16.0))]
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
