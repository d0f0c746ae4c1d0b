"""The ROI stage: the ROI U-Net over tissue at low magnification -> ROI polygons; and the gate they become.

:func:`detect_roi` runs the ROI model block by block over the tissue only, thresholds its probability,
vectorizes each block with the seams merged, drops small pieces and fills holes (a ROI is a region, not a
speck). :class:`RoiGate` holds the ROI regions grown by a margin and draws them into any block at any
resolution: it decides which high-magnification pixels the cell stage works on, and holds no whole-slide array.

Example
-------
>>> from qpbridge.predict.segmenter import SegmenterSettings
>>> roi = detect_roi(slide, roi_model, tissue, SegmenterSettings(torch.device("cpu")),  # doctest: +SKIP
...                  min_area_um2=2000.0)
>>> gate = RoiGate(roi.polygons, margin_px=8.0 / slide.mpp)                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio.features
import shapely
from affine import Affine

from qpbridge.models import LoadedModel, ModelCard
from qpbridge.predict.config import Progress
from qpbridge.predict.sampling import block_mask
from qpbridge.predict.segmenter import SegmenterSettings
from qpbridge.qupath import Feature
from qpbridge.slide import Slide
from qpbridge.tiling import BlockGrid, Window
from qpbridge.tissue import TissueMask
from qpbridge.vectorize import BlockVectorizer, ClassPolygons

__all__ = ["ROI_BLOCK_PX", "RoiGate", "RoiResult", "detect_roi", "roi_features"]

#: ROI-stage block side in px at the ROI model's um/px, with its context on both sides (2 mm at 2 um/px; small
#: enough that a small slide's blocks are as big as a large slide's, so peak memory is the same). Blocks are
#: read with a halo (:attr:`BlockSegmenter.halo_px`): windows at their edges see the neighbouring tissue.
ROI_BLOCK_PX = 1024


@dataclass
class RoiResult:
    """What the ROI stage found and what it cost."""

    features: list[Feature]  #: the ROI regions as QuPath annotations (level-0 px, before any QuPath offset)
    polygons: np.ndarray  #: the ROI regions (holes filled, small pieces dropped) in level-0 px
    area_um2: float
    forward_s: float  #: seconds in the ROI model's forward passes
    windows_run: int
    pixels_run: int  #: ROI-model input pixels (its windows x their area)
    layout: str  #: the memory layout the ROI model ran in


def detect_roi(
    slide: Slide, model: LoadedModel, tissue: TissueMask, settings: SegmenterSettings, *, min_area_um2: float,
    simplify_um: float = 0.0, progress: Progress | None = None, trim: Callable[[], object] | None = None,
) -> RoiResult:
    """ROI regions of the whole slide at the ROI model's um/px, over tissue only, block by block.

    Thresholded probabilities (the card's ``threshold``, default 0.5) are vectorized per block with seams
    merged; pieces under ``min_area_um2`` are dropped and holes filled; outlines are simplified by
    ``simplify_um`` when > 0. ``progress`` hears ``("roi", blocks done, blocks with tissue, windows run)``;
    ``trim`` is called after each block (hand freed memory back).
    """
    card = model.card
    mpp = max(card.mpp, slide.mpp)
    width, height = slide.size_at_mpp(mpp)
    affine = slide.affine_at(mpp)
    segmenter = settings.segmenter(model, mpp)
    grid = BlockGrid(width, height, max(ROI_BLOCK_PX - 2 * segmenter.context_grown_px, segmenter.tile_px))
    vectorizer = BlockVectorizer(grid, affine, labels_to_vectorize=(1,), mpp=slide.mpp, min_area_um2=min_area_um2)
    threshold = card.threshold if card.threshold is not None else 0.5
    pieces: list[ClassPolygons] = []

    def padded(window: Window) -> Window:  # the block and its halo: windows at its edges see real pixels
        return window.expand(segmenter.halo_px, width, height)

    def active_of(window: Window) -> np.ndarray:
        """Tissue of the block on its padded grid (none in the halo)."""
        return block_mask(tissue.tissue, tissue.affine, affine, window, padded(window))

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
            if trim is not None:
                trim()
            if progress is not None:
                progress("roi", index + 1, len(todo), segmenter.windows_run)
    pieces.append(vectorizer.finish())
    polygons = ClassPolygons.concat(pieces).polygons
    if len(polygons):
        polygons = shapely.polygons(shapely.get_exterior_ring(polygons))  # fill holes
        if simplify_um > 0:
            polygons = shapely.simplify(polygons, simplify_um / slide.mpp, preserve_topology=True)
    area_um2 = float(shapely.area(polygons).sum()) * slide.mpp**2 if len(polygons) else 0.0
    return RoiResult(roi_features(polygons, card, slide.mpp), np.asarray(polygons), area_um2,
                     segmenter.forward_seconds, segmenter.windows_run, segmenter.pixels_run, segmenter.layout)


def roi_features(polygons: np.ndarray, card: ModelCard, slide_mpp: float) -> list[Feature]:
    """The ROI polygons (level-0 px) as QuPath annotations of the card's ROI class (label 1), with their area.

    >>> from qpbridge.models import example_card
    >>> [(f.class_name, f.object_type, f.measurements) for f in roi_features(
    ...     np.array([shapely.box(0, 0, 100, 40)]), example_card("roi"), slide_mpp=0.5)]
    [('ROI', 'annotation', {'Area um^2': 1000.0})]
    """
    roi_class = next((c for c in card.classes if c.label == 1), card.classes[-1])
    return [
        Feature(geometry=polygon, class_name=roi_class.name, color=roi_class.color, object_type="annotation",
                name=roi_class.name, measurements={"Area um^2": float(area) * slide_mpp**2})
        for polygon, area in zip(polygons, shapely.area(polygons), strict=True)
    ]


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
