"""The gated, fitted sliding window: exactness through the planned regions, layouts, precision, work counted."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qpbridge.errors import InputError
from qpbridge.models import build_network, example_card
from qpbridge.predict.segmenter import BlockSegmenter, argmax_labels, autocast_dtype
from tests.test_regions import blobs, l_shape


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


def test_sliding_window_is_exact_and_gated() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    segmenter = _segmenter()
    result = segmenter.predict(rgb)
    expected = torch.softmax(torch.stack([torch.zeros(200, 300), torch.from_numpy(rgb[..., 0] / 255.0 + 1)]), 0)
    assert np.allclose(result.probabilities, expected.numpy(), atol=1e-5)
    assert result.windows_run == 4 * 6 and result.windows_skipped == 0  # stride 48 over 200 x 300

    active = np.zeros((200, 300), dtype=bool)
    active[10:20, 10:20] = True  # touches only the first window
    gated = _segmenter().predict(rgb, active)
    assert gated.windows_run == 1 and gated.windows_skipped == 23
    assert np.allclose(gated.probabilities[:, 10:20, 10:20], expected.numpy()[:, 10:20, 10:20], atol=1e-5)
    far = gated.probabilities[:, 150:, 250:]
    assert np.allclose(far[0], 1.0) and np.allclose(far[1], 0.0)  # skipped windows say "background"

    nothing = _segmenter().predict(rgb, np.zeros((200, 300), dtype=bool))
    assert nothing.windows_run == 0 and nothing.windows_skipped == 24


def test_fitted_regions_are_exact() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(400, 500, 3), dtype=np.uint8)
    active = blobs()
    expected = torch.softmax(torch.stack([torch.zeros(400, 500), torch.from_numpy(rgb[..., 0] / 255.0 + 1)]), 0)
    segmenter = _segmenter(context_px=8, max_fit_px=128, layout="nchw")
    result = segmenter.predict(rgb, active)
    assert np.allclose(result.probabilities[:, active], expected.numpy()[:, active], atol=1e-5)
    assert np.allclose(result.probabilities[0, 380:, :20], 1.0)  # far from every piece: background
    regions = segmenter.plan(active)
    assert result.windows_run == sum(r.windows for r in regions) == segmenter.windows_run
    assert result.pixels_run == sum(r.pixels for r in regions) == segmenter.pixels_run
    split = l_shape()  # a piece that runs as two windows answers as exactly
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
    active = blobs()
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
