"""Writing the pyramid: level sizes, box-downsampling into lower levels, Aperio descriptions, the thumbnail."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qpbridge.synth.common import MPP, OBJECTIVE_POWER, U8

__all__ = ["LevelSink", "aperio_description", "box4", "level_dimensions_for", "strip_tiles", "write_thumbnail"]

_STOP_SIDE_PX = 2000  # add pyramid levels until the smallest side is below this
_APERIO_HEADER = "Aperio Image Library v12.0.15"


def level_dimensions_for(width_px: int, height_px: int) -> tuple[tuple[int, int], ...]:
    """Pyramid level sizes: downsample 4 per level (floor), until the smallest side is below 2000 px.

    There are always at least 3 levels.

    Examples
    --------
    >>> level_dimensions_for(12000, 9000)
    ((12000, 9000), (3000, 2250), (750, 562))
    >>> level_dimensions_for(100000, 80000)[-1]
    (1562, 1250)
    """
    dims = [(width_px, height_px)]
    while len(dims) < 3 or min(dims[-1]) >= _STOP_SIDE_PX:
        w, h = dims[-1]
        if min(w, h) < 4:
            break
        dims.append((w // 4, h // 4))
    return tuple(dims)


# ------------------------------------------------------------------------------------------- pyramid io
def box4(a: U8, rows: int, cols: int) -> U8:
    """Rounded means of the 4 x 4 pixel blocks of the top-left ``4 rows x 4 cols`` pixels of ``a``."""
    block = a[: 4 * rows, : 4 * cols].reshape(rows, 4, cols, 4, 3)
    return ((block.sum(axis=(1, 3), dtype=np.uint32) + 8) // 16).astype(np.uint8)


class LevelSink:
    """One reduced pyramid level: receives full-width row strips and appends them to a raw file.

    With ``reduce`` the strips come from the level above and are box-averaged 4 x 4 first (rows left
    over wait for the next strip); without, they are already at this level's size (level 1, averaged
    tile by tile from the rendered level 0). Each level passes what it wrote on to the level below.
    """

    def __init__(self, path: Path, width: int, height: int, reduce: bool, below: LevelSink | None) -> None:
        self.width = width
        self.height = height
        self.reduce = reduce
        self.below = below
        self.rows = 0
        self.pending: U8 | None = None
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish()

    def feed(self, strip: U8) -> None:
        if self.reduce:
            data = strip if self.pending is None else np.concatenate([self.pending, strip])
            n = min(data.shape[0] // 4, self.height - self.rows)
            self.pending = data[4 * n :].copy()
            strip = box4(data, n, self.width)
        self.file.write(np.ascontiguousarray(strip).tobytes())
        self.rows += strip.shape[0]
        if self.below is not None and strip.shape[0]:
            self.below.feed(strip)

    def finish(self) -> None:
        self.file.close()
        if self.below is not None:
            self.below.finish()


def strip_tiles(path: Path, width: int, height: int, tile: int) -> Iterator[U8]:
    """Tiles of a raw level file, read one tile row at a time."""
    row_bytes = width * 3
    with open(path, "rb") as f:
        for y in range(0, height, tile):
            rows = min(tile, height - y)
            buf = f.read(rows * row_bytes)
            strip = np.frombuffer(buf, np.uint8).reshape(rows, width, 3)
            for x in range(0, width, tile):
                yield strip[:, x : x + tile]


def aperio_description(
    level_dims: Sequence[tuple[int, int]], level: int, tile: int, quality: int, name: str, seed: int, stain: str
) -> str:
    """The Aperio ``ImageDescription`` of a level: what makes OpenSlide read the TIFF as an Aperio slide."""
    w0, h0 = level_dims[0]
    if level == 0:
        return (
            f"{_APERIO_HEADER} \r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile}) JPEG/RGB Q={quality}"
            f"|MPP = {MPP}|AppMag = {OBJECTIVE_POWER}|StripeWidth = 2048|ScanScope ID = QPBRIDGE-SYNTH"
            f"|Filename = {name}|Title = qpbridge synthetic H&E|Synth Seed = {seed}|Synth Stain = {stain}"
        )
    w, h = level_dims[level]
    return f"{_APERIO_HEADER} \r\n{w0}x{h0} -> {w}x{h} - ({tile}x{tile}) JPEG/RGB Q={quality}"


def write_thumbnail(tif: Any, tmpdir: Path, dims: Sequence[tuple[int, int]], options: dict[str, Any]) -> None:
    """A stripped thumbnail image in the second IFD (OpenSlide's aperio ``thumbnail`` associated image)."""
    from PIL import Image

    level = len(dims) - 1
    w, h = dims[level]
    small = np.fromfile(tmpdir / f"level{level}.raw", np.uint8).reshape(h, w, 3)
    scale = min(1.0, 768 / max(w, h))
    tw, th = max(16, round(w * scale)), max(16, round(h * scale))
    thumb = np.asarray(Image.fromarray(small).resize((tw, th), Image.Resampling.BOX))
    w0, h0 = dims[0]
    tif.write(
        thumb,
        rowsperstrip=16,
        description=f"{_APERIO_HEADER} \r\n{w0}x{h0} -> {tw}x{th} - ",
        compressionargs={"level": 90},
        **options,
    )
