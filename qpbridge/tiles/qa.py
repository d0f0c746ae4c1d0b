"""The QA label mask: the whole slide's labels at a coarse um/px as a tiled, pyramidal palette TIFF."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qpbridge.atomic import atomic_path
from qpbridge.classes import IGNORE_LABEL
from qpbridge.rasterize import ClassMap, LabelRasterizer
from qpbridge.slide import Slide
from qpbridge.tiles.grid import label_mask_for_window

__all__ = ["IGNORE_COLOR", "legend", "write_label_mask_tiff"]

#: Colour of ignore (255) pixels in the QA mask's palette.
IGNORE_COLOR = (0, 0, 0)
_QA_TILE_PX = 256
_QA_MIN_LEVEL_PX = 512


def _palette(class_map: ClassMap) -> np.ndarray:
    cmap = np.zeros((3, 256), dtype=np.uint16)
    for c in class_map.classes:
        cmap[:, c.label] = [v * 257 for v in c.color]
    cmap[:, IGNORE_LABEL] = [v * 257 for v in IGNORE_COLOR]
    return cmap


def legend(class_map: ClassMap) -> list[dict[str, Any]]:
    """The QA mask's legend: every value with its name and palette colour (255 = ignore)."""
    return [*class_map.to_json(), {"label": IGNORE_LABEL, "name": "Ignore", "color": list(IGNORE_COLOR)}]


def write_label_mask_tiff(path: Path, rasterizer: LabelRasterizer, slide: Slide, qa_mpp: float) -> tuple[int, int]:
    """Write the whole-slide label mask at ``qa_mpp`` as a tiled, pyramidal palette TIFF, strip by strip.

    Levels halve the resolution until the largest side is at most 512 px; each level is rasterized at its own
    um/px (no resampling of labels). Written to a temporary file renamed over ``path``. Returns the size of
    level 0 ``(width, height)``.
    """
    import tifffile

    qa_mpp = max(qa_mpp, slide.mpp)
    levels: list[tuple[float, int, int]] = []
    mpp = qa_mpp
    while True:
        width, height = slide.size_at_mpp(mpp)
        levels.append((mpp, width, height))
        if max(width, height) <= _QA_MIN_LEVEL_PX or len(levels) >= 12:
            break
        mpp *= 2
    colormap = _palette(rasterizer.class_map)
    tile = _QA_TILE_PX

    def tiles(level_mpp: float, width: int, height: int) -> Iterator[np.ndarray]:
        for y in range(0, height, tile):
            strip = label_mask_for_window(rasterizer, slide, 0, y, width, min(tile, height - y), level_mpp)
            for x in range(0, width, tile):
                yield strip[:, x : x + tile]

    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=levels[0][1] * levels[0][2] > 2**31) as tif:
        for k, (level_mpp, width, height) in enumerate(levels):
            resolution = 10_000.0 / level_mpp
            tif.write(
                tiles(level_mpp, width, height),
                shape=(height, width),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="palette",
                colormap=colormap,
                compression="zlib",
                subfiletype=0 if k == 0 else 1,
                resolution=(resolution, resolution),
                resolutionunit="CENTIMETER",
                description=json.dumps({"qpbridge": "label mask", "mpp": level_mpp}) if k == 0 else None,
            )
    return levels[0][1], levels[0][2]
