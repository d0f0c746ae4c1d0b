"""Nuclei: instance images of a block -> QuPath-ready nuclei (outlines, seam ownership, measurements).

Recipe-independent pieces of the nuclei stage of ``predict``: whatever the nuclei model predicts
(foreground + boundary classes, or foreground + distance maps), its post-processing ends in an instance
image per block, and from there on the steps are the same:

- :mod:`qpbridge.nuclei.instances`: instance image + block ``Affine`` -> :class:`NucleusSet` (ids, level-0
  centroids, simplified outlines, pixel areas);
- :mod:`qpbridge.nuclei.seams`: which nuclei of a block predicted with a halo belong to that block;
"""

from __future__ import annotations

from qpbridge.nuclei.instances import (
    DEFAULT_SIMPLIFY_RADIUS_FRAC,
    DEFAULT_SMOOTH_PASSES,
    SIMPLIFY_PX_RANGE,
    NucleusSet,
    check_instance_labels,
    clean_instances,
    default_tolerance_px,
    nuclei_from_labels,
    simplify_outlines,
)
from qpbridge.nuclei.seams import keep_owned, owned_bounds

__all__ = [
    "DEFAULT_SIMPLIFY_RADIUS_FRAC",
    "DEFAULT_SMOOTH_PASSES",
    "NucleusSet",
    "SIMPLIFY_PX_RANGE",
    "check_instance_labels",
    "clean_instances",
    "default_tolerance_px",
    "keep_owned",
    "nuclei_from_labels",
    "owned_bounds",
    "simplify_outlines",
]
