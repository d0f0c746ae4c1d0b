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

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from qpbridge.classes import DEEPBATCH_CLASSES, ROI_CLASS
from qpbridge.errors import FormatError, InputError, OutputError
from qpbridge.formats import detect_format, label_options_for_slide, read_annotations
from qpbridge.qupath import (
    CorrectionsSidecar,
    Feature,
    check_export_holds,
    corrections_sidecar_path,
    geojson_file_base,
    image_basename,
    load_corrections_sidecar,
    make_valid_polygonal,
    meta_path,
    prediction_state,
    write_geojson,
)
from qpbridge.qupath.classes import RESERVED_PATTERNS, UNCLASSIFIED, ClassMatcher
from qpbridge.qupath.objects import REGION_OBJECT_TYPES
from qpbridge.qupath.project import annotation_file_base
from qpbridge.rasterize import ClassMap

__all__ = [
    "DEFAULT_CLASS_ORDER",
    "DEFAULT_EXCLUDE_PATTERNS",
    "REGION_CLASS",
    "BatchResult",
    "ChangePieces",
    "ClassDiff",
    "DiffResult",
    "PairMatch",
    "RoiDiff",
    "changed_only_features",
    "diff_files",
    "diff_geojson",
    "diff_pairs",
    "match_pairs",
    "write_changed_only",
]

#: Tissue classes in priority order, lowest first (the DeepBatch labels 0..3: a higher label wins).
DEFAULT_CLASS_ORDER: tuple[str, ...] = tuple(c.name for c in DEEPBATCH_CLASSES)
#: Classes left out of the comparison: ``qpbridge masks``' reviewed-area and ignore classes.
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = RESERVED_PATTERNS
#: Class of the reviewed-area annotations written by :func:`write_changed_only` (QuPath's built-in "Region*").
REGION_CLASS = "Region*"
REGION_COLOR = (0, 0, 180)

#: Objects may reach this share of the slide's larger side beyond it before the file is another slide's.
_BOUNDS_TOLERANCE_FRAC = 0.01
_BOUNDS_TOLERANCE_MIN_PX = 2.0
#: Areas within this relative error of zero are zero (float noise of overlaying identical shapes).
_REL_EPS = 1e-9
_MAX_READ_WARNINGS = 5


# ------------------------------------------------------------------------------------------------ results
@dataclass
class ClassDiff:
    """Areas of one tissue class, in px^2 (see :meth:`DiffResult.area` for um^2).

    ``relabelled_out_px2``: predicted as this class, corrected as another; ``relabelled_in_px2``: predicted
    as another class, corrected as this one. ``predicted = unchanged + relabelled_out + removed`` and
    ``corrected = unchanged + relabelled_in + added``.
    """

    name: str
    predicted_px2: float = 0.0
    corrected_px2: float = 0.0
    unchanged_px2: float = 0.0
    added_px2: float = 0.0
    removed_px2: float = 0.0
    relabelled_out_px2: float = 0.0
    relabelled_in_px2: float = 0.0

    @property
    def changed_px2(self) -> float:
        """Area of this class that the pathologist changed: ``added + removed + relabelled in + relabelled out``
        (what the class gained as well as what it lost)."""
        return self.added_px2 + self.removed_px2 + self.relabelled_in_px2 + self.relabelled_out_px2

    @property
    def changed_share(self) -> float | None:
        """``changed_px2 / predicted_px2`` (above 1 when the class gained more than was predicted of it);
        ``None`` when the class was not predicted (its added area is still in ``added_px2``)."""
        return self.changed_px2 / self.predicted_px2 if self.predicted_px2 > 0 else None

    @property
    def added_share(self) -> float | None:
        """``added_px2 / predicted_px2``; ``None`` when the class was not predicted."""
        return self.added_px2 / self.predicted_px2 if self.predicted_px2 > 0 else None


@dataclass
class RoiDiff:
    """Areas of the ``ROI`` annotations (the ROI model's output), in px^2."""

    predicted_px2: float = 0.0
    corrected_px2: float = 0.0
    unchanged_px2: float = 0.0
    added_px2: float = 0.0
    removed_px2: float = 0.0


@dataclass
class ChangePieces:
    """The geometry of the changes (level-0 px polygons, disjoint), with the classes involved.

    ``added``: ``(corrected class, polygon)``; ``removed``: ``(predicted class, polygon)``;
    ``relabelled``: ``(predicted class, corrected class, polygon)``.
    """

    added: list[tuple[str, shapely.Geometry]]
    removed: list[tuple[str, shapely.Geometry]]
    relabelled: list[tuple[str, str, shapely.Geometry]]

    def all_geometries(self) -> np.ndarray:
        """Every piece, as one array."""
        geoms = [g for _, g in self.added] + [g for _, g in self.removed] + [g for _, _, g in self.relabelled]
        out = np.empty(len(geoms), dtype=object)
        out[:] = geoms
        return out


