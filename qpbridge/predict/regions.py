"""Planning the windows a gated segmentation runs over a block: fitted windows and grids over gate pieces.

numpy and scipy only (no torch): importable and testable without the network.

How a block's *active* mask (tissue, or the ROI found at low magnification) becomes work
(:func:`plan_regions`): each of its pieces, grown by ``context_px`` of context, runs on its bounding box and
answers for its own pixels only (boxes of neighbouring pieces may overlap). A box no larger than ``max_fit_px``
runs as **one window fitted to the box** (the U-Net is fully convolutional: a 300 x 180 px piece with 16 px of
context costs one 352 x 224 px window, its sides rounded up to ``fit_step_px``, not the four to six fixed-grid
windows it straddles); a piece whose box is mostly empty (an L, a diagonal) is cut once into two such windows
when they cost at most :data:`SPLIT_BELOW` of the one (:func:`split_piece`), each half answering for its own
cells with its context reaching past the cut. A larger box runs MONAI's sliding window with the card's
``tile_px``, ``overlap_frac`` and blending, and only the windows that touch the piece run
(:func:`window_starts`, :func:`windows_touching`). Nothing runs away from the pieces.

Example
-------
>>> mask = np.zeros((512, 512), bool); mask[40:100, 60:200] = True
>>> [(r.top, r.left, r.height, r.width, r.windows) for r in plan_regions(
...     mask, tile_px=256, overlap_frac=0.25, context_px=16, max_fit_px=512, multiple=8, fit_step_px=32)]
[(24, 32, 96, 192, 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "BOX_CELL_PX",
    "SPLIT_BELOW",
    "Region",
    "plan_regions",
    "round_up",
    "split_piece",
    "window_starts",
    "windows_touching",
]

#: Granularity (px) of the boxes fitted around the active mask.
BOX_CELL_PX = 8


@dataclass
class Region:
    """A box of a block that runs on its own: ``roi_px`` is the window size MONAI slides over it."""

    top: int
    left: int
    height: int
    width: int
    roi_px: tuple[int, int]  #: (rows, cols) of each window
    windows: int  #: windows that touch the mask (those that run)
    #: bool: which :data:`BOX_CELL_PX` cells of the piece's box this region answers for (None: all of the
    #: region); kept coarse so that a slide's worth of planned regions stays small
    own_cells: np.ndarray | None = None
    #: where the piece's box (``own_cells``) starts inside this region's box, when the box was grown to fit
    #: its window (rows, cols px)
    own_at_px: tuple[int, int] = (0, 0)
    #: the piece's box (rows, cols px); None: the region's
    own_shape_px: tuple[int, int] | None = None

    @property
    def own(self) -> np.ndarray | None:
        """Bool (height, width): the pixels this region answers for (None: all)."""
        if self.own_cells is None:
            return None
        rows, cols = self.own_shape_px or (self.height, self.width)
        cells = np.repeat(np.repeat(self.own_cells, BOX_CELL_PX, axis=0), BOX_CELL_PX, axis=1)[:rows, :cols]
        if (rows, cols) == (self.height, self.width):
            return cells
        full = np.zeros((self.height, self.width), dtype=bool)
        top, left = self.own_at_px
        full[top:top + rows, left:left + cols] = cells
        return full

    def shifted(self, rows_px: int, cols_px: int) -> Region:
        """The same region in a frame whose origin is ``(rows_px, cols_px)`` in this one's."""
        return replace(self, top=self.top - rows_px, left=self.left - cols_px)

    @property
    def pixels(self) -> int:
        """Network input pixels of this region's windows."""
        return self.windows * self.roi_px[0] * self.roi_px[1]


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``.

    >>> round_up(17, 8), round_up(16, 8)
    (24, 16)
    """
    return -(-value // multiple) * multiple


def window_starts(extent_px: int, tile_px: int, overlap_frac: float) -> list[int]:
    """Where MONAI's sliding window puts windows along one axis: every ``tile * (1 - overlap)`` px, the last
    window flush with the end (one window when the image is no larger than the tile).

    >>> window_starts(200, 64, 0.25)
    [0, 48, 96, 136]
    """
    if extent_px <= tile_px:
        return [0]
    stride = max(1, int(tile_px * (1 - overlap_frac)))
    starts = list(range(0, extent_px - tile_px + 1, stride))
    if starts[-1] != extent_px - tile_px:
        starts.append(extent_px - tile_px)
    return starts


def windows_touching(mask: np.ndarray, roi_px: tuple[int, int], overlap_frac: float) -> int:
    """Windows of MONAI's layout over ``mask`` (roi ``roi_px``) that touch it: the windows a gated run runs."""
    rows, cols = roi_px
    return sum(
        1
        for top in window_starts(mask.shape[0], rows, overlap_frac)
        for left in window_starts(mask.shape[1], cols, overlap_frac)
        if mask[top:top + rows, left:left + cols].any()
    )


