"""Tissue and pen-mark masks against the synthetic truth, and on a real slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio.features

from qpbridge.errors import InputError
from qpbridge.slide import open_slide
from qpbridge.tissue import TissueParams, detect_tissue, pen_mask_from_rgb, tissue_mask_from_rgb
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
