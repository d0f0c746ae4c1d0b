"""Tests of qpbridge.vectorize: masks -> level-0 polygons, whole and block by block."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.testing import assert_geometries_equal

import qpbridge.vectorize as vz
from qpbridge.errors import InputError
from qpbridge.tiling import BlockGrid
from qpbridge.vectorize import BlockVectorizer, ClassPolygons, SeamMerger, vectorize_blocks, vectorize_mask

SLIDE = Affine(4, 0, 1000, 0, 4, 2000)  # mask at 1 um/px over a 0.25 um/px slide, mask origin at (1000, 2000)


@pytest.fixture(autouse=True)
def _no_fallback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every merge in these tests must go through the exact stitcher (all groups of a block at once),
    never the group-by-group or GEOS-union fallbacks."""
    stitch = vz._stitch

    def checked_stitch(groups: list[list[shapely.Polygon]], block_px: int) -> list[shapely.Polygon] | None:
        merged = stitch(groups, block_px)
        assert merged is not None, "the stitcher refused a batch of groups"
        return merged

    def refuse(_: object) -> None:
        raise AssertionError("the union fallback was used")

    monkeypatch.setattr(vz, "_stitch", checked_stitch)
    monkeypatch.setattr(vz, "_union_all", refuse)
    yield


def canonical(result: ClassPolygons) -> list[tuple[int, bytes]]:
    """Order-free, start-vertex-free form of a result: sorted (label, normalized WKB)."""
    wkb = shapely.to_wkb(shapely.normalize(result.polygons))
    return sorted(zip(result.labels.tolist(), wkb, strict=True))


def assert_same(a: ClassPolygons, b: ClassPolygons) -> None:
    assert len(a) == len(b)
    ca, cb = canonical(a), canonical(b)
    assert [k for k, _ in ca] == [k for k, _ in cb]
    assert_geometries_equal(shapely.from_wkb([w for _, w in ca]), shapely.from_wkb([w for _, w in cb]), normalize=True)


def rasterize_back(result: ClassPolygons, shape: tuple[int, int], affine: Affine, fill: int = 255) -> np.ndarray:
    if not len(result):
        return np.full(shape, fill, dtype=np.uint8)
    return rasterio.features.rasterize(
        zip(result.polygons, result.labels.tolist(), strict=True),
        out_shape=shape,
        transform=affine,
        fill=fill,
        dtype=np.uint8,
    )


# ----------------------------------------------------------------------------------------------------
# random masks: round trip, block path == whole path, validity


