"""The gated, fitted sliding window: which regions run, exactness through them, layouts, and the work counted."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qpbridge.errors import InputError
from qpbridge.inference import BlockSegmenter, autocast_dtype, plan_regions
from qpbridge.models import build_network, example_card


class _PlusOne(torch.nn.Module):
    """Pointwise oracle: class-1 logit = input channel 0 + 1, class 0 logit = 0 (any window size gives the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 2, x.shape[2], x.shape[3])
        out[:, 1] = x[:, 0] + 1
        return out


def _segmenter(**kwargs: object) -> BlockSegmenter:
    card = SimpleNamespace(
        role="cell", classes=[0, 1], tile_px=64, overlap_frac=0.25, blend="gaussian", color_space="RGB",
        norm_mean=(0.0, 0.0, 0.0), norm_std=(1.0, 1.0, 1.0),
    )
    return BlockSegmenter(SimpleNamespace(card=card, network=_PlusOne()), batch_size=4, **kwargs)  # type: ignore[arg-type]


def _blobs() -> np.ndarray:
    active = np.zeros((400, 500), dtype=bool)
    active[20:60, 30:90] = True  # small: one fitted window
    active[300:330, 400:480] = True  # small, far away
    active[120:260, 100:380] = True  # larger than max_fit in width: the fixed grid inside its box
    return active


def test_plan_fits_small_pieces_and_grids_large_ones() -> None:
    regions = plan_regions(_blobs(), tile_px=64, overlap_frac=0.25, context_px=8, max_fit_px=128, multiple=8)
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


def _l_shape() -> np.ndarray:
    active = np.zeros((300, 300), dtype=bool)
    active[20:220, 20:60] = True  # a long vertical arm
    active[180:220, 20:260] = True  # and a long horizontal one: one piece, its box mostly empty
    return active


def test_l_shaped_piece_runs_as_two_windows_with_their_context() -> None:
    active = _l_shape()
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
    """The cut of :func:`_split_piece` is the cheapest straight one, found by trying every cut (oracle)."""
    from scipy import ndimage

    from qpbridge.inference import SPLIT_BELOW, _split_piece

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
        halves = _split_piece(slice(0, piece.shape[0] * 8), slice(0, piece.shape[1] * 8), piece, grow, step)
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


def test_fitted_regions_are_exact() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(400, 500, 3), dtype=np.uint8)
    active = _blobs()
    expected = torch.softmax(torch.stack([torch.zeros(400, 500), torch.from_numpy(rgb[..., 0] / 255.0 + 1)]), 0)
    segmenter = _segmenter(context_px=8, max_fit_px=128, layout="nchw")
    result = segmenter.predict(rgb, active)
    assert np.allclose(result.probabilities[:, active], expected.numpy()[:, active], atol=1e-5)
    assert np.allclose(result.probabilities[0, 380:, :20], 1.0)  # far from every piece: background
    regions = segmenter.plan(active)
    assert result.windows_run == sum(r.windows for r in regions) == segmenter.windows_run
    assert result.pixels_run == sum(r.pixels for r in regions) == segmenter.pixels_run
    split = _l_shape()  # a piece that runs as two windows answers as exactly
    halves = _segmenter(context_px=16, max_fit_px=512, layout="nchw")
    assert len(halves.plan(split)) == 2
    got = halves.predict(rgb[:300, :300], split).probabilities
    assert np.allclose(got[:, split], expected.numpy()[:, :300, :300][:, split], atol=1e-5)
    full = _segmenter(context_px=8, max_fit_px=128, layout="nchw").predict(rgb)
    assert full.pixels_run == full.windows_run * 64 * 64 == 8 * 11 * 64 * 64  # stride 48 over 400 x 500
    assert result.pixels_run < 0.5 * full.pixels_run


def test_fixed_grid_only_when_fitting_is_off() -> None:
    active = np.zeros((200, 300), dtype=bool)
    active[10:20, 10:20] = True
    result = _segmenter(max_fit_px=0).predict(np.zeros((200, 300, 3), np.uint8), active)
    assert result.windows_run == 1 and result.pixels_run == 64 * 64 and result.windows_skipped == 23


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "auto"])
def test_layouts_give_the_same_probabilities(layout: str) -> None:
    torch.manual_seed(0)
    card = example_card("cell", channels=(4, 8))
    model = SimpleNamespace(card=card, network=build_network(card.architecture).eval())
    rgb = np.random.default_rng(2).integers(0, 256, size=(96, 160, 3), dtype=np.uint8)
    reference = BlockSegmenter(model, layout="nchw").predict(rgb).probabilities
    segmenter = BlockSegmenter(model, layout=layout)
    got = segmenter.predict(rgb).probabilities
    assert np.allclose(got, reference, atol=1e-5)
    if layout == "auto":
        assert set(segmenter.layout_trial_s) == {"nchw", "channels_last"}
        assert segmenter.layout == min(segmenter.layout_trial_s, key=segmenter.layout_trial_s.__getitem__)
    else:
        assert segmenter.layout == layout and not segmenter.layout_trial_s