@dataclass
class DiffResult:
    """What :func:`diff_geojson` found. Areas are stored in px^2; :meth:`to_dict` gives them in the area unit.

    Attributes
    ----------
    classes
        Tissue classes compared, in priority order (lowest first).
    per_class
        Class name -> :class:`ClassDiff`.
    relabelled_px2
        Predicted class -> corrected class -> area (non-zero entries only).
    roi
        The ROI section, ``None`` when neither file holds ROI objects.
    mpp, mpp_source
        Pixel size (um/px) used for um^2, and where it came from (``None``/``"none"``: areas in px^2).
    objects
        Object counts: ``predicted``/``corrected`` (compared), ``corrected_unchanged_predictions`` (still
        carrying the qpbridge prediction marker), ``corrected_edited_or_new``.
    excluded
        Objects left out, by reason (``"class Region*"``, ``"type cell"``, ``"no area"``).
    unknown_classes
        Classes of the corrected file that are neither known nor in the prediction -> object count.
    """

    classes: tuple[str, ...]
    per_class: dict[str, ClassDiff]
    relabelled_px2: dict[str, dict[str, float]]
    roi: RoiDiff | None
    mpp: float | None
    mpp_source: str
    objects: dict[str, int]
    excluded: dict[str, int]
    unknown_classes: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    name: str | None = None
    predicted_source: str | None = None
    corrected_source: str | None = None
    slide_size_px: tuple[int, int] | None = None
    _pred_parts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object), repr=False)
    _pred_class: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.intp), repr=False)
    _corr_parts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object), repr=False)
    _corr_class: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.intp), repr=False)
    _pieces: ChangePieces | None = field(default=None, repr=False)

    # -- units --------------------------------------------------------------------------------------
    @property
    def area_unit(self) -> str:
        """``"um^2"`` when the pixel size is known, else ``"px^2"``."""
        return "um^2" if self.mpp is not None else "px^2"

    @property
    def _suffix(self) -> str:
        return "um2" if self.mpp is not None else "px2"

    def area(self, px2: float) -> float:
        """An area in px^2 in the result's unit (um^2 with ``mpp``, else px^2 unchanged)."""
        return px2 * self.mpp * self.mpp if self.mpp is not None else px2

    # -- totals -------------------------------------------------------------------------------------
    @property
    def predicted_px2(self) -> float:
        """Total predicted tissue-class area (classes are disjoint after the priority rule)."""
        return sum(c.predicted_px2 for c in self.per_class.values())

    @property
    def corrected_px2(self) -> float:
        """Total corrected tissue-class area."""
        return sum(c.corrected_px2 for c in self.per_class.values())

    @property
    def added_px2(self) -> float:
        """Area in a corrected class and in no predicted class."""
        return sum(c.added_px2 for c in self.per_class.values())

    @property
    def removed_px2(self) -> float:
        """Area in a predicted class and in no corrected class."""
        return sum(c.removed_px2 for c in self.per_class.values())

    @property
    def relabelled_total_px2(self) -> float:
        """Area predicted as one class and corrected as another."""
        return sum(sum(row.values()) for row in self.relabelled_px2.values())

    @property
    def unchanged_px2(self) -> float:
        """Area with the same class in both files."""
        return sum(c.unchanged_px2 for c in self.per_class.values())

    @property
    def changed_px2(self) -> float:
        """``added + removed + relabelled``: the area the pathologist corrected."""
        return self.added_px2 + self.removed_px2 + self.relabelled_total_px2

    @property
    def changed_share(self) -> float | None:
        """``changed / predicted`` (may exceed 1 when much was added); ``None`` when nothing was predicted."""
        predicted = self.predicted_px2
        return self.changed_px2 / predicted if predicted > 0 else None

    @property
    def identical(self) -> bool:
        """Whether nothing changed in the tissue classes and the ROI."""
        roi_same = self.roi is None or (self.roi.added_px2 == 0 and self.roi.removed_px2 == 0)
        return self.changed_px2 == 0 and roi_same

    # -- geometry -----------------------------------------------------------------------------------
    def pieces(self) -> ChangePieces:
        """The geometry of every added, removed and relabelled piece (computed on first use)."""
        if self._pieces is None:
            self._pieces = _change_pieces(
                self.classes, self._pred_parts, self._pred_class, self._corr_parts, self._corr_class
            )
        return self._pieces

    def corrected_parts(self) -> list[tuple[str, shapely.Geometry]]:
        """The corrected tissue-class regions after the priority rule: ``(class, polygon)``, disjoint."""
        return [(self.classes[int(k)], g) for g, k in zip(self._corr_parts, self._corr_class, strict=True)]

    # -- output -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; area keys end in ``_um2`` or ``_px2`` (see ``area_unit``)."""
        s = self._suffix
        per_class = {
            name: {
                f"predicted_{s}": self.area(c.predicted_px2),
                f"corrected_{s}": self.area(c.corrected_px2),
                f"unchanged_{s}": self.area(c.unchanged_px2),
                f"added_{s}": self.area(c.added_px2),
                f"removed_{s}": self.area(c.removed_px2),
                f"relabelled_out_{s}": self.area(c.relabelled_out_px2),
                f"relabelled_in_{s}": self.area(c.relabelled_in_px2),
                f"changed_{s}": self.area(c.changed_px2),
                "changed_share": c.changed_share,
                "added_share": c.added_share,
            }
            for name, c in self.per_class.items()
        }
        roi = None
        if self.roi is not None:
            roi = {
                f"predicted_{s}": self.area(self.roi.predicted_px2),
                f"corrected_{s}": self.area(self.roi.corrected_px2),
                f"unchanged_{s}": self.area(self.roi.unchanged_px2),
                f"added_{s}": self.area(self.roi.added_px2),
                f"removed_{s}": self.area(self.roi.removed_px2),
            }
        return {
            "name": self.name,
            "predicted": self.predicted_source,
            "corrected": self.corrected_source,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "area_unit": self.area_unit,
            "slide_size_px": list(self.slide_size_px) if self.slide_size_px else None,
            "classes": list(self.classes),
            "totals": {
                f"predicted_{s}": self.area(self.predicted_px2),
                f"corrected_{s}": self.area(self.corrected_px2),
                f"unchanged_{s}": self.area(self.unchanged_px2),
                f"added_{s}": self.area(self.added_px2),
                f"removed_{s}": self.area(self.removed_px2),
                f"relabelled_{s}": self.area(self.relabelled_total_px2),
                f"changed_{s}": self.area(self.changed_px2),
                "changed_share": self.changed_share,
            },
            "per_class": per_class,
            f"relabelled_{s}": {
                a: {b: self.area(v) for b, v in row.items()} for a, row in self.relabelled_px2.items()
            },
            "roi": roi,
            "objects": dict(self.objects),
            "excluded": dict(self.excluded),
            "unknown_classes": dict(self.unknown_classes),
            "warnings": list(self.warnings),
        }


# ------------------------------------------------------------------------------------------- geometry
def _as_array(geoms: Sequence[shapely.Geometry]) -> np.ndarray:
    out = np.empty(len(geoms), dtype=object)
    out[:] = list(geoms)
    return out


