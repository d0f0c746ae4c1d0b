"""What the pathologist changed: a predicted and a corrected QuPath GeoJSON compared by area, per class.

The prediction is what ``qpbridge predict`` wrote (``ROI`` annotations and class regions); the correction is
what QuPath exported after a pathologist edited it (objects reclassified, reshaped, deleted, drawn).

How the two files are compared
------------------------------
1. Objects of the chosen types (annotations and detections) with an area are kept. ``ROI`` objects (the ROI
   model's output) form a section of their own; ``Region*``, ``Ignore*``, ``Pen mark*`` and ``Pen`` objects
   (what ``qpbridge masks`` treats as the reviewed area or as "ignore") are left out and counted.
2. Class names are matched as ``qpbridge masks`` matches them, by the one rule of
   :mod:`qpbridge.qupath.classes` over the same class map (a model card's classes and aliases; ``"Tissue"``
   is ``Normal``): the full name exactly, then in any case, then the first part of a derived class
   (``"Benign: Positive"`` -> ``"Benign"``). Unclassified objects are ``"Unclassified"``.
3. Per file, the objects of a class are unioned. Where classes overlap **within one file**, the class of
   higher priority wins, as in ``qpbridge masks``' default: priority follows the class list, lowest first
   (default ``Normal < Benign < In situ carcinoma < Invasive carcinoma``: carcinoma over benign over normal).
   Classes outside the list rank below every listed class, in name order.
4. Every point of the slide is then in at most one predicted class ``a`` and one corrected class ``b``:

   * ``unchanged``: ``a == b``;
   * ``relabelled`` from ``a`` to ``b`` (a matrix);
   * ``removed``: predicted ``a``, corrected nothing (a deleted false positive, a shrunk region);
   * ``added``: predicted nothing, corrected ``b`` (a newly drawn region, a grown one).

   The ``changed`` area is ``added + removed + relabelled``; a class's ``changed_share`` is
   ``(added + removed + relabelled in + relabelled out) / predicted area of that class`` (a class that only
   gained area changed too; the share may exceed 1), the slide's ``changed_share`` is
   ``changed / total predicted area``; both ``None`` when nothing was predicted (of the class), the areas
   being reported all the same.

Areas are computed with shapely 2's vectorized overlay over the parts of each union (an STRtree pairs the
parts that meet), never on one huge multipolygon, so 10^5 objects take seconds. They are in um^2 when the
pixel size is known (``mpp``), else in px^2 (:attr:`DiffResult.area_unit` says which).

The modules, one job each (import from here: ``from qpbridge.diff import diff_files``):

* :mod:`~qpbridge.diff.compare`: :func:`diff_geojson`, the comparison above, step by step;
* :mod:`~qpbridge.diff.geometry`: the area overlays (unions as disjoint parts, differences, the priority
  rule) and the change pieces;
* :mod:`~qpbridge.diff.result`: :class:`DiffResult`, :class:`ClassDiff`, :class:`RoiDiff`,
  :class:`BatchResult` and their ``to_dict``;
* :mod:`~qpbridge.diff.files`: :func:`diff_files` (pixel and image sizes from the slide, the corrections
  sidecar, the prediction's meta), :func:`match_pairs` (folders paired by slide name), :func:`diff_pairs`;
* :mod:`~qpbridge.diff.nuclei`: nuclei compared one by one (matched at IoU > 0.5): per class the nuclei kept,
  reshaped, relabelled, removed and drawn (:class:`NucleiDiff`), in :attr:`DiffResult.nuclei` when either file
  holds nuclei;
* :mod:`~qpbridge.diff.changed`: ``--changed-only``, :func:`changed_only_features` and
  :func:`write_changed_only`.

Example
-------
>>> from shapely import box
>>> from qpbridge.qupath import Feature
>>> predicted = [Feature(box(0, 0, 100, 100), "Benign", object_type="detection")]
>>> corrected = [Feature(box(0, 0, 100, 100), "Invasive carcinoma")]
>>> result = diff_geojson(predicted, corrected, mpp=0.5)
>>> result.to_dict()["relabelled_um2"]
{'Benign': {'Invasive carcinoma': 2500.0}}
"""

from __future__ import annotations

from qpbridge.diff.changed import REGION_CLASS, changed_only_features, write_changed_only
from qpbridge.diff.compare import DEFAULT_CLASS_ORDER, DEFAULT_EXCLUDE_PATTERNS, diff_geojson
from qpbridge.diff.files import PairMatch, diff_files, diff_pairs, match_pairs
from qpbridge.diff.geometry import ChangePieces
from qpbridge.diff.nuclei import NucleiDiff, NucleusClassDiff, diff_nuclei
from qpbridge.diff.result import BatchResult, ClassDiff, DiffResult, RoiDiff

__all__ = [
    "DEFAULT_CLASS_ORDER",
    "DEFAULT_EXCLUDE_PATTERNS",
    "REGION_CLASS",
    "BatchResult",
    "ChangePieces",
    "ClassDiff",
    "DiffResult",
    "NucleiDiff",
    "NucleusClassDiff",
    "PairMatch",
    "RoiDiff",
    "changed_only_features",
    "diff_files",
    "diff_geojson",
    "diff_nuclei",
    "diff_pairs",
    "match_pairs",
    "write_changed_only",
]
