"""Tests of qpbridge.nuclei.measure: QuPath-named measurements of every nucleus of a block."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import scipy.ndimage as ndi
import shapely
from PIL import Image

from qpbridge.errors import InputError
from qpbridge.nuclei import MEASUREMENT_NAMES, MeasurementTable, clean_instances, measure_nuclei, nuclei_from_labels
from qpbridge.nuclei.instances import simplify_outlines
from qpbridge.nuclei.measure import (
    AREA,
    CIRCULARITY,
    ECCENTRICITY,
    EOSIN_OD_MEAN,
    HE_STAINS,
    HEMATOXYLIN_OD_MEAN,
    MAX_CALIPER,
    MIN_CALIPER,
    PERIMETER,
    SOLIDITY,
    he_optical_density,
)
from tests.conftest import shared_file

WHITE = 255
H = math.sqrt(0.5)


def white(shape: tuple[int, int]) -> np.ndarray:
    return np.full((*shape, 3), WHITE, np.uint8)


def test_names_are_qupaths_cell_detection_names() -> None:
    # qupath-core-processing/.../detect/cells/ObjectMeasurements.java and WatershedCellDetection.java
    assert MEASUREMENT_NAMES == (
        "Nucleus: Area",
        "Nucleus: Perimeter",
        "Nucleus: Circularity",
        "Nucleus: Solidity",
        "Nucleus: Max caliper",
        "Nucleus: Min caliper",
        "Nucleus: Eccentricity",
        "Nucleus: Hematoxylin OD mean",
        "Nucleus: Eosin OD mean",
    )


def test_one_pixel_nucleus() -> None:
    labels = np.zeros((3, 3), np.int32)
    labels[1, 1] = 5
    t = measure_nuclei(labels, white((3, 3)), mpp=0.5)
    row = dict(zip(t.names, t.values[0].tolist(), strict=True))
    # the midpoint outline of one pixel is a diamond: 4 cuts of sqrt(2)/2, area 1/2, diagonals 1
    assert t.ids.tolist() == [5]
    assert row[AREA] == 0.25  # 1 px x 0.5^2
    assert row[PERIMETER] == pytest.approx(4 * H * 0.5)
    assert row[CIRCULARITY] == pytest.approx(math.pi / 4)  # 4 pi (1/2) / 8
    assert row[SOLIDITY] == 1.0
    assert row[MAX_CALIPER] == pytest.approx(1 * 0.5)
    assert row[MIN_CALIPER] == pytest.approx(H * 0.5)
    assert row[ECCENTRICITY] == 0.0
    assert row[HEMATOXYLIN_OD_MEAN] == 0.0 and row[EOSIN_OD_MEAN] == 0.0


def test_one_pixel_wide_line() -> None:
    labels = np.zeros((3, 7), np.int32)
    labels[1, 1:6] = 2  # 5 px
    row = dict(zip(MEASUREMENT_NAMES, measure_nuclei(labels, white((3, 7)), mpp=1.0).values[0].tolist(), strict=True))
    # midpoint outline: a hexagon (0.5, 0) .. (4.5, 0), (5, 0.5), (4.5, 1) .. (0.5, 1), (0, 0.5)
    assert row[AREA] == 5.0
    assert row[PERIMETER] == pytest.approx(4 + 4 + 4 * H)
    assert row[CIRCULARITY] == pytest.approx(4 * math.pi * 4.5 / (8 + 4 * H) ** 2)
    assert row[SOLIDITY] == 1.0
    assert row[MAX_CALIPER] == pytest.approx(5.0)
    assert row[MIN_CALIPER] == pytest.approx(1.0)
    assert row[ECCENTRICITY] == pytest.approx(math.sqrt(1 - 1 / 25))  # variances 25/12 and 1/12


def test_square_and_u_shape_by_hand() -> None:
    labels = np.zeros((8, 12), np.int32)
    labels[1:5, 1:5] = 1  # 4 x 4 square
    labels[1:4, 7:10] = 2  # a U: 3 x 3 minus the top middle pixel
    labels[1, 8] = 0
    t = measure_nuclei(labels, white(labels.shape), mpp=1.0)
    sq = dict(zip(t.names, t.values[0].tolist(), strict=True))
    assert sq[PERIMETER] == pytest.approx(12 + 4 * H)  # 3 unit steps a side + 4 cuts
    assert sq[CIRCULARITY] == pytest.approx(4 * math.pi * 15.5 / (12 + 4 * H) ** 2)  # area 16 - 4/8
    assert sq[MAX_CALIPER] == pytest.approx(5.0)  # (0.5, 0) to (3.5, 4)
    assert sq[MIN_CALIPER] == pytest.approx(4.0)
    assert sq[ECCENTRICITY] == 0.0
    u = dict(zip(t.names, t.values[1].tolist(), strict=True))
    # U outline (midpoints of the unit pixel edges, written out): 6 convex corners (-1/8 each) and 2 concave
    # ones (+1/8): area 8 - 6/8 + 2/8 = 7.5; its convex hull also covers the notch
    outline = shapely.Polygon([(0.5, 0), (1, 0.5), (1.5, 1), (2, 0.5), (2.5, 0), (3, 0.5), (3, 1.5), (3, 2.5),
                               (2.5, 3), (1.5, 3), (0.5, 3), (0, 2.5), (0, 1.5), (0, 0.5)])
    assert outline.area == 7.5
    assert u[AREA] == 8.0
    assert u[PERIMETER] == pytest.approx(outline.length)
    assert u[SOLIDITY] == pytest.approx(7.5 / outline.convex_hull.area)
    assert u[SOLIDITY] < 1


def blobs(size: int = 80, n: int = 30, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    seeds[rng.integers(0, size, n), rng.integers(0, size, n)] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    noise = ndi.gaussian_filter(rng.standard_normal((size, size)), 2.0)
    return clean_instances(np.where(noise > 0, seeds[iy, ix], 0))


def test_shape_measurements_match_the_midpoint_outline() -> None:
    """Oracle: shapely on the polygons of ``simplify_outlines(..., 0, smooth_passes=1)``, brute-force calipers."""
    labels = blobs()
    mpp = 0.25
    t = measure_nuclei(labels, white(labels.shape), mpp=mpp, clean=False)
    traced = nuclei_from_labels(labels, simplify_px=0, smooth_passes=0, clean=False)
    outlines = simplify_outlines(traced.polygons, 0.0, smooth_passes=1)
    assert t.ids.tolist() == traced.ids.tolist()
    np.testing.assert_allclose(t.column(AREA), traced.areas_px * mpp**2)
    np.testing.assert_allclose(t.column(PERIMETER), shapely.length(outlines) * mpp)
    circ = 4 * math.pi * shapely.area(outlines) / shapely.length(outlines) ** 2
    np.testing.assert_allclose(t.column(CIRCULARITY), np.clip(circ, 0, 1))
    np.testing.assert_allclose(t.column(SOLIDITY), shapely.area(outlines) / shapely.area(shapely.convex_hull(outlines)))
    for k, outline in enumerate(outlines):
        pts = np.asarray(outline.exterior.coords)
        feret = max(math.dist(a, b) for a, b in combinations(pts.tolist(), 2))
        hull = np.asarray(outline.convex_hull.exterior.coords)
        widths = []
        for a, b in zip(hull[:-1], hull[1:], strict=True):
            edge = b - a
            widths.append(np.abs(edge[0] * (pts[:, 1] - a[1]) - edge[1] * (pts[:, 0] - a[0])).max() / np.hypot(*edge))
        assert t.column(MAX_CALIPER)[k] == pytest.approx(feret * mpp)
        assert t.column(MIN_CALIPER)[k] == pytest.approx(min(widths) * mpp)
    # eccentricity: covariance of the area (unit squares)
    for k, nid in enumerate(t.ids):
        rows, cols = np.nonzero(labels == nid)
        cov = np.cov(np.stack([cols, rows]), bias=True) + np.eye(2) / 12
        lo, hi = np.linalg.eigvalsh(cov)
        assert t.column(ECCENTRICITY)[k] == pytest.approx(math.sqrt(1 - lo / hi), abs=1e-9)


def test_stain_means() -> None:
    # a pure hematoxylin pixel of optical density 0.8 in every nucleus pixel, pure eosin 0.3 in another
    h = np.asarray(HE_STAINS["Hematoxylin"]) / np.linalg.norm(HE_STAINS["Hematoxylin"])
    e = np.asarray(HE_STAINS["Eosin"]) / np.linalg.norm(HE_STAINS["Eosin"])
    labels = np.zeros((4, 8), np.int32)
    labels[1:3, 1:3], labels[1:3, 5:7] = 1, 2
    rgb = np.full((4, 8, 3), 255.0)
    rgb[1:3, 1:3] = 255 * 10 ** (-0.8 * h)
    rgb[1:3, 5:7] = 255 * 10 ** (-0.3 * e)
    t = measure_nuclei(labels, rgb, mpp=1.0)  # float RGB: no 8-bit rounding
    np.testing.assert_allclose(t.column(HEMATOXYLIN_OD_MEAN), [0.8, 0.0], atol=1e-12)
    np.testing.assert_allclose(t.column(EOSIN_OD_MEAN), [0.0, 0.3], atol=1e-12)
    # 8-bit: the same as deconvolving the image then averaging the pixels
    rgb8 = np.random.default_rng(0).integers(0, 256, (4, 8, 3)).astype(np.uint8)
    hema, eos = he_optical_density(rgb8)
    t8 = measure_nuclei(labels, rgb8, mpp=1.0)
    assert t8.column(HEMATOXYLIN_OD_MEAN).tolist() == pytest.approx([hema[1:3, 1:3].mean(), hema[1:3, 5:7].mean()])
    assert t8.column(EOSIN_OD_MEAN).tolist() == pytest.approx([eos[1:3, 1:3].mean(), eos[1:3, 5:7].mean()])


def test_degenerate_nuclei_and_black_pixels_are_finite() -> None:
    labels = np.zeros((6, 9), np.int32)
    labels[0, 0] = 1  # one pixel in a corner
    labels[2:6, 8] = 2  # a vertical line on the border
    labels[5, 0:3] = 3  # a horizontal line on the border
    labels[2, 2], labels[3, 3] = 4, 4  # two diagonal pixels (clean keeps the first)
    rgb = np.zeros((6, 9, 3), np.uint8)  # black: the largest optical density
    t = measure_nuclei(labels, rgb, mpp=0.25)
    assert t.ids.tolist() == [1, 2, 3, 4]
    assert np.isfinite(t.values).all()
    assert (t.column(CIRCULARITY) <= 1).all() and (t.column(SOLIDITY) <= 1).all()
    assert t.column(AREA).tolist() == [0.0625, 0.25, 0.1875, 0.0625]
    raw = measure_nuclei(labels, rgb, mpp=0.25, clean=False)  # diagonal pixels kept as one id
    assert np.isfinite(raw.values).all()
    assert raw.column(AREA)[3] == 0.125


def test_table_helpers() -> None:
    labels = np.zeros((5, 5), np.int32)
    labels[0:2, 0:2], labels[3:5, 3:5] = 8, 3
    t = measure_nuclei(labels, white((5, 5)), mpp=0.3)
    assert t.ids.tolist() == [3, 8] and len(t) == 2
    assert t.rows_for([8]).ids.tolist() == [8]
    assert t.rows_for([8, 3]).values.tolist() == t.values[::-1].tolist()
    records = t.records()
    assert list(records[0]) == list(MEASUREMENT_NAMES)
    assert records[0][AREA] == 0.36  # 4 x 0.09, rounded to 4 significant digits
    assert records[0][PERIMETER] == 2.049  # (4 + 4 sqrt(2)/2) x 0.3 = 2.04853...
    assert t.records(None)[0][PERIMETER] == pytest.approx((4 + 4 * H) * 0.3)
    with pytest.raises(InputError, match=r"ids \[5\] are not in the measurement table"):
        t.rows_for([5])
    with pytest.raises(InputError, match="no measurement 'Nucleus: Roundness': the table has Nucleus: Area, "):
        t.column("Nucleus: Roundness")
    with pytest.raises(InputError, match="significant_digits must be >= 1, got 0"):
        t.records(0)
    empty = measure_nuclei(np.zeros((3, 3), np.int32), white((3, 3)), mpp=1.0)
    assert empty.values.shape == (0, len(MEASUREMENT_NAMES)) and empty.records() == []
    with pytest.raises(ValueError, match=r"values \(1, 1\) must be \(ids, names\) = \(2, 1\)"):
        MeasurementTable(np.array([1, 2]), ("a",), np.zeros((1, 1)))


def test_bad_inputs() -> None:
    labels = np.ones((2, 2), np.int32)
    with pytest.raises(InputError, match="mpp must be a positive number of um per pixel, got 0"):
        measure_nuclei(labels, white((2, 2)), mpp=0)
    with pytest.raises(InputError, match=r"the RGB block must be \(rows, cols, 3\) = \(2, 2, 3\) .* got \(2, 3, 3\)"):
        measure_nuclei(labels, white((2, 3)), mpp=1.0)
    with pytest.raises(InputError, match=r"an RGB block must be \(rows, cols, 3\), got shape \(2, 2\)"):
        he_optical_density(np.zeros((2, 2)))


def test_real_tile_values_are_plausible() -> None:
    name = "TCGA-A7-A13E-01Z-00-DX1"
    labels = np.asarray(Image.open(shared_file("monuseg-train", "instances", f"{name}_instances.png"))).astype(np.int32)
    rgb = np.asarray(Image.open(shared_file("monuseg-train", "images", f"{name}.tif")).convert("RGB"))
    t = measure_nuclei(labels, rgb, mpp=0.25)
    assert len(t) == len(np.unique(labels)) - 1
    assert np.isfinite(t.values).all()
    med = {n: float(np.median(t.column(n))) for n in MEASUREMENT_NAMES}
    assert 10 < med[AREA] < 150  # um^2: breast nuclei
    assert 0.5 < med[CIRCULARITY] <= 1 and 0.8 < med[SOLIDITY] <= 1
    assert med[MIN_CALIPER] < med[MAX_CALIPER] < 30
    assert med[HEMATOXYLIN_OD_MEAN] > 0.1  # nuclei are hematoxylin-stained
