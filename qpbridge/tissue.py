"""Tissue detection at thumbnail scale: tissue vs white background, minus pen marks (black, blue, green ink).

This is the DeepBatch preprocessing step: the ROI U-Net only looks at tissue, and pen strokes that a
pathologist drew on the glass must not be mistaken for tissue. It works on a low-resolution read of the whole
slide (default 8 um/px: a 25 x 20 mm slide is ~3,100 x 2,500 px) with scikit-image colour conversion and
morphology, and returns a boolean mask with the :class:`affine.Affine` that maps it to level-0 pixels.

Memory: the per-pixel colour work (float32 HSV, thresholds, ink) runs on strips of :data:`STRIP_PX` pixels of
the uint8 thumbnail, and the Otsu threshold of the saturation comes from a histogram accumulated over the strips,
so the only whole-thumbnail arrays are the uint8 thumbnail, bool masks and the int32 labels of the small-object
filters (~10 bytes per thumbnail pixel in all, ~50 MB for an 80,000 x 60,000 px slide at 8 um/px). The masks are
identical, bit for bit, to a whole-image computation.

Example
-------
>>> from qpbridge.slide import open_slide
>>> from qpbridge.tissue import detect_tissue
>>> with open_slide("slide.svs") as slide:                 # doctest: +SKIP
...     tissue = detect_tissue(slide)
...     print(f"{tissue.tissue_fraction:.0%} tissue, {tissue.pen_fraction:.1%} pen")
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from affine import Affine
from scipy import ndimage
from skimage import color, filters, morphology

from qpbridge.errors import InputError
from qpbridge.slide import Slide, check_mpp

__all__ = [
    "DEFAULT_TISSUE_MPP",
    "SMALL_IMAGE_FRAC",
    "STRIP_PX",
    "TissueMask",
    "TissueParams",
    "detect_tissue",
    "pen_mask_from_rgb",
    "saturation_otsu",
    "tissue_mask_from_rgb",
]

#: Default working resolution of the tissue mask (um/px).
DEFAULT_TISSUE_MPP = 8.0

#: Pixels per strip of the per-pixel colour work: float32 HSV and its temporaries (~50 bytes/px) stay ~13 MB.
STRIP_PX = 1 << 18

#: Bins of the saturation histogram that the Otsu threshold is taken from (``threshold_otsu``'s default).
_OTSU_BINS = 256


#: Specks are at most this share of the image (it only matters for images under ~0.6 x 0.6 mm).
SMALL_IMAGE_FRAC = 0.05


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


def _row_strips(height_px: int, width_px: int, strip_px: int) -> Iterator[slice]:
    """Row slices of an image ``width_px`` wide, each of about ``strip_px`` pixels (at least one row)."""
    rows = max(1, strip_px // max(width_px, 1))
    for top in range(0, height_px, rows):
        yield slice(top, min(top + rows, height_px))


def _ink(rgb: np.ndarray, hsv: np.ndarray, params: TissueParams) -> np.ndarray:
    """Black, blue and green ink of an RGB image (or strip) and its HSV, pixel by pixel."""
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    red, blue = rgb[..., 0].astype(np.float32) / 255, rgb[..., 2].astype(np.float32) / 255
    black = (val < params.black_value) & (sat < params.black_saturation)
    inked = sat > params.ink_saturation
    blue_ink = inked & (hue >= params.blue_hue[0]) & (hue <= params.blue_hue[1]) & (blue - red > params.blue_minus_red)
    green_ink = inked & (hue >= params.green_hue[0]) & (hue <= params.green_hue[1])
    return np.asarray(black | blue_ink | green_ink)


def saturation_otsu(rgb: np.ndarray, *, strip_px: int = STRIP_PX) -> float | None:
    """Otsu threshold of the HSV saturation of an (H, W, 3) uint8 RGB image, without a float copy of the image.

    Equal to ``skimage.filters.threshold_otsu(saturation)`` of the float32 saturation image (256 bins over its
    range; the value itself when the saturation is constant), bit for bit. Saturation is ``(max - min) / max``
    of the three channels, so it depends only on the pair (max, min) of the uint8 channels: the image's counts
    of those pairs (65,536 of them, accumulated over strips of ``strip_px`` pixels) give the saturation
    histogram, and the saturation of each pair is computed once with the same float32 HSV conversion.
    Returns None for an image without pixels.

    >>> import numpy as np
    >>> from skimage.color import rgb2hsv
    >>> from skimage.filters import threshold_otsu
    >>> rgb = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    >>> sat = rgb2hsv(rgb.astype(np.float32) / 255.0)[..., 1]
    >>> saturation_otsu(rgb, strip_px=100) == float(threshold_otsu(sat))
    True
    """
    pair_counts = np.zeros(256 * 256, dtype=np.int64)
    for rows in _row_strips(rgb.shape[0], rgb.shape[1], strip_px):
        strip = rgb[rows]
        pair = strip.max(axis=2).astype(np.intp)
        pair *= 256
        pair += strip.min(axis=2)
        pair_counts += np.bincount(pair.ravel(), minlength=256 * 256)
    present = np.flatnonzero(pair_counts)
    if not len(present):
        return None
    high, low = np.divmod(present, 256)
    sat = _hsv(np.stack([high, low, low], axis=-1).astype(np.uint8)[np.newaxis])[0, :, 1]
    sat_min, sat_max = sat.min(), sat.max()
    if sat_min == sat_max:  # threshold_otsu of a constant image is its value
        return float(sat_min)
    # The same float32 bin edges and per-value binning as np.histogram of the whole saturation image.
    counts, edges = np.histogram(sat, bins=_OTSU_BINS, range=(sat_min, sat_max), weights=pair_counts[present])
    centers = (edges[:-1] + edges[1:]) / 2.0
    return float(filters.threshold_otsu(hist=(counts, centers)))


def pen_mask_from_rgb(
    rgb: np.ndarray, params: TissueParams = TissueParams(), hsv: np.ndarray | None = None, *, strip_px: int = STRIP_PX
) -> np.ndarray:
    """Boolean mask of black, blue and green ink in an (H, W, 3) uint8 RGB image (no margin).

    ``hsv`` is the image's float32 HSV if already computed; otherwise it is computed strip by strip
    (``strip_px`` pixels at a time), so that no float copy of the whole image is made.

    >>> import numpy as np
    >>> rgb = np.full((8, 8, 3), 240, np.uint8); rgb[2:4] = (62, 72, 163)    # a blue stroke
    >>> int(pen_mask_from_rgb(rgb).sum())
    16
    """
    pen = np.empty(rgb.shape[:2], dtype=bool)
    for rows in _row_strips(rgb.shape[0], rgb.shape[1], strip_px):
        strip = rgb[rows]
        pen[rows] = _ink(strip, _hsv(strip) if hsv is None else hsv[rows], params)
    return pen


def _colour_masks(
    rgb: np.ndarray, sat_threshold: float, params: TissueParams, strip_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Not-glass and ink masks of an RGB image, strip by strip (one HSV conversion per strip)."""
    not_glass = np.empty(rgb.shape[:2], dtype=bool)
    ink = np.empty(rgb.shape[:2], dtype=bool)
    for rows in _row_strips(rgb.shape[0], rgb.shape[1], strip_px):
        strip = rgb[rows]
        hsv = _hsv(strip)
        sat, val = hsv[..., 1], hsv[..., 2]
        np.logical_not((sat < sat_threshold) & (val > params.background_value), out=not_glass[rows])
        ink[rows] = _ink(strip, hsv, params)
    return not_glass, ink


