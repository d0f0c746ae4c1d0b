"""What ``qpbridge masks`` is asked to do: :class:`MaskConfig`, from options or from a model card."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from qpbridge.errors import InputError
from qpbridge.rasterize import OVERLAP_MODES, REVIEWED_MODES, ClassMap
from qpbridge.slide import check_mpp, check_slide_mpp
from qpbridge.tissue import DEFAULT_TISSUE_MPP

__all__ = ["DEFAULT_BLOCK_PX", "DEFAULT_MPP", "DEFAULT_QA_MPP", "DEFAULT_TILE_PX", "MaskConfig", "load_card_config"]

#: Tile um/px when neither ``--model`` nor ``--tile-mpp`` says (the resolution of qpbridge's cell model cards).
DEFAULT_MPP = 0.5
DEFAULT_TILE_PX = 256
DEFAULT_BLOCK_PX = 2048
DEFAULT_QA_MPP = 8.0


@dataclass(frozen=True)
class MaskConfig:
    """Options of :func:`qpbridge.tiles.build_tile_dataset` (``qpbridge masks``); see :mod:`qpbridge.tiles.write`.

    Attributes
    ----------
    class_map
        QuPath class names -> labels, and the training classes (default: DeepBatch's four).
    mpp, tile_px, stride_px
        Tile resolution (um/px), side and step in tile pixels (stride default = tile: no overlap).
    slide_mpp
        Override of the slide's level-0 pixel size (um/px).
    overlap, reviewed, ignore_unknown, priority
        Rasterization rules (:class:`qpbridge.rasterize.LabelRasterizer`).
    min_labelled_frac, min_tissue_frac
        Tile filters (fractions of the tile's pixels).
    max_per_class, seed
        Seeded sampling: at most this many tiles per (majority) class.
    qa_mpp
        um/px of the QA label mask TIFF; ``None`` = no QA mask.
    block_px
        Side of the blocks worked on at once (target pixels); bounds memory.
    tissue_mpp
        um/px of the coarse tissue detection.
    dry_run
        Count pixels and tiles, write nothing.
    overwrite
        Replace this slide's tiles when DIR already holds them.
    allow_off_slide
        Label what lies on the slide even when most of the labelled area lies off it (a warning, not an error),
        and leave out objects far outside it (a warning each) instead of failing.

    Example
    -------
    >>> MaskConfig(mpp=1.0, tile_px=128).checked().stride
    128
    """

    class_map: ClassMap = field(default_factory=ClassMap.deepbatch)
    mpp: float = DEFAULT_MPP
    tile_px: int = DEFAULT_TILE_PX
    stride_px: int | None = None
    slide_mpp: float | None = None
    overlap: str = "priority"
    reviewed: str = "region"
    ignore_unknown: bool = False
    priority: tuple[int, ...] | None = None
    min_labelled_frac: float = 0.05
    min_tissue_frac: float = 0.05
    max_per_class: int | None = None
    seed: int = 0
    qa_mpp: float | None = DEFAULT_QA_MPP
    block_px: int = DEFAULT_BLOCK_PX
    tissue_mpp: float = DEFAULT_TISSUE_MPP
    dry_run: bool = False
    overwrite: bool = False
    allow_off_slide: bool = False
    png_compress_level: int = 1
    grow_instances_px: int = 0  #: nuclei: grow every instance by this many px into background

    @property
    def role(self) -> str:
        """The dataset's role (its class map's): roi, cell or nuclei (16-bit instance tiles)."""
        return self.class_map.role

    @property
    def stride(self) -> int:
        """The stride in tile pixels."""
        return self.tile_px if self.stride_px is None else self.stride_px

    def checked(self) -> MaskConfig:
        """This config, or :class:`InputError` naming the first bad value."""
        check_mpp(self.mpp, "--tile-mpp")
        if self.slide_mpp is not None:
            check_slide_mpp(self.slide_mpp, "--mpp")
        if self.qa_mpp is not None:
            check_mpp(self.qa_mpp, "--qa-mpp")
        check_mpp(self.tissue_mpp, "tissue mpp")
        if not isinstance(self.tile_px, int) or not 16 <= self.tile_px <= 8192:
            raise InputError(f"--tile-px must be a whole number of pixels 16-8192, got {self.tile_px}")
        if not isinstance(self.stride, int) or not 1 <= self.stride <= self.tile_px:
            raise InputError(
                f"--stride-px must be 1 to --tile-px ({self.tile_px}), got {self.stride}: a larger step leaves gaps"
            )
        if self.overlap not in OVERLAP_MODES:
            raise InputError(f"--overlap must be one of {', '.join(OVERLAP_MODES)}, got {self.overlap!r}")
        if self.reviewed not in REVIEWED_MODES:
            raise InputError(f"--reviewed must be one of {', '.join(REVIEWED_MODES)}, got {self.reviewed!r}")
        for name, value in (
            ("--min-labelled-frac", self.min_labelled_frac),
            ("--min-tissue-frac", self.min_tissue_frac),
        ):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise InputError(f"{name} must be a fraction 0-1, got {value}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise InputError(f"--max-per-class must be >= 1, got {self.max_per_class}: leave it out for no cap")
        if self.block_px < self.tile_px:
            raise InputError(f"block size ({self.block_px} px) must be at least the tile size ({self.tile_px} px)")
        return self


def load_card_config(model: str, **overrides: Any) -> MaskConfig:
    """A :class:`MaskConfig` with a model card's classes, aliases, role, mpp and tile size.

    ``model`` is a registry name or a model directory / ``card.json`` path (:mod:`qpbridge.cards`);
    ``overrides`` (``mpp=...``, ``tile_px=...``; ``None`` values ignored) replace the card's values.
    """
    from qpbridge.cards import load_card, resolve_model_path

    card = load_card(resolve_model_path(model))
    config = MaskConfig(class_map=ClassMap.from_card(card), mpp=float(card.mpp), tile_px=int(card.tile_px))
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
