"""Tests of qpbridge.nuclei.instances: instance images -> nuclei (ids, centroids, outlines, areas)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import scipy.ndimage as ndi
import shapely
from affine import Affine
from PIL import Image
from shapely.testing import assert_geometries_equal

from qpbridge.errors import InputError
from qpbridge.instance_metrics import instance_scores, rasterize_instances
from qpbridge.nuclei import (
    DEFAULT_SIMPLIFY_RADIUS_FRAC,
    DEFAULT_SMOOTH_PASSES,
    SIMPLIFY_PX_RANGE,
    NucleusSet,
    clean_instances,
    default_tolerance_px,
    nuclei_from_labels,
    simplify_outlines,
)
from tests.conftest import shared_file

BLOCK = Affine(2, 0, 1000, 0, 2, 3000)  # model at 2x the level-0 pixel size, block origin at (1000, 3000)


def blobs(size: int = 96, n: int = 40, seed: int = 3) -> np.ndarray:
    """Touching, irregular nuclei: Voronoi cells of random seeds cut by a smoothed-noise foreground."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
    seeds[ys, xs] = np.arange(1, n + 1) * 7  # sparse ids
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[iy, ix]
    noise = ndi.gaussian_filter(rng.standard_normal((size, size)), 2.0)
    return np.where(noise > -0.05, cells, 0).astype(np.int32)


def test_clean_keeps_largest_piece_and_fills_holes() -> None:
    labels = np.array(
        [
            [1, 1, 1, 0, 2, 2, 0],
            [1, 0, 1, 0, 2, 2, 0],
            [1, 1, 1, 0, 0, 0, 2],  # a stray piece of 2 (1 px): dropped
            [0, 0, 0, 0, 3, 3, 3],
            [4, 4, 0, 0, 3, 0, 0],  # background open to the border: not a hole
            [4, 0, 5, 0, 3, 3, 3],
        ]
    )
    assert clean_instances(labels).tolist() == [
        [1, 1, 1, 0, 2, 2, 0],
        [1, 1, 1, 0, 2, 2, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 3, 3, 3],
        [4, 4, 0, 0, 3, 0, 0],
        [4, 0, 5, 0, 3, 3, 3],
    ]


def test_clean_leaves_gaps_between_nuclei_and_nested_nuclei() -> None:
    labels = np.zeros((7, 7), np.int32)
    labels[1:6, 1:6] = 1
    labels[2:5, 2:5] = 0
    labels[3, 3] = 2  # a nucleus inside nucleus 1's hole: the hole touches 1 and 2, so it stays
    labels[0, 0] = 3
    out = clean_instances(labels)
    assert (out == labels).all()
    # a gap enclosed by two nuclei together is not a hole of either
    gap = np.zeros((5, 6), np.int32)
    gap[1:4, 1:3], gap[1:4, 3:5] = 5, 6
    gap[2, 2:4] = 0
    assert (clean_instances(gap) == gap).all()


def test_clean_tie_goes_to_the_first_piece() -> None:
    labels = np.array([[4, 4, 0, 4, 4], [0, 0, 0, 0, 0], [0, 0, 0, 9, 9]])
    assert clean_instances(labels).tolist() == [[4, 4, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 9, 9]]


def test_pixel_outlines_round_trip_with_the_block_affine() -> None:
    labels = blobs()
    cleaned = clean_instances(labels)
    nuclei = nuclei_from_labels(labels, BLOCK, simplify_px=0, smooth_passes=0)
    ids = np.unique(cleaned[cleaned > 0])
    assert nuclei.ids.tolist() == ids.tolist()
    assert nuclei.areas_px.tolist() == [int((cleaned == i).sum()) for i in ids]
    back = rasterio.features.rasterize(
        zip(nuclei.polygons, nuclei.ids.tolist(), strict=True), out_shape=labels.shape, transform=BLOCK
    )
    assert (back == cleaned).all()
    # level-0 area and centroid of the pixel outline are the pixels'
    assert shapely.area(nuclei.polygons).tolist() == (4.0 * nuclei.areas_px).tolist()
    centroids = shapely.get_coordinates(shapely.centroid(nuclei.polygons))
    np.testing.assert_allclose(centroids, nuclei.centroids_xy, atol=1e-9)
    rows, cols = np.nonzero(cleaned == ids[0])
    expected = [1000 + 2 * (cols.mean() + 0.5), 3000 + 2 * (rows.mean() + 0.5)]
    assert nuclei.centroids_xy[0].tolist() == pytest.approx(expected)