def _remove_small_objects(mask: np.ndarray, max_px: int, strip_px: int) -> np.ndarray:
    """Drop 4-connected pieces of at most ``max_px`` pixels from a bool mask, in place; returns ``mask``.

    The same as ``skimage.morphology.remove_small_objects(mask, max_size=max_px, out=mask)``, whose int32 labels
    are kept but whose whole-image int64 temporaries (the labels cast for ``np.bincount``) become per-strip.
    """
    labels = np.empty(mask.shape, dtype=np.int32)
    count = ndimage.label(mask, ndimage.generate_binary_structure(2, 1), output=labels)
    strips = list(_row_strips(mask.shape[0], mask.shape[1], strip_px))
    sizes = np.zeros(count + 1, dtype=np.int64)
    for rows in strips:
        sizes += np.bincount(labels[rows].ravel(), minlength=count + 1)
    too_small = sizes <= max_px
    for rows in strips:
        mask[rows][too_small[labels[rows]]] = False
    return mask


def _fill_small_holes(mask: np.ndarray, max_px: int, strip_px: int) -> np.ndarray:
    """Fill 4-connected holes of at most ``max_px`` pixels in a bool mask, in place; returns ``mask``.

    The same as ``skimage.morphology.remove_small_holes(mask, max_size=max_px, out=mask)``.
    """
    np.logical_not(mask, out=mask)
    _remove_small_objects(mask, max_px, strip_px)
    return np.logical_not(mask, out=mask)


def tissue_mask_from_rgb(
    rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams(), *, strip_px: int = STRIP_PX
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and pen masks of an RGB image at ``mpp`` um/px.

    Returns ``(tissue, pen)``, both boolean (H, W). Tissue is saturated or dark-enough pixels that are not glass,
    minus ink (grown by ``pen_margin_um``), minus specks below ``min_tissue_um2``, with small holes filled.
    The colour work runs on strips of ``strip_px`` pixels (memory bounded by the strip, not the image); the
    result does not depend on ``strip_px``.

    >>> import numpy as np
    >>> rgb = np.full((64, 64, 3), 245, np.uint8); rgb[16:48, 16:48] = (200, 120, 170)
    >>> tissue, pen = tissue_mask_from_rgb(rgb, mpp=8.0, params=TissueParams(min_tissue_um2=0))
    >>> int(tissue.sum()), int(pen.sum())
    (1024, 0)
    """
    check_mpp(mpp, "tissue mpp")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} and dtype {rgb.dtype}")
    otsu = saturation_otsu(rgb, strip_px=strip_px)
    otsu = params.max_saturation if otsu is None else otsu
    sat_threshold = float(np.clip(otsu, params.min_saturation, params.max_saturation))
    tissue, pen = _colour_masks(rgb, sat_threshold, params, strip_px)

    px_area_um2 = mpp * mpp
    min_pen_px = int(params.min_pen_um2 / px_area_um2)
    if min_pen_px > 0:
        pen = _remove_small_objects(pen, min_pen_px, strip_px)
    margin_px = int(round(params.pen_margin_um / mpp))
    if margin_px > 0 and pen.any():
        pen = morphology.dilation(pen, morphology.disk(margin_px))
    tissue &= ~pen

    # On an image smaller than a slide (a 250 um MoNuSeg tile: 32 x 32 px here) specks are at most
    # SMALL_IMAGE_FRAC of it, or pale tissue cut into pieces by glass-like pixels would be dropped as specks.
    image_px = rgb.shape[0] * rgb.shape[1]
    min_tissue_px = min(int(params.min_tissue_um2 / px_area_um2), int(SMALL_IMAGE_FRAC * image_px))
    min_hole_px = int(params.min_hole_um2 / px_area_um2)
    if min_tissue_px > 0:
        tissue = _remove_small_objects(tissue, min_tissue_px, strip_px)
    if min_hole_px > 0:
        filled = _fill_small_holes(tissue, min_hole_px, strip_px)
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
