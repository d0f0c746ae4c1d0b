"""Running a segmentation U-Net over an image block with MONAI ``sliding_window_inference``, gated by a mask.

:class:`BlockSegmenter` turns an RGB block (any size) into per-class probabilities at the block's resolution.
Windows (the model card's ``tile_px`` with its ``overlap_frac`` and Gaussian blending) run the network only
when they touch the *active* mask of the block (tissue, or the ROI found at low magnification): the others
are answered with "background" without running the network. This is the DeepBatch ROI sampling: the cell
U-Net only works inside the ROI.

Example
-------
>>> from qpbridge.models import load_model
>>> segmenter = BlockSegmenter(load_model("deepbatch-synth-cell"))      # doctest: +SKIP
>>> probs = segmenter.predict(rgb_block, active=roi_mask_block)         # doctest: +SKIP
>>> probs.probabilities.shape                                           # (classes, H, W)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from qpbridge.errors import InputError
from qpbridge.preprocess import to_network_input


@dataclass
class BlockResult:
    """Probabilities of one block and what it cost."""

    probabilities: np.ndarray  #: float32 (C, H, W); for a binary (ROI) model C == 1: P(ROI)
    windows_run: int
    windows_skipped: int


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: every core this process may use) and return the number."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def resolve_device(device: str) -> torch.device:
    """A torch device from ``--device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``), with a clear error if absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asked for, but torch sees no CUDA GPU here: use --device cpu")
    return resolved


class BlockSegmenter:
    """Sliding-window segmentation of image blocks with a loaded model.

    Parameters
    ----------
    model
        A :class:`qpbridge.models.LoadedModel` (its ``card`` gives tile size, overlap, blending, colour
        space and normalisation; its ``network`` is in eval mode).
    device
        Where the network runs. On CUDA, windows run in float16 autocast.
    batch_size
        Windows per forward pass (default: 8 on CPU, 64 on CUDA).
    overlap_frac, blend
        Override the card's ``overlap_frac`` and ``blend`` ("gaussian" or "constant").
    """

    def __init__(
        self,
        model: Any,
        *,
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
        overlap_frac: float | None = None,
        blend: str | None = None,
    ) -> None:
        self.card = model.card
        self.device = torch.device(device)
        self.network = model.network.to(self.device).eval()
        if self.device.type == "cpu":
            # channels-last was measured 5-17% slower on these CPUs (design.md): keep NCHW.
            self.network = self.network.to(memory_format=torch.contiguous_format)
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 8)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.overlap_frac = self.card.overlap_frac if overlap_frac is None else overlap_frac
        if not 0 <= self.overlap_frac < 1:
            raise InputError(f"overlap must be in [0, 1), got {self.overlap_frac}")
        self.blend = blend or self.card.blend
        self.tile_px = int(self.card.tile_px)
        self.binary = self.card.role == "roi"
        self.forward_seconds = 0.0
        self.windows_run = 0
        self.windows_skipped = 0

    @property
    def n_outputs(self) -> int:
        """Channels of :attr:`BlockResult.probabilities`."""
        return 1 if self.binary else len(self.card.classes)

    def _background(self, n: int, height: int, width: int) -> torch.Tensor:
        out = torch.zeros((n, self.n_outputs, height, width), device=self.device)
        if not self.binary:
            out[:, 0] = 1.0
        return out

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        import time

        start = time.perf_counter()
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = self.network(batch)
            else:
                logits = self.network(batch)
            logits = logits.float()
            probs = torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.forward_seconds += time.perf_counter() - start
        return probs

    def predict(self, rgb: np.ndarray, active: np.ndarray | None = None) -> BlockResult:
        """Class probabilities of an (H, W, 3) uint8 block; windows not touching ``active`` are skipped.

        ``active`` is a boolean (H, W) mask at the block's resolution (None = run everywhere). Pixels outside
        ``active`` keep whatever the overlapping windows say; the caller clips to its mask.
        """
        height, width = rgb.shape[:2]
        if active is not None and active.shape != (height, width):
            raise InputError(f"active mask shape {active.shape} differs from the block's {(height, width)}")
        inputs = to_network_input(rgb, self.card, device=self.device)
        run = skipped = 0

        def predictor(patches: torch.Tensor, coords: Sequence[Sequence[slice]]) -> torch.Tensor:
            nonlocal run, skipped
            keep: list[int] = []
            for index, window in enumerate(coords):
                if active is None or active[window[2], window[3]].any():
                    keep.append(index)
            out = self._background(patches.shape[0], patches.shape[2], patches.shape[3])
            for start in range(0, len(keep), self.batch_size):  # full batches of the windows that run
                chunk = keep[start:start + self.batch_size]
                out[chunk] = self._forward(patches[chunk])
            run += len(keep)
            skipped += patches.shape[0] - len(keep)
            return out

        if active is not None and not active.any():
            windows = _window_count(height, width, self.tile_px, self.overlap_frac)
            self.windows_skipped += windows
            empty = self._background(1, height, width)[0].cpu().numpy()
            return BlockResult(empty, 0, windows)
        with torch.inference_mode():
            blended = sliding_window_inference(
                inputs,
                roi_size=(self.tile_px, self.tile_px),
                # MONAI hands the predictor this many windows at a time; only those touching the active mask
                # run, in batches of batch_size, so ask for several batches' worth to keep the batches full.
                sw_batch_size=self.batch_size * 8,
                predictor=predictor,
                overlap=self.overlap_frac,
                mode=self.blend,
                padding_mode="replicate",
                with_coord=True,
            )
        assert isinstance(blended, torch.Tensor)
        self.windows_run += run
        self.windows_skipped += skipped
        return BlockResult(blended[0].float().cpu().numpy(), run, skipped)


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


def _window_count(height: int, width: int, tile_px: int, overlap_frac: float) -> int:
    """Windows MONAI lays over an image (for accounting skipped blocks)."""
    return len(window_starts(height, tile_px, overlap_frac)) * len(window_starts(width, tile_px, overlap_frac))
