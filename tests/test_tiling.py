"""Tests of qpbridge.tiling: windows, grids and window affines."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from qpbridge.errors import InputError
from qpbridge.tiling import BlockGrid, Window, grid_windows, window_affine

sides = st.integers(min_value=1, max_value=40)


def _coverage(windows: list[Window], width_px: int, height_px: int) -> np.ndarray:
    count = np.zeros((height_px, width_px), dtype=np.int64)
    for w in windows:
        count[w.slices] += 1
    return count


def _inside(w: Window, width_px: int, height_px: int) -> bool:
    return w.x_px >= 0 and w.y_px >= 0 and w.x_end_px <= width_px and w.y_end_px <= height_px


def test_grid_windows_exact_layouts() -> None:
    assert [(w.x_px, w.width_px) for w in grid_windows(10, 1, 4)] == [(0, 4), (4, 4), (8, 2)]
    assert [(w.x_px, w.width_px) for w in grid_windows(10, 1, 4, clip=False)] == [(0, 4), (4, 4), (6, 4)]
    assert [(w.x_px, w.width_px) for w in grid_windows(10, 1, 4, 3)] == [(0, 4), (3, 4), (6, 4)]
    assert [(w.x_px, w.width_px) for w in grid_windows(9, 1, 4, 2)] == [(0, 4), (2, 4), (4, 4), (6, 3)]
    assert [(w.x_px, w.width_px) for w in grid_windows(9, 1, 4, 2, clip=False)] == [(0, 4), (2, 4), (4, 4), (5, 4)]
    # an image smaller than a window: one window, the whole image, in both modes
    assert grid_windows(3, 2, 8) == [Window(0, 0, 3, 2)]
    assert grid_windows(3, 2, 8, clip=False) == [Window(0, 0, 3, 2)]
    # row-major
    assert [(w.x_px, w.y_px) for w in grid_windows(8, 8, 4)] == [(0, 0), (4, 0), (0, 4), (4, 4)]


@settings(max_examples=150, deadline=None)
@given(width=sides, height=sides, size=st.integers(1, 16))
def test_grid_windows_partition_when_stride_is_size(width: int, height: int, size: int) -> None:
    windows = grid_windows(width, height, size)
    assert all(_inside(w, width, height) for w in windows)
    assert (_coverage(windows, width, height) == 1).all()  # every pixel in exactly one block
    assert windows == BlockGrid(width, height, size).windows()
    keys = [(w.y_px, w.x_px) for w in windows]
    assert keys == sorted(keys)


@settings(max_examples=150, deadline=None)
@given(width=sides, height=sides, size=st.integers(1, 16), data=st.data())
def test_grid_windows_cover_and_stay_inside(width: int, height: int, size: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, size))
    clip = data.draw(st.booleans())
    windows = grid_windows(width, height, size, stride, clip=clip)
    assert all(_inside(w, width, height) for w in windows)
    assert (_coverage(windows, width, height) >= 1).all()
    assert len(set(windows)) == len(windows)
    if not clip:  # full-size windows wherever the image allows it
        assert {w.shape for w in windows} == {(min(size, height), min(size, width))}
    xs = sorted({w.x_px for w in windows})
    assert all(b - a <= stride for a, b in zip(xs, xs[1:], strict=False))


def test_grid_windows_rejects_bad_arguments() -> None:
    with pytest.raises(InputError, match=r"stride_px \(5\) must not exceed size_px \(4\)"):
        grid_windows(10, 10, 4, 5)
    with pytest.raises(InputError, match="size_px must be >= 1, got 0"):
        grid_windows(10, 10, 0)
    with pytest.raises(InputError, match="width_px must be a whole number of pixels, got 2.5"):
        grid_windows(2.5, 10, 4)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="height_px must be >= 1, got 0"):
        Window(0, 0, 1, 0)


def test_window_accepts_numpy_ints() -> None:
    w = Window(np.int64(2), np.int32(3), np.uint16(4), 5)
    assert w == Window(2, 3, 4, 5)
    assert type(w.x_px) is int


rects = st.builds(Window, st.integers(-10, 30), st.integers(-10, 30), st.integers(1, 20), st.integers(1, 20))


def _pixels(w: Window) -> np.ndarray:
    grid = np.zeros((80, 80), dtype=bool)
    grid[w.y_px + 20 : w.y_end_px + 20, w.x_px + 20 : w.x_end_px + 20] = True
    return grid


@settings(max_examples=200, deadline=None)
@given(a=rects, b=rects)
def test_intersection_matches_pixel_sets(a: Window, b: Window) -> None:
    both = _pixels(a) & _pixels(b)
    inter = a.intersection(b)
    if inter is None:
        assert not both.any()
    else:
        assert (_pixels(inter) == both).all()
        assert inter == b.intersection(a)


@settings(max_examples=200, deadline=None)
@given(w=rects, margin=st.integers(0, 12), width=st.integers(1, 40), height=st.integers(1, 40))
def test_expand_is_the_margin_clipped_to_the_image(w: Window, margin: int, width: int, height: int) -> None:
    image = Window(0, 0, width, height)
    if (
        w.intersection(image) is None
        and Window(w.x_px - margin, w.y_px - margin, w.width_px + 2 * margin, w.height_px + 2 * margin).intersection(
            image
        )
        is None
    ):
        with pytest.raises(InputError, match="lies outside the image"):
            w.expand(margin, width, height)
        return
    grown = w.expand(margin, width, height)
    assert _inside(grown, width, height)
    expected = Window(w.x_px - margin, w.y_px - margin, w.width_px + 2 * margin, w.height_px + 2 * margin)
    assert grown == expected.intersection(image)
    assert w.expand(margin) == expected


def test_expand_and_relative_to_crop_back() -> None:
    block = Window(100, 50, 20, 20)
    outer = block.expand(8, width_px=110, height_px=1000)
    assert outer == Window(92, 42, 18, 36)
    with pytest.raises(InputError, match="is not inside"):
        block.relative_to(outer)
    outer = block.expand(8, width_px=1000, height_px=1000)
    inner = block.relative_to(outer)
    assert inner == Window(8, 8, 20, 20)
    image = np.arange(200 * 200).reshape(200, 200)
    assert (image[outer.slices][inner.slices] == image[block.slices]).all()
    with pytest.raises(InputError, match="margin_px must be >= 0, got -1"):
        block.expand(-1)


def test_block_grid_windows_and_locate() -> None:
    grid = BlockGrid(10, 7, 4)
    assert (grid.n_cols, grid.n_rows, len(grid)) == (3, 2, 6)
    assert grid.window(1, 2) == Window(8, 4, 2, 3)
    for i, w in enumerate(grid.windows()):
        assert grid.locate(w) == divmod(i, 3)
    with pytest.raises(InputError, match=r"is not a block of the grid of 4 px blocks over 10 x 7 px"):
        grid.locate(Window(4, 0, 4, 3))
    with pytest.raises(InputError, match=r"block \(2, 0\) is outside the 2 x 3 grid"):
        grid.window(2, 0)


def _apply(a: Affine, x: float, y: float) -> tuple[float, float]:
    return (a.a * x + a.b * y + a.c, a.d * x + a.e * y + a.f)


@settings(max_examples=150, deadline=None)
@given(
    a=st.integers(1, 8),
    e=st.integers(1, 8),
    c=st.integers(-1000, 1000),
    f=st.integers(-1000, 1000),
    w=rects,
    col=st.integers(0, 20),
    row=st.integers(0, 20),
)
def test_window_affine_maps_window_pixels_to_grid_pixels(
    a: int, e: int, c: int, f: int, w: Window, col: int, row: int
) -> None:
    affine = Affine(a, 0, c, 0, e, f)
    assert _apply(window_affine(affine, w), col, row) == _apply(affine, w.x_px + col, w.y_px + row)
    assert window_affine(affine, Window(0, 0, 1, 1)) == affine


def test_window_affine_exact_coordinate() -> None:
    # mask at 1 um/px over a 0.25 um/px slide: 4 level-0 px per mask px, mask origin at level-0 (100, 200)
    a = Affine(4, 0, 100, 0, 4, 200)
    assert _apply(window_affine(a, Window(10, 5, 8, 8)), 1, 1) == (144.0, 224.0)
    assert window_affine(a, Window(10, 5, 8, 8)) == Affine(4, 0, 140, 0, 4, 220)


def test_window_affine_with_rotation_matches_composition() -> None:
    a = Affine(0.5, -0.25, 10, 0.25, 0.5, -3)
    w = Window(7, 11, 2, 2)
    got = window_affine(a, w)
    assert _apply(got, 3, 4) == pytest.approx(_apply(a, 10, 15), abs=1e-12)
