"""Running a segmentation U-Net over an image block with MONAI ``sliding_window_inference``, gated by a mask.

:class:`BlockSegmenter` turns an RGB block (any size) into per-class probabilities at the block's resolution:
device, precision, memory layout and batching live here (torch lives here). The network only runs where the
block's *active* mask is (tissue, or the ROI found at low magnification): this is the DeepBatch ROI sampling,
the cell U-Net only works inside the ROI. Which windows run is planned by :mod:`qpbridge.predict.regions`
(no torch); nothing runs away from the mask's pieces and those pixels read "background". The caller reads each
block with :attr:`BlockSegmenter.halo_px` of margin (nothing active there), so boxes at a block's edge see real
pixels.

Example
-------
>>> from pathlib import Path
>>> from qpbridge.models import LoadedModel, build_network, example_card
>>> card = example_card("cell", channels=(4, 8))
>>> model = LoadedModel(card, build_network(card.architecture).eval(), Path("."))
>>> active = np.zeros((300, 400), bool); active[50:120, 80:200] = True
>>> result = BlockSegmenter(model, layout="nchw").predict(np.full((300, 400, 3), 200, np.uint8), active)
>>> result.probabilities.shape, result.windows_run                        # (classes, H, W), one fitted window
((4, 300, 400), 1)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from qpbridge.errors import InputError
from qpbridge.models import LoadedModel, ModelCard
from qpbridge.predict.config import PRECISIONS
from qpbridge.predict.regions import BOX_CELL_PX, Region, plan_regions, round_up, window_starts, windows_touching
from qpbridge.preprocess import to_network_input

__all__ = [
    "LAYOUTS",
    "LAYOUT_TRIAL_RUNS",
    "BlockResult",
    "BlockSegmenter",
    "SegmenterSettings",
    "argmax_labels",
    "autocast_dtype",
    "default_batch_size",
    "native_bf16",
    "size_multiple",
]

#: Memory layouts the network can run in; ``auto`` times both on the first window and keeps the faster.
LAYOUTS: dict[str, torch.memory_format] = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _in_layout(network: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """``network`` with its weights in ``memory_format`` (``Module.to`` takes it; torch's stubs omit it)."""
    return network.to(memory_format=memory_format)  # type: ignore[call-overload]


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


@dataclass
class BlockResult:
    """Probabilities of one block and what it cost."""

    probabilities: np.ndarray  #: float32 (C, H, W); for a binary (ROI) model C == 1: P(ROI)
    windows_run: int
    windows_skipped: int  #: windows of the block's fixed grid that the mask spared
    pixels_run: int = 0  #: network input pixels (windows x their area): the work done


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


def size_multiple(card: ModelCard) -> int:
    """Input sizes the U-Net accepts are multiples of this (the product of its strides; 1 if unknown: a card
    built by hand without an architecture).

    >>> from qpbridge.models import example_card
    >>> size_multiple(example_card("cell"))
    8
    """
    architecture = getattr(card, "architecture", None)
    strides = getattr(architecture, "args", {}).get("strides") if architecture is not None else None
    return math.prod(strides) if strides else 1


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
        :data:`qpbridge.predict.config.PRECISIONS`).
    context_px, max_fit_px, fit_step_px
        Context around the active mask, the largest box side that runs as one fitted window, and the step
        fitted window sides are rounded up to (defaults: ``tile_px / 8``, ``2 * tile_px`` and ``tile_px / 8``;
        ``max_fit_px=0`` runs the card's fixed grid only).
    """

    def __init__(
        self,
        model: LoadedModel,
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
            self.network = _in_layout(self.network, LAYOUTS[layout])
        self.blend = blend or self.card.blend
        self.tile_px = int(self.card.tile_px)
        self.context_px = self.tile_px // 8 if context_px is None else context_px
        self.max_fit_px = 2 * self.tile_px if max_fit_px is None else max_fit_px
        if self.context_px < 0 or self.max_fit_px < 0:
            raise InputError(f"context_px and max_fit_px must be >= 0, got {self.context_px}, {self.max_fit_px}")
        self.multiple = size_multiple(self.card)
        self.fit_step_px = round_up(self.tile_px // 8 if fit_step_px is None else fit_step_px, self.multiple)
        self.binary = self.card.role == "roi"
        self.forward_seconds = 0.0
        self.windows_run = 0
        self.windows_skipped = 0
        self.pixels_run = 0

    @property
    def context_grown_px(self) -> int:
        """The context a piece's box really gets: ``context_px`` rounded up to the :data:`BOX_CELL_PX` grid."""
        return round_up(self.context_px, BOX_CELL_PX)

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
            self.network = _in_layout(self.network, memory_format)
            self._run(window.contiguous(memory_format=memory_format))
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for _ in range(LAYOUT_TRIAL_RUNS):
            for name, memory_format in LAYOUTS.items():
                self.network = _in_layout(self.network, memory_format)
                x = window.contiguous(memory_format=memory_format)
                start = time.perf_counter()
                self._run(x)
                times[name].append(time.perf_counter() - start)
        self.layout_trial_s = {name: min(runs) for name, runs in times.items()}
        self.layout = min(self.layout_trial_s, key=lambda name: self.layout_trial_s[name])
        self.network = _in_layout(self.network, LAYOUTS[self.layout])
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


@dataclass(frozen=True)
class SegmenterSettings:
    """How the stages run their networks (the same for the ROI and the cell model): a
    :class:`BlockSegmenter` per model at its um/px, with the context and the largest fitted window in um.

    >>> from pathlib import Path
    >>> from qpbridge.models import LoadedModel, build_network, example_card
    >>> card = example_card("cell", channels=(4, 8))
    >>> model = LoadedModel(card, build_network(card.architecture), Path("."))
    >>> segmenter = SegmenterSettings(torch.device("cpu"), layout="nchw").segmenter(model, mpp=1.0)
    >>> segmenter.context_px, segmenter.max_fit_px, segmenter.batch_size
    (16, 512, 4)
    """

    device: torch.device
    batch_size: int | None = None  #: windows per forward pass (default: :func:`default_batch_size`)
    overlap_frac: float | None = None  #: override the cards' sliding-window overlap
    layout: str = "auto"
    precision: str = "auto"
    context_um: float = 16.0  #: context the networks see around their gate
    max_fit_um: float | None = None  #: gate pieces up to this size run as one fitted window (default 2 tiles)

    def segmenter(self, model: LoadedModel, mpp: float) -> BlockSegmenter:
        """A :class:`BlockSegmenter` for ``model`` run at ``mpp`` um/px."""
        max_fit_px = None if self.max_fit_um is None else int(self.max_fit_um / mpp)
        return BlockSegmenter(model, device=self.device, batch_size=self.batch_size, overlap_frac=self.overlap_frac,
                              layout=self.layout, context_px=int(round(self.context_um / mpp)), max_fit_px=max_fit_px,
                              precision=self.precision)