def _pieces(active: np.ndarray, context_px: int) -> list[tuple[slice, slice, np.ndarray]]:
    """The pieces of ``active`` grown by ``context_px`` (on a :data:`BOX_CELL_PX` grid): for each, its box
    (row and column slices, clipped to the mask) and which cells of the box belong to it."""
    height, width = active.shape
    cell = BOX_CELL_PX
    grid_h, grid_w = round_up(height, cell) // cell, round_up(width, cell) // cell
    padded = np.zeros((grid_h * cell, grid_w * cell), dtype=bool)
    padded[:height, :width] = active
    # Which cells hold active pixels: 8 bools of a row are one 64-bit word, so a cell row is one comparison
    # (40x faster than any() over a 4-d reshape of a 1024 px block).
    assert cell == 8
    coarse = (padded.view(np.uint64).reshape(grid_h * cell, grid_w) != 0).reshape(grid_h, cell, grid_w).any(axis=1)
    grow = round_up(context_px, cell) // cell
    square = np.ones((3, 3), dtype=bool)
    if grow:
        coarse = ndimage.binary_dilation(coarse, structure=square, iterations=grow)
    labels, _ = ndimage.label(coarse, structure=square)
    pieces = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        rows = slice(found[0].start * cell, min(found[0].stop * cell, height))
        cols = slice(found[1].start * cell, min(found[1].stop * cell, width))
        pieces.append((rows, cols, labels[found] == index))
    return pieces


#: A fitted piece is cut in two when the two windows cost at most this share of its one window's pixels.
SPLIT_BELOW = 0.9


def split_piece(
    rows: slice, cols: slice, own_cells: np.ndarray, grow: int, step: int
) -> list[tuple[slice, slice, np.ndarray]]:
    """``[(rows, cols, own_cells)]`` of a piece, or of its two halves when one straight cut between
    :data:`BOX_CELL_PX` cells makes their windows cost less than :data:`SPLIT_BELOW` of the piece's window
    (an L-shaped or diagonal piece in one box runs mostly over nothing).

    Each half answers for its own cells and its box reaches ``grow`` cells past the cut, so its pixels keep the
    context they had in the whole piece.
    """
    cell = BOX_CELL_PX

    def window_px(cells_a: Any, cells_b: Any) -> Any:  # pixels of the windows of boxes ``cells_a x cells_b``
        return round_up(cells_a * cell, step) * round_up(cells_b * cell, step)

    def cut_costs(cells: np.ndarray) -> np.ndarray:
        """Pixels of the two windows of each cut between rows ``cut - 1`` and ``cut`` (inf: a side empty)."""
        n = len(cells)
        used = cells.any(axis=1)
        index = np.arange(n)
        low = np.where(cells, np.arange(cells.shape[1]), cells.shape[1]).min(axis=1)  # an empty row: past the end
        high = np.where(cells, np.arange(cells.shape[1]), -1).max(axis=1)  # an empty row: before the start
        first_used, last_used = index[used][0], index[used][-1]
        # the first half: rows [0, end) with end = cut + grow; the second: rows [start, n) with start = cut - grow
        cuts = np.arange(1, n)
        end, start = np.minimum(cuts + grow, n), np.maximum(cuts - grow, 0)
        last_before = np.maximum.accumulate(np.where(used, index, -1))[end - 1]
        first_after = np.minimum.accumulate(np.where(used, index, n)[::-1])[::-1][start]
        min_before, max_before = np.minimum.accumulate(low)[end - 1], np.maximum.accumulate(high)[end - 1]
        min_after = np.minimum.accumulate(low[::-1])[::-1][start]
        max_after = np.maximum.accumulate(high[::-1])[::-1][start]
        total = (window_px(last_before - first_used + 1, max_before - min_before + 1)
                 + window_px(last_used - first_after + 1, max_after - min_after + 1)).astype(float)
        # both halves must own cells of the piece: rows before and from the cut
        total[(cuts <= first_used) | (cuts > last_used)] = np.inf
        return total

    rr, cc = np.flatnonzero(own_cells.any(axis=1)), np.flatnonzero(own_cells.any(axis=0))
    whole = int(window_px(rr[-1] - rr[0] + 1, cc[-1] - cc[0] + 1))
    best: tuple[float, int, int] | None = None  # (cost, axis, cut)
    for axis in (0, 1):
        costs = cut_costs(own_cells if axis == 0 else own_cells.T)
        if len(costs) and np.isfinite(costs.min()) and (best is None or costs.min() < best[0]):
            best = (float(costs.min()), axis, int(costs.argmin()) + 1)
    if best is None or best[0] > SPLIT_BELOW * whole:
        return [(rows, cols, own_cells)]
    _, axis, cut = best
    halves = []
    for part in (slice(0, cut), slice(cut, own_cells.shape[axis])):
        mine = np.zeros_like(own_cells)
        index = (part, slice(None)) if axis == 0 else (slice(None), part)
        mine[index] = own_cells[index]
        reach = slice(max(part.start - grow, 0), part.stop + grow)  # its box: own cells and context past the cut
        seen = np.zeros_like(own_cells)
        index = (reach, slice(None)) if axis == 0 else (slice(None), reach)
        seen[index] = own_cells[index]
        rr, cc = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
        r0, r1, c0, c1 = int(rr[0]), int(rr[-1]) + 1, int(cc[0]), int(cc[-1]) + 1
        halves.append((slice(rows.start + r0 * cell, min(rows.start + r1 * cell, rows.stop)),
                       slice(cols.start + c0 * cell, min(cols.start + c1 * cell, cols.stop)),
                       mine[r0:r1, c0:c1]))
    return halves


