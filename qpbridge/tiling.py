"""Grid and window arithmetic in one pixel grid (pure integer arithmetic; no torch, no openslide).

A :class:`Window` is a rectangle of whole pixels ``[x_px, x_px + width_px) x [y_px, y_px + height_px)`` in some
pixel grid (level 0, a pyramid level, or a mask at a target um/px). :func:`grid_windows` lays windows over an
image, :class:`BlockGrid` is the regular non-overlapping grid the predict pipeline works block by block in,
and :func:`window_affine` gives the ``Affine`` of a window's pixels from the ``Affine`` of the whole grid.
This module is the one home of the affine helpers: :func:`apply_affine` (points, scalars or arrays),
:func:`apply_affine_xy` (an ``(n, 2)`` array, for ``shapely.transform``), :func:`compose_affine`.

Example
-------
>>> from affine import Affine
>>> [w.x_px for w in grid_windows(10, 4, 4)]
[0, 4, 8]
>>> a = window_affine(Affine.scale(4), Window(2, 3, 4, 4))
>>> a.c, a.f  # level-0 position of the window's first pixel corner
(8.0, 12.0)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine

from qpbridge.errors import InputError

__all__ = [
    "BlockGrid",
    "Window",
    "apply_affine",
    "apply_affine_xy",
    "compose_affine",
    "grid_windows",
    "window_affine",
]



def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an int (numpy integers accepted), at least ``minimum``; :class:`InputError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be a whole number of pixels, got {value!r}")
    checked = int(value)
    if minimum is not None and checked < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {checked}")
    return checked


@dataclass(frozen=True)
class Window:
    """A rectangle of whole pixels: columns ``[x_px, x_end_px)``, rows ``[y_px, y_end_px)``.

    ``x_px``/``y_px`` may be negative (a window expanded past the border before clipping);
    ``width_px``/``height_px`` are at least 1.

    Example
    -------
    >>> w = Window(10, 20, 30, 40)
    >>> w.x_end_px, w.y_end_px, w.shape
    (40, 60, (40, 30))
    """

    x_px: int
    y_px: int
    width_px: int
    height_px: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_px", _check_int("x_px", self.x_px))
        object.__setattr__(self, "y_px", _check_int("y_px", self.y_px))
        object.__setattr__(self, "width_px", _check_int("width_px", self.width_px, 1))
        object.__setattr__(self, "height_px", _check_int("height_px", self.height_px, 1))

    @property
    def x_end_px(self) -> int:
        """First column after the window."""
        return self.x_px + self.width_px

    @property
    def y_end_px(self) -> int:
        """First row after the window."""
        return self.y_px + self.height_px

    @property
    def shape(self) -> tuple[int, int]:
        """``(height_px, width_px)``, the numpy shape of the window's pixels."""
        return (self.height_px, self.width_px)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices that cut this window out of an array of the whole grid.

        Example
        -------
        >>> import numpy as np
        >>> np.arange(20).reshape(4, 5)[Window(1, 2, 3, 2).slices].tolist()
        [[11, 12, 13], [16, 17, 18]]
        """
        return (slice(self.y_px, self.y_end_px), slice(self.x_px, self.x_end_px))

    def intersection(self, other: Window) -> Window | None:
        """The pixels in both windows, or ``None`` when they share none.

        Example
        -------
        >>> Window(0, 0, 10, 10).intersection(Window(8, -2, 5, 5))
        Window(x_px=8, y_px=0, width_px=2, height_px=3)
        >>> Window(0, 0, 2, 2).intersection(Window(2, 0, 2, 2)) is None
        True
        """
        x0 = max(self.x_px, other.x_px)
        y0 = max(self.y_px, other.y_px)
        x1 = min(self.x_end_px, other.x_end_px)
        y1 = min(self.y_end_px, other.y_end_px)
        if x1 <= x0 or y1 <= y0:
            return None
        return Window(x0, y0, x1 - x0, y1 - y0)

    def relative_to(self, outer: Window) -> Window:
        """This window in the pixel grid of ``outer`` (which must contain it), e.g. to crop a block back out
        of the result computed on the block expanded by a margin.

        Example
        -------
        >>> block = Window(100, 50, 20, 20)
        >>> block.relative_to(block.expand(8, width_px=1000, height_px=1000))
        Window(x_px=8, y_px=8, width_px=20, height_px=20)
        """
        if self.intersection(outer) != self:
            raise InputError(f"{self} is not inside {outer}")
        return Window(self.x_px - outer.x_px, self.y_px - outer.y_px, self.width_px, self.height_px)

    def expand(self, margin_px: int, width_px: int | None = None, height_px: int | None = None) -> Window:
        """Grow the window by ``margin_px`` on every side, then clip it to ``[0, width_px) x [0, height_px)``.

        Without ``width_px``/``height_px`` the result is not clipped (it may start at a negative pixel).
        The margin is >= 0.

        Example
        -------
        >>> Window(0, 10, 4, 4).expand(2, width_px=100, height_px=15)
        Window(x_px=0, y_px=8, width_px=6, height_px=7)
        """
        margin_px = _check_int("margin_px", margin_px, 0)
        x0, y0 = self.x_px - margin_px, self.y_px - margin_px
        x1, y1 = self.x_end_px + margin_px, self.y_end_px + margin_px
        grown = Window(x0, y0, x1 - x0, y1 - y0)
        if width_px is None and height_px is None:
            return grown
        bounds = Window(
            0 if width_px is not None else x0,
            0 if height_px is not None else y0,
            _check_int("width_px", width_px, 1) if width_px is not None else x1 - x0,
            _check_int("height_px", height_px, 1) if height_px is not None else y1 - y0,
        )
        clipped = grown.intersection(bounds)
        if clipped is None:
            raise InputError(
                f"window {self} expanded by {margin_px} px lies outside the image "
                f"({width_px} x {height_px} px): give a window inside the image"
            )
        return clipped


def _axis_starts(extent_px: int, size_px: int, stride_px: int, clip: bool) -> list[int]:
    """Window starts along one axis (see :func:`grid_windows`)."""
    if extent_px <= size_px:
        return [0]
    starts = list(range(0, extent_px - size_px, stride_px))
    last = starts[-1] + stride_px  # first start whose window reaches the end
    if clip:
        starts.append(last)
    elif starts[-1] + size_px < extent_px:
        starts.append(extent_px - size_px)
    return starts


def grid_windows(
    width_px: int, height_px: int, size_px: int, stride_px: int | None = None, *, clip: bool = True
) -> list[Window]:
    """Windows of ``size_px`` every ``stride_px`` pixels covering a ``width_px x height_px`` image, row-major.

    Windows start at 0, ``stride_px``, ``2 * stride_px``... and stop at the first window that reaches
    the right (bottom) border. How the last window meets the border depends on ``clip``:

    - ``clip=True``: it starts on the stride and is clipped to the border (it may be smaller than
      ``size_px``). With ``stride_px == size_px`` (the default) every pixel is in exactly one window.
    - ``clip=False``: it is shifted back to end exactly on the border, so every window has the full
      ``size_px`` (as a sliding-window model wants); it then overlaps its neighbour more than the stride says.

    Along an axis shorter than ``size_px`` there is one window covering the whole axis, in both modes.

    Parameters
    ----------
    width_px, height_px : int
        Image size in pixels (>= 1).
    size_px : int
        Window side (>= 1).
    stride_px : int, optional
        Step between window starts, 1 <= stride_px <= size_px (larger would leave gaps). Default ``size_px``.
    clip : bool
        See above.

    Returns
    -------
    list[Window]
        Row-major: all windows of the first row of windows, then the second...

    Example
    -------
    >>> [(w.x_px, w.width_px) for w in grid_windows(10, 1, 4)]
    [(0, 4), (4, 4), (8, 2)]
    >>> [(w.x_px, w.width_px) for w in grid_windows(10, 1, 4, clip=False)]
    [(0, 4), (4, 4), (6, 4)]
    >>> [(w.x_px, w.width_px) for w in grid_windows(10, 1, 4, 3)]
    [(0, 4), (3, 4), (6, 4)]
    """
    width_px = _check_int("width_px", width_px, 1)
    height_px = _check_int("height_px", height_px, 1)
    size_px = _check_int("size_px", size_px, 1)
    stride_px = size_px if stride_px is None else _check_int("stride_px", stride_px, 1)
    if stride_px > size_px:
        raise InputError(f"stride_px ({stride_px}) must not exceed size_px ({size_px}): windows would leave gaps")
    xs = _axis_starts(width_px, size_px, stride_px, clip)
    ys = _axis_starts(height_px, size_px, stride_px, clip)
    return [Window(x, y, min(size_px, width_px - x), min(size_px, height_px - y)) for y in ys for x in xs]


@dataclass(frozen=True)
class BlockGrid:
    """The regular grid of non-overlapping ``block_px`` blocks over a ``width_px x height_px`` image.

    Blocks are numbered row-major; the last column and row are clipped to the border
    (the windows of ``grid_windows(width_px, height_px, block_px)``).

    Example
    -------
    >>> g = BlockGrid(10, 7, 4)
    >>> g.n_cols, g.n_rows, len(g)
    (3, 2, 6)
    >>> g.window(1, 2)
    Window(x_px=8, y_px=4, width_px=2, height_px=3)
    >>> g.locate(Window(8, 4, 2, 3))
    (1, 2)
    """

    width_px: int
    height_px: int
    block_px: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "width_px", _check_int("width_px", self.width_px, 1))
        object.__setattr__(self, "height_px", _check_int("height_px", self.height_px, 1))
        object.__setattr__(self, "block_px", _check_int("block_px", self.block_px, 1))

    @property
    def n_cols(self) -> int:
        """Number of block columns."""
        return -(-self.width_px // self.block_px)

    @property
    def n_rows(self) -> int:
        """Number of block rows."""
        return -(-self.height_px // self.block_px)

    def __len__(self) -> int:
        return self.n_cols * self.n_rows

    def window(self, row: int, col: int) -> Window:
        """The block at ``(row, col)``."""
        if not (0 <= row < self.n_rows and 0 <= col < self.n_cols):
            raise InputError(
                f"block ({row}, {col}) is outside the {self.n_rows} x {self.n_cols} grid of {self.block_px} px "
                f"blocks over {self.width_px} x {self.height_px} px"
            )
        x, y = col * self.block_px, row * self.block_px
        return Window(x, y, min(self.block_px, self.width_px - x), min(self.block_px, self.height_px - y))

    def windows(self) -> list[Window]:
        """All blocks, row-major."""
        return [self.window(r, c) for r in range(self.n_rows) for c in range(self.n_cols)]

    def locate(self, window: Window) -> tuple[int, int]:
        """``(row, col)`` of a window that is exactly one of the grid's blocks; :class:`InputError` otherwise."""
        row, col = window.y_px // self.block_px, window.x_px // self.block_px
        if (
            window.x_px >= 0
            and window.y_px >= 0
            and row < self.n_rows
            and col < self.n_cols
            and self.window(row, col) == window
        ):
            return row, col
        raise InputError(
            f"{window} is not a block of the grid of {self.block_px} px blocks over "
            f"{self.width_px} x {self.height_px} px: use BlockGrid.window(row, col)"
        )