@st.composite
def label_masks(draw: st.DrawFn) -> np.ndarray:
    """Small multi-class masks: pixel noise (one-pixel objects, diagonal touches, holes) or blocky blobs
    (larger shapes crossing block borders, islands in holes), labels 0..3."""
    h = draw(st.integers(1, 18))
    w = draw(st.integers(1, 18))
    n_labels = draw(st.integers(1, 4))
    cell = draw(st.sampled_from([1, 1, 2, 3, 5]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, n_labels, size=(h // cell + 1, w // cell + 1))
    labels = np.kron(coarse, np.ones((cell, cell), dtype=np.int64))[:h, :w]
    if draw(st.booleans()):  # sprinkle single pixels
        dots = rng.random((h, w)) < 0.1
        labels[dots] = rng.integers(0, n_labels, size=int(dots.sum()))
    return labels.astype(np.uint8)


selections = st.sampled_from([None, (0, 1, 2, 3), (1,), (0, 2), (1, 2, 3)])


@settings(max_examples=120, deadline=None)
@given(labels=label_masks(), block_px=st.integers(1, 7), selection=selections)
def test_random_masks_round_trip_and_block_path_equals_whole(
    labels: np.ndarray, block_px: int, selection: tuple[int, ...] | None
) -> None:
    whole = vectorize_mask(labels, SLIDE, labels_to_vectorize=selection)
    blocks = vectorize_blocks(labels, SLIDE, block_px, labels_to_vectorize=selection)
    assert_same(whole, blocks)
    assert shapely.is_valid(whole.polygons).all()
    assert shapely.is_valid(blocks.polygons).all()
    # every polygon is one 4-connected region: polygon count == 4-connected component count
    selected = labels != 0 if selection is None else np.isin(labels, selection)
    back = rasterize_back(blocks, labels.shape, SLIDE)
    np.testing.assert_array_equal(back[selected], labels[selected])
    assert (back[~selected] == 255).all()


def _components_4(labels: np.ndarray, selected: np.ndarray) -> int:
    from skimage.measure import label as cc_label

    return sum(int(cc_label((labels == v) & selected, connectivity=1).max()) for v in np.unique(labels[selected]))


@settings(max_examples=40, deadline=None)
@given(labels=label_masks(), block_px=st.integers(1, 6))
def test_one_polygon_per_4_connected_region(labels: np.ndarray, block_px: int) -> None:
    selected = labels != 0
    assert len(vectorize_blocks(labels, None, block_px)) == _components_4(labels, selected)


# ----------------------------------------------------------------------------------------------------
# explicit seam cases


def _one(result: ClassPolygons) -> shapely.Polygon:
    assert len(result) == 1
    return result.polygons[0]


def test_shape_spanning_many_blocks_is_one_polygon() -> None:
    labels = np.zeros((10, 20), np.uint8)
    labels[2:5, 1:19] = 1  # a bar across 5 blocks of 4 px
    labels[5:9, 9:11] = 1  # with a leg down through the next block row
    whole = vectorize_mask(labels)
    blocks = vectorize_blocks(labels, None, 4)
    assert_same(whole, blocks)
    bar = _one(blocks)
    assert bar.area == 18 * 3 + 2 * 4
    assert shapely.get_num_coordinates(bar) == 9  # 8 corners + closing vertex: no seam vertex left
    assert bar.bounds == (1.0, 2.0, 19.0, 9.0)


def test_donut_whose_hole_is_cut_by_seams() -> None:
    labels = np.zeros((12, 12), np.uint8)
    labels[2:10, 2:10] = 3
    labels[4:8, 4:8] = 0  # the hole sits on the corner where 4 blocks of 6 px meet
    labels[5:7, 5:7] = 2  # an island in the hole, also cut in 4
    whole = vectorize_mask(labels)
    blocks = vectorize_blocks(labels, None, 6)
    assert_same(whole, blocks)
    by_label = blocks.by_label()
    donut = by_label[3][0]
    assert len(by_label[3]) == 1 and len(donut.interiors) == 1
    assert donut.area == 64 - 16
    assert_geometries_equal(shapely.Polygon(donut.interiors[0]), shapely.box(4, 4, 8, 8), normalize=True)
    assert_geometries_equal(by_label[2][0], shapely.box(5, 5, 7, 7), normalize=True)


def test_ring_closed_only_across_seams_makes_a_hole() -> None:
    # a one-pixel-wide ring with a 2x2 hole; blocks of 3 px cut it everywhere
    labels = np.zeros((6, 6), np.uint8)
    labels[1:5, 1:5] = 1
    labels[2:4, 2:4] = 0
    p = _one(vectorize_blocks(labels, None, 3))
    assert len(p.interiors) == 1
    assert p.area == 12


def test_square_on_a_four_block_corner() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[3:5, 3:5] = 1
    p = _one(vectorize_blocks(labels, None, 4))
    assert_geometries_equal(p, shapely.box(3, 3, 5, 5), normalize=True)


def test_diagonal_touch_at_a_block_corner_stays_two_polygons() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 2:4] = 1  # top-left block
    labels[4:6, 4:6] = 1  # bottom-right block: touches the first only at the corner point (4, 4)
    for result in (vectorize_mask(labels), vectorize_blocks(labels, None, 4)):
        assert sorted(p.bounds for p in result.polygons) == [(2, 2, 4, 4), (4, 4, 6, 6)]


def test_diagonal_touch_across_a_seam_stays_two_polygons() -> None:
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 1] = 1
    labels[1, 2] = 1  # across the vertical seam at x = 2, touching only at (2, 1)
    assert len(vectorize_blocks(labels, None, 2)) == 2


def test_pinch_across_a_seam_gives_the_valid_form() -> None:
    # a region whose outline touches itself at a seam vertex: rasterio writes a hole touching the shell
    labels = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],
            [1, 1, 0, 0],
            [0, 0, 0, 0],
        ],
        np.uint8,
    )
    whole = vectorize_mask(labels)
    for block_px in (1, 2, 3):
        blocks = vectorize_blocks(labels, None, block_px)
        assert_same(whole, blocks)
        p = _one(blocks)
        assert p.is_valid and len(p.interiors) == 1


