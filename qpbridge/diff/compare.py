"""``diff_geojson``: a prediction and its corrections compared by area per class, in steps.

The steps (see :mod:`qpbridge.diff` for the rules): read both (any annotation format, or features in hand)
and check that the export holds what is compared; sort each file's objects into tissue classes, ROI and
left-out ones by the one class-matching rule; check that both files are of one slide; order the classes by
priority; resolve each file's overlaps by that priority into disjoint regions; overlay the two files'
regions (:mod:`qpbridge.diff.geometry`) into the areas of a :class:`~qpbridge.diff.result.DiffResult`.

Examples
--------
>>> from shapely import box
>>> from qpbridge.qupath import Feature
>>> d = diff_geojson([Feature(box(0, 0, 10, 10), "Benign")], [Feature(box(0, 0, 10, 10), "Pen mark")])
>>> d.excluded, d.removed_px2
({'class Pen mark': 1}, 100.0)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from qpbridge.classes import DEEPBATCH_CLASSES, ROI_CLASS
from qpbridge.diff.geometry import as_geometry_array, clean_area, overlay, resolve_priority, union_parts
from qpbridge.diff.nuclei import NucleiDiff, diff_nuclei, nuclei_of
from qpbridge.diff.result import ClassDiff, DiffResult, RoiDiff
from qpbridge.errors import InputError
from qpbridge.formats import label_options_for_slide, read_annotations
from qpbridge.qupath import (
    CorrectionsSidecar,
    Feature,
    check_export_holds,
    make_valid_polygonal,
    prediction_state,
)
from qpbridge.qupath.classes import RESERVED_PATTERNS, UNCLASSIFIED, ClassMatcher
from qpbridge.qupath.objects import REGION_OBJECT_TYPES, object_role
from qpbridge.rasterize import ClassMap

__all__ = [
    "DEFAULT_CLASS_ORDER",
    "DEFAULT_EXCLUDE_PATTERNS",
    "diff_geojson",
]

#: Tissue classes in priority order, lowest first (the DeepBatch labels 0..3: a higher label wins).
DEFAULT_CLASS_ORDER: tuple[str, ...] = tuple(c.name for c in DEEPBATCH_CLASSES)
#: Classes left out of the comparison: ``qpbridge masks``' reviewed-area and ignore classes.
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = RESERVED_PATTERNS

#: Objects may reach this share of the slide's larger side beyond it before the file is another slide's.
_BOUNDS_TOLERANCE_FRAC = 0.01
_BOUNDS_TOLERANCE_MIN_PX = 2.0
_MAX_READ_WARNINGS = 5


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
    feats = []
    for f in features:
        if f.object_type in object_types and object_role(f.object_type, f.measurements) == "region":
            feats.append(f)
        else:
            key = f"type {f.object_type}" if f.object_type not in object_types else "nuclei"
            out.excluded[key] = out.excluded.get(key, 0) + 1
    geoms = as_geometry_array([f.geometry for f in feats])
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
    is_export = export is not None or isinstance(corrected, (str, os.PathLike))  # not objects in hand
    _check_corrected(pred_features, corr_features, corr_label, tuple(object_types), export, is_export=is_export)
    known = list(classes) if classes is not None else [c.name for c in cmap.classes]
    exclude = tuple(exclude_classes) if exclude_classes is not None else (*cmap.region_patterns, *cmap.ignore_patterns)
    matcher = _class_matcher(known, roi_class, cmap, exclude)
    nuclei, corr_features = _nuclei_diff(pred_features, corr_features, mpp, warnings)
    pred = _sort_features(pred_features, pred_label, matcher=matcher, object_types=tuple(object_types))
    corr = _sort_features(corr_features, corr_label, matcher=matcher, object_types=tuple(object_types))
    _check_pair(pred, corr, slide_size_px, warnings, predicted_empty=not pred_features, nuclei=nuclei is not None)
    order, unknown, class_warnings = _class_order(pred, corr, known, strict=classes is not None)
    warnings.extend(class_warnings)
    pred_parts, pred_cls = _regions(pred, order)
    corr_parts, corr_cls = _regions(corr, order)
    per_class, relabelled = _class_diffs(order, pred_parts, pred_cls, corr_parts, corr_cls)
    objects, excluded = _object_counts(pred, corr)
    if nuclei is not None:
        excluded.pop("nuclei", None)  # compared one by one, not left out
    return DiffResult(
        classes=order, per_class=per_class, relabelled_px2=relabelled, roi=_roi_diff(pred, corr),
        mpp=float(mpp) if mpp is not None else None, objects=objects, excluded=excluded,
        mpp_source=mpp_source if mpp_source is not None else ("given" if mpp is not None else "none"),
        unknown_classes=unknown, warnings=warnings, name=name, predicted_source=pred_label,
        corrected_source=corr_label, slide_size_px=slide_size_px, predicted_regions=pred_parts,
        predicted_region_class=pred_cls, corrected_regions=corr_parts, corrected_region_class=corr_cls,
        nuclei=nuclei,
    )


def _nuclei_diff(
    pred_features: Sequence[Feature], corr_features: Sequence[Feature], mpp: float | None, warnings: list[str]
) -> tuple[NucleiDiff | None, list[Feature]]:
    """The nuclei compared one by one when either file holds nuclei (:mod:`qpbridge.diff.nuclei`), and the
    corrected objects left for the area comparison (without the nuclei the pathologist drew)."""
    pred_nuclei = nuclei_of(pred_features, mpp, drawn=False)
    if not pred_nuclei and not nuclei_of(corr_features, None, drawn=False):
        return None, list(corr_features)
    if mpp is None:
        warnings.append(
            "no pixel size: nuclei drawn as annotations cannot be told from regions and count as regions; "
            "give --mpp or --slide"
        )
    drawn = {id(f) for f in nuclei_of(corr_features, mpp, drawn=True)}
    regions = [f for f in corr_features if id(f) not in drawn or object_role(f.object_type, f.measurements) != "region"]
    return diff_nuclei(pred_features, corr_features, mpp=mpp), regions


def _check_corrected(
    pred_features: Sequence[Feature],
    corr_features: Sequence[Feature],
    corr_label: str,
    compared: tuple[str, ...],
    export: CorrectionsSidecar | None,
    *,
    is_export: bool,
) -> None:
    """Corrections to compare at all, and (for an export) that it holds the predictions of the compared types."""
    if not corr_features:
        raise InputError(
            f"{corr_label} holds no objects: nothing to compare; export the corrected objects from QuPath "
            "(groovy/export_corrections.groovy) and give that file"
        )
    if is_export:
        check_export_holds(((f.object_type, f.class_name) for f in pred_features),
                           ((f.object_type, f.class_name, prediction_state(f.measurements)) for f in corr_features),
                           export, corr_label, compared=compared)


def _check_pair(
    pred: _Sorted,
    corr: _Sorted,
    slide_size_px: tuple[int, int] | None,
    warnings: list[str],
    *,
    predicted_empty: bool,
    nuclei: bool = False,
) -> None:
    """Both files of one slide (:class:`InputError` otherwise), and warnings for an empty or swapped pair."""
    if predicted_empty:
        warnings.append(f"{pred.label} holds no objects: everything corrected counts as added")
    if slide_size_px is not None:
        _check_bounds(pred, slide_size_px, warnings)
        _check_bounds(corr, slide_size_px, warnings)
    else:
        _check_overlap(pred, corr)
    if corr.used == 0 and not (nuclei and pred.used == 0):
        warnings.append(
            f"{corr.label} holds no tissue-class or ROI objects: everything predicted counts as removed"
        )
    if pred.used and pred.marked == 0 and corr.marked > 0:
        warnings.append(
            f"{pred.label} carries no qpbridge prediction marker but {corr.label} does: "
            "are the two files swapped?"
        )


def _regions(sorted_: _Sorted, order: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """One file's tissue-class regions after the priority rule: disjoint polygons and their class index."""
    return resolve_priority([union_parts(as_geometry_array(sorted_.by_class.get(c, []))) for c in order])


