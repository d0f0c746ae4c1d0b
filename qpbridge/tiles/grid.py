"""The tiles of a slide at the target um/px: their starts, the blocks worked on at once, and the label mask
and tissue fraction of any window of that grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from affine import Affine

from qpbridge.classes import IGNORE_LABEL
from qpbridge.rasterize import LabelRasterizer
from qpbridge.slide import Slide
from qpbridge.tiles.config import MaskConfig
from qpbridge.tiles.instances import InstanceRasterizer
from qpbridge.tiling import apply_affine, compose_affine

__all__ = ["Block", "TileGrid", "TissueFractions", "label_mask_for_window", "tile_blocks", "tile_starts"]


def tile_starts(extent_px: int, tile_px: int, stride_px: int) -> list[int]:
    """Tile starts along one axis: 0, stride, 2*stride... until the tiles cover ``extent_px``.

    The last tile may reach past the end (that part is padding: white image, 255 mask).

    >>> tile_starts(1000, 256, 256), tile_starts(100, 256, 256), tile_starts(600, 256, 128)
    ([0, 256, 512, 768], [0], [0, 128, 256, 384])
    """
    starts = list(range(0, max(extent_px - tile_px, 0) + 1, stride_px))
    if starts[-1] + tile_px < extent_px:
        starts.append(starts[-1] + stride_px)
    return starts


def _qupath_affine(slide: Slide, mpp: float, x_px: int, y_px: int) -> Affine:
    """Target-grid window pixels -> QuPath's coordinates (level 0 minus the bounds offset QuPath applies)."""
    ox, oy = slide.qupath_offset_xy_px
    return compose_affine(Affine.translation(-ox, -oy), slide.affine_at(mpp, x_px, y_px))


def label_mask_for_window(
    rasterizer: LabelRasterizer | InstanceRasterizer,
    slide: Slide,
    x_px: int,
    y_px: int,
    width_px: int,
    height_px: int,
    mpp: float,
) -> np.ndarray:
    """The label mask of a window of the slide's grid at ``mpp`` (what :meth:`Slide.read_region_at` reads).

    Pixels past the slide's edge are 255. GeoJSON coordinates are taken as QuPath's (shifted by
    :attr:`Slide.qupath_offset_xy_px` where QuPath crops to the slide's bounds).

    Example
    -------
    >>> mask = label_mask_for_window(rasterizer, slide, 0, 0, 256, 256, mpp=1.0)     # doctest: +SKIP
    """
    mask = rasterizer.window((height_px, width_px), _qupath_affine(slide, mpp, x_px, y_px))
    ignore = getattr(rasterizer, "ignore_value", IGNORE_LABEL)  # 65535 in instance masks
    grid_w, grid_h = slide.size_at_mpp(mpp)
    if x_px + width_px > grid_w:
        mask[:, max(0, grid_w - x_px) :] = ignore
    if y_px + height_px > grid_h:
        mask[max(0, grid_h - y_px) :, :] = ignore
    if x_px < 0:
        mask[:, : min(width_px, -x_px)] = ignore
    if y_px < 0:
        mask[: min(height_px, -y_px), :] = ignore
    return mask


@dataclass(frozen=True)
class Block:
    """A group of tiles: their start indices along x and y, and the window that covers them."""

    ix: tuple[int, ...]
    iy: tuple[int, ...]
    x_px: int
    y_px: int
    width_px: int
    height_px: int


