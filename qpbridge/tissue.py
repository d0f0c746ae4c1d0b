"""Tissue detection at thumbnail scale: tissue vs white background, minus pen marks (black, blue, green ink).

This is the DeepBatch preprocessing step: the ROI U-Net only looks at tissue, and pen strokes that a
pathologist drew on the glass must not be mistaken for tissue. It works on a low-resolution read of the whole
slide (default 8 um/px: a 25 x 20 mm slide is ~3,100 x 2,500 px) with scikit-image colour conversion and
morphology, and returns a boolean mask with the :class:`affine.Affine` that maps it to level-0 pixels.

Example
-------
>>> from qpbridge.slide import open_slide
>>> from qpbridge.tissue import detect_tissue
>>> with open_slide("slide.svs") as slide:                 # doctest: +SKIP
...     tissue = detect_tissue(slide)
...     print(f"{tissue.tissue_fraction:.0%} tissue, {tissue.pen_fraction:.1%} pen")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine
from skimage import color, filters, morphology

from qpbridge.errors import InputError
from qpbridge.slide import Slide, check_mpp

#: Default working resolution of the tissue mask (um/px).
DEFAULT_TISSUE_MPP = 8.0


@dataclass(frozen=True)
class TissueParams:
    """Thresholds of :func:`tissue_mask_from_rgb` (HSV values in 0-1; areas in um^2)."""

    #: Saturation above which a pixel can be tissue; the Otsu threshold of the slide is clipped into this range.
    min_saturation: float = 0.05
    max_saturation: float = 0.20
    #: Pixels brighter than this (max of R, G, B) with low saturation are background glass.
    background_value: float = 0.82
    #: Black ink: max(R, G, B) below this and saturation below ``black_saturation`` (dark nuclei are purple).
    black_value: float = 0.42
    black_saturation: float = 0.35
    #: Blue ink: hue within this range (0-1), saturation above ``ink_saturation`` and B - R above ``blue_minus_red``.
    blue_hue: tuple[float, float] = (0.52, 0.70)
    blue_minus_red: float = 0.20
    #: Green ink: hue within this range.
    green_hue: tuple[float, float] = (0.17, 0.50)
    ink_saturation: float = 0.20
    #: Ink pieces smaller than this are dark debris or nuclei, not strokes.
    min_pen_um2: float = 4_000.0
    #: Ink masks are grown by this many um to catch stroke edges.
    pen_margin_um: float = 16.0
    #: Tissue pieces smaller than this are specks and dropped; holes smaller than this are filled.
    min_tissue_um2: float = 20_000.0
    min_hole_um2: float = 20_000.0


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask at ``mpp`` um/px: ``affine`` maps its pixels to level-0 pixels."""

    tissue: np.ndarray  #: bool (H, W): tissue, pen marks and specks removed
    pen: np.ndarray  #: bool (H, W): pen ink (grown by the margin)
    affine: Affine
    mpp: float

    @property
    def tissue_fraction(self) -> float:
        """Share of the slide area that is tissue."""
        return float(self.tissue.mean()) if self.tissue.size else 0.0

    @property
    def pen_fraction(self) -> float:
        """Share of the slide area covered by pen ink."""
        return float(self.pen.mean()) if self.pen.size else 0.0

    @property
    def tissue_area_um2(self) -> float:
        """Tissue area in um^2."""
        return float(self.tissue.sum()) * self.mpp * self.mpp


def _hsv(rgb: np.ndarray) -> np.ndarray:
    """HSV in float32 (skimage keeps float32 input as float32: half the memory of its default float64)."""
    return np.asarray(color.rgb2hsv(rgb.astype(np.float32) / 255.0), dtype=np.float32)


def pen_mask_from_rgb(
    rgb: np.ndarray, params: TissueParams = TissueParams(), hsv: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of black, blue and green ink in an (H, W, 3) uint8 RGB image (no margin)."""
    hsv = _hsv(rgb) if hsv is None else hsv
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    red, blue = rgb[..., 0].astype(np.float32) / 255, rgb[..., 2].astype(np.float32) / 255
    black = (val < params.black_value) & (sat < params.black_saturation)
    inked = sat > params.ink_saturation
    blue_ink = inked & (hue >= params.blue_hue[0]) & (hue <= params.blue_hue[1]) & (blue - red > params.blue_minus_red)
    green_ink = inked & (hue >= params.green_hue[0]) & (hue <= params.green_hue[1])
    return np.asarray(black | blue_ink | green_ink)


def tissue_mask_from_rgb(
    rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams()
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and pen masks of an RGB image at ``mpp`` um/px.

    Returns ``(tissue, pen)``, both boolean (H, W). Tissue is saturated or dark-enough pixels that are not glass,
    minus ink (grown by ``pen_margin_um``), minus specks below ``min_tissue_um2``, with small holes filled.

    >>> import numpy as np
    >>> rgb = np.full((64, 64, 3), 245, np.uint8); rgb[16:48, 16:48] = (200, 120, 170)
    >>> tissue, pen = tissue_mask_from_rgb(rgb, mpp=8.0, params=TissueParams(min_tissue_um2=0))
    >>> int(tissue.sum()), int(pen.sum())
    (1024, 0)
    """
    check_mpp(mpp, "tissue mpp")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} and dtype {rgb.dtype}")
    hsv = _hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    try:
        otsu = float(filters.threshold_otsu(sat))
    except ValueError:  # a constant image
        otsu = params.max_saturation
    sat_threshold = float(np.clip(otsu, params.min_saturation, params.max_saturation))
    glass = (sat < sat_threshold) & (val > params.background_value)
    tissue = ~glass

    px_area_um2 = mpp * mpp
    pen = pen_mask_from_rgb(rgb, params, hsv)
    min_pen_px = int(params.min_pen_um2 / px_area_um2)
    if min_pen_px > 0:
        pen = morphology.remove_small_objects(pen, max_size=min_pen_px)
    margin_px = int(round(params.pen_margin_um / mpp))
    if margin_px > 0 and pen.any():
        pen = morphology.dilation(pen, morphology.disk(margin_px))
    tissue &= ~pen

    min_tissue_px = int(params.min_tissue_um2 / px_area_um2)
    min_hole_px = int(params.min_hole_um2 / px_area_um2)
    if min_tissue_px > 0:
        tissue = morphology.remove_small_objects(tissue, max_size=min_tissue_px)
    if min_hole_px > 0:
        filled = morphology.remove_small_holes(tissue, max_size=min_hole_px)
        tissue = filled & ~pen  # never fill ink back in
    return np.asarray(tissue, dtype=bool), np.asarray(pen, dtype=bool)


def detect_tissue(
    slide: Slide, *, mpp: float = DEFAULT_TISSUE_MPP, params: TissueParams = TissueParams()
) -> TissueMask:
    """Tissue mask of a whole slide read at ``mpp`` (coarse) um/px."""
    mpp = max(check_mpp(mpp, "tissue mpp"), slide.mpp)
    rgb, affine = slide.read_whole_at(mpp)
    tissue, pen = tissue_mask_from_rgb(rgb, mpp, params)
    return TissueMask(tissue=tissue, pen=pen, affine=affine, mpp=mpp)