def _class_diffs(
    order: Sequence[str], pred_parts: np.ndarray, pred_cls: np.ndarray, corr_parts: np.ndarray, corr_cls: np.ndarray
) -> tuple[dict[str, ClassDiff], dict[str, dict[str, float]]]:
    """Per class its areas, and the relabelled matrix (non-zero entries), from the two files' regions."""
    index = {c: k for k, c in enumerate(order)}
    n = len(order)
    pred_area = np.bincount(pred_cls, weights=shapely.area(pred_parts), minlength=n) if n else np.zeros(0)
    corr_area = np.bincount(corr_cls, weights=shapely.area(corr_parts), minlength=n) if n else np.zeros(0)
    matrix = np.zeros((n, n))
    hit_i, hit_j, inter = overlay(pred_parts, corr_parts)
    if len(hit_i):
        np.add.at(matrix, (pred_cls[hit_i], corr_cls[hit_j]), shapely.area(inter))

    per_class: dict[str, ClassDiff] = {}
    relabelled: dict[str, dict[str, float]] = {}
    for name_, k in index.items():
        scale = max(pred_area[k], corr_area[k])
        row = {order[j]: clean_area(matrix[k, j], scale) for j in range(n) if j != k}
        row = {b: v for b, v in row.items() if v > 0}
        if row:
            relabelled[name_] = row
        per_class[name_] = ClassDiff(
            name=name_,
            predicted_px2=float(pred_area[k]),
            corrected_px2=float(corr_area[k]),
            unchanged_px2=clean_area(matrix[k, k], scale),
            removed_px2=clean_area(pred_area[k] - matrix[k, :].sum(), scale),
            added_px2=clean_area(corr_area[k] - matrix[:, k].sum(), scale),
            relabelled_out_px2=clean_area(matrix[k, :].sum() - matrix[k, k], scale),
            relabelled_in_px2=clean_area(matrix[:, k].sum() - matrix[k, k], scale),
        )
    return per_class, relabelled


def _roi_diff(pred: _Sorted, corr: _Sorted) -> RoiDiff | None:
    """The ROI section: the two files' ROI objects unioned and overlaid; ``None`` when neither has any."""
    if not (pred.roi or corr.roi):
        return None
    p_roi = union_parts(as_geometry_array(pred.roi))
    c_roi = union_parts(as_geometry_array(corr.roi))
    _, _, roi_inter = overlay(p_roi, c_roi)
    p_area = float(shapely.area(p_roi).sum()) if len(p_roi) else 0.0
    c_area = float(shapely.area(c_roi).sum()) if len(c_roi) else 0.0
    both = float(shapely.area(roi_inter).sum()) if len(roi_inter) else 0.0
    scale = max(p_area, c_area)
    return RoiDiff(
        predicted_px2=p_area,
        corrected_px2=c_area,
        unchanged_px2=clean_area(both, scale),
        added_px2=clean_area(c_area - both, scale),
        removed_px2=clean_area(p_area - both, scale),
    )


def _object_counts(pred: _Sorted, corr: _Sorted) -> tuple[dict[str, int], dict[str, int]]:
    """The objects compared (and how many corrections are untouched predictions), and those left out by reason."""
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
    return objects, excluded