def test_touching_classes_across_seams() -> None:
    labels = np.zeros((6, 9), np.uint8)
    labels[:, :5] = 1
    labels[:, 5:] = 2
    labels[2:4, 3:7] = 3  # a third class straddling the class border and the seam at x = 3, 6
    blocks = vectorize_blocks(labels, SLIDE, 3)
    assert_same(vectorize_mask(labels, SLIDE), blocks)
    by_label = blocks.by_label()
    assert [len(by_label[k]) for k in (1, 2, 3)] == [1, 1, 1]
    assert by_label[3][0].area == 8 * 16  # 8 mask pixels of 4 x 4 level-0 pixels
    assert by_label[1][0].touches(by_label[2][0])


def test_pieces_are_streamed_and_only_seam_pieces_held() -> None:
    labels = np.zeros((8, 16), np.uint8)
    labels[1, 1] = labels[1, 5] = labels[1, 9] = labels[1, 13] = 1  # one dot inside each top block
    labels[:, 7:9] = 2  # a vertical stripe across the seam between block columns 1 and 2
    grid = BlockGrid(16, 8, 4)
    bv = BlockVectorizer(grid)
    emitted, held = [], []
    for w in grid.windows():
        emitted.append(len(bv.add(w, labels[w.slices])))
        held.append(bv.held_count)
    # dots leave at once; the stripe's 4 pieces wait until its last block, (1, 2), is seen
    assert emitted == [1, 1, 1, 1, 0, 0, 1, 0]
    assert held == [0, 1, 2, 2, 2, 3, 0, 0]
    assert len(bv.finish()) == 0


def test_stripe_is_emitted_when_its_last_block_is_seen() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[:, 3:5] = 1  # stripe over the seam, both block rows
    grid = BlockGrid(8, 8, 4)
    bv = BlockVectorizer(grid)
    out = [len(bv.add(w, labels[w.slices])) for w in grid.windows()]
    assert out == [0, 0, 0, 1]
    assert len(bv.finish()) == 0


def test_left_out_blocks_count_as_empty() -> None:
    labels = np.ones((8, 12), np.uint8)
    grid = BlockGrid(12, 8, 4)
    bv = BlockVectorizer(grid)
    kept = [grid.window(0, 0), grid.window(0, 1), grid.window(1, 2)]  # e.g. blocks inside the tissue
    parts = [bv.add(w, labels[w.slices]) for w in kept]
    parts.append(bv.finish())
    expected = np.zeros_like(labels)
    for w in kept:
        expected[w.slices] = 1
    assert_same(ClassPolygons.concat(parts), vectorize_mask(expected))


def test_blocks_out_of_order_are_refused() -> None:
    grid = BlockGrid(8, 8, 4)
    bv = BlockVectorizer(grid)
    block = np.zeros((4, 4), np.uint8)
    bv.add(grid.window(0, 1), block)
    with pytest.raises(InputError, match=r"came after a later block or twice: give blocks once each, in row-major"):
        bv.add(grid.window(0, 0), block)
    with pytest.raises(InputError, match=r"do not match block"):
        bv.add(grid.window(1, 0), np.zeros((3, 4), np.uint8))


