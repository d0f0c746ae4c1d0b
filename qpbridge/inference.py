"""Running a segmentation U-Net over an image block with MONAI ``sliding_window_inference``, gated by a mask.

:class:`BlockSegmenter` turns an RGB block (any size) into per-class probabilities at the block's resolution.
The network only runs where the block's *active* mask is (tissue, or the ROI found at low magnification):
this is the DeepBatch ROI sampling, the cell U-Net only works inside the ROI.

How the active mask becomes work (:func:`plan_regions`): each of its pieces, grown by ``context_px`` of
context, runs on its bounding box and answers for its own pixels only (boxes of neighbouring pieces may
overlap). A box no larger than ``max_fit_px`` runs as **one window fitted to the box** (the U-Net is fully
convolutional: a 300 x 180 px piece with 16 px of context costs one 352 x 224 px window, its sides rounded up to
``fit_step_px``, not the four to six fixed-grid windows it straddles); a piece whose box is mostly empty (an L, a
diagonal) is cut once into two such windows when they cost at most :data:`SPLIT_BELOW` of the one, each half
answering for its own cells with its context reaching past the cut. A larger box runs MONAI's sliding window
with the card's ``tile_px``, ``overlap_frac`` and blending, and only the windows that touch the piece run.
Nothing runs away from the pieces: those pixels read "background". The caller reads each block with
:attr:`BlockSegmenter.halo_px` of margin (nothing active there), so boxes at a block's edge see real pixels.

Example
-------
>>> from qpbridge.models import load_model
>>> segmenter = BlockSegmenter(load_model("deepbatch-synth-cell"))      # doctest: +SKIP
>>> probs = segmenter.predict(rgb_block, active=roi_mask_block)         # doctest: +SKIP
>>> probs.probabilities.shape                                           # (classes, H, W)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from qpbridge.errors import InputError
from qpbridge.preprocess import to_network_input

#: Memory layouts the network can run in; ``auto`` times both on the first window and keeps the faster.
LAYOUTS: dict[str, torch.memory_format] = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

#: Numeric precisions of the forward pass: ``auto`` is float16 autocast on a GPU and float32 on a CPU;
#: ``bf16`` is bfloat16 autocast (on a CPU with native bfloat16, AVX512-BF16 or AMX, batched 256 px tiles run
#: 1.4-1.75x faster than in float32 and forward passes inside ``predict`` 1.2-1.5x; without it, slower),
#: ``fp32`` is float32 everywhere.
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of the forward pass for ``precision`` on ``device`` (None: plain float32).

    >>> autocast_dtype(torch.device("cpu"), "auto") is None, autocast_dtype(torch.device("cuda"), "auto")
    (True, torch.float16)
    >>> autocast_dtype(torch.device("cpu"), "bf16")
    torch.bfloat16
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda":
        return torch.float16
    return None


#: Timed runs per layout when ``layout="auto"`` chooses one.
LAYOUT_TRIAL_RUNS = 3

#: Granularity (px) of the boxes fitted around the active mask.
BOX_CELL_PX = 8


@dataclass
class BlockResult:
    """Probabilities of one block and what it cost."""

    probabilities: np.ndarray  #: float32 (C, H, W); for a binary (ROI) model C == 1: P(ROI)
    windows_run: int
    windows_skipped: int  #: windows of the block's fixed grid that the mask spared
    pixels_run: int = 0  #: network input pixels (windows x their area): the work done


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


def default_batch_size(device: torch.device) -> int:
    """Windows per forward pass when ``--batch-size`` is not given: 64 on a GPU; 4 on a CPU, where larger
    batches only add memory (activations of 8 x 256 px windows are ~200 MB) and are no faster per pixel (on a
    2-core CPU, 3 s runs: the shipped cell model 22 MP/s at 4 and 20-22 at 8; a seed-sized 40x U-Net 13.3 and
    11.2)."""
    return 64 if device.type == "cuda" else 4


def argmax_labels(probabilities: np.ndarray) -> np.ndarray:
    """uint8 class labels (H, W) of float (C, H, W) probabilities: ``probabilities.argmax(axis=0)`` (the first
    class wins a tie), as C - 1 multithreaded compare passes (numpy's and torch's argmax over the leading axis
    are several times slower on large blocks).

    >>> argmax_labels(np.array([[[0.2, 0.5]], [[0.7, 0.5]], [[0.1, 0.0]]], dtype=np.float32)).tolist()
    [[1, 0]]
    """
    probs = torch.from_numpy(np.ascontiguousarray(probabilities))
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8)
    best = probs[0].clone()
    for label in range(1, probs.shape[0]):
        better = probs[label] > best
        labels.masked_fill_(better, label)
        torch.maximum(best, probs[label], out=best)
    return labels.numpy()


def size_multiple(card: Any) -> int:
    """Input sizes the U-Net accepts are multiples of this (the product of its strides; 1 if unknown)."""
    architecture = getattr(card, "architecture", None)
    strides = getattr(architecture, "args", {}).get("strides") if architecture is not None else None
    return math.prod(strides) if strides else 1


def _round_up(value: int, multiple: int) -> int:
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
    grid_h, grid_w = _round_up(height, cell) // cell, _round_up(width, cell) // cell
    padded = np.zeros((grid_h * cell, grid_w * cell), dtype=bool)
    padded[:height, :width] = active
    # Which cells hold active pixels: 8 bools of a row are one 64-bit word, so a cell row is one comparison
    # (40x faster than any() over a 4-d reshape of a 1024 px block).
    assert cell == 8
    coarse = (padded.view(np.uint64).reshape(grid_h * cell, grid_w) != 0).reshape(grid_h, cell, grid_w).any(axis=1)
    grow = _round_up(context_px, cell) // cell
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


def _split_piece(
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
        return _round_up(cells_a * cell, step) * _round_up(cells_b * cell, step)

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

    Each piece of ``active`` (grown by ``context_px``) is one region (or two, see :func:`_split_piece`): its
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
    step = _round_up(fit_step_px or multiple, multiple)
    grow = _round_up(context_px, BOX_CELL_PX) // BOX_CELL_PX
    pieces = []
    for rows, cols, own_cells in _pieces(active, context_px):
        fitted = rows.stop - rows.start <= max_fit_px and cols.stop - cols.start <= max_fit_px
        pieces.extend(_split_piece(rows, cols, own_cells, grow, step) if fitted and SPLIT_BELOW else
                      [(rows, cols, own_cells)])
    regions = []
    for rows, cols, own_cells in pieces:
        box, roi = [], []
        for sl, extent in ((rows, active.shape[0]), (cols, active.shape[1])):
            side = sl.stop - sl.start
            if side > max_fit_px:
                box.append(sl)
                roi.append(tile_px)
            elif _round_up(side, step) <= extent:  # grow the box to the window
                target = _round_up(side, step)
                start = _fit_axis(sl.start, side, extent, target)
                box.append(slice(start, start + target))
                roi.append(target)
            else:  # the mask is smaller than the window: MONAI pads the box
                box.append(sl)
                roi.append(_round_up(side, multiple))
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


class BlockSegmenter:
    """Gated, fitted sliding-window segmentation of image blocks with a loaded model.

    Parameters
    ----------
    model
        A :class:`qpbridge.models.LoadedModel` (its ``card`` gives tile size, overlap, blending, colour
        space and normalisation; its ``network`` is in eval mode).
    device
        Where the network runs. On CUDA, windows run in float16 autocast.
    batch_size
        Windows per forward pass (default: :func:`default_batch_size`, 4 on CPU, 64 on CUDA).
    overlap_frac, blend
        Override the card's ``overlap_frac`` and ``blend`` ("gaussian" or "constant").
    layout
        ``nchw``, ``channels_last`` or ``auto`` (default: time both on the first window, keep the faster; which
        one wins depends on the CPU).
    precision
        ``auto`` (float16 autocast on CUDA, float32 on a CPU), ``fp32`` or ``bf16`` (bfloat16 autocast; see
        :data:`PRECISIONS`).
    context_px, max_fit_px, fit_step_px
        Context around the active mask, the largest box side that runs as one fitted window, and the step
        fitted window sides are rounded up to (defaults: ``tile_px / 8``, ``2 * tile_px`` and ``tile_px / 8``;
        ``max_fit_px=0`` runs the card's fixed grid only).
    """

    def __init__(
        self,
        model: Any,
        *,
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
        overlap_frac: float | None = None,
        blend: str | None = None,
        layout: str = "auto",
        context_px: int | None = None,
        max_fit_px: int | None = None,
        fit_step_px: int | None = None,
        precision: str = "auto",
    ) -> None:
        self.card = model.card
        self.device = torch.device(device)
        self.precision = precision
        self.autocast_dtype = autocast_dtype(self.device, precision)
        self.network = model.network.to(self.device).eval()
        self.batch_size = batch_size or default_batch_size(self.device)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.overlap_frac = self.card.overlap_frac if overlap_frac is None else overlap_frac
        if not 0 <= self.overlap_frac < 1:
            raise InputError(f"overlap must be in [0, 1), got {self.overlap_frac}")
        if layout not in (*LAYOUTS, "auto"):
            raise InputError(f"layout must be auto, nchw or channels_last, got {layout!r}")
        self.layout = layout
        self._layout_chosen = layout != "auto"
        self.layout_trial_s: dict[str, float] = {}
        if layout != "auto":
            self.network = self.network.to(memory_format=LAYOUTS[layout])
        self.blend = blend or self.card.blend
        self.tile_px = int(self.card.tile_px)
        self.context_px = self.tile_px // 8 if context_px is None else context_px
        self.max_fit_px = 2 * self.tile_px if max_fit_px is None else max_fit_px
        if self.context_px < 0 or self.max_fit_px < 0:
            raise InputError(f"context_px and max_fit_px must be >= 0, got {self.context_px}, {self.max_fit_px}")
        self.multiple = size_multiple(self.card)
        self.fit_step_px = _round_up(self.tile_px // 8 if fit_step_px is None else fit_step_px, self.multiple)
        self.binary = self.card.role == "roi"
        self.forward_seconds = 0.0
        self.windows_run = 0
        self.windows_skipped = 0
        self.pixels_run = 0

    @property
    def context_grown_px(self) -> int:
        """The context a piece's box really gets: ``context_px`` rounded up to the :data:`BOX_CELL_PX` grid."""
        return _round_up(self.context_px, BOX_CELL_PX)

    @property
    def halo_px(self) -> int:
        """Pixels to read around a block so that the windows at its edges see real pixels: the context, and
        the growth of a fitted box to its window."""
        return self.context_grown_px + (self.fit_step_px if self.max_fit_px else 0)

    @property
    def n_outputs(self) -> int:
        """Channels of :attr:`BlockResult.probabilities`."""
        return 1 if self.binary else len(self.card.classes)

    def _background(self, n: int, height: int, width: int) -> torch.Tensor:
        out = torch.zeros((n, self.n_outputs, height, width), device=self.device)
        if not self.binary:
            out[:, 0] = 1.0
        return out

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                logits = self.network(batch)
        else:
            logits = self.network(batch)
        logits = logits.float()
        probs = torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return probs

    def _choose_layout(self, batch: torch.Tensor) -> torch.Tensor:
        """Time the first window of ``batch`` in each layout (after a warm-up, the best of three alternating
        runs: one timing is at the mercy of whatever else runs, such as the next block's read), keep the
        faster layout, and run ``batch`` in it."""
        window = batch[:1]
        for memory_format in LAYOUTS.values():  # warm-up: kernels prepared for this shape
            self.network = self.network.to(memory_format=memory_format)
            self._run(window.contiguous(memory_format=memory_format))
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for _ in range(LAYOUT_TRIAL_RUNS):
            for name, memory_format in LAYOUTS.items():
                self.network = self.network.to(memory_format=memory_format)
                x = window.contiguous(memory_format=memory_format)
                start = time.perf_counter()
                self._run(x)
                times[name].append(time.perf_counter() - start)
        self.layout_trial_s = {name: min(runs) for name, runs in times.items()}
        self.layout = min(self.layout_trial_s, key=lambda name: self.layout_trial_s[name])
        self.network = self.network.to(memory_format=LAYOUTS[self.layout])
        self._layout_chosen = True
        return self._run(batch.contiguous(memory_format=LAYOUTS[self.layout]))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        with torch.inference_mode():
            if not self._layout_chosen:
                probs = self._choose_layout(batch)
            else:
                probs = self._run(batch.contiguous(memory_format=LAYOUTS[self.layout]))
        self.forward_seconds += time.perf_counter() - start
        return probs.contiguous()

    def plan(self, active: np.ndarray) -> list[Region]:
        """The regions a gated run over ``active`` works on (no network: also the cost of a run)."""
        return plan_regions(active, tile_px=self.tile_px, overlap_frac=self.overlap_frac, context_px=self.context_px,
                            max_fit_px=self.max_fit_px, multiple=self.multiple, fit_step_px=self.fit_step_px)

    def predict(
        self, rgb: np.ndarray, active: np.ndarray | None = None, regions: list[Region] | None = None
    ) -> BlockResult:
        """Class probabilities of an (H, W, 3) uint8 block; the network runs only around ``active``.

        ``active`` is a boolean (H, W) mask at the block's resolution (None = run everywhere, the card's fixed
        grid). Pixels away from ``active`` read "background"; the caller clips to its mask. ``regions`` are
        what :meth:`plan` gave for ``active`` (in this block's pixels), when the caller planned already.
        """
        height, width = rgb.shape[:2]
        if active is not None and active.shape != (height, width):
            raise InputError(f"active mask shape {active.shape} differs from the block's {(height, width)}")
        grid = (self.tile_px, self.tile_px)
        grid_windows = len(window_starts(height, self.tile_px, self.overlap_frac)) * len(
            window_starts(width, self.tile_px, self.overlap_frac))
        if active is None:
            regions = [Region(0, 0, height, width, grid, grid_windows)]
            spared = 0
        else:
            if regions is None:
                regions = self.plan(active) if self.max_fit_px else [
                    Region(0, 0, height, width, grid, windows_touching(active, grid, self.overlap_frac))]
            regions = [r for r in regions if r.windows]
            spared = grid_windows - windows_touching(active, grid, self.overlap_frac)
        out = self._background(1, height, width)[0]
        run = pixels = 0
        for region in regions:
            rows, cols = slice(region.top, region.top + region.height), slice(region.left, region.left + region.width)
            own = region.own
            mask = None if active is None else active[rows, cols]
            if mask is not None and own is not None:
                mask = mask & own
            inputs = to_network_input(rgb[rows, cols], self.card, device=self.device)  # only the region's box
            done = self._slide(inputs, region.roi_px, mask)[0]
            if own is None:
                out[:, rows, cols] = done
            else:
                out[:, rows, cols] = torch.where(torch.from_numpy(own).to(self.device), done, out[:, rows, cols])
            run += region.windows
            pixels += region.pixels
        self.windows_run += run
        self.windows_skipped += spared
        self.pixels_run += pixels
        return BlockResult(out.float().cpu().numpy(), run, spared, pixels)

    def _slide(self, inputs: torch.Tensor, roi_px: tuple[int, int], active: np.ndarray | None) -> torch.Tensor:
        """MONAI's sliding window over one region; windows not touching ``active`` answer background."""

        def predictor(patches: torch.Tensor, coords: Sequence[Sequence[slice]]) -> torch.Tensor:
            keep = [i for i, window in enumerate(coords) if active is None or active[window[2], window[3]].any()]
            if len(keep) == patches.shape[0]:
                return torch.cat([self._forward(patches[s:s + self.batch_size])
                                  for s in range(0, len(keep), self.batch_size)])
            out = self._background(patches.shape[0], patches.shape[2], patches.shape[3])
            for start in range(0, len(keep), self.batch_size):  # full batches of the windows that run
                chunk = keep[start:start + self.batch_size]
                out[chunk] = self._forward(patches[chunk])
            return out

        with torch.inference_mode():
            blended = sliding_window_inference(
                inputs,
                roi_size=roi_px,
                # MONAI hands the predictor this many windows at a time; only those touching the active mask
                # run, in batches of batch_size, so ask for two batches' worth to fill them (more would only
                # make the temporary patch arrays bigger).
                sw_batch_size=self.batch_size * 2,
                predictor=predictor,
                overlap=self.overlap_frac,
                mode=self.blend,
                padding_mode="replicate",
                with_coord=True,
            )
        assert isinstance(blended, torch.Tensor)
        return blended