def window_affine(affine: Affine, window: Window) -> Affine:
    """The ``Affine`` of a window's pixels, given the ``Affine`` of the grid the window lies in.

    Pixel ``(c, r)`` of the window is pixel ``(window.x_px + c, window.y_px + r)`` of the grid, so the result
    is ``affine`` composed with ``Affine.translation(window.x_px, window.y_px)`` (written out here, as
    affine 3 deprecates ``*`` for composition and affine 2.4 has no ``@``).

    Example
    -------
    >>> a = Affine(4, 0, 100, 0, 4, 200)  # mask at 4x the level-0 pixel size, offset (100, 200)
    >>> window_affine(a, Window(10, 5, 8, 8))
    Affine(4.0, 0.0, 140.0,
           0.0, 4.0, 220.0)
    """
    x, y = window.x_px, window.y_px
    return Affine(
        affine.a,
        affine.b,
        affine.c + affine.a * x + affine.b * y,
        affine.d,
        affine.e,
        affine.f + affine.d * x + affine.e * y,
    )


def apply_affine(affine: Affine, x: Any, y: Any) -> tuple[Any, Any]:
    """``affine`` applied to ``(x, y)``: scalars, or numpy arrays of x and y (element by element).

    >>> apply_affine(Affine(4, 0, 100, 0, 4, 40), 1, 2)
    (104.0, 48.0)
    >>> [v.tolist() for v in apply_affine(Affine.scale(2), np.array([0.5, 1.0]), np.array([3.0, 4.0]))]
    [[1.0, 2.0], [6.0, 8.0]]
    """
    return (affine.a * x + affine.b * y + affine.c, affine.d * x + affine.e * y + affine.f)


def apply_affine_xy(affine: Affine, xy: np.ndarray) -> np.ndarray:
    """``(n, 2)`` points through ``affine``, as ``shapely.transform`` hands them (~10x faster than
    ``xy @ m + t``).

    >>> apply_affine_xy(Affine(2, 0, 10, 0, 3, 0), np.array([[1.0, 1.0]])).tolist()
    [[12.0, 3.0]]
    """
    out = np.empty_like(xy)
    x, y = xy[:, 0], xy[:, 1]
    if affine.b == 0 and affine.d == 0:
        np.multiply(x, affine.a, out=out[:, 0])
        np.multiply(y, affine.e, out=out[:, 1])
    else:
        out[:, 0] = x * affine.a + y * affine.b
        out[:, 1] = x * affine.d + y * affine.e
    out[:, 0] += affine.c
    out[:, 1] += affine.f
    return out


def compose_affine(outer: Affine, inner: Affine) -> Affine:
    """The Affine applying ``inner`` then ``outer`` (``outer @ inner``).

    >>> compose_affine(Affine.translation(10, 0), Affine.scale(2)) == Affine(2, 0, 10, 0, 2, 0)
    True
    """
    return outer @ inner
