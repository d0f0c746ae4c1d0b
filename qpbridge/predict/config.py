"""What ``predict`` is asked to do and what it reports: below the stages, imported by all, importing none.

:class:`PredictConfig` holds the options of :func:`qpbridge.predict.predict_slide` (the ``qpbridge predict``
flags) and checks them; :class:`PredictSummary` is what one slide's run did (also written, with provenance, to
``<out>.meta.json``); :data:`Progress` is the callback the stages report their blocks to. No torch here.

Example
-------
>>> config = PredictConfig(roi_only=True)
>>> config.check()
>>> PredictConfig(roi_only=True, use_roi=False).check()
Traceback (most recent call last):
...
qpbridge.errors.InputError: --roi-only and --no-roi exclude each other: choose one
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpbridge.errors import InputError
from qpbridge.slide import check_slide_mpp
from qpbridge.tissue import DEFAULT_TISSUE_MPP

__all__ = [
    "DEFAULT_CELL_MODEL",
    "DEFAULT_NUCLEI_MODEL",
    "DEFAULT_ROI_MODEL",
    "LAYOUT_CHOICES",
    "PRECISIONS",
    "PredictConfig",
    "PredictSummary",
    "Progress",
]

DEFAULT_ROI_MODEL = "deepbatch-synth-roi"
DEFAULT_CELL_MODEL = "deepbatch-synth-cell"
#: The nuclei model ``--nuclei`` uses unless ``--model-nuclei`` says otherwise (trained on MoNuSeg).
DEFAULT_NUCLEI_MODEL = "monuseg-nuclei"

#: Progress callback: (stage, blocks done, blocks total, windows run so far).
Progress = Callable[[str, int, int, int], None]

#: Numeric precisions of the forward pass: ``auto`` is float16 autocast on a GPU and float32 on a CPU;
#: ``bf16`` is bfloat16 autocast (on a CPU with native bfloat16, AVX512-BF16 or AMX, batched 256 px tiles run
#: 1.4-1.75x faster than in float32 and forward passes inside ``predict`` 1.2-1.5x; without it, slower),
#: ``fp32`` is float32 everywhere.
PRECISIONS = ("auto", "fp32", "bf16")

#: Network memory layouts to choose from: ``auto`` times both on the first window and keeps the faster.
LAYOUT_CHOICES = ("auto", "nchw", "channels_last")


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
    #: QuPath object type of the class regions: annotations by default (tens to hundreds per slide, which the
    #: brush and wand tools reshape: what a pathologist corrects), detections on request
    object_type: str = "annotation"
    min_area_um2: float = 20.0
    simplify_um: float = 0.0
    heatmap: bool = False
    heatmap_um: float = 64.0
    overlay: Path | None = None
    overlay_max_px: int = 1600
    labels: Path | None = None  #: label OME-TIFF at the cell model's um/px (:mod:`qpbridge.predict.rasters`)
    probabilities: Path | None = None  #: probability OME-TIFF, one channel per class of the cell model
    #: nuclei (``--nuclei``): off by default (the shipped region models are a synthetic demonstration, and
    #: nuclei at 0.25 um/px are the costliest stage); ``nuclei_only`` turns them on and the region models off
    nuclei: bool = False
    model_nuclei: str = DEFAULT_NUCLEI_MODEL
    nuclei_only: bool = False  #: True = ``--nuclei-only``: tissue -> nuclei; no ROI or cell model
    cell_expansion_um: float | None = None  #: write cells (nucleus grown by this much), not nucleus detections
    nuclei_block_px: int = 1024  #: nuclei-stage block side at the nuclei model's um/px (without its halo)

    @property
    def wants_nuclei(self) -> bool:
        """Whether the nuclei stage runs (``--nuclei`` or ``--nuclei-only``)."""
        return self.nuclei or self.nuclei_only

    def check(self) -> None:
        """Raise :class:`InputError` for out-of-range options."""
        if self.mpp is not None:
            check_slide_mpp(self.mpp)
        if self.roi_only and not self.use_roi:
            raise InputError("--roi-only and --no-roi exclude each other: choose one")
        if self.roi_only and (self.labels is not None or self.probabilities is not None):
            flags = " and ".join(f for f, v in (("--labels", self.labels), ("--probabilities", self.probabilities))
                                 if v is not None)
            verb = "need" if " and " in flags else "needs"
            raise InputError(f"{flags} {verb} the cell model, which --roi-only does not run: leave out --roi-only")
        self._check_nuclei()
        if self.object_type not in ("detection", "annotation"):
            raise InputError(f"--object-type must be detection or annotation, got {self.object_type!r}")
        for name, value in (("--min-area-um2", self.min_area_um2), ("--simplify-um", self.simplify_um),
                            ("--roi-margin-um", self.roi_margin_um), ("--roi-min-area-um2", self.roi_min_area_um2)):
            if not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be >= 0, got {value}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if self.block_px < 256:
            raise InputError(f"--block-px must be >= 256, got {self.block_px}")
        if not math.isfinite(self.context_um) or self.context_um < 0:
            raise InputError(f"--context-um must be >= 0, got {self.context_um}")
        if self.max_fit_um is not None and (not math.isfinite(self.max_fit_um) or self.max_fit_um < 0):
            raise InputError(f"--max-fit-um must be >= 0, got {self.max_fit_um}")
        if self.layout not in LAYOUT_CHOICES:
            raise InputError(f"--layout must be auto, nchw or channels_last, got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.heatmap_um <= 0:
            raise InputError(f"--heatmap-um must be > 0, got {self.heatmap_um}")

    def _check_nuclei(self) -> None:
        """The nuclei options and their combinations with the region stages."""
        if self.nuclei_only:
            clash = [flag for flag, on in (("--roi-only", self.roi_only), ("--labels", self.labels is not None),
                                           ("--probabilities", self.probabilities is not None),
                                           ("--heatmap", self.heatmap)) if on]
            if clash:
                raise InputError(f"--nuclei-only runs no region model, which {' and '.join(clash)} "
                                 f"{'need' if len(clash) > 1 else 'needs'}: leave out --nuclei-only or "
                                 f"{' and '.join(clash)}")
        if self.cell_expansion_um is not None:
            if not self.wants_nuclei:
                raise InputError("--cell-expansion-um grows nuclei into cells: add --nuclei (or --nuclei-only)")
            if not math.isfinite(self.cell_expansion_um) or self.cell_expansion_um <= 0:
                raise InputError(f"--cell-expansion-um must be > 0, got {self.cell_expansion_um}")
        if self.nuclei_block_px < 256:
            raise InputError(f"--nuclei-block-px must be >= 256, got {self.nuclei_block_px}")


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
    rasters: list[dict[str, Any]] = field(default_factory=list)  #: the label / probability OME-TIFFs written
    warnings: list[str] = field(default_factory=list)
    nuclei_written: int = 0  #: nuclei (detections or cells) written
    nuclei_by_class: dict[str, int] = field(default_factory=dict)  #: nuclei per region class ("Unclassified")
    nuclei_windows_run: int = 0
    nuclei_forward_s: float = 0.0
    nuclei_network_mpx: float = 0.0  #: nuclei-model input megapixels