def tile_blocks(xs: Sequence[int], ys: Sequence[int], tile_px: int, stride_px: int, block_px: int) -> list[Block]:
    """Group the tiles starting at ``xs`` x ``ys`` into row-major blocks at most ``block_px`` wide and high.

    Examples
    --------
    >>> [(b.ix, b.width_px) for b in tile_blocks([0, 256, 512], [0], 256, 256, 512)]
    [((0, 1), 512), ((2,), 256)]
    """
    per = max(1, (block_px - tile_px) // stride_px + 1)
    blocks = []
    for r0 in range(0, len(ys), per):
        iy = tuple(range(r0, min(r0 + per, len(ys))))
        for c0 in range(0, len(xs), per):
            ix = tuple(range(c0, min(c0 + per, len(xs))))
            x0, y0 = xs[ix[0]], ys[iy[0]]
            blocks.append(Block(ix, iy, x0, y0, xs[ix[-1]] + tile_px - x0, ys[iy[-1]] + tile_px - y0))
    return blocks


class TissueFractions:
    """Tissue fraction of any target-grid rectangle from a coarse tissue mask (summed-area table)."""

    def __init__(self, tissue: np.ndarray, tissue_affine: Affine, grid_affine: Affine) -> None:
        self.height, self.width = tissue.shape
        sat = np.zeros((self.height + 1, self.width + 1), dtype=np.int64)
        sat[1:, 1:] = np.cumsum(np.cumsum(tissue, axis=0, dtype=np.int64), axis=1)
        self.sat = sat
        # grid pixels -> tissue-mask pixels
        self.to_mask = compose_affine(~tissue_affine, grid_affine)

    def fraction(self, x_px: int, y_px: int, width_px: int, height_px: int) -> float:
        """The share of tissue pixels of the mask's pixels that the rectangle touches."""
        ax, ay = apply_affine(self.to_mask, x_px, y_px)
        bx, by = apply_affine(self.to_mask, x_px + width_px, y_px + height_px)
        c0, r0 = math.floor(ax + 1e-9), math.floor(ay + 1e-9)
        c1, r1 = max(c0 + 1, math.ceil(bx - 1e-9)), max(r0 + 1, math.ceil(by - 1e-9))
        area = (c1 - c0) * (r1 - r0)
        c0, r0 = min(max(c0, 0), self.width), min(max(r0, 0), self.height)
        c1, r1 = min(max(c1, 0), self.width), min(max(r1, 0), self.height)
        s = self.sat
        inside = int(s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0])
        return inside / area



@dataclass(frozen=True)
class TileGrid:
    """The tiles of a slide at the target um/px: starts along x and y, blocks, sizes."""

    mpp: float
    tile_px: int
    width_px: int
    height_px: int
    xs: list[int]
    ys: list[int]
    blocks: list[Block]

    @classmethod
    def of(cls, slide: Slide, config: MaskConfig) -> TileGrid:
        width, height = slide.size_at_mpp(config.mpp)
        xs = tile_starts(width, config.tile_px, config.stride)
        ys = tile_starts(height, config.tile_px, config.stride)
        # A block is read from the level chosen for mpp: when that level is finer than the target, shrink the
        # block so the pixels read (not only the pixels kept) stay within block_px x block_px.
        level = slide.level_for_mpp(config.mpp)
        finer = slide.scale_for_mpp(config.mpp) / slide.level_downsamples[level]
        block_px = max(config.tile_px, int(config.block_px / finer)) if finer > 1 else config.block_px
        blocks = tile_blocks(xs, ys, config.tile_px, config.stride, block_px)
        return cls(config.mpp, config.tile_px, width, height, xs, ys, blocks)

    @property
    def n_tiles(self) -> int:
        return len(self.xs) * len(self.ys)

    def tiles(self, block: Block) -> list[int]:
        """Indices (row-major over the whole grid) of a block's tiles."""
        return [iy * len(self.xs) + ix for iy in block.iy for ix in block.ix]

    def origin(self, t: int) -> tuple[int, int]:
        """Top-left target pixel of tile ``t``."""
        return self.xs[t % len(self.xs)], self.ys[t // len(self.xs)]

    def owned(self, block: Block) -> tuple[int, int]:
        """Width and height of the part of a block no later block covers, inside the grid (for pixel totals)."""
        last_x, last_y = block.ix[-1] + 1, block.iy[-1] + 1
        x1 = min(self.width_px, self.xs[last_x] if last_x < len(self.xs) else self.width_px)
        y1 = min(self.height_px, self.ys[last_y] if last_y < len(self.ys) else self.height_px)
        return x1 - block.x_px, y1 - block.y_px