def test_one_corner_cut_keeps_every_pixel_centre() -> None:
    labels = blobs(seed=11)
    cleaned = clean_instances(labels)
    nuclei = nuclei_from_labels(cleaned, BLOCK, simplify_px=0, smooth_passes=1, clean=False)
    assert shapely.is_valid(nuclei.polygons).all()
    back = rasterize_instances(nuclei.polygons, labels.shape, BLOCK)
    assert ((back > 0) == (cleaned > 0)).all()
    assert instance_scores(back, cleaned).aji == 1.0
    # area: every convex pixel corner loses 1/8 px, every concave one gains 1/8 px
    assert (shapely.area(nuclei.polygons) < 4.0 * nuclei.areas_px + 1e-9).sum() >= 0.9 * len(nuclei)


def test_defaults_simplify_validly_and_stay_close() -> None:
    labels = blobs(size=128, n=50, seed=5)
    cleaned = clean_instances(labels)
    exact = nuclei_from_labels(cleaned, simplify_px=0, smooth_passes=0, clean=False)
    simple = nuclei_from_labels(cleaned, clean=False)
    assert (DEFAULT_SMOOTH_PASSES, DEFAULT_SIMPLIFY_RADIUS_FRAC, SIMPLIFY_PX_RANGE) == (3, 0.0625, (0.2, 0.4))
    assert simple.ids.tolist() == exact.ids.tolist()
    assert shapely.is_valid(simple.polygons).all()
    assert (shapely.get_type_id(simple.polygons) == 3).all()
    assert shapely.get_num_coordinates(simple.polygons).sum() < 0.5 * shapely.get_num_coordinates(exact.polygons).sum()
    # every outline stays within a pixel of the pixel outline (corner cuts + a tolerance <= 0.6 px here)
    assert default_tolerance_px(exact.areas_px).max() < 0.6
    assert shapely.hausdorff_distance(simple.polygons, exact.polygons).max() <= 1.0
    # the default is the per-nucleus tolerance
    per_nucleus = simplify_outlines(exact.polygons, default_tolerance_px(exact.areas_px))
    assert shapely.equals_exact(per_nucleus, simple.polygons, tolerance=0).all()
    back = rasterize_instances(simple.polygons, labels.shape)
    fg = 2 * ((back > 0) & (cleaned > 0)).sum() / ((back > 0).sum() + (cleaned > 0).sum())
    assert fg >= 0.99


def test_holes_are_filled_and_stray_pieces_dropped() -> None:
    labels = np.zeros((6, 6), np.int32)
    labels[1:5, 1:5] = 4
    labels[2:4, 2:4] = 0
    labels[0, 5] = 4
    n = nuclei_from_labels(labels, smooth_passes=0, simplify_px=0)
    assert (n.ids.tolist(), n.areas_px.tolist(), n.centroids_xy.tolist()) == ([4], [16], [[3.0, 3.0]])
    assert_geometries_equal(n.polygons[0], shapely.box(1, 1, 5, 5), normalize=True)
    # without cleaning, the hole is still dropped from the outline and the stray pixel is not an outline
    raw = nuclei_from_labels(labels, smooth_passes=0, simplify_px=0, clean=False)
    assert raw.areas_px.tolist() == [13]
    assert_geometries_equal(raw.polygons[0], shapely.box(1, 1, 5, 5), normalize=True)


def test_tiny_and_thin_nuclei_survive_simplification() -> None:
    labels = np.zeros((5, 9), np.int32)
    labels[1, 1] = 1  # one pixel
    labels[3, 2:8] = 2  # a one-pixel-wide line
    for passes in (0, 1, 2, 3):
        for tol in (0.0, 0.35, 0.5, 1.0, 2.0):
            n = nuclei_from_labels(labels, simplify_px=tol, smooth_passes=passes)
            assert n.ids.tolist() == [1, 2]
            assert shapely.is_valid(n.polygons).all()  # never emptied, never broken ...
            assert (shapely.area(n.polygons) > 0).all()
            assert (shapely.get_num_coordinates(n.polygons) >= 4).all()
            if tol <= 0.35 and passes <= 2:  # ... and up to 0.35 px, they keep their pixel centres
                back = rasterize_instances(n.polygons, labels.shape)
                assert back[1, 1] == 1 and (back[3, 2:8] == 2).all(), (passes, tol)
    defaults = nuclei_from_labels(labels)  # tolerance: 0.0625 r of these tiny nuclei (0.2-0.27 px)
    assert (shapely.get_num_coordinates(defaults.polygons) - 1).tolist() == [4, 9]
    assert shapely.area(defaults.polygons).tolist() == [0.125, 4.625]  # 3 corner cuts shrink what is this thin


