"""The thumbnail overlay: the slide at thumbnail scale with the predicted classes, the ROI outline and the nuclei
(a dot each, in the colour of its region class) painted on.

Labels are painted block by block as the cell stage produces them (memory bounded by the thumbnail), the ROI
outline once, the nuclei block by block (:meth:`Overlay.mark_nuclei`); :meth:`Overlay.save` writes the PNG
atomically.

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
from qpbridge.tiling import apply_affine

__all__ = ["UNCLASSIFIED_NUCLEUS_COLOR", "Overlay"]

#: The dot of a nucleus without a region class.
UNCLASSIFIED_NUCLEUS_COLOR = (40, 40, 160)


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
        self.nuclei = np.zeros(shape, dtype=np.uint8)  #: 0 none, else 1 + the index of the class in nucleus_classes
        self.nucleus_classes: list[str | None] = []

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

    def mark_nuclei(self, xy: np.ndarray, classes: list[str | None]) -> None:
        """A dot per nucleus (level-0 centroids ``(n, 2)``), remembered with its class."""
        for name in dict.fromkeys(classes):
            if name not in self.nucleus_classes and len(self.nucleus_classes) < 254:
                self.nucleus_classes.append(name)
        codes = np.array([self.nucleus_classes.index(n) + 1 if n in self.nucleus_classes else 1 for n in classes],
                         dtype=np.uint8)
        cols, rows = apply_affine(~self.affine, xy[:, 0], xy[:, 1])
        rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
        ok = (rows >= 0) & (rows < self.shape[0]) & (cols >= 0) & (cols < self.shape[1])
        self.nuclei[rows[ok], cols[ok]] = codes[ok]

    def save(self, path: Path, colors: dict[int, tuple[int, int, int]], roi_color: tuple[int, int, int],
             nucleus_colors: dict[str, tuple[int, int, int]] | None = None) -> None:
        """Write the PNG: each label in ``colors`` blended half over the slide, the ROI's outline in
        ``roi_color``, each nucleus a dot in its class's colour (``nucleus_colors``)."""
        from PIL import Image
        from skimage.segmentation import find_boundaries

        out = self.rgb.astype(np.float32)
        for label, color in colors.items():
            where = self.labels == label
            out[where] = 0.5 * out[where] + 0.5 * np.asarray(color, dtype=np.float32)
        edge = find_boundaries(self.roi, mode="outer")
        out[edge] = roi_color
        for code, name in enumerate(self.nucleus_classes, start=1):
            color = (nucleus_colors or {}).get(name or "", UNCLASSIFIED_NUCLEUS_COLOR)
            out[self.nuclei == code] = color
        with atomic_path(path) as tmp:
            Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(tmp, format="PNG")
