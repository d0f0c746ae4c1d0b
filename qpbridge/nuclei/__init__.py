"""Nuclei: instance images of a block -> QuPath-ready nuclei (outlines, seam ownership, measurements).

Recipe-independent pieces of the nuclei stage of ``predict``: whatever the nuclei model predicts
(foreground + boundary classes, or foreground + distance maps), its post-processing ends in an instance
image per block, and from there on the steps are the same:

- :mod:`qpbridge.nuclei.instances`: instance image + block ``Affine`` -> :class:`NucleusSet` (ids, level-0
  centroids, simplified outlines, pixel areas);
- :mod:`qpbridge.nuclei.seams`: which nuclei of a block predicted with a halo belong to that block;
- :mod:`qpbridge.nuclei.measure`: QuPath-named measurements of every nucleus of a block at once.

Example
-------
>>> import numpy as np
>>> from affine import Affine
>>> labels = np.zeros((40, 40), np.int32)
>>> labels[2:8, 2:8], labels[20:30, 20:28] = 1, 2   # nucleus 1 lies in the halo
>>> rgb = np.full((40, 40, 3), 200, np.uint8)
>>> block = Affine(2, 0, 1000, 0, 2, 2000)  # model at 2x the level-0 pixel; block + 10 px halo at (1000, 2000)
>>> cleaned = clean_instances(labels)
>>> nuclei = nuclei_from_labels(cleaned, block, clean=False)
>>> owned = nuclei.subset(keep_owned(nuclei, (1020.0, 2020.0, 1060.0, 2060.0)))  # the block without its halo
>>> table = measure_nuclei(cleaned, rgb, mpp=0.5, clean=False).rows_for(owned.ids)
>>> owned.ids.tolist(), table.column("Nucleus: Area").tolist()
([2], [20.0])
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
from qpbridge.nuclei.measure import MEASUREMENT_NAMES, MeasurementTable, he_optical_density, measure_nuclei
from qpbridge.nuclei.seams import keep_owned, owned_bounds

__all__ = [
    "DEFAULT_SIMPLIFY_RADIUS_FRAC",
    "DEFAULT_SMOOTH_PASSES",
    "MEASUREMENT_NAMES",
    "MeasurementTable",
    "NucleusSet",
    "SIMPLIFY_PX_RANGE",
    "check_instance_labels",
    "clean_instances",
    "default_tolerance_px",
    "he_optical_density",
    "keep_owned",
    "measure_nuclei",
    "nuclei_from_labels",
    "owned_bounds",
    "simplify_outlines",
]