def test_simplify_outlines_examples() -> None:
    square = shapely.box(0, 0, 4, 4)
    staircase = simplify_outlines([square], 0.0, smooth_passes=0)[0]
    assert_geometries_equal(staircase, square, normalize=True)
    octagon = simplify_outlines([square], 0.25, smooth_passes=1)[0]
    expected = shapely.Polygon([(0.5, 0), (3.5, 0), (4, 0.5), (4, 3.5), (3.5, 4), (0.5, 4), (0, 3.5), (0, 0.5)])
    assert_geometries_equal(octagon, expected, normalize=True)
    assert octagon.area == 16 - 4 * 0.125
    with_hole = shapely.Polygon(shapely.box(0, 0, 4, 4).exterior, [shapely.box(1, 1, 2, 2).exterior.coords])
    assert len(simplify_outlines([with_hole], 0.0, smooth_passes=0)[0].interiors) == 0
    assert simplify_outlines([], 0.5).shape == (0,) and simplify_outlines([]).shape == (0,)
    # one tolerance per polygon
    two = simplify_outlines([square, square], [0.0, 0.25], smooth_passes=1)
    assert (shapely.get_num_coordinates(two) - 1).tolist() == [16, 8]
    with pytest.raises(InputError, match="simplify_px must be a finite number >= 0, got -1"):
        simplify_outlines([square], -1)
    with pytest.raises(InputError, match="simplify_px must be a finite number >= 0, got nan"):
        simplify_outlines([square, square], [0.5, float("nan")])
    with pytest.raises(InputError, match=r"simplify_px must be one number or one per polygon \(1\), got shape \(2,\)"):
        simplify_outlines([square], [0.5, 0.5])
    with pytest.raises(InputError, match="smooth_passes must be a whole number >= 0, got True"):
        simplify_outlines([square], 0.5, smooth_passes=True)


def test_empty_block_and_nucleus_set_helpers() -> None:
    empty = nuclei_from_labels(np.zeros((4, 4), np.uint16), BLOCK)
    assert len(empty) == 0 and empty.centroids_xy.shape == (0, 2)
    a = nuclei_from_labels(blobs(seed=1), BLOCK)
    b = a.subset(a.ids % 2 == 0)
    both = NucleusSet.concat([a, b])
    assert len(both) == len(a) + len(b)
    assert both.ids[len(a):].tolist() == b.ids.tolist()
    assert len(NucleusSet.concat([])) == 0
    with pytest.raises(ValueError, match=r"NucleusSet arrays must be \(n,\), \(n, 2\), \(n,\), \(n,\)"):
        NucleusSet(np.zeros(2, np.int64), np.zeros((3, 2)), np.empty(2, dtype=object), np.zeros(2, np.int64))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((2, 2, 2), np.int32), r"must be a 2-D array \(rows, cols\), got shape \(2, 2, 2\)"),
        (np.zeros((2, 2)), "must hold integer ids .* got dtype float64: label it first"),
        (np.zeros((2, 2), bool), "must hold integer ids .* got dtype bool"),
        (np.array([[0, -3]]), "instance ids must be 0..2147483647, got values from -3 to 0"),
        (np.array([[0, 2**40]]), "instance ids must be 0..2147483647, got values from 0 to 1099511627776"),
    ],
)
def test_bad_instance_images(labels: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        nuclei_from_labels(labels)


def test_default_tolerance_follows_nucleus_size() -> None:
    radii = np.array([0.5, 5, 10, 25, 100])  # equivalent radius, px
    tolerance = default_tolerance_px(np.pi * radii**2)
    np.testing.assert_allclose(tolerance, [0.2, 0.3125, 0.4, 0.4, 0.4])


def test_real_nuclei_meet_the_output_targets() -> None:
    """A breast MoNuSeg tile at its own 0.25 um/px: <= 20 vertices a nucleus, Dice change <= 0.005."""
    path = shared_file("monuseg-train", "instances", "TCGA-A7-A13E-01Z-00-DX1_instances.png")
    labels = np.asarray(Image.open(path)).astype(np.int32)
    cleaned = clean_instances(labels)
    nuclei = nuclei_from_labels(cleaned, clean=False)
    assert len(nuclei) == len(np.unique(cleaned)) - 1
    assert shapely.is_valid(nuclei.polygons).all()
    vertices = (shapely.get_num_coordinates(nuclei.polygons) - 1).mean()
    assert vertices <= 20
    back = rasterize_instances(nuclei.polygons, labels.shape)
    dice = 2 * ((back > 0) & (labels > 0)).sum() / ((back > 0).sum() + (labels > 0).sum())
    exact = rasterize_instances(nuclei_from_labels(cleaned, simplify_px=0, smooth_passes=0, clean=False).polygons,
                                labels.shape)
    exact_dice = 2 * ((exact > 0) & (labels > 0)).sum() / ((exact > 0).sum() + (labels > 0).sum())
    assert exact_dice - dice <= 0.005


def test_fill_holes_is_scipys() -> None:
    from scipy import ndimage

    from qpbridge.nuclei.postprocess import fill_holes

    rng = np.random.default_rng(1)
    for _ in range(100):
        mask = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) > rng.uniform(0.2, 0.8)
        assert (fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()