def test_seam_merger_refuses_pieces_outside_their_block() -> None:
    merger = SeamMerger(BlockGrid(8, 8, 4))
    pieces = vectorize_mask(np.ones((4, 4), np.uint8), Affine.translation(2, 0))
    with pytest.raises(InputError, match="polygons reach outside their block"):
        merger.add(merger.grid.window(0, 0), pieces)


# ----------------------------------------------------------------------------------------------------
# coordinates, options, errors


def test_level0_coordinates_with_scale_and_offset() -> None:
    labels = np.zeros((5, 6), np.uint8)
    labels[3, 2] = 7  # pixel (c=2, r=3)
    p = _one(vectorize_mask(labels, SLIDE))
    # mask pixel (2, 3) covers level-0 [1000 + 4*2, 1000 + 4*3) x [2000 + 4*3, 2000 + 4*4)
    assert_geometries_equal(p, shapely.box(1008, 2012, 1012, 2016), normalize=True)
    assert shapely.get_coordinates(p).min(axis=0).tolist() == [1008.0, 2012.0]
    assert_same(vectorize_blocks(labels, SLIDE, 2), vectorize_mask(labels, SLIDE))


def test_round_trip_at_level0_resolution() -> None:
    rng = np.random.default_rng(7)
    labels = np.kron(rng.integers(0, 4, (6, 6)), np.ones((3, 3), np.int64)).astype(np.uint8)
    result = vectorize_mask(labels, SLIDE, labels_to_vectorize=(0, 1, 2, 3))
    # rasterizing the level-0 polygons at level 0 gives the mask upsampled 4x
    level0 = rasterize_back(result, (72, 72), Affine.translation(1000, 2000))
    np.testing.assert_array_equal(level0, np.kron(labels, np.ones((4, 4), np.uint8)))


def test_label_zero_only_when_asked() -> None:
    labels = np.zeros((4, 4), np.uint8)
    labels[1:3, 1:3] = 1
    assert vectorize_mask(labels).labels.tolist() == [1]
    with_zero = vectorize_mask(labels, labels_to_vectorize=[0, 1])
    assert sorted(with_zero.labels.tolist()) == [0, 1]
    background = with_zero.by_label()[0][0]
    assert background.area == 12 and len(background.interiors) == 1


def test_min_area_in_um2() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[1:4, 1:4] = 1  # 3 x 3 px at 0.5 um/px: 2.25 um^2
    labels[6:10, 6:10] = 2  # 4 x 4 px: 4 um^2
    assert vectorize_mask(labels, mpp=0.5, min_area_um2=3).labels.tolist() == [2]
    assert sorted(vectorize_mask(labels, mpp=0.5, min_area_um2=2).labels.tolist()) == [1, 2]
    assert sorted(vectorize_mask(labels, mpp=0.5, min_area_um2=2.25).labels.tolist()) == [1, 2]  # kept at equal
    # the area counts level-0 pixels: a mask at 4x the level-0 pixel size has 16x the area
    assert sorted(vectorize_mask(labels, SLIDE, mpp=0.5, min_area_um2=36).labels.tolist()) == [1, 2]
    assert vectorize_mask(labels, SLIDE, mpp=0.5, min_area_um2=36.1).labels.tolist() == [2]
    # the block path filters complete polygons, not pieces
    assert sorted(vectorize_blocks(labels, None, 2, mpp=0.5, min_area_um2=2.25).labels.tolist()) == [1, 2]


