"""Nuclei compared one by one: which predicted nuclei the pathologist kept, removed, relabelled or reshaped,
and which ones they drew.

A predicted and a corrected nucleus are the *same nucleus* when their IoU is above ``iou_threshold`` (0.5: the
match is then unique when neither file's nuclei overlap; where they do, each pair is taken at most once, the
highest IoU first). Per class (the nucleus's QuPath class; unclassified nuclei under ``Unclassified``):

- ``predicted`` / ``corrected``: nuclei in each file;
- ``unchanged``: matched, same class; ``reshaped``: of those, the ones whose IoU is below ``reshaped_iou`` (0.9);
- ``relabelled_out``: predicted as this class, corrected as another; ``relabelled_in``: the other way round;
- ``removed``: predicted and matched by no corrected nucleus (deleted, or moved far);
- ``added``: corrected and matched by no predicted nucleus (drawn by the pathologist).

So ``predicted = unchanged + relabelled_out + removed`` and ``corrected = unchanged + relabelled_in + added``.
Which objects are nuclei is :func:`qpbridge.qupath.objects.object_role` (detections with ``Nucleus: ...``
measurements, cells) and, in the corrected file, :func:`~qpbridge.qupath.objects.is_drawn_nucleus` (small
objects the pathologist drew, which are not qpbridge's predicted regions). A cell is compared by its nucleus.

The matching is one STRtree query and vectorized intersections (shapely 2): no loop over nuclei in Python.

Examples
--------
>>> from shapely import box
>>> from qpbridge.qupath import Feature
>>> m = {"Nucleus: Area µm^2": 1.0}
>>> pred = [Feature(box(0, 0, 10, 10), "Benign", object_type="detection", measurements=m),
...         Feature(box(20, 0, 30, 10), "Benign", object_type="detection", measurements=m),
...         Feature(box(40, 0, 50, 10), "Benign", object_type="detection", measurements=m)]
>>> corr = [pred[0], Feature(box(20, 0, 30, 10), "Invasive carcinoma", object_type="detection", measurements=m),
...         Feature(box(60, 0, 68, 8), "Invasive carcinoma")]      # the third deleted, one drawn
>>> d = diff_nuclei(pred, corr, mpp=1.0)
>>> d.per_class["Benign"].unchanged, d.per_class["Benign"].relabelled_out, d.per_class["Benign"].removed
(1, 1, 1)
>>> d.per_class["Invasive carcinoma"].relabelled_in, d.per_class["Invasive carcinoma"].added
(1, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from qpbridge.qupath import Feature
from qpbridge.qupath.classes import UNCLASSIFIED
from qpbridge.qupath.objects import is_nucleus, object_role

__all__ = ["DEFAULT_RESHAPED_IOU", "NucleiDiff", "NucleusClassDiff", "diff_nuclei", "nuclei_of"]

#: A matched nucleus whose IoU with its prediction is below this counts as reshaped.
DEFAULT_RESHAPED_IOU = 0.9


@dataclass
class NucleusClassDiff:
    """Nucleus counts of one class (see the module docstring)."""

    name: str
    predicted: int = 0
    corrected: int = 0
    unchanged: int = 0
    reshaped: int = 0
    relabelled_out: int = 0
    relabelled_in: int = 0
    removed: int = 0
    added: int = 0

    def to_dict(self) -> dict[str, int]:
        """Plain JSON-ready counts."""
        return {k: int(v) for k, v in self.__dict__.items() if k != "name"}


@dataclass
class NucleiDiff:
    """What changed between a prediction's nuclei and the corrected ones, per class and in total."""

    per_class: dict[str, NucleusClassDiff]
    #: predicted class -> corrected class -> matched nuclei relabelled so (non-zero entries only)
    relabelled: dict[str, dict[str, int]] = field(default_factory=dict)
    iou_threshold: float = 0.5
    #: Mean IoU of the matched nuclei (``None`` when none matched).
    mean_matched_iou: float | None = None

    def total(self, key: str) -> int:
        """The sum of one count over the classes (``"added"``, ``"removed"``, ...)."""
        return sum(getattr(c, key) for c in self.per_class.values())

    @property
    def changed(self) -> int:
        """Nuclei the pathologist changed: removed + added + relabelled + reshaped."""
        return sum(self.total(k) for k in ("removed", "added", "relabelled_out", "reshaped"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        keys = ("predicted", "corrected", "unchanged", "reshaped", "relabelled_out", "removed", "added")
        return {
            "iou_threshold": self.iou_threshold,
            "mean_matched_iou": self.mean_matched_iou,
            "totals": {**{k: self.total(k) for k in keys}, "changed": self.changed},
            "per_class": {name: c.to_dict() for name, c in self.per_class.items()},
            "relabelled": {a: dict(row) for a, row in self.relabelled.items()},
        }


def nuclei_of(features: Iterable[Feature], mpp: float | None, *, drawn: bool) -> list[Feature]:
    """The nuclei among ``features``: nucleus-role objects and, with ``drawn``, small drawn annotations."""
    out = []
    for f in features:
        if object_role(f.object_type, f.measurements) == "nucleus":
            out.append(f)
        elif drawn and mpp is not None and f.geometry is not None:
            area_um2 = float(shapely.area(f.geometry)) * mpp * mpp
            if is_nucleus(f.object_type, f.measurements, area_um2):
                out.append(f)
    return out


def _outlines(features: Sequence[Feature]) -> np.ndarray:
    geoms = [f.nucleus_geometry if f.object_type == "cell" and f.nucleus_geometry is not None else f.geometry
             for f in features]
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = geoms
    return arr


def _match(pred: np.ndarray, corr: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched pairs ``(pred index, corr index, IoU)`` above the threshold, each index at most once."""
    if not len(pred) or not len(corr):
        empty = np.zeros(0, np.intp)
        return empty, empty, np.zeros(0)
    tree = shapely.STRtree(corr)
    i, j = tree.query(pred, predicate="intersects")
    inter = shapely.area(shapely.intersection(pred[i], corr[j]))
    union = shapely.area(pred[i]) + shapely.area(corr[j]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    keep = iou > iou_threshold
    i, j, iou = i[keep], j[keep], iou[keep]
    order = np.argsort(-iou, kind="stable")
    i, j, iou = i[order], j[order], iou[order]
    _, first_i = np.unique(i, return_index=True)  # best pair of each predicted nucleus
    take = np.zeros(len(i), bool)
    take[first_i] = True
    i, j, iou = i[take], j[take], iou[take]
    order = np.argsort(-iou, kind="stable")
    i, j, iou = i[order], j[order], iou[order]
    _, first_j = np.unique(j, return_index=True)  # and of each corrected one
    take = np.zeros(len(j), bool)
    take[first_j] = True
    return i[take], j[take], iou[take]


def diff_nuclei(
    predicted: Sequence[Feature],
    corrected: Sequence[Feature],
    *,
    mpp: float | None,
    iou_threshold: float = 0.5,
    reshaped_iou: float = DEFAULT_RESHAPED_IOU,
) -> NucleiDiff:
    """Compare the nuclei of a prediction and of its corrections (features of both files, level-0 px).

    ``mpp`` (level-0 um/px) lets small annotations the pathologist drew count as nuclei
    (:func:`~qpbridge.qupath.objects.is_drawn_nucleus`); without it only nucleus-role objects are compared.
    """
    pred = nuclei_of(predicted, mpp, drawn=False)
    corr = nuclei_of(corrected, mpp, drawn=True)
    pred_names = [UNCLASSIFIED if f.class_name is None else f.class_name for f in pred]
    corr_names = [UNCLASSIFIED if f.class_name is None else f.class_name for f in corr]
    names = sorted(set(pred_names) | set(corr_names))
    index = {n: k for k, n in enumerate(names)}
    n = len(names)
    pc = np.array([index[c] for c in pred_names], np.intp)
    cc = np.array([index[c] for c in corr_names], np.intp)
    i, j, iou = _match(_outlines(pred), _outlines(corr), iou_threshold)
    matrix = np.zeros((n, n), np.int64)  # matched nuclei: predicted class x corrected class
    np.add.at(matrix, (pc[i], cc[j]), 1)
    same = pc[i] == cc[j]
    reshaped = np.bincount(pc[i][same & (iou < reshaped_iou)], minlength=n)
    removed = np.bincount(pc[np.bincount(i, minlength=len(pred)) == 0], minlength=n)
    added = np.bincount(cc[np.bincount(j, minlength=len(corr)) == 0], minlength=n)
    predicted_n, corrected_n = np.bincount(pc, minlength=n), np.bincount(cc, minlength=n)
    diag = np.diag(matrix)
    per_class = {
        name: NucleusClassDiff(
            name, int(predicted_n[k]), int(corrected_n[k]), int(diag[k]), int(reshaped[k]),
            int(matrix[k].sum() - diag[k]), int(matrix[:, k].sum() - diag[k]), int(removed[k]), int(added[k]),
        )
        for k, name in enumerate(names)
    }
    relabelled = {
        names[a]: {names[b]: int(matrix[a, b]) for b in range(n) if b != a and matrix[a, b]}
        for a in range(n)
        if matrix[a].sum() - matrix[a, a]
    }
    mean_iou = float(iou.mean()) if len(iou) else None
    return NucleiDiff(per_class, relabelled, iou_threshold, mean_iou)