def test_bf16_runs_in_bfloat16_and_agrees_with_fp32() -> None:
    """--precision bf16 really runs the network in bfloat16 (probabilities differ from float32's) and labels
    agree with float32's almost everywhere."""
    torch.manual_seed(0)
    card = example_card("cell", channels=(8, 16))
    model = SimpleNamespace(card=card, network=build_network(card.architecture).eval())
    rgb = np.random.default_rng(3).integers(0, 256, size=(128, 192, 3), dtype=np.uint8)
    fp32 = BlockSegmenter(model, layout="nchw", precision="fp32").predict(rgb).probabilities
    bf16 = BlockSegmenter(model, layout="nchw", precision="bf16").predict(rgb).probabilities
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    diff = np.abs(bf16 - fp32)
    assert 1e-4 < diff.max() < 0.1  # rounded to bfloat16's 8 bits of mantissa, not float32's 24
    assert (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.97
    assert BlockSegmenter(model, precision="auto").autocast_dtype is None  # a CPU runs float32 by default


def test_precision_names() -> None:
    assert autocast_dtype(torch.device("cpu"), "fp32") is None
    assert autocast_dtype(torch.device("cuda"), "fp32") is None
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16
    assert autocast_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    with pytest.raises(InputError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        _segmenter(precision="fp16")


def test_bad_options_name_the_value() -> None:
    with pytest.raises(InputError, match="layout must be auto, nchw or channels_last, got 'nhwc'"):
        _segmenter(layout="nhwc")
    with pytest.raises(InputError, match="context_px and max_fit_px must be >= 0, got -1, 128"):
        _segmenter(context_px=-1, max_fit_px=128)


def test_argmax_labels_is_numpy_argmax_with_first_class_winning_ties() -> None:
    from qpbridge.inference import argmax_labels

    rng = np.random.default_rng(1)
    probs = rng.integers(0, 4, size=(4, 64, 80)).astype(np.float32)  # many ties
    labels = argmax_labels(probs)
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, probs.argmax(axis=0))


def test_network_input_is_the_training_normalisation() -> None:
    """Inference's fused uint8 -> float path gives what training's normalize_rgb01 gives (same model input)."""
    from qpbridge.preprocess import normalize_rgb01, to_network_input

    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    for space in ("RGB", "LAB"):
        card = SimpleNamespace(color_space=space, norm_mean=(0.7, 0.5, 0.6), norm_std=(0.2, 0.25, 0.3))
        x = to_network_input(rgb, card)
        expected = normalize_rgb01(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0, space,
                                   card.norm_mean, card.norm_std)
        assert x.shape == (1, 3, 37, 53) and x.is_contiguous()
        assert torch.allclose(x, expected, atol=1e-5)
        assert float((x - expected).abs().max()) < 1e-5


def test_regions_planned_once_run_as_planned_in_a_crop() -> None:
    """Regions planned on a whole block and shifted into a crop of it (what the pipeline reads) give the
    block's probabilities there."""
    active = _blobs()
    rgb = np.random.default_rng(4).integers(0, 256, size=(*active.shape, 3), dtype=np.uint8)
    segmenter = _segmenter(context_px=8, max_fit_px=128)
    regions = segmenter.plan(active)
    top, left = min(r.top for r in regions), min(r.left for r in regions)
    crop = (slice(top, None), slice(left, None))
    shifted = [r.shifted(top, left) for r in regions]
    assert [(r.top + top, r.left + left) for r in shifted] == [(r.top, r.left) for r in regions]
    planned = segmenter.predict(rgb[crop], active[crop], shifted)
    whole = _segmenter(context_px=8, max_fit_px=128).predict(rgb, active)
    assert planned.windows_run == whole.windows_run == sum(r.windows for r in regions)
    assert np.array_equal(planned.probabilities, whole.probabilities[(slice(None), *crop)])


def test_fitted_boxes_grow_to_a_coarse_step_around_their_piece() -> None:
    """Fitted windows are rounded up to ``fit_step_px``: the box grows around its piece (centred, inside the
    mask) so the window sees real pixels, and the piece's own pixels stay where they are."""
    active = _blobs()
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


def test_halo_covers_the_grown_context_and_the_fit_step() -> None:
    segmenter = _segmenter(context_px=12, max_fit_px=128, fit_step_px=16)
    assert segmenter.context_grown_px == 16  # pieces grow on the 8 px grid
    assert segmenter.halo_px == 16 + 16
    assert _segmenter(context_px=12, max_fit_px=0).halo_px == 16  # the fixed grid only: no fitted growth
    # a piece at the edge of a block grows into the halo by its context, no further than the halo
    active = np.zeros((32 + 100 + 32, 32 + 100 + 32), dtype=bool)
    active[32:132, 32:132] = True  # the block, inside a 32 px halo
    (region,) = segmenter.plan(active)
    assert region.top >= 0 and region.top + region.height <= active.shape[0]
    assert region.top <= 32 - 16 and region.left <= 32 - 16
