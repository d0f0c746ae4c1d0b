"""Tissue and pen-mark masks against the synthetic truth, and on a real slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio.features
from skimage import color, filters, morphology

from qpbridge.errors import InputError
from qpbridge.slide import open_slide
from qpbridge.tissue import (
    STRIP_PX,
    TissueParams,
    _fill_small_holes,
    _remove_small_objects,
    detect_tissue,
    pen_mask_from_rgb,
    saturation_otsu,
    tissue_mask_from_rgb,
)
from tests.conftest import shared_file, truth_geometries


def _rasterize(geoms: list, shape: tuple[int, int], transform: object) -> np.ndarray:
    if not geoms:
        return np.zeros(shape, dtype=bool)
    return rasterio.features.rasterize([(g, 1) for g in geoms], out_shape=shape, transform=transform).astype(bool)


def test_tissue_mask_matches_truth_and_excludes_pen(synth_slide: Path) -> None:
    with open_slide(synth_slide) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mpp == 8.0
    assert tissue.affine.a == pytest.approx(32.0)  # 8 um/px over a 0.25 um/px slide
    truth = _rasterize(truth_geometries(synth_slide, "Tissue"), tissue.tissue.shape, tissue.affine)
    pen = _rasterize(truth_geometries(synth_slide, "Pen mark"), tissue.tissue.shape, tissue.affine)
    assert pen.sum() > 300, "seed 1 has three pen strokes"
    expected = truth & ~pen
    iou = (tissue.tissue & expected).sum() / (tissue.tissue | expected).sum()
    assert iou >= 0.95
    pen_excluded = 1 - (tissue.tissue & pen).sum() / pen.sum()
    assert pen_excluded >= 0.95
    assert 0.3 < tissue.tissue_fraction < 0.7


def test_each_ink_colour_is_found() -> None:
    rgb = np.full((40, 60, 3), 240, np.uint8)
    rgb[5:15, 5:55] = (75, 77, 84)  # black ink, semi-opaque
    rgb[18:26, 5:55] = (62, 72, 163)  # blue ink
    rgb[29:37, 5:55] = (82, 122, 108)  # green ink
    pen = pen_mask_from_rgb(rgb)
    assert pen[5:15, 5:55].all() and pen[18:26, 5:55].all() and pen[29:37, 5:55].all()
    assert pen.sum() == 10 * 50 + 8 * 50 + 8 * 50


def test_hematoxylin_is_not_ink() -> None:
    rgb = np.full((20, 20, 3), 240, np.uint8)
    rgb[:, :10] = (61, 33, 72)  # dense nuclei at thumbnail scale: dark purple
    rgb[:, 10:] = (120, 80, 170)  # hematoxylin
    assert not pen_mask_from_rgb(rgb).any()


def test_specks_dropped_and_small_holes_filled() -> None:
    rgb = np.full((100, 100, 3), 245, np.uint8)
    rgb[20:80, 20:80] = (200, 120, 170)
    rgb[45:48, 45:48] = 245  # a small hole inside tissue
    rgb[5:7, 90:92] = (200, 120, 170)  # a 2x2 speck
    tissue, _ = tissue_mask_from_rgb(rgb, mpp=8.0, params=TissueParams(min_tissue_um2=1000, min_hole_um2=1000))
    assert tissue.sum() == 60 * 60
    assert not tissue[5:7, 90:92].any()


def test_bad_input_image() -> None:
    with pytest.raises(InputError, match=r"expected an \(H, W, 3\) uint8 RGB image, got shape \(4, 4\)"):
        tissue_mask_from_rgb(np.zeros((4, 4), np.uint8), mpp=8.0)


def test_real_slide_tissue_covers_the_section() -> None:
    path = shared_file("wsi", "cmu-1-small-region.svs")
    with open_slide(path) as slide:
        tissue = detect_tissue(slide)
        rgb, _ = slide.read_whole_at(tissue.mpp)
    # The CMU-1 crop is ~38% tissue (checked by eye on an overlay); no pen marks on it.
    assert 0.30 < tissue.tissue_fraction < 0.45
    assert tissue.pen_fraction == 0.0
    # Tissue pixels are stained (darker, more saturated) and background pixels are bright glass.
    assert rgb[tissue.tissue].mean() < 190 < rgb[~tissue.tissue].mean()


# -- strips give the same masks as the whole image -----------------------------------------------------------


def _whole_hsv(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(color.rgb2hsv(rgb.astype(np.float32) / 255.0), dtype=np.float32)


def _whole_pen(rgb: np.ndarray, params: TissueParams, hsv: np.ndarray) -> np.ndarray:
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    red, blue = rgb[..., 0].astype(np.float32) / 255, rgb[..., 2].astype(np.float32) / 255
    black = (val < params.black_value) & (sat < params.black_saturation)
    inked = sat > params.ink_saturation
    blue_ink = inked & (hue >= params.blue_hue[0]) & (hue <= params.blue_hue[1]) & (blue - red > params.blue_minus_red)
    green_ink = inked & (hue >= params.green_hue[0]) & (hue <= params.green_hue[1])
    return np.asarray(black | blue_ink | green_ink)


def _whole_image_masks(rgb: np.ndarray, mpp: float, params: TissueParams) -> tuple[np.ndarray, np.ndarray]:
    """The whole-image tissue_mask_from_rgb of qpbridge 0.1.0 (float32 HSV of the whole image), as reference."""
    hsv = _whole_hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    try:
        otsu = float(filters.threshold_otsu(sat))
    except ValueError:
        otsu = params.max_saturation
    sat_threshold = float(np.clip(otsu, params.min_saturation, params.max_saturation))
    tissue = ~((sat < sat_threshold) & (val > params.background_value))
    px_area_um2 = mpp * mpp
    pen = _whole_pen(rgb, params, hsv)
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
        tissue = morphology.remove_small_holes(tissue, max_size=min_hole_px) & ~pen
    return tissue, pen


def _slide_like_rgb(height: int, width: int, seed: int) -> np.ndarray:
    """Tinted, noisy glass; stained tissue blobs with holes; specks; black, blue and green pen strokes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.float32)
    rgb[:] = (232, 226, 236)  # glass with a faint tint: saturation ~0.04, spread by noise around Otsu's range
    rgb += rng.normal(0, 6, rgb.shape)
    for _ in range(6):  # tissue: pink to purple, saturation ~0.05-0.3: pale parts are glass or not by Otsu
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.1, 0.3) * min(height, width)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        stain = rng.uniform((190, 140, 180), (230, 200, 220), (height, width, 3))
        rgb[inside] = stain[inside]
        holes = inside & (((yy // 7) % 11 == 0) & ((xx // 7) % 13 == 0))
        rgb[holes] = (236, 230, 238)
    specks = rng.random((height, width)) < 0.002
    rgb[specks] = (170, 90, 150)
    for colour, row in (((60, 62, 70), 0.3), ((62, 72, 163), 0.55), ((82, 122, 108), 0.8)):  # pen strokes
        stroke = np.abs(yy - row * height - 0.1 * (xx - width / 2)) < max(2, height // 150)
        rgb[stroke] = np.asarray(colour) + rng.normal(0, 8, (int(stroke.sum()), 3))
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("strip_px", [1, 997, 20_000, STRIP_PX, 10**9])
def test_strips_equal_the_whole_image(strip_px: int) -> None:
    rgb = _slide_like_rgb(600, 700, seed=3)  # 420,000 px: more than one default strip
    assert rgb.shape[0] * rgb.shape[1] > STRIP_PX
    params = TissueParams(min_tissue_um2=6_400, min_hole_um2=3_200, min_pen_um2=1_280)
    otsu = float(filters.threshold_otsu(_whole_hsv(rgb)[..., 1]))
    assert params.min_saturation < otsu < params.max_saturation, "Otsu must decide, not the clip range"
    expected_tissue, expected_pen = _whole_image_masks(rgb, 8.0, params)
    fixed = TissueParams(min_saturation=params.max_saturation, min_tissue_um2=6_400, min_hole_um2=3_200,
                         min_pen_um2=1_280)
    assert not np.array_equal(_whole_image_masks(rgb, 8.0, fixed)[0], expected_tissue), "threshold must matter"
    assert expected_pen.mean() > 0.02 and 0.2 < expected_tissue.mean() < 0.8

    tissue, pen = tissue_mask_from_rgb(rgb, 8.0, params, strip_px=strip_px)
    np.testing.assert_array_equal(tissue, expected_tissue)
    np.testing.assert_array_equal(pen, expected_pen)
    hsv = _whole_hsv(rgb)
    np.testing.assert_array_equal(pen_mask_from_rgb(rgb, params, strip_px=strip_px), _whole_pen(rgb, params, hsv))
    np.testing.assert_array_equal(pen_mask_from_rgb(rgb, params, hsv, strip_px=strip_px),
                                  _whole_pen(rgb, params, hsv))


@pytest.mark.parametrize("seed", range(4))
def test_strips_equal_the_whole_image_default_params(seed: int) -> None:
    rgb = _slide_like_rgb(700 + 37 * seed, 650 - 29 * seed, seed=seed)
    for mpp in (2.0, 8.0):
        tissue, pen = tissue_mask_from_rgb(rgb, mpp)
        expected_tissue, expected_pen = _whole_image_masks(rgb, mpp, TissueParams())
        np.testing.assert_array_equal(tissue, expected_tissue)
        np.testing.assert_array_equal(pen, expected_pen)


def test_saturation_otsu_is_threshold_otsu() -> None:
    rng = np.random.default_rng(7)
    images = [
        rng.integers(0, 256, (300, 200, 3), dtype=np.uint8),  # every kind of colour
        _slide_like_rgb(120, 90, seed=5),
        np.full((5, 4, 3), (200, 100, 50), np.uint8),  # constant saturation: threshold_otsu returns it
        np.full((3, 3, 3), 255, np.uint8),  # grey: saturation 0 everywhere
        rng.integers(0, 256, (1, 17, 3), dtype=np.uint8),
    ]
    for rgb in images:
        expected = float(filters.threshold_otsu(_whole_hsv(rgb)[..., 1]))
        for strip_px in (1, 50, STRIP_PX):
            assert saturation_otsu(rgb, strip_px=strip_px) == expected
    assert saturation_otsu(np.zeros((0, 5, 3), np.uint8)) is None


def test_small_object_filters_equal_skimage() -> None:
    rng = np.random.default_rng(11)
    for density in (0.3, 0.5, 0.7):
        mask = rng.random((257, 311)) < density
        for max_px in (1, 5, 40):
            np.testing.assert_array_equal(_remove_small_objects(mask.copy(), max_px, 1000),
                                          morphology.remove_small_objects(mask, max_size=max_px))
            np.testing.assert_array_equal(_fill_small_holes(mask.copy(), max_px, 1000),
                                          morphology.remove_small_holes(mask, max_size=max_px))


def test_empty_image_gives_empty_masks() -> None:
    tissue, pen = tissue_mask_from_rgb(np.zeros((0, 4, 3), np.uint8), mpp=8.0)
    assert tissue.shape == pen.shape == (0, 4)


def test_a_small_image_of_pale_tissue_is_all_tissue() -> None:
    """A 256 x 256 um tile (32 x 32 px at 8 um/px) of tissue broken by glass-like lines: its pieces are not
    specks (specks are at most 5% of so small an image) and the lines are small holes, so it is all tissue; on a
    slide-sized image a piece under 20,000 um^2 is still a speck."""
    from qpbridge.tissue import TissueParams, tissue_mask_from_rgb

    rgb = np.full((32, 32, 3), (200, 120, 170), np.uint8)
    rgb[3:30:6, :] = (240, 236, 238)  # glass-like rows 3, 9, ..., 27: pieces of 3-5 x 32 px
    tissue, _ = tissue_mask_from_rgb(rgb, 8.0)
    assert tissue.mean() == 1.0
    slide = np.full((256, 256, 3), 240, np.uint8)
    slide[100:110, 100:110] = (200, 120, 170)  # 6,400 um^2 of tissue on 2 x 2 mm of glass
    speck, _ = tissue_mask_from_rgb(slide, 8.0)
    assert not speck.any() and TissueParams().min_tissue_um2 == 20_000