def _fit_axis(start: int, side: int, extent: int, target: int) -> int:
    """Start of a box of ``target`` px around ``start .. start + side``, centred, inside ``0 .. extent``."""
    return max(0, min(start - (target - side) // 2, extent - target))


def plan_regions(
    active: np.ndarray, *, tile_px: int, overlap_frac: float, context_px: int, max_fit_px: int, multiple: int = 1,
    fit_step_px: int | None = None,
) -> list[Region]:
    """The regions (and their windows) a gated run of a block works on; see the module docstring.

    Each piece of ``active`` (grown by ``context_px``) is one region (or two, see :func:`split_piece`): its
    bounding box, of which it answers for its own pixels only (boxes of neighbouring pieces may overlap). A box
    side up to ``max_fit_px`` gets one window of that side rounded up to ``fit_step_px`` (default
    ``multiple``): the box grows to the window
    around the piece where the mask has room (real pixels as context), else MONAI pads it. Rounding to a
    coarse step keeps the number of window shapes small: the network's kernels are prepared once per shape,
    which costs more than a small model's forward. A longer side gets ``tile_px`` windows at
    ``overlap_frac``. Only windows touching ``active`` run.

    >>> mask = np.zeros((1024, 1024), bool); mask[100:300, 500:650] = True
    >>> [(r.top, r.left, r.height, r.width, r.roi_px, r.windows) for r in plan_regions(
    ...     mask, tile_px=256, overlap_frac=0.25, context_px=32, max_fit_px=512, multiple=8)]
    [(64, 464, 272, 224, (272, 224), 1)]
    """
    step = round_up(fit_step_px or multiple, multiple)
    grow = round_up(context_px, BOX_CELL_PX) // BOX_CELL_PX
    pieces = []
    for rows, cols, own_cells in _pieces(active, context_px):
        fitted = rows.stop - rows.start <= max_fit_px and cols.stop - cols.start <= max_fit_px
        pieces.extend(split_piece(rows, cols, own_cells, grow, step) if fitted and SPLIT_BELOW else
                      [(rows, cols, own_cells)])
    regions = []
    for rows, cols, own_cells in pieces:
        box, roi = [], []
        for sl, extent in ((rows, active.shape[0]), (cols, active.shape[1])):
            side = sl.stop - sl.start
            if side > max_fit_px:
                box.append(sl)
                roi.append(tile_px)
            elif round_up(side, step) <= extent:  # grow the box to the window
                target = round_up(side, step)
                start = _fit_axis(sl.start, side, extent, target)
                box.append(slice(start, start + target))
                roi.append(target)
            else:  # the mask is smaller than the window: MONAI pads the box
                box.append(sl)
                roi.append(round_up(side, multiple))
        top, left = box[0].start, box[1].start
        region = Region(top, left, box[0].stop - top, box[1].stop - left, (roi[0], roi[1]), 0, own_cells,
                        own_at_px=(rows.start - top, cols.start - left),
                        own_shape_px=(rows.stop - rows.start, cols.stop - cols.start))
        own = region.own
        assert own is not None
        region.windows = windows_touching(active[box[0], box[1]] & own, region.roi_px, overlap_frac)
        if region.windows:
            regions.append(region)
    return regions
