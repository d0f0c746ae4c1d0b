"""Tests of the seam rule: a nucleus seen by several blocks with halos is kept by exactly one."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import shapely
from affine import Affine
from shapely.testing import assert_geometries_equal

from qpbridge.errors import InputError
from qpbridge.nuclei import keep_owned, nuclei_from_labels, owned_bounds
from qpbridge.tiling import BlockGrid, Window, window_affine

SCALE = 2  # model pixel = 2 level-0 pixels
IMAGE = Affine(SCALE, 0, 500, 0, SCALE, 700)  # the whole model grid in level-0 pixels
SIZE, BLOCK, HALO = 64, 32, 10  # 2 x 2 blocks of 32 model px, halo 10 px (> any nucleus)


def seam_nuclei() -> np.ndarray:
    """Nuclei on the seams x = 32 and y = 32 of a 64 x 64 image, at the corner where 4 blocks meet, and
    with centroids exactly on a seam (even-sized squares centred on it)."""
    labels = np.zeros((SIZE, SIZE), np.int32)
    squares = {
        1: (30, 30, 4),  # 4 x 4 centred on the corner (32, 32): belongs to the bottom-right block
        2: (30, 10, 4),  # centred on x = 32, top half
        3: (10, 30, 4),  # centred on y = 32, left half
        4: (29, 45, 5),  # 5 x 5 across x = 32, centre 31.5: bottom-left
        5: (45, 29, 5),  # across y = 32, centre 31.5: top-right
        6: (3, 3, 3),  # well inside the top-left block
        7: (58, 58, 6),  # touches the image border (the halo is clipped there)
        8: (35, 35, 3),  # next to the corner, inside the bottom-right block
        9: (22, 50, 6),  # bottom-left
    }
    for nid, (x, y, side) in squares.items():
        labels[y:y + side, x:x + side] = nid
    labels[20:26, 36:39] = 10  # a 3 x 6 bar crossing nothing
    labels[38:41, 23:41] = 11  # an 18 px bar across the seam x = 32 (centre 32.0): bottom-right
    return labels


def owned_per_block(labels: np.ndarray, halo: int = HALO) -> list[tuple[tuple[int, int], int, shapely.Polygon]]:
    """Run every block with its halo; return ``(block, id, outline)`` for each nucleus a block keeps."""
    grid = BlockGrid(SIZE, SIZE, BLOCK)
    kept = []
    for own in grid.windows():
        row, col = grid.locate(own)
        read = own.expand(halo, width_px=SIZE, height_px=SIZE)  # clipped at the image border
        nuclei = nuclei_from_labels(labels[read.slices], window_affine(IMAGE, read), simplify_px=0, smooth_passes=0)
        own_level0 = Window(500 + SCALE * own.x_px, 700 + SCALE * own.y_px, SCALE * own.width_px, SCALE * own.height_px)
        owned = nuclei.subset(keep_owned(nuclei, own_level0))
        kept += [((row, col), int(i), p) for i, p in zip(owned.ids, owned.polygons, strict=True)]
    return kept


def test_every_nucleus_is_kept_exactly_once() -> None:
    labels = seam_nuclei()
    kept = owned_per_block(labels)
    counts = Counter(nid for _, nid, _ in kept)
    assert sorted(counts) == list(range(1, 12))
    assert set(counts.values()) == {1}
    owner = {nid: block for block, nid, _ in kept}
    assert owner == {
        1: (1, 1), 2: (0, 1), 3: (1, 0), 4: (1, 0), 5: (0, 1), 6: (0, 0),
        7: (1, 1), 8: (1, 1), 9: (1, 0), 10: (0, 1), 11: (1, 1),
    }
    # the kept outline is the nucleus's whole outline, as if the image had been done in one piece
    whole = nuclei_from_labels(labels, IMAGE, simplify_px=0, smooth_passes=0)
    by_id = dict(zip(whole.ids.tolist(), whole.polygons, strict=True))
    for _, nid, polygon in kept:
        assert_geometries_equal(polygon, by_id[nid], normalize=True)


def test_a_halo_narrower_than_a_nucleus_breaks_the_rule() -> None:
    # the precondition: with a 2 px halo, each side sees a different part of the 18 px bar, and each
    # part's centroid lies in its own block
    counts = Counter(nid for _, nid, _ in owned_per_block(seam_nuclei(), halo=2))
    assert counts[11] == 2


def test_random_nuclei_on_a_grid_are_kept_once() -> None:
    rng = np.random.default_rng(7)
    labels = np.zeros((SIZE, SIZE), np.int32)
    nid = 0
    for y in range(0, SIZE - 6, 7):
        for x in range(0, SIZE - 6, 7):
            nid += 1
            h, w = rng.integers(1, 7, 2)
            dy, dx = rng.integers(0, 7 - h + 1), rng.integers(0, 7 - w + 1)
            labels[y + dy:y + dy + h, x + dx:x + dx + w] = nid
    counts = Counter(n for _, n, _ in owned_per_block(labels))
    assert sorted(counts) == list(range(1, nid + 1))
    assert set(counts.values()) == {1}


def test_half_open_bounds() -> None:
    from qpbridge.nuclei import NucleusSet

    xy = [[0.0, 0.0], [10.0, 0.0], [9.999, 9.999], [0.0, 10.0], [-0.001, 5.0]]
    nuclei = NucleusSet.from_arrays(range(1, 6), xy, [shapely.box(0, 0, 1, 1)] * 5, [1] * 5)
    assert keep_owned(nuclei, Window(0, 0, 10, 10)).tolist() == [True, False, True, False, False]
    assert keep_owned(nuclei, (10, 0, 20, 10)).tolist() == [False, True, False, False, False]
    assert keep_owned(NucleusSet.empty(), (0, 0, 1, 1)).tolist() == []
    assert owned_bounds(Window(4, 8, 2, 3)) == (4.0, 8.0, 6.0, 11.0)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ((0, 0, 0, 5), r"needs finite x0 < x1 and y0 < y1, got \(0.0, 0.0, 0.0, 5.0\)"),
        ((0, 0, float("nan"), 5), "needs finite x0 < x1"),
        ((0, 0, 5), r"must be a Window or \(x0, y0, x1, y1\) in level-0 pixels, got \(0, 0, 5\)"),
        ("abcd", "must be a Window or"),
    ],
)
def test_bad_bounds(bounds: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        owned_bounds(bounds)  # type: ignore[arg-type]
