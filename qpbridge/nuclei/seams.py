"""The seam rule: which nuclei of a block predicted with a halo belong to that block.

``predict`` runs the nuclei model block by block, each block read with a halo (a margin of context on every
side) so that a nucleus cut by the block's edge is still seen whole. A nucleus near a seam is then found
by two (at a corner, four) blocks. Each keeps exactly those nuclei whose centroid lies in the block's own,
non-halo rectangle, half-open ``[x0, x1) x [y0, y1)`` in level-0 pixels: the own rectangles of a grid tile
the plane without overlap, so a nucleus whose centroid falls on a seam belongs to the block on its right
(or below), and every nucleus is kept once -- provided the halo is wider than the largest nucleus, so
that each block sees the whole of every nucleus whose centroid is its own, and computes the same centroid
for it as its neighbours do.

Example
-------
>>> import shapely
>>> from qpbridge.nuclei.instances import NucleusSet
>>> from qpbridge.tiling import Window
>>> nuclei = NucleusSet.from_arrays([1, 2, 3], [[99.5, 10.0], [100.0, 10.0], [150.0, 200.0]],
...                                 [shapely.box(0, 0, 1, 1)] * 3, [1, 1, 1])
>>> keep_owned(nuclei, Window(0, 0, 100, 100)).tolist()     # x = 100.0 is the next block's
[True, False, False]
>>> keep_owned(nuclei, (100.0, 0.0, 200.0, 100.0)).tolist()  # (x0, y0, x1, y1) bounds work too
[False, True, False]
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from qpbridge.errors import InputError
from qpbridge.nuclei.instances import NucleusSet
from qpbridge.tiling import Window

__all__ = ["keep_owned", "owned_bounds"]


def owned_bounds(block_window_level0: Window | tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of a block's own rectangle, from a level-0 :class:`~qpbridge.tiling.Window` or bounds.

    Example
    -------
    >>> owned_bounds(Window(1024, 0, 1024, 512))
    (1024.0, 0.0, 2048.0, 512.0)
    """
    if isinstance(block_window_level0, Window):
        w = block_window_level0
        return (float(w.x_px), float(w.y_px), float(w.x_end_px), float(w.y_end_px))
    try:
        x0, y0, x1, y1 = (float(v) for v in block_window_level0)
    except (TypeError, ValueError):
        raise InputError(
            "a block's own rectangle must be a Window or (x0, y0, x1, y1) in level-0 pixels, "
            f"got {block_window_level0!r}"
        ) from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        raise InputError(f"a block's own rectangle needs finite x0 < x1 and y0 < y1, got {(x0, y0, x1, y1)}")
    return (x0, y0, x1, y1)


def keep_owned(
    nuclei: NucleusSet, block_window_level0: Window | tuple[float, float, float, float]
) -> npt.NDArray[np.bool_]:
    """Which nuclei this block owns: centroid in its own (non-halo) rectangle, half-open ``[x0, x1) x [y0, y1)``.

    Parameters
    ----------
    nuclei
        The nuclei found in the block *with* its halo (:func:`~qpbridge.nuclei.nuclei_from_labels`).
    block_window_level0
        The block *without* its halo, in level-0 pixels: a :class:`~qpbridge.tiling.Window` or
        ``(x0, y0, x1, y1)`` bounds (fractional when the model's grid does not fall on whole level-0 pixels).

    Returns
    -------
    numpy.ndarray
        ``(len(nuclei),)`` bool; ``nuclei.subset(mask)`` keeps them.
    """
    x0, y0, x1, y1 = owned_bounds(block_window_level0)
    x, y = nuclei.centroids_xy[:, 0], nuclei.centroids_xy[:, 1]
    return np.asarray((x >= x0) & (x < x1) & (y >= y0) & (y < y1), dtype=bool)
