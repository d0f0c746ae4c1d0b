"""The thumbnail overlay: the slide at thumbnail scale with the predicted classes and the ROI outline painted on.

Labels are painted block by block as the cell stage produces them (memory bounded by the thumbnail), the ROI
outline once; :meth:`Overlay.save` writes the PNG atomically.

Example
-------
>>> from qpbridge.slide import open_slide
>>> with open_slide("slide.svs") as slide:                                   # doctest: +SKIP
...     overlay = Overlay(slide, max_px=1600)
...     overlay.paint(labels, labels_affine)                                 # after each block
...     overlay.save(Path("slide.png"), {1: (255, 0, 0)}, roi_color=(255, 215, 0))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine

from qpbridge.atomic import atomic_path
from qpbridge.predict.sampling import nearest_index
from qpbridge.slide import Slide

__all__ = ["Overlay"]


class Overlay:
    """A thumbnail (its longer side at most ``max_px``, never finer than level 0) with the predictions painted
    on, accumulated block by block (bounded memory).

    ``labels`` holds the painted class labels and ``roi`` the ROI mask, both on the thumbnail's grid
    (``affine``: thumbnail pixel -> level 0).
    """

    def __init__(self, slide: Slide, max_px: int) -> None:
        width, height = slide.dimensions
        self.mpp = max(slide.mpp * max(width, height) / max_px, slide.mpp)
        self.rgb, self.affine = slide.read_whole_at(self.mpp)
        shape = (int(self.rgb.shape[0]), int(self.rgb.shape[1]))
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.roi = np.zeros(shape, dtype=bool)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the thumbnail."""
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    def paint(self, labels: np.ndarray, labels_affine: Affine) -> None:
        """Paint a block's class labels (on the grid ``labels_affine`` maps to level 0) onto the thumbnail."""
        out_rows, out_cols, rows, cols = nearest_index(labels.shape, labels_affine, self.affine, self.labels.shape)
        if len(out_rows) and len(out_cols):
            self.labels[out_rows[0]:out_rows[-1] + 1, out_cols[0]:out_cols[-1] + 1] = (
                labels.take(rows, axis=0).take(cols, axis=1))

    def save(self, path: Path, colors: dict[int, tuple[int, int, int]], roi_color: tuple[int, int, int]) -> None:
        """Write the PNG: each label in ``colors`` blended half over the slide, the ROI's outline in
        ``roi_color``."""
        from PIL import Image
        from skimage.segmentation import find_boundaries

        out = self.rgb.astype(np.float32)
        for label, color in colors.items():
            where = self.labels == label
            out[where] = 0.5 * out[where] + 0.5 * np.asarray(color, dtype=np.float32)
        edge = find_boundaries(self.roi, mode="outer")
        out[edge] = roi_color
        with atomic_path(path) as tmp:
            Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(tmp, format="PNG")