def test_simplify_tolerance_is_in_um() -> None:
    labels = np.tril(np.ones((12, 12), np.uint8))  # a staircase triangle: 26 corners
    exact = _one(vectorize_mask(labels, mpp=0.5))
    assert shapely.get_num_coordinates(exact) == 27  # with the closing vertex
    # 0.2 um = 0.4 level-0 px: below the 0.707 px depth of the steps, nothing changes
    kept = _one(vectorize_mask(labels, mpp=0.5, simplify_um=0.2))
    assert shapely.get_num_coordinates(kept) == 27
    # 1 um = 2 px: the staircase becomes a triangle (plus at most a vertex where the ring starts)
    simple = _one(vectorize_mask(labels, mpp=0.5, simplify_um=1.0))
    assert shapely.get_num_coordinates(simple) <= 5
    assert simple.is_valid
    assert abs(simple.area - exact.area) <= 12  # within one row of pixels
    # the block path simplifies complete polygons, identically
    assert_same(
        vectorize_blocks(labels, None, 5, mpp=0.5, simplify_um=1.0), vectorize_mask(labels, mpp=0.5, simplify_um=1.0)
    )


def test_simplify_keeps_small_polygons() -> None:
    labels = np.zeros((5, 5), np.uint8)
    labels[2, 2] = 1
    p = _one(vectorize_mask(labels, mpp=0.25, simplify_um=10))  # tolerance 40 px on a 1 px square
    # preserve_topology=True keeps a ring of 3 corners (preserve_topology=False would empty it)
    assert not p.is_empty and p.is_valid and p.area >= 0.5
    assert p.bounds == (2.0, 2.0, 3.0, 3.0)


def test_rotated_affine_gives_valid_polygons() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (10, 10)).astype(np.uint8)
    result = vectorize_mask(labels, Affine.rotation(30))
    assert shapely.is_valid(result.polygons).all()
    assert sum(p.area for p in result.polygons) == pytest.approx(float((labels != 0).sum()))


def test_repair_keeps_polygon_parts() -> None:
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2), (0, 0)])
    good = shapely.box(5, 5, 6, 6)
    labels, geoms = vz._repair(np.array([4, 5]), np.array([bowtie, good], dtype=object))
    assert shapely.is_valid(geoms).all()
    assert sorted(labels.tolist()) == [4, 4, 5]
    assert set(shapely.get_type_id(geoms).tolist()) == {3}
    assert sum(shapely.area(geoms[labels == 4])) == pytest.approx(2.0)


def test_label_dtypes() -> None:
    base = np.zeros((4, 4), np.int64)
    base[1:3, 1:3] = 70000  # beyond uint16: kept exactly through int32
    assert vectorize_mask(base).labels.tolist() == [70000]
    assert vectorize_mask(base.astype(bool)).labels.tolist() == [1]
    with pytest.raises(InputError, match="must hold integer labels, got dtype float64"):
        vectorize_mask(base.astype(float))
    with pytest.raises(InputError, match=r"must be a 2-D array \(rows, cols\), got shape \(2, 4, 4\)"):
        vectorize_mask(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(InputError, match="labels must fit in int32"):
        vectorize_mask(np.full((2, 2), 2**40, np.int64))
    assert len(vectorize_mask(np.zeros((3, 3), np.uint8))) == 0


def test_option_errors() -> None:
    labels = np.ones((2, 2), np.uint8)
    with pytest.raises(InputError, match="simplify_um=1.0 / min_area_um2=0.0 need mpp"):
        vectorize_mask(labels, simplify_um=1.0)
    with pytest.raises(InputError, match="mpp must be > 0, got 0"):
        vectorize_mask(labels, mpp=0)
    with pytest.raises(InputError, match="min_area_um2 must be a number >= 0, got -1"):
        vectorize_mask(labels, mpp=1, min_area_um2=-1)
    with pytest.raises(InputError, match="affine must be finite and invertible"):
        vectorize_mask(labels, Affine.scale(0))
    with pytest.raises(InputError, match="affine must be finite and invertible"):
        BlockVectorizer(BlockGrid(2, 2, 1), Affine.scale(0))