def _explode_polygons(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The simple polygons with an area in any geometries (collections, multi-parts), and their index."""
    index = np.arange(len(geoms))
    parts = geoms
    while len(parts):
        types = shapely.get_type_id(parts)
        multi = np.isin(types, (4, 5, 6, 7))
        if not multi.any():
            break
        exploded, where = shapely.get_parts(parts, return_index=True)
        index = index[where]
        parts = exploded
    if not len(parts):
        return np.empty(0, dtype=object), np.empty(0, dtype=np.intp)
    keep = (shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)
    return parts[keep], index[keep]


def _union_parts(geoms: np.ndarray) -> np.ndarray:
    """The union of ``geoms`` as disjoint simple polygons."""
    if not len(geoms):
        return np.empty(0, dtype=object)
    merged = shapely.disjoint_subset_union_all(geoms) if len(geoms) > 1 else geoms[0]
    parts, _ = _explode_polygons(np.array([merged], dtype=object))
    return parts


def _subtract(parts: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``parts[i]`` minus the union of ``others``, exploded: ``(polygons, index into parts)``."""
    out = parts.copy()
    if len(parts) and len(others):
        tree = shapely.STRtree(others)
        hit_i, hit_j = tree.query(parts, predicate="intersects")
        if len(hit_i):
            counts = np.bincount(hit_i, minlength=len(parts))
            single = counts[hit_i] == 1
            out[hit_i[single]] = shapely.difference(parts[hit_i[single]], others[hit_j[single]])
            multi_i, multi_j = hit_i[~single], hit_j[~single]
            order = np.argsort(multi_i, kind="stable")
            multi_i, multi_j = multi_i[order], multi_j[order]
            bounds = np.flatnonzero(np.diff(multi_i)) + 1
            for group_i, group_j in zip(np.split(multi_i, bounds), np.split(multi_j, bounds), strict=True):
                if len(group_i):
                    k = int(group_i[0])
                    out[k] = shapely.difference(parts[k], shapely.union_all(others[group_j]))
    return _explode_polygons(out)


def _overlay(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of ``a`` and ``b`` parts that meet and their intersections: ``(i, j, geometries)``."""
    if not len(a) or not len(b):
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, np.empty(0, dtype=object)
    tree = shapely.STRtree(b)
    hit_i, hit_j = tree.query(a, predicate="intersects")
    return hit_i, hit_j, shapely.intersection(a[hit_i], b[hit_j])


def _resolve_priority(unions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-class disjoint parts (index = priority, lowest first) -> parts where higher classes win."""
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    higher = np.empty(0, dtype=object)
    for k in range(len(unions) - 1, -1, -1):
        own = unions[k]
        kept = _subtract(own, higher)[0] if len(higher) else own
        parts.append(kept)
        labels.append(np.full(len(kept), k, dtype=np.intp))
        higher = np.concatenate([higher, own])
    if not parts:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.intp)
    return np.concatenate(parts[::-1]), np.concatenate(labels[::-1])


def _clean(value: float, scale: float) -> float:
    """``value`` with float noise around zero removed (and never negative)."""
    return 0.0 if value <= _REL_EPS * max(scale, 1.0) else float(value)


def _change_pieces(
    classes: Sequence[str], pred: np.ndarray, pred_cls: np.ndarray, corr: np.ndarray, corr_cls: np.ndarray
) -> ChangePieces:
    removed_geoms, removed_idx = _subtract(pred, corr)
    added_geoms, added_idx = _subtract(corr, pred)
    hit_i, hit_j, inter = _overlay(pred, corr)
    relabel = pred_cls[hit_i] != corr_cls[hit_j]
    rel_geoms, rel_idx = _explode_polygons(inter[relabel])
    rel_i, rel_j = hit_i[relabel][rel_idx], hit_j[relabel][rel_idx]
    return ChangePieces(
        added=[(classes[int(corr_cls[k])], g) for g, k in zip(added_geoms, added_idx, strict=True)],
        removed=[(classes[int(pred_cls[k])], g) for g, k in zip(removed_geoms, removed_idx, strict=True)],
        relabelled=[
            (classes[int(pred_cls[i])], classes[int(corr_cls[j])], g)
            for g, i, j in zip(rel_geoms, rel_i, rel_j, strict=True)
        ],
    )


# ------------------------------------------------------------------------------------------- classes
@dataclass
class _Sorted:
    """The usable objects of one file, sorted into tissue classes, ROI and left-out ones."""

    label: str
    by_class: dict[str, list[shapely.Geometry]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    roi: list[shapely.Geometry] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    marked: int = 0
    used: int = 0
    bounds: tuple[float, float, float, float] | None = None


def _class_matcher(
    known: Sequence[str], roi_class: str | None, class_map: ClassMap, exclude: Sequence[str]
) -> ClassMatcher[tuple[str, str | None]]:
    """QuPath class name -> ``(kind, compared class)``, by the one matching rule of :mod:`qpbridge.qupath.classes`.

    The ROI class first, then the compared classes by name, then the class map's names and aliases (each goes
    to its label's class; ignore, region and skip entries are left out), then the ``exclude`` patterns.
    """
    names: dict[str, tuple[str, str | None]] = {}
    if roi_class is not None:
        names[roi_class] = ("roi", roi_class)
    for name in known:
        names.setdefault(name, ("class", name))
    label_names = {c.label: c.name for c in class_map.classes}
    for name, value in class_map.names.items():
        names.setdefault(name, ("class", label_names[value]) if value in label_names else ("exclude", None))
    return ClassMatcher(names, [(pattern, ("exclude", None)) for pattern in exclude])


def _sort_features(
    features: Iterable[Feature],
    label: str,
    *,
    matcher: ClassMatcher[tuple[str, str | None]],
    object_types: Sequence[str],
) -> _Sorted:
    out = _Sorted(label)
    feats = [f for f in features if f.object_type in object_types]
    for f in features:
        if f.object_type not in object_types:
            key = f"type {f.object_type}"
            out.excluded[key] = out.excluded.get(key, 0) + 1
    geoms = _as_array([f.geometry for f in feats])
    if not len(geoms):
        return out
    types = shapely.get_type_id(geoms)  # -1 for None
    area_like = np.isin(types, (3, 6, 7)) & ~shapely.is_empty(geoms)
    for i in np.flatnonzero(area_like & ((types == 7) | ~shapely.is_valid(geoms))).tolist():
        geoms[i] = make_valid_polygonal(geoms[i])
    usable = area_like & (shapely.area(geoms) > 0)
    if not usable.all():
        out.excluded["no area"] = out.excluded.get("no area", 0) + int((~usable).sum())
    category: dict[str | None, tuple[str, str]] = {}  # class name -> (kind, compared name)
    kept: list[int] = []
    for i in np.flatnonzero(usable).tolist():
        feat = feats[i]
        hit = category.get(feat.class_name)
        if hit is None:
            shown = UNCLASSIFIED if feat.class_name is None else feat.class_name
            kind, name = matcher.match(feat.class_name) or ("class", None)
            hit = (kind, shown if name is None else name)
            category[feat.class_name] = hit
        kind, name = hit
        if kind == "exclude":
            key = f"class {name}"
            out.excluded[key] = out.excluded.get(key, 0) + 1
            continue
        if kind == "roi":
            out.roi.append(geoms[i])
        else:
            out.by_class.setdefault(name, []).append(geoms[i])
            out.counts[name] = out.counts.get(name, 0) + 1
        if prediction_state(feat.measurements) == "untouched":
            out.marked += 1
        kept.append(i)
    out.used = len(kept)
    if kept:
        x0, y0, x1, y1 = shapely.total_bounds(geoms[kept]).tolist()
        out.bounds = (x0, y0, x1, y1)
    return out


def _class_order(
    predicted: _Sorted, corrected: _Sorted, known: Sequence[str], strict: bool
) -> tuple[tuple[str, ...], dict[str, int], list[str]]:
    """Priority order (lowest first), the unknown corrected classes, and warnings."""
    warnings: list[str] = []
    if strict:
        bad: list[str] = []
        for sorted_ in (predicted, corrected):
            extra = {n: c for n, c in sorted_.counts.items() if n not in known}
            if extra:
                listing = ", ".join(f"{n!r} ({c})" for n, c in sorted(extra.items()))
                bad.append(f"{sorted_.label}: {listing}")
        if bad:
            raise InputError(
                f"classes not in --classes ({', '.join(known)}): {'; '.join(bad)}: add them to --classes, "
                "or leave --classes out to compare every class"
            )
    unknown = {n: c for n, c in corrected.counts.items() if n not in known and n not in predicted.counts}
    if unknown:
        listing = ", ".join(f"{n!r} ({c} object{'s' if c != 1 else ''})" for n, c in sorted(unknown.items()))
        warnings.append(
            f"classes in the corrected file that the prediction and the known classes ({', '.join(known)}) "
            f"lack: {listing}; they are compared as classes of their own, below every known class"
        )
    present = set(predicted.counts) | set(corrected.counts)
    if strict:  # every listed class, present or not
        return tuple(known), unknown, warnings
    others = sorted(present - set(known))
    return tuple(others) + tuple(k for k in known if k in present), unknown, warnings


# ----------------------------------------------------------------------------------------- the diff
def _load(
    source: Any, label: str, warnings: list[str], cmap: ClassMap, mpp: float | None
) -> tuple[list[Feature], str]:
    if isinstance(source, (str, os.PathLike)):
        names = {c.label: c.name for c in cmap.classes}
        result = read_annotations(source, format_options=label_options_for_slide(names, mpp))
        warnings.extend(result.warnings[:_MAX_READ_WARNINGS])
        if len(result.warnings) > _MAX_READ_WARNINGS:
            warnings.append(
                f"{source}: ... and {len(result.warnings) - _MAX_READ_WARNINGS} more reading warnings"
            )
        return result.features, str(source)
    return list(source), label


def _check_bounds(sorted_: _Sorted, size: tuple[int, int], warnings: list[str]) -> None:
    if sorted_.bounds is None:
        return
    w, h = size
    x0, y0, x1, y1 = sorted_.bounds
    overshoot = max(-x0, -y0, x1 - w, y1 - h)
    tolerance = max(_BOUNDS_TOLERANCE_MIN_PX, _BOUNDS_TOLERANCE_FRAC * max(w, h))
    if overshoot > tolerance:
        raise InputError(
            f"{sorted_.label} does not fit the slide ({w} x {h} px): its objects reach x {x0:.0f}..{x1:.0f}, "
            f"y {y0:.0f}..{y1:.0f}: it belongs to another slide; give the files (and --slide) of one slide"
        )
    if overshoot > 0:
        warnings.append(f"{sorted_.label}: objects reach {overshoot:.1f} px beyond the slide ({w} x {h} px)")


def _check_overlap(predicted: _Sorted, corrected: _Sorted) -> None:
    if predicted.bounds is None or corrected.bounds is None:
        return
    box_p = shapely.box(*predicted.bounds)
    box_c = shapely.box(*corrected.bounds)
    if not box_p.intersects(box_c):
        px0, py0, px1, py1 = predicted.bounds
        cx0, cy0, cx1, cy1 = corrected.bounds
        raise InputError(
            f"{predicted.label} and {corrected.label} do not overlap at all (predicted objects in x "
            f"{px0:.0f}..{px1:.0f}, y {py0:.0f}..{py1:.0f}; corrected in x {cx0:.0f}..{cx1:.0f}, y "
            f"{cy0:.0f}..{cy1:.0f}): they are for different slides; pair each prediction with its own "
            "corrections"
        )


def diff_geojson(
    predicted: str | os.PathLike[str] | Sequence[Feature],
    corrected: str | os.PathLike[str] | Sequence[Feature],
    *,
    mpp: float | None = None,
    classes: Sequence[str] | None = None,
    object_types: Sequence[str] = REGION_OBJECT_TYPES,
    roi_class: str | None = ROI_CLASS.name,
    exclude_classes: Sequence[str] | None = None,
    slide_size_px: tuple[int, int] | None = None,
    mpp_source: str | None = None,
    name: str | None = None,
    class_map: ClassMap | None = None,
    export: CorrectionsSidecar | None = None,
) -> DiffResult:
    """Compare a prediction with the pathologist's corrected objects, by area per class.

    Parameters
    ----------
    predicted, corrected
        Annotation files of any format :func:`qpbridge.formats.read_annotations` reads (QuPath GeoJSON, ASAP
        or ImageScope XML, DSA JSON; a label image as class labels, named by the class map) or lists of
        :class:`~qpbridge.qupath.Feature`; level-0 pixel coordinates.
    mpp
        Level-0 pixel size in um/px: areas in um^2; ``None``: areas in px^2.
    classes
        Tissue classes in priority order, lowest first (overlaps within a file go to the later one). Given,
        it is strict: a class outside it in either file is an :class:`InputError`. ``None``: the class map's
        classes by label (default the DeepBatch classes, :data:`DEFAULT_CLASS_ORDER`), and other classes are
        compared below them (a warning lists those found only in the corrected file).
    object_types
        Object types compared; others (cells, tiles, TMA cores) are counted in ``excluded``.
    roi_class
        Class of the ROI model's output, compared in its own section (``None``: an ordinary class).
    exclude_classes
        ``fnmatch`` patterns (any case) of classes left out; default the class map's reviewed-area and ignore
        patterns (:data:`DEFAULT_EXCLUDE_PATTERNS`).
    class_map
        How QuPath class names are matched to classes, as ``qpbridge masks`` matches them (its
        :class:`~qpbridge.rasterize.ClassMap`: a model card's classes and aliases, ``"Tissue"`` = label 0,
        ``--class`` overrides; entries mapped to ignore, region or skip are left out). Default
        :meth:`ClassMap.deepbatch() <qpbridge.rasterize.ClassMap.deepbatch>`.
    slide_size_px
        QuPath's image size ``(width, height)``: objects of either file reaching well beyond it are an
        :class:`InputError` (another slide's file).
    mpp_source, name
        Recorded in the result (where ``mpp`` came from; the slide's name).
    export
        The corrections sidecar ``export_corrections.groovy`` wrote (what the export holds). When ``corrected``
        is a file (an export), predictions of a type it lacks are an error unless the sidecar says the export
        holds every prediction (:func:`qpbridge.qupath.check_export_holds`): objects left out of an export are
        not deletions.

    Raises
    ------
    InputError
        Empty corrected file ("nothing to compare"), files of different slides (see ``slide_size_px``;
        without it: predicted and corrected objects whose extents do not overlap at all), classes outside a
        strict ``classes`` list, a bad ``mpp``.

    Examples
    --------
    >>> from shapely import box
    >>> from qpbridge.qupath import Feature
    >>> predicted = [Feature(box(0, 0, 100, 100), "Benign", object_type="detection")]
    >>> corrected = [Feature(box(10, 0, 110, 100), "Benign")]
    >>> d = diff_geojson(predicted, corrected, mpp=None)
    >>> d.added_px2, d.removed_px2, d.area_unit
    (1000.0, 1000.0, 'px^2')
    """
    if mpp is not None and (not math.isfinite(mpp) or mpp <= 0):
        raise InputError(f"--mpp must be a positive number of um/px, got {mpp}: e.g. 0.25 for a 40x scan")
    warnings: list[str] = []
    cmap = class_map if class_map is not None else ClassMap.deepbatch()
    pred_features, pred_label = _load(predicted, "PREDICTED", warnings, cmap, mpp)
    corr_features, corr_label = _load(corrected, "CORRECTED", warnings, cmap, mpp)
    if not corr_features:
        raise InputError(
            f"{corr_label} holds no objects: nothing to compare; export the corrected objects from QuPath "
            "(groovy/export_corrections.groovy) and give that file"
        )
    compared = tuple(object_types)
    if export is not None or isinstance(corrected, (str, os.PathLike)):  # an export, not objects in hand
        check_export_holds(((f.object_type, f.class_name) for f in pred_features),
                           ((f.object_type, f.class_name, prediction_state(f.measurements)) for f in corr_features),
                           export, corr_label, compared=compared)
    known = list(classes) if classes is not None else [c.name for c in cmap.classes]
    if exclude_classes is None:
        exclude_classes = (*cmap.region_patterns, *cmap.ignore_patterns)
    matcher = _class_matcher(known, roi_class, cmap, tuple(exclude_classes))
    pred = _sort_features(pred_features, pred_label, matcher=matcher, object_types=tuple(object_types))
    corr = _sort_features(corr_features, corr_label, matcher=matcher, object_types=tuple(object_types))
    if not pred_features:
        warnings.append(f"{pred_label} holds no objects: everything corrected counts as added")
    if slide_size_px is not None:
        _check_bounds(pred, slide_size_px, warnings)
        _check_bounds(corr, slide_size_px, warnings)
    else:
        _check_overlap(pred, corr)
    if corr.used == 0:
        warnings.append(
            f"{corr_label} holds no tissue-class or ROI objects: everything predicted counts as removed"
        )
    if pred.used and pred.marked == 0 and corr.marked > 0:
        warnings.append(
            f"{pred_label} carries no qpbridge prediction marker but {corr_label} does: "
            "are the two files swapped?"
        )
    order, unknown, class_warnings = _class_order(pred, corr, known, strict=classes is not None)
    warnings.extend(class_warnings)

    index = {c: k for k, c in enumerate(order)}
    pred_parts, pred_cls = _resolve_priority(
        [_union_parts(_as_array(pred.by_class.get(c, []))) for c in order]
    )
    corr_parts, corr_cls = _resolve_priority(
        [_union_parts(_as_array(corr.by_class.get(c, []))) for c in order]
    )
    n = len(order)
    pred_area = np.bincount(pred_cls, weights=shapely.area(pred_parts), minlength=n) if n else np.zeros(0)
    corr_area = np.bincount(corr_cls, weights=shapely.area(corr_parts), minlength=n) if n else np.zeros(0)
    matrix = np.zeros((n, n))
    hit_i, hit_j, inter = _overlay(pred_parts, corr_parts)
    if len(hit_i):
        np.add.at(matrix, (pred_cls[hit_i], corr_cls[hit_j]), shapely.area(inter))

    per_class: dict[str, ClassDiff] = {}
    relabelled: dict[str, dict[str, float]] = {}
    for name_, k in index.items():
        scale = max(pred_area[k], corr_area[k])
        row = {order[j]: _clean(matrix[k, j], scale) for j in range(n) if j != k}
        row = {b: v for b, v in row.items() if v > 0}
        if row:
            relabelled[name_] = row
        per_class[name_] = ClassDiff(
            name=name_,
            predicted_px2=float(pred_area[k]),
            corrected_px2=float(corr_area[k]),
            unchanged_px2=_clean(matrix[k, k], scale),
            removed_px2=_clean(pred_area[k] - matrix[k, :].sum(), scale),
            added_px2=_clean(corr_area[k] - matrix[:, k].sum(), scale),
            relabelled_out_px2=_clean(matrix[k, :].sum() - matrix[k, k], scale),
            relabelled_in_px2=_clean(matrix[:, k].sum() - matrix[k, k], scale),
        )

    roi = None
    if pred.roi or corr.roi:
        p_roi = _union_parts(_as_array(pred.roi))
        c_roi = _union_parts(_as_array(corr.roi))
        _, _, roi_inter = _overlay(p_roi, c_roi)
        p_area = float(shapely.area(p_roi).sum()) if len(p_roi) else 0.0
        c_area = float(shapely.area(c_roi).sum()) if len(c_roi) else 0.0
        both = float(shapely.area(roi_inter).sum()) if len(roi_inter) else 0.0
        scale = max(p_area, c_area)
        roi = RoiDiff(
            predicted_px2=p_area,
            corrected_px2=c_area,
            unchanged_px2=_clean(both, scale),
            added_px2=_clean(c_area - both, scale),
            removed_px2=_clean(p_area - both, scale),
        )

    excluded: dict[str, int] = {}
    for sorted_ in (pred, corr):
        for key, count in sorted_.excluded.items():
            excluded[key] = excluded.get(key, 0) + count
    objects = {
        "predicted": pred.used,
        "corrected": corr.used,
        "corrected_unchanged_predictions": corr.marked,
        "corrected_edited_or_new": corr.used - corr.marked,
    }
    if mpp_source is None:
        mpp_source = "given" if mpp is not None else "none"
    return DiffResult(
        classes=order,
        per_class=per_class,
        relabelled_px2=relabelled,
        roi=roi,
        mpp=float(mpp) if mpp is not None else None,
        mpp_source=mpp_source,
        objects=objects,
        excluded=excluded,
        unknown_classes=unknown,
        warnings=warnings,
        name=name,
        predicted_source=pred_label,
        corrected_source=corr_label,
        slide_size_px=slide_size_px,
        _pred_parts=pred_parts,
        _pred_class=pred_cls,
        _corr_parts=corr_parts,
        _corr_class=corr_cls,
    )


# -------------------------------------------------------------------------------- files and sidecars
def _sidecar_info(corrected: Path) -> tuple[CorrectionsSidecar | None, tuple[int, int] | None, str | None]:
    """``export_corrections.groovy``'s sidecar beside ``corrected`` and the image size it records, if any."""
    sidecar = corrections_sidecar_path(corrected)
    if sidecar is None or not sidecar.is_file():
        return None, None, None
    try:
        info = load_corrections_sidecar(sidecar)
    except InputError as exc:
        return None, None, f"ignored {sidecar}: {exc}"
    size = (info.width_px, info.height_px) if info.width_px and info.height_px else None
    return info, size, None


def _prediction_meta_mpp(predicted: Path) -> float | None:
    meta = meta_path(predicted)
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    summary = data.get("summary") if isinstance(data, dict) else None
    value = summary.get("slide_mpp") if isinstance(summary, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def diff_files(
    predicted: str | os.PathLike[str],
    corrected: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    slide: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **kw: Any,
) -> DiffResult:
    """:func:`diff_geojson` on two files, finding the pixel size and the slide size on its own.

    The pixel size comes from, in order: ``mpp``; the slide (``slide``, its metadata); the corrections
    sidecar ``<base>.json`` that ``export_corrections.groovy`` writes beside ``<base>.geojson``; the
    prediction's ``<file>.meta.json``; else areas are in px^2. The image size (for the "another slide"
    check) comes from the slide, else from the corrections sidecar.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> from qpbridge.qupath import Feature, write_geojson
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> square = Feature(box(0, 0, 100, 100), "Benign")
    >>> _ = write_geojson(folder / "p.geojson", [square])
    >>> _ = write_geojson(folder / "c.geojson", [Feature(box(0, 0, 100, 50), "Benign")])
    >>> d = diff_files(folder / "p.geojson", folder / "c.geojson", mpp=0.5)
    >>> d.to_dict()["totals"]["removed_um2"]
    1250.0
    """
    predicted, corrected = Path(predicted), Path(corrected)
    for path, what in ((predicted, "predicted"), (corrected, "corrected")):
        if not path.is_file():
            raise InputError(f"{what} file {path} not found: check the path")
    warnings: list[str] = []
    size: tuple[int, int] | None = None
    source = "none"
    export, side_size, side_warning = _sidecar_info(corrected)
    side_mpp = export.pixel_size_um if export is not None else None
    if side_warning:
        warnings.append(side_warning)
    if slide is not None:
        from qpbridge.slide import open_slide

        with open_slide(Path(slide), mpp=mpp) as opened:
            size = opened.qupath_size_px
            if mpp is None and opened.has_mpp:
                mpp, source = opened.mpp, f"slide {Path(slide).name}"
        if name is None:
            name = image_basename(slide)
    else:
        size = side_size
    if mpp is not None and source == "none":
        source = "--mpp"
    if mpp is None and side_mpp is not None:
        mpp, source = side_mpp, "corrections sidecar"
    if mpp is None:
        meta_mpp = _prediction_meta_mpp(predicted)
        if meta_mpp is not None:
            mpp, source = meta_mpp, "prediction meta"
    if name is None:
        name = image_basename(annotation_file_base(corrected) or corrected.name)
    result = diff_geojson(
        predicted, corrected, mpp=mpp, slide_size_px=size, mpp_source=source, name=name, export=export, **kw
    )
    result.warnings[:0] = warnings
    if mpp is None:
        result.warnings.append(
            "no pixel size (give --mpp or --slide): areas are in px^2 of the slide's full resolution"
        )
    return result


# ------------------------------------------------------------------------------------------- batches
@dataclass
class PairMatch:
    """Files of a predictions folder and a corrections folder paired by slide name."""

    pairs: list[tuple[str, Path, Path]]
    predicted_only: list[str]
    corrected_only: list[str]
    warnings: list[str] = field(default_factory=list)


def _folder_file_base(path: Path) -> str | None:
    """The slide base name of an annotation file in a folder: ``<base>.geojson[.gz]``, ``<base>.xml[.gz]``, or a
    ``<base>.json[.gz]`` that holds DSA annotations (other ``.json`` files are sidecars)."""
    base = annotation_file_base(path)
    if base is not None:
        return base
    lower = path.name.lower()
    for suffix in (".json.gz", ".json"):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            try:
                return path.name[: -len(suffix)] if detect_format(path) == "dsa" else None
            except FormatError:
                return None
    return None


def _index_folder(folder: Path, what: str, warnings: list[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} not found: give a folder of .geojson files")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        base = _folder_file_base(path) if path.is_file() else None
        if base is None:
            continue
        found.setdefault(image_basename(base), []).append(path)
    out: dict[str, Path] = {}
    for key, paths in found.items():
        # .geojson before .geojson.gz (the import script's order) before other formats, an exact base before a
        # normalised one
        paths.sort(key=lambda p: (
            _folder_file_base(p) != key, geojson_file_base(p) is None, p.name.lower().endswith(".gz"), p.name
        ))
        out[key] = paths[0]
        if len(paths) > 1:
            warnings.append(
                f"{what} folder {folder}: {', '.join(p.name for p in paths)} are all for {key!r}; "
                f"using {paths[0].name}"
            )
    return out


def match_pairs(predicted_dir: str | os.PathLike[str], corrected_dir: str | os.PathLike[str]) -> PairMatch:
    """Pair the ``<base>.geojson[.gz]`` files of two folders by slide name (:func:`qpbridge.qupath.image_basename`).

    A prediction ``slide1.geojson`` (``qpbridge.qupath.prediction_filename("slide1.svs")``) pairs with the
    corrections ``slide1.geojson`` that ``export_corrections.groovy`` wrote; ``slide1.svs.geojson`` pairs too.
    Corrections in the field's other formats pair the same way: ``slide1.xml`` (ASAP or ImageScope XML, plain
    or ``.gz``) and ``slide1.json`` holding DSA annotations (a ``.json`` of anything else is a sidecar). Where
    a folder holds several files for one slide, GeoJSON comes first (with a warning).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for p in ("pred/a.geojson", "pred/b.geojson.gz", "corr/a.geojson", "corr/a.json", "corr/c.geojson"):
    ...     (root / p).parent.mkdir(exist_ok=True); _ = (root / p).write_text("{}")
    >>> m = match_pairs(root / "pred", root / "corr")
    >>> [n for n, _, _ in m.pairs], m.predicted_only, m.corrected_only
    (['a'], ['b'], ['c'])
    """
    warnings: list[str] = []
    pred = _index_folder(Path(predicted_dir), "predictions", warnings)
    corr = _index_folder(Path(corrected_dir), "corrections", warnings)
    pairs = [(key, pred[key], corr[key]) for key in sorted(set(pred) & set(corr))]
    return PairMatch(
        pairs=pairs,
        predicted_only=sorted(set(pred) - set(corr)),
        corrected_only=sorted(set(corr) - set(pred)),
        warnings=warnings,
    )


@dataclass
class BatchResult:
    """Diffs of several slides, ranked by changed share (most corrected first), and the pairs that failed."""

    results: list[DiffResult]
    failures: list[tuple[str, str, int]]  # (name, message, exit code)
    predicted_only: list[str] = field(default_factory=list)
    corrected_only: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "slides": [r.to_dict() for r in self.results],
            "failures": [{"name": n, "error": m} for n, m, _ in self.failures],
            "predicted_only": list(self.predicted_only),
            "corrected_only": list(self.corrected_only),
            "warnings": list(self.warnings),
        }


def _rank_key(result: DiffResult) -> tuple[float, float, str]:
    share = result.changed_share
    if share is None:
        share = math.inf if result.changed_px2 > 0 else 0.0
    return (-share, -result.area(result.changed_px2), result.name or "")


def diff_pairs(
    pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    *,
    mpp: float | None = None,
    **kw: Any,
) -> BatchResult:
    """Diff several slides; each pair is (predicted, corrected) files or (predictions, corrections) folders.

    Folders are paired by slide name (:func:`match_pairs`). A pair that fails (empty corrections, another
    slide's file...) is listed in ``failures`` and the others go on. Results are ranked by
    :attr:`DiffResult.changed_share`, most corrected first (a slide with changes but no prediction first of
    all), then by changed area.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> from qpbridge.qupath import Feature, write_geojson
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for sub in ("pred", "corr"):
    ...     (root / sub).mkdir()
    >>> for name, width in (("a", 100), ("b", 50)):
    ...     _ = write_geojson(root / "pred" / f"{name}.geojson", [Feature(box(0, 0, 100, 100), "Benign")])
    ...     _ = write_geojson(root / "corr" / f"{name}.geojson", [Feature(box(0, 0, width, 100), "Benign")])
    >>> [r.name for r in diff_pairs([(root / "pred", root / "corr")]).results]
    ['b', 'a']
    """
    from qpbridge.errors import QpbridgeError

    jobs: list[tuple[str, Path, Path]] = []
    batch = BatchResult([], [])
    for first, second in pairs:
        a, b = Path(first), Path(second)
        if a.is_dir() or b.is_dir():
            if not (a.is_dir() and b.is_dir()):
                raise InputError(
                    f"pair {a} {b}: give two folders (predictions, corrections) or two files, not one of each"
                )
            match = match_pairs(a, b)
            jobs.extend(match.pairs)
            batch.predicted_only.extend(match.predicted_only)
            batch.corrected_only.extend(match.corrected_only)
            batch.warnings.extend(match.warnings)
        else:
            jobs.append((image_basename(annotation_file_base(b) or b.name), a, b))
    if not jobs:
        raise InputError(
            "no prediction and corrections share a slide name: the folders must hold <slide>.geojson files "
            "with the same <slide> (as qpbridge predict and groovy/export_corrections.groovy name them)"
        )
    for name, pred, corr in jobs:
        try:
            batch.results.append(diff_files(pred, corr, mpp=mpp, name=name, **kw))
        except QpbridgeError as exc:
            batch.failures.append((name, str(exc), exc.exit_code))
    batch.results.sort(key=_rank_key)
    return batch


# ---------------------------------------------------------------------------------- changed-only file
def changed_only_features(
    result: DiffResult,
    *,
    margin_px: float = 0.0,
    removed_class: str | None = "Normal",
    region_class: str = REGION_CLASS,
    region_name: str | None = None,
) -> list[Feature]:
    """The changes as QuPath features that ``qpbridge masks`` uses as a reviewed area.

    * ``region_class`` (``"Region*"``) **annotations**: the changed area (added + removed + relabelled),
      dilated by ``margin_px`` and clipped to the slide when its size is known. ``qpbridge masks`` trains
      only inside them (outside: label 255).
    * **detections** with the corrected class: the added pieces (name ``"Added"``) and the relabelled ones
      (name ``"Relabelled from <predicted class>"``);
    * **detections** of class ``removed_class`` (``"Normal"``, label 0): the removed pieces (name
      ``"Removed <predicted class>"``); ``None`` leaves them out (``masks`` fills a reviewed area's
      uncovered pixels with label 0 anyway, but not with ``--reviewed annotated``);
    * with a margin, **detections** for the corrected classes inside the margin (name
      ``"Unchanged (margin)"``), so that the whole ``Region*`` area is labelled as corrected.

    With ``margin_px == 0`` the detections cover exactly the changed area, as do the annotations. A margin
    is clipped to the slide (to ``x, y >= 0`` when its size is unknown). ``region_name`` names the
    annotations (default ``"Changed area"``).

    Examples
    --------
    >>> from shapely import box
    >>> square = box(0, 0, 100, 100)
    >>> d = diff_geojson([Feature(square, "Benign")], [Feature(square, "In situ carcinoma")])
    >>> [(f.class_name, f.object_type, f.geometry.area) for f in changed_only_features(d)]
    [('Region*', 'annotation', 10000.0), ('In situ carcinoma', 'detection', 10000.0)]
    """
    if not math.isfinite(margin_px) or margin_px < 0:
        raise InputError(f"--margin-um must be >= 0, got a margin of {margin_px} px")
    pieces = result.pieces()
    every = pieces.all_geometries()
    features: list[Feature] = []
    if not len(every):
        return features
    changed = shapely.union_all(every)
    region = changed.buffer(margin_px, quad_segs=8) if margin_px > 0 else changed
    if margin_px > 0:  # keep the widened area on the image: inside the slide, else right of and below 0, 0
        x1, y1 = result.slide_size_px or shapely.total_bounds(region)[2:].tolist()
        region = shapely.intersection(region, shapely.box(0, 0, x1, y1))
    region_parts, _ = _explode_polygons(np.array([region], dtype=object))
    mpp = result.mpp

    def measure(geom: shapely.Geometry) -> dict[str, float]:
        area = float(geom.area)
        return {"Area um^2": area * mpp * mpp} if mpp is not None else {"Area px^2": area}

    label = region_name or ("Changed area" if margin_px == 0 else f"Changed area + {margin_px:g} px margin")
    for geom in region_parts:
        features.append(
            Feature(geom, region_class, REGION_COLOR, "annotation", name=label, measurements=measure(geom))
        )
    colors = {c.name: c.color for c in DEEPBATCH_CLASSES}
    for klass, geom in pieces.added:
        features.append(
            Feature(geom, klass, colors.get(klass), "detection", name="Added", measurements=measure(geom))
        )
    for before, after, geom in pieces.relabelled:
        features.append(
            Feature(
                geom,
                after,
                colors.get(after),
                "detection",
                name=f"Relabelled from {before}",
                measurements=measure(geom),
            )
        )
    if removed_class is not None:
        for before, geom in pieces.removed:
            features.append(
                Feature(
                    geom,
                    removed_class,
                    colors.get(removed_class),
                    "detection",
                    name=f"Removed {before}",
                    measurements=measure(geom),
                )
            )
    if margin_px > 0:
        ring = shapely.difference(region, changed)
        corr_parts = result._corr_parts
        ring_parts, _ = _explode_polygons(np.array([ring], dtype=object))
        hit_i, hit_j, inter = _overlay(corr_parts, ring_parts)
        polys, idx = _explode_polygons(inter)
        for geom, k in zip(polys, idx, strict=True):
            klass = result.classes[int(result._corr_class[hit_i[k]])]
            features.append(
                Feature(
                    geom,
                    klass,
                    colors.get(klass),
                    "detection",
                    name="Unchanged (margin)",
                    measurements=measure(geom),
                )
            )
    return features


def write_changed_only(
    path: str | os.PathLike[str],
    result: DiffResult,
    *,
    margin_um: float = 0.0,
    removed_class: str | None = "Normal",
    overwrite: bool = False,
) -> int:
    """Write :func:`changed_only_features` to a QuPath GeoJSON (atomic); returns the number of features.

    ``margin_um`` needs the pixel size (``result.mpp``). An existing ``path`` is an :class:`OutputError`
    unless ``overwrite``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> d = diff_geojson([Feature(box(0, 0, 100, 100), "Benign")], [Feature(box(0, 0, 100, 100), "Benign"),
    ...                  Feature(box(105, 0, 200, 100), "Invasive carcinoma")], mpp=0.5)
    >>> write_changed_only(pathlib.Path(tempfile.mkdtemp()) / "changed.geojson", d, margin_um=5)
    3
    """
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists: add --overwrite to replace it, or choose another output")
    if not math.isfinite(margin_um) or margin_um < 0:
        raise InputError(f"--margin-um must be >= 0, got {margin_um}")
    if margin_um > 0 and result.mpp is None:
        raise InputError("--margin-um needs the pixel size: give --mpp or --slide")
    margin_px = margin_um / result.mpp if (margin_um > 0 and result.mpp is not None) else 0.0
    label = "Changed area" if margin_um == 0 else f"Changed area + {margin_um:g} um margin"
    features = changed_only_features(
        result, margin_px=margin_px, removed_class=removed_class, region_name=label
    )
    meta = {
        "what": "qpbridge diff --changed-only",
        "predicted": result.predicted_source,
        "corrected": result.corrected_source,
        "mpp": result.mpp,
        "margin_um": margin_um,
        "removed_class": removed_class,
    }
    summary = write_geojson(out, features, meta=meta)
    return summary.written
