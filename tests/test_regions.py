"""Planning the windows of a gated run (no torch) and sampling masks between grids."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from affine import Affine

from qpbridge.predict.regions import SPLIT_BELOW, plan_regions, split_piece, window_starts
from qpbridge.predict.sampling import block_mask, nearest_index, sample_mask
from qpbridge.tiling import Window


def test_planning_and_sampling_import_no_torch() -> None:
    """regions and sampling (and the package's public face) load without torch: planning is testable alone."""
    code = ("import sys, qpbridge.predict, qpbridge.predict.regions, qpbridge.predict.sampling; "
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def blobs() -> np.ndarray:
    """A 400 x 500 mask with two small pieces and one wider than a fitted window (shared with test_segmenter)."""
    active = np.zeros((400, 500), dtype=bool)
    active[20:60, 30:90] = True  # small: one fitted window
    active[300:330, 400:480] = True  # small, far away
    active[120:260, 100:380] = True  # larger than max_fit in width: the fixed grid inside its box
    return active


def test_plan_fits_small_pieces_and_grids_large_ones() -> None:
    regions = plan_regions(blobs(), tile_px=64, overlap_frac=0.25, context_px=8, max_fit_px=128, multiple=8)
    got = sorted((r.top, r.left, r.height, r.width, r.roi_px, r.windows) for r in regions)
    # boxes on an 8 px grid, grown by 8 px of context; sides <= 128 run as one window rounded up to 8
    # rows 20:60 -> 8 px cells 2..7, grown by one cell -> px 8..72; cols 30:90 -> cells 3..11 -> px 16..104
    assert got[0] == (8, 16, 64, 88, (64, 88), 1)
    assert got[2] == (288, 392, 56, 96, (56, 96), 1)
    top, left, height, width, roi, windows = got[1]
    assert (top, left, height, width) == (112, 88, 160, 304) and roi == (64, 64)
    assert windows == 3 * 6  # stride 48: rows 0, 48, 96; columns 0 .. 240
    assert sum(r.pixels for r in regions) == 64 * 88 + 56 * 96 + 18 * 64 * 64


def test_neighbouring_pieces_keep_their_own_pixels() -> None:
    """Two L-placed pieces whose boxes overlap stay two regions; each answers only for its own pixels."""
    active = np.zeros((256, 256), dtype=bool)
    active[0:100, 0:20] = True
    active[80:100, 40:200] = True  # 20 px away: separate pieces, overlapping boxes
    regions = plan_regions(active, tile_px=64, overlap_frac=0.25, context_px=0, max_fit_px=256)
    assert len(regions) == 2
    owned = np.zeros((256, 256), dtype=int)
    for r in regions:
        assert r.own is not None
        owned[r.top:r.top + r.height, r.left:r.left + r.width] += r.own
    assert owned.max() == 1 and owned[active].min() == 1


def l_shape() -> np.ndarray:
    """One L-shaped piece whose box is mostly empty (shared with test_segmenter)."""
    active = np.zeros((300, 300), dtype=bool)
    active[20:220, 20:60] = True  # a long vertical arm
    active[180:220, 20:260] = True  # and a long horizontal one: one piece, its box mostly empty
    return active


def test_l_shaped_piece_runs_as_two_windows_with_their_context() -> None:
    active = l_shape()
    kwargs = dict(tile_px=256, overlap_frac=0.25, context_px=16, max_fit_px=512, multiple=8, fit_step_px=32)
    regions = plan_regions(active, **kwargs)  # type: ignore[arg-type]
    assert len(regions) == 2
    whole = -(-(200 + 2 * 16) // 32) * 32 * -(-(240 + 2 * 16) // 32) * 32  # the one window around the L
    assert sum(r.pixels for r in regions) <= 0.9 * whole
    owned = np.zeros(active.shape, dtype=int)
    for r in regions:
        assert r.own is not None and r.windows == 1 and r.roi_px == (r.height, r.width)
        owned[r.top:r.top + r.height, r.left:r.left + r.width] += r.own
        # every active pixel a region answers for has its 16 px of context inside the region's box
        rows, cols = np.nonzero(active[r.top:r.top + r.height, r.left:r.left + r.width] & r.own)
        assert rows.min() >= min(16, r.top + rows.min()) and cols.min() >= min(16, r.left + cols.min())
        assert rows.max() + 16 < r.height and cols.max() + 16 < r.width
    assert owned.max() == 1 and owned[active].min() == 1  # each active pixel answered for exactly once
    # a compact piece stays one window
    square = np.zeros((300, 300), dtype=bool)
    square[50:200, 60:230] = True
    assert len(plan_regions(square, **kwargs)) == 1  # type: ignore[arg-type]


def test_split_takes_the_cheapest_cut() -> None:
    """The cut of :func:`split_piece` is the cheapest straight one, found by trying every cut (oracle)."""
    from scipy import ndimage


    def window_px(cells: np.ndarray, step: int) -> int:
        rr, cc = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
        return -(-(rr[-1] - rr[0] + 1) * 8 // step) * step * (-(-(cc[-1] - cc[0] + 1) * 8 // step) * step)

    rng = np.random.default_rng(5)
    splits = 0
    for _ in range(400):
        cells = ndimage.binary_dilation(rng.random(tuple(rng.integers(2, 30, 2))) < 0.1, iterations=1)
        if not cells.any():
            continue
        labels, _ = ndimage.label(cells, np.ones((3, 3)))
        piece = labels[ndimage.find_objects(labels)[0]] == 1
        grow, step = int(rng.integers(0, 4)), int(rng.choice([8, 32]))
        best = min(((window_px(c[:cut + grow], step) + window_px(c[max(cut - grow, 0):], step), axis, cut)
                    for axis, c in enumerate((piece, piece.T)) for cut in range(1, len(c))
                    if c[:cut].any() and c[cut:].any()), default=None)
        halves = split_piece(slice(0, piece.shape[0] * 8), slice(0, piece.shape[1] * 8), piece, grow, step)
        if best is None or best[0] > SPLIT_BELOW * window_px(piece, step):
            assert len(halves) == 1
            continue
        splits += 1
        _, axis, cut = best
        assert len(halves) == 2
        placed = []
        for rows, cols, own in halves:
            frame = np.zeros(piece.shape, dtype=bool)
            frame[rows.start // 8:rows.start // 8 + own.shape[0], cols.start // 8:cols.start // 8 + own.shape[1]] = own
            placed.append(frame)
        before = np.zeros_like(piece)  # the first half owns exactly the piece's cells before the oracle's cut
        if axis == 0:
            before[:cut] = piece[:cut]
        else:
            before[:, :cut] = piece[:, :cut]
        assert np.array_equal(placed[0], before) and np.array_equal(placed[1], piece & ~before)
    assert splits > 10


def test_fitted_boxes_grow_to_a_coarse_step_around_their_piece() -> None:
    """Fitted windows are rounded up to ``fit_step_px``: the box grows around its piece (centred, inside the
    mask) so the window sees real pixels, and the piece's own pixels stay where they are."""
    active = blobs()
    plain = plan_regions(active, tile_px=64, overlap_frac=0.25, context_px=8, max_fit_px=128, multiple=8)
    grown = plan_regions(active, tile_px=64, overlap_frac=0.25, context_px=8, max_fit_px=128, multiple=8,
                         fit_step_px=32)
    assert len(plain) == len(grown) == 3
    for a, b in zip(sorted(plain, key=lambda r: (r.top, r.left)), sorted(grown, key=lambda r: (r.top, r.left)),
                    strict=True):
        # each fitted side is a multiple of 32 and holds the old box; a grid side is unchanged
        for side_a, side_b, start_a, start_b, roi_a, roi_b in ((a.height, b.height, a.top, b.top, a.roi_px[0],
                                                                 b.roi_px[0]),
                                                                (a.width, b.width, a.left, b.left, a.roi_px[1],
                                                                 b.roi_px[1])):
            if roi_a == 64 and side_a > 128:
                assert (side_b, start_b, roi_b) == (side_a, start_a, 64)
            else:
                assert roi_b == side_b == -(-side_a // 32) * 32
                assert start_b <= start_a and start_b + side_b >= start_a + side_a
                assert abs((start_a - start_b) - (start_b + side_b - start_a - side_a)) <= 1  # centred
        own_a, own_b = np.zeros(active.shape, bool), np.zeros(active.shape, bool)
        own_a[a.top:a.top + a.height, a.left:a.left + a.width] = a.own
        own_b[b.top:b.top + b.height, b.left:b.left + b.width] = b.own
        assert np.array_equal(own_a, own_b)
    # the first piece: rows 8..72 (64 px) and cols 16..104 (88 px -> 96, one window of 64 x 96)
    first = min(grown, key=lambda r: (r.top, r.left))
    assert (first.top, first.left, first.height, first.width, first.roi_px) == (8, 12, 64, 96, (64, 96))
    # a piece at the mask's edge grows inwards
    edge = np.zeros((100, 100), bool)
    edge[90:100, 0:10] = True
    (region,) = plan_regions(edge, tile_px=64, overlap_frac=0.25, context_px=0, max_fit_px=128, multiple=8,
                             fit_step_px=32)
    assert (region.top, region.left, region.height, region.width) == (68, 0, 32, 32)
    expected = np.zeros((32, 32), bool)
    expected[20:, :16] = True  # the piece's 8 px cells: rows 88..100, cols 0..16
    assert region.own is not None and np.array_equal(region.own, expected)


@pytest.mark.parametrize(("extent", "tile", "overlap"), [(200, 64, 0.25), (1024, 256, 0.25), (300, 256, 0.5),
                                                         (100, 256, 0.25), (1000, 256, 0.0), (777, 64, 0.5)])
def test_window_starts_match_monai(extent: int, tile: int, overlap: float) -> None:
    """The ROI-saving accounting counts the same windows as MONAI's sliding window lays."""
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices


    size = (max(extent, tile), tile)
    monai_rows = sorted({rows.start for rows, _ in dense_patch_slices(
        size, (tile, tile), _get_scan_interval(size, (tile, tile), 2, (overlap, overlap)))})
    assert window_starts(extent, tile, overlap) == monai_rows


def test_sample_mask_between_grids() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 5:7] = True  # 8 level-0 px per mask px
    out = sample_mask(mask, Affine.scale(8), Affine.scale(2), (40, 40))  # 4 out px per mask px
    assert out.sum() == 8 * 8 and out[8:16, 20:28].all()


def test_nearest_index_and_block_mask_between_grids() -> None:
    # source pixels of 4 level-0 px, output of 2: each source pixel read by two outputs, none past the source
    out_rows, out_cols, rows, cols = nearest_index((2, 3), Affine.scale(4), Affine.scale(2), (5, 7))
    assert out_rows.tolist() == [0, 1, 2, 3] and rows.tolist() == [0, 0, 1, 1]
    assert out_cols.tolist() == [0, 1, 2, 3, 4, 5] and cols.tolist() == [0, 0, 1, 1, 2, 2]
    # a block (x 4..8, y 0..4 at 2 level-0 px per px) read with a halo (x 2..10, y 0..6): the tissue inside the
    # block only
    tissue = np.zeros((4, 4), dtype=bool)
    tissue[:, 3] = True  # level-0 x 12..16: padded columns 4 and 5 (centres at x 13 and 15)
    tissue[:, 1] = True  # level-0 x 4..8: padded columns 0 and 1, the halo left of the block: cleared
    got = block_mask(tissue, Affine.scale(4), Affine.scale(2), Window(4, 0, 4, 4), Window(2, 0, 8, 6))
    expected = np.zeros((6, 8), dtype=bool)
    expected[0:4, 4:6] = True
    assert np.array_equal(got, expected)
