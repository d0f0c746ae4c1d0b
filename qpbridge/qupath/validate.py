"""Check a GeoJSON file against what each QuPath version (0.4, 0.5, 0.6, 0.7) imports, and repair it.

:func:`validate_geojson` reads the raw JSON (not the tolerant reader, which repairs silently) and lists
every feature that QuPath would reject or mangle, with the reason (see ``docs/qupath-geojson.md``). Each
finding has a rule; what the rule does in each version is :data:`ISSUE_EFFECTS`, the one table of
:mod:`qpbridge.qupath.versions` (which owns the version names and verdicts; this module re-exports them), and
the :class:`ValidationReport` derives one verdict per version asked: *imports it as intended*, *imports it
but mangles N objects* (which and how) or *rejects the whole file* (why, and the first feature concerned).

A finding is an *error* when it makes a version asked reject or mangle, a *warning* otherwise; *notes*
(metadata that QuPath 0.4 drops) are not listed one by one, only counted in the verdicts. Examples of
what differs between versions: measurements written as the strings ``"NaN"``/``"Infinity"`` (as QuPath
0.5+ writes them) make 0.4 reject the file; MultiPolygon parts sharing an edge stay an invalid ROI in
0.4/0.5 and are merged by 0.6+; slivers thinner than 0.01 px become empty objects in 0.6+; polygons
invalid once rounded to 0.01 px make 0.6+ reject the file ("Reduction failed") and stay invalid in
0.4/0.5; a detection's ``metadata`` makes 0.5 log a stack trace. JSON that only QuPath's lenient Gson
parser takes (single quotes, comments, unquoted names, trailing text: :mod:`qpbridge.qupath.lenient`) is a
warning. :func:`fix_geojson` rewrites a file through the tolerant reader and
:class:`qpbridge.qupath.GeoJSONWriter`, for the versions asked.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from qpbridge.errors import GeoJSONError, InputError
from qpbridge.qupath.lenient import load_json_documents_leniently, read_lenient_document
from qpbridge.qupath.load import GEOMETRY_TYPES, flatten_features, gc_paused
from qpbridge.qupath.objects import legacy_type, normalize_object_type, qupath_object_type
from qpbridge.qupath.project import QUPATH_IMPORT_SUFFIXES
from qpbridge.qupath.read import (
    ABSURD_COORDINATE_PX,
    ReadResult,
    ReadSummary,
    far_outside,
    far_outside_message,
    feature_label,
    make_valid_polygonal,
    parse_classification,
    read_geojson,
    simple_ring,
)
from qpbridge.qupath.versions import (
    ISSUE_EFFECTS,
    QUPATH_READS_LIKE,
    QUPATH_VERSIONS,
    Effect,
    EffectKind,
    Issue,
    Severity,
    Verdict,
    check_versions,
    format_qupath_versions,
    parse_qupath_versions,
    verdict_of,
)
from qpbridge.qupath.write import WriteSummary, is_uuid, write_geojson

__all__ = [  # with the names of qpbridge.qupath.versions that callers import from here
    "ISSUE_EFFECTS",
    "QUPATH_READS_LIKE",
    "QUPATH_VERSIONS",
    "Effect",
    "FixResult",
    "Issue",
    "ValidationReport",
    "Verdict",
    "fix_geojson",
    "format_qupath_versions",
    "parse_qupath_versions",
    "validate_geojson",
]

_DETECTION_TYPES = ("detection", "cell", "tile")  # QuPath's detection classes (0.5 has no metadata on them)
_NONFINITE_STRINGS = {"nan", "infinity", "-infinity", "+infinity", "inf", "-inf"}
_FIX_HINT = "repair it with: qpbridge validate FILE{options} --fix -o FIXED.geojson"


@dataclass
class ValidationReport:
    """Everything :func:`validate_geojson` found in one file, judged for the QuPath ``versions`` asked."""

    path: str
    top_level: str = "FeatureCollection"
    features: int = 0
    by_object_type: dict[str, int] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    versions: tuple[str, ...] = QUPATH_VERSIONS
    notes: list[Issue] = field(default_factory=list)
    _pending: list[tuple[int, str, np.ndarray]] = field(default_factory=list, repr=False, compare=False)
    _bounds: list[tuple[int, str, tuple[float, float, float, float]]] = field(
        default_factory=list, repr=False, compare=False
    )

    @property
    def errors(self) -> list[Issue]:
        """Issues that make a QuPath version asked reject the file or import an object as something else."""
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        """Issues that import as intended in every version asked, but deserve a note."""
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when every version asked imports every feature as intended (warnings and notes allowed)."""
        return not self.errors

    def _affects(self, rule: str) -> set[EffectKind]:
        effects = ISSUE_EFFECTS[rule]
        return {effects[QUPATH_READS_LIKE[v]].kind for v in self.versions}

    def add(self, index: int | None, rule: str, message: str, feature: str = "file") -> None:
        """Record one issue; ``rule`` is a key of :data:`ISSUE_EFFECTS` (its severity follows from it)."""
        severity: Severity = "error" if self._affects(rule) & {"mangle", "reject"} else "warning"
        self.issues.append(Issue(index, severity, rule.split(" (")[0], message, feature, rule))

    def note(self, index: int | None, rule: str, message: str, feature: str = "file") -> None:
        """Record a note (counted in the verdicts, not listed), unless no version asked is concerned."""
        if self._affects(rule) != {"ok"}:
            self.notes.append(Issue(index, "note", rule.split(" (")[0], message, feature, rule))

    def verdict(self, version: str) -> Verdict:
        """What QuPath ``version`` does with the file, derived from the findings."""
        return verdict_of(version, self.issues, self.notes)

    def verdicts(self) -> list[Verdict]:
        """One :class:`Verdict` per version asked, oldest first."""
        return [self.verdict(v) for v in self.versions]

    def verdict_lines(self) -> list[str]:
        """``QuPath 0.4: rejects the whole file: ...``; consecutive versions that agree share a line."""
        groups: list[tuple[list[str], str]] = []
        for verdict in self.verdicts():
            if groups and groups[-1][1] == verdict.text:
                groups[-1][0].append(verdict.version)
            else:
                groups.append(([verdict.version], verdict.text))
        return [f"QuPath {format_qupath_versions(versions)}: {text}" for versions, text in groups]

    def lines(self, max_lines: int = 50) -> list[str]:
        """One line per issue, at most ``max_lines`` and a ``... and N more`` line."""
        out = [issue.line() for issue in self.issues[:max_lines]]
        if len(self.issues) > max_lines:
            out.append(f"... and {len(self.issues) - max_lines} more (use --json to see them all)")
        return out

    def summary_line(self) -> str:
        """``file: 120 features (100 detection, 20 annotation); 2 errors, 3 warnings``"""
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_object_type.items(), key=lambda kv: -kv[1]))
        counts = f"{len(self.errors)} error{'s' * (len(self.errors) != 1)}, "
        counts += f"{len(self.warnings)} warning{'s' * (len(self.warnings) != 1)}"
        head = f"{self.path}: {self.features} feature{'s' * (self.features != 1)}"
        head += f" ({kinds})" if kinds else ""
        return f"{head}; {counts}"

    def summary_lines(self) -> list[str]:
        """The summary line, one verdict line per version (or run of versions that agree) and, unless every
        version asked imports the file as intended, how to repair it."""
        out = [self.summary_line(), *self.verdict_lines()]
        if not self.ok:
            options = "" if self.versions == QUPATH_VERSIONS else f" --qupath {format_qupath_versions(self.versions)}"
            out.append(_FIX_HINT.format(options=options))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""

        def entry(i: Issue) -> dict[str, Any]:
            return {
                "index": i.index,
                "severity": i.severity,
                "code": i.code,
                "feature": i.feature,
                "message": i.message,
                "effects": {v: i.effect(v).kind for v in QUPATH_VERSIONS},
            }

        return {
            "file": self.path,
            "ok": self.ok,
            "qupath": list(self.versions),
            "verdicts": {v.version: v.to_dict() for v in self.verdicts()},
            "top_level": self.top_level,
            "features": self.features,
            "by_object_type": dict(self.by_object_type),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [entry(i) for i in self.issues],
            "notes": [entry(i) for i in self.notes],
        }


# --- geometry checks ----------------------------------------------------------------------------------
class _GeomProblem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _positions(raw: Any, what: str) -> np.ndarray:
    if not isinstance(raw, list):
        raise _GeomProblem("bad-coordinates", f"{what} coordinates are not a list")
    try:
        arr = np.asarray([p[:2] if isinstance(p, list) else p for p in raw], dtype=float)
    except (TypeError, ValueError, IndexError):
        raise _GeomProblem("bad-coordinates", f"{what} coordinates are not [x, y] numbers") from None
    if arr.size == 0:
        return np.empty((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise _GeomProblem("bad-coordinates", f"{what} coordinates are not [x, y] positions")
    if not np.isfinite(arr).all():
        raise _GeomProblem("nonfinite-coordinate", f"NaN or infinite coordinate in a {what}: QuPath cannot use it")
    return arr


def _rings(raw: Any, what: str) -> list[np.ndarray]:
    if not isinstance(raw, list):
        raise _GeomProblem("bad-coordinates", f"{what} coordinates are not a list of rings")
    rings = []
    for k, ring_raw in enumerate(raw):
        ring = _positions(ring_raw, "ring")
        name = "outer ring" if k == 0 else f"hole {k}"
        if len(ring) and not np.array_equal(ring[0], ring[-1]):
            raise _GeomProblem(
                "unclosed-ring",
                f"unclosed {name} of a {what} (first position != last): every QuPath version rejects the file",
            )
        if 0 < len(ring) < 4:
            raise _GeomProblem(
                "short-ring",
                f"{name} of a {what} has {len(ring)} positions (a closed ring needs 4): QuPath rejects the file",
            )
        rings.append(ring)
    return rings


_DIMENSION = {"Point": 0, "MultiPoint": 0, "LineString": 1, "MultiLineString": 1, "Polygon": 2, "MultiPolygon": 2}


def _dimensions(gj: Any, depth: int = 0) -> set[int]:
    """The dimensions (0 points, 1 lines, 2 areas) of the parts of a GeometryCollection, at any depth."""
    if not isinstance(gj, dict) or depth > 50:
        return set()
    if gj.get("type") == "GeometryCollection":
        parts = gj.get("geometries")
        return set().union(*(_dimensions(p, depth + 1) for p in parts)) if isinstance(parts, list) else set()
    kind = gj.get("type")
    return {_DIMENSION[kind]} if kind in _DIMENSION else set()


def _build(gj: Any, where: str) -> shapely.Geometry:
    """Shapely geometry of ``gj`` with coordinates rounded to 0.01 px, or raise :class:`_GeomProblem`."""
    if gj is None:
        raise _GeomProblem("null-geometry", f"null {where}: every QuPath version rejects the whole file")
    if not isinstance(gj, dict) or gj.get("type") not in GEOMETRY_TYPES:
        kind = gj.get("type") if isinstance(gj, dict) else type(gj).__name__
        raise _GeomProblem("bad-geometry", f"{where} of type {kind!r} is not a GeoJSON geometry")
    kind = gj["type"]
    coords = gj.get("coordinates")
    if kind == "GeometryCollection":
        if len(_dimensions(gj)) > 1:
            raise _GeomProblem(
                "geometry-collection (mixed)",
                f"{where} is a GeometryCollection of areas, lines or points: QuPath 0.6+ rejects the whole file, "
                "0.4/0.5 keep only its parts of the largest dimension",
            )
        raise _GeomProblem(
            "geometry-collection", f"{where} is a GeometryCollection: QuPath 0.6+ rejects the whole file"
        )
    if kind == "Polygon":
        rings = [np.round(r, 2) for r in _rings(coords, "Polygon")]
        if not rings or not len(rings[0]):
            return shapely.Polygon()
        return shapely.Polygon(rings[0], [r for r in rings[1:] if len(r)])
    if kind == "MultiPolygon":
        if not isinstance(coords, list):
            raise _GeomProblem("bad-coordinates", "MultiPolygon coordinates are not a list")
        polys = []
        for part in coords:
            rings = [np.round(r, 2) for r in _rings(part, "MultiPolygon part")]
            if rings and len(rings[0]):
                polys.append(shapely.Polygon(rings[0], [r for r in rings[1:] if len(r)]))
        return shapely.MultiPolygon(polys)
    if kind == "Point":
        _positions([coords], "Point")
    elif kind == "MultiLineString":
        if not isinstance(coords, list):
            raise _GeomProblem("bad-coordinates", "MultiLineString coordinates are not a list")
        for line in coords:
            _positions(line, "line")
    else:
        _positions(coords, kind)
    return shapely.Point()  # not an area: nothing more to check


def _has_spike(poly: shapely.Polygon) -> bool:
    """True when a ring runs back over itself (zero-width spike): its noded linework is shorter than it."""
    for ring in [poly.exterior, *poly.interiors]:
        line = shapely.LineString(ring.coords)
        if shapely.union_all([line]).length < line.length * (1 - 1e-12) - 1e-12:
            return True
    return False


def _classify_invalid(geom: shapely.Geometry) -> tuple[str, str] | None:
    """The rule (a key of :data:`ISSUE_EFFECTS`) a (rounded) invalid polygon breaks, and the message."""
    if shapely.is_valid(geom) or geom.is_empty:
        return None
    if make_valid_polygonal(geom).is_empty:
        return (
            "sliver",
            "collapses to nothing at 0.01 px (a sliver): QuPath 0.6+ makes it an empty object (with a warning), "
            "0.4/0.5 keep it",
        )
    if geom.geom_type == "MultiPolygon":
        parts = list(geom.geoms)
        for part in parts:
            found = _classify_invalid(part)
            if found is not None:
                return found
        total = sum(p.area for p in parts)
        if total - shapely.union_all(parts).area > 1e-9 * max(total, 1.0):
            return (
                "overlapping-parts",
                "MultiPolygon parts overlap: QuPath 0.6+ rejects the whole file (Reduction failed)",
            )
        return (
            "touching-parts",
            "MultiPolygon parts share an edge: QuPath 0.4/0.5 keep them as one invalid ROI, 0.6+ merges them",
        )
    reason = shapely.is_valid_reason(geom)
    if _has_spike(geom):
        return (
            "spike",
            f"zero-width spike ({reason}) after rounding to 0.01 px: QuPath 0.6+ rejects the whole file",
        )
    if reason.startswith("Ring Self-intersection"):
        return ("self-touching-ring", f"ring touches itself at a vertex ({reason}): harmless")
    if reason.startswith("Self-intersection"):
        return (
            "self-intersection",
            f"self-intersecting ring (bow-tie, {reason}) after rounding to 0.01 px: QuPath 0.6+ rejects the whole file",
        )
    if reason.startswith("Hole lies outside shell"):
        return ("hole-outside-shell", f"hole outside its shell ({reason}): QuPath 0.6+ rejects the file")
    if reason.startswith("Too few points"):
        return ("sliver", f"a ring collapses at 0.01 px ({reason}): QuPath 0.6+ drops that part")
    return ("invalid-polygon", f"invalid polygon after rounding to 0.01 px ({reason}): QuPath 0.6+ rejects it")


# --- feature checks -----------------------------------------------------------------------------------
def _check_classification(value: Any) -> tuple[str, str] | None:
    if value is None or isinstance(value, str):
        return None
    if not isinstance(value, dict):
        return ("bad-classification", f"classification is a {type(value).__name__}: use an object or a string")
    if not value or "colorRGB" in value or "parentClass" in value:
        return None  # unclassified, or the legacy form QuPath still reads
    if "name" not in value and "names" not in value:
        return ("bad-classification", "classification object without 'name': QuPath 0.4-0.7 reject the whole file")
    if "color" not in value:
        return (
            "classification-no-color",
            "classification object without 'color': QuPath 0.4-0.7 reject the whole file",
        )
    color = value["color"]
    if isinstance(color, list) and len(color) not in (0, 1, 3, 4):
        return ("bad-color", f"classification colour {color!r} has {len(color)} values: use [r, g, b]")
    return None


def _check_measurements(value: Any, report: ValidationReport, index: int, label: str) -> None:
    if value is None:
        return
    if isinstance(value, list):
        report.add(
            index,
            "measurements-list",
            "measurements as a [{name, value}] list: QuPath reads it, but writes an object since 0.4",
            label,
        )
        items = [(e.get("name"), e.get("value")) for e in value if isinstance(e, dict)]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        report.add(index, "bad-measurements", "measurements are neither an object nor a list", label)
        return
    strings: list[str] = []
    tokens: list[str] = []
    bad: list[str] = []
    for key, raw in items:
        if isinstance(raw, bool) or raw is None:
            bad.append(str(key))
        elif isinstance(raw, (int, float)):
            if not math.isfinite(raw):
                tokens.append(str(key))
        elif isinstance(raw, str) and raw.strip().lower() in _NONFINITE_STRINGS:
            strings.append(str(key))
        else:
            bad.append(str(key))
    if strings:
        report.add(
            index,
            "nonfinite-measurement",
            f"NaN or infinite measurement(s) {', '.join(strings[:3])} written as strings (as QuPath 0.5+ writes "
            "them): QuPath 0.4 rejects the whole file (ClassCastException), 0.5+ read them",
            label,
        )
    if tokens:
        report.add(
            index,
            "nonfinite-measurement (token)",
            f"NaN or infinite measurement(s) {', '.join(tokens[:3])} as bare tokens: every QuPath version reads "
            "them (its parser is lenient)",
            label,
        )
    if bad:
        report.add(
            index,
            "bad-measurement",
            f"measurement(s) {', '.join(bad[:3])} are not numbers: QuPath fails to import the file",
            label,
        )


def _check_object_type(
    obj: dict[str, Any], props: dict[str, Any], report: ValidationReport, index: int, label: str
) -> str:
    """Check where and how the object type is given; return the type QuPath will create."""
    legacy = legacy_type(obj.get("id"))
    for key in ("objectType", "object_type", "type"):
        if key in props:
            raw = props[key]
            if key == "object_type":
                report.add(
                    index,
                    "object-type-old-key",
                    "'object_type' is the old key: QuPath reads it but warns; use 'objectType'",
                    label,
                )
            kind = qupath_object_type(raw)
            if kind is None:
                meant = normalize_object_type(raw)
                report.add(
                    index,
                    "unknown-object-type (annotation)" if meant == "annotation" else "unknown-object-type",
                    f"unknown object type {raw!r}: QuPath creates an annotation",
                    label,
                )
                return "annotation"
            return kind
    if legacy is not None:
        return legacy
    for key in ("objectType", "object_type"):
        if key in obj:
            intended = normalize_object_type(obj[key]) or "annotation"
            if intended != "annotation":
                report.add(
                    index,
                    "object-type-outside-properties",
                    f"'{key}': {obj[key]!r} is outside 'properties': QuPath ignores it and creates an "
                    "annotation (move it into properties)",
                    label,
                )
            else:
                report.add(
                    index,
                    "object-type-outside-properties (annotation)",
                    f"'{key}' is outside 'properties': QuPath ignores it (annotation either way)",
                    label,
                )
            return "annotation"
    return "annotation"


def _check_metadata(value: Any, otype: str, report: ValidationReport, index: int, label: str) -> None:
    if not value:
        return
    if otype in _DETECTION_TYPES:
        report.add(
            index,
            "detection-metadata",
            f"metadata on a {otype}: QuPath 0.5 logs a stack trace for it and drops it, 0.4 drops it, 0.6+ keep it",
            label,
        )
    elif otype != "tmaCore":
        report.note(index, "metadata", f"metadata on a {otype}: QuPath 0.4 drops it, 0.5+ keep it", label)


def _check_feature(obj: Any, index: int, report: ValidationReport, seen_ids: set[str]) -> None:
    if not isinstance(obj, dict):
        report.add(
            index,
            "not-a-feature",
            f"a {type(obj).__name__} where a Feature was expected: QuPath fails to import the file",
            f"feature {index}",
        )
        return
    props = obj.get("properties", {})
    class_name = None
    if isinstance(props, dict):
        class_name, _ = parse_classification(props.get("classification"))
    fid = obj.get("id")
    label = feature_label(index, fid, class_name)
    if not isinstance(props, dict):
        report.add(index, "bad-properties", "'properties' is not an object: QuPath fails to import the file", label)
        props = {}
    otype = _check_object_type(obj, props, report, index, label)
    report.by_object_type[otype] = report.by_object_type.get(otype, 0) + 1
    if fid is not None and legacy_type(fid) is None:
        if not is_uuid(fid):
            report.add(index, "non-uuid-id", f"id {fid!r} is not a UUID: QuPath gives the object a random one", label)
        elif fid in seen_ids:
            report.add(index, "duplicate-id", f"id {fid} is used by an earlier feature", label)
        else:
            seen_ids.add(fid)
    problem = _check_classification(props.get("classification"))
    if problem is not None:
        report.add(index, problem[0], problem[1], label)
    _check_measurements(props.get("measurements"), report, index, label)
    _check_metadata(props.get("metadata"), otype, report, index, label)
    if "geometry" not in obj:
        report.add(index, "null-geometry", "no geometry: every QuPath version rejects the whole file", label)
    else:
        _check_geometry(obj["geometry"], "geometry", report, index, label)
    nucleus = obj.get("nucleusGeometry")
    if nucleus is not None:
        if otype != "cell":
            report.add(
                index,
                "nucleus-not-cell",
                f"nucleusGeometry on a {otype}: QuPath ignores it (only cells have a nucleus)",
                label,
            )
        _check_geometry(nucleus, "nucleusGeometry", report, index, label)


def _check_geometry(gj: Any, where: str, report: ValidationReport, index: int, label: str) -> None:
    if where == "geometry":
        ring = _closed_simple_ring(gj)
        if ring is not None:  # the common case: checked in bulk by _check_pending
            report._pending.append((index, label, np.round(ring, 2)))
            return
    try:
        geom = _build(gj, where)
    except _GeomProblem as exc:
        report.add(index, exc.code, exc.message if where == "geometry" else f"{where}: {exc.message}", label)
        return
    if where == "geometry":
        bounds = _raw_bounds(gj)
        if bounds is not None:
            report._bounds.append((index, label, bounds))
    found = _classify_invalid(geom)
    if found is not None:
        rule, message = found
        report.add(index, rule, message if where == "geometry" else f"{where}: {message}", label)


def _raw_bounds(gj: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """``xmin, ymin, xmax, ymax`` of a geometry :func:`_build` took (its positions are ``[x, y, ...]`` lists)."""
    kind, coords = gj["type"], gj.get("coordinates")
    positions: Any
    coords = coords if coords is not None else []
    try:
        if kind == "Point":
            positions = [coords]
        elif kind in ("MultiPoint", "LineString"):
            positions = coords
        elif kind in ("MultiLineString", "Polygon"):
            positions = [p for part in coords for p in part]
        else:  # MultiPolygon
            positions = [p for polygon in coords for ring in polygon for p in ring]
        xy = np.asarray([p[:2] for p in positions], dtype=np.float64)
    except (TypeError, ValueError, IndexError):
        return None
    if xy.ndim != 2 or not len(xy) or xy.shape[1] < 2:  # e.g. a Point with coordinates []
        return None
    (xmin, ymin), (xmax, ymax) = xy.min(axis=0), xy.max(axis=0)
    return float(xmin), float(ymin), float(xmax), float(ymax)


def _check_extent(report: ValidationReport, image_size_px: tuple[int, int] | None) -> None:
    """Coordinates far outside the image (with its size), or larger than any slide (without)."""
    found, report._bounds = report._bounds, []
    if not found:
        return
    bounds = np.array([b for _, _, b in found], dtype=float)
    if image_size_px is not None:
        far, reach = far_outside(bounds, (0.0, 0.0, float(image_size_px[0]), float(image_size_px[1])))
        for k in np.flatnonzero(far).tolist():
            index, label, _ = found[k]
            report.add(index, "off-image", f"{far_outside_message(float(reach[k]), image_size_px)}: QuPath places it "
                       "where the image has no pixels; is it from another slide, or in another unit?", label)
        return
    largest = np.abs(bounds).argmax(axis=1)
    for k in np.flatnonzero(np.abs(bounds).max(axis=1) > ABSURD_COORDINATE_PX).tolist():
        index, label, _ = found[k]
        report.add(index, "huge-coordinates",
                   f"coordinates reach {bounds[k, largest[k]]:g} px: no slide is that big (the largest are ~200,000 "
                   "px on a side); in another unit, or from a broken transform? Check with --slide SLIDE", label)


def _closed_simple_ring(gj: Any) -> np.ndarray | None:
    """The closed, finite ring (>= 4 positions) of a Polygon without holes, else ``None`` (full checks)."""
    ring = simple_ring(gj)
    if ring is None or len(ring) < 4 or not np.isfinite(ring).all():
        return None
    if not (ring[0, 0] == ring[-1, 0] and ring[0, 1] == ring[-1, 1]):
        return None
    return ring


def _check_pending(report: ValidationReport) -> None:
    """Validity after rounding of the simple polygons, in one vectorized pass."""
    pending, report._pending = report._pending, []
    if not pending:
        return
    rings = [ring for _, _, ring in pending]
    lengths = np.fromiter((len(r) for r in rings), dtype=np.intp, count=len(rings))
    coords = np.concatenate(rings)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    low, high = np.minimum.reduceat(coords, starts), np.maximum.reduceat(coords, starts)
    report._bounds.extend((index, label, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))
                          for (index, label, _), lo, hi in zip(pending, low, high, strict=True))
    polys = shapely.polygons(shapely.linearrings(coords, indices=np.repeat(np.arange(len(rings)), lengths)))
    for k in np.flatnonzero(~shapely.is_valid(polys)).tolist():
        found = _classify_invalid(polys[k])
        if found is not None:
            index, label, _ = pending[k]
            report.add(index, found[0], found[1], label)


def validate_geojson(
    path: str | os.PathLike[str],
    versions: Sequence[str] = QUPATH_VERSIONS,
    *,
    image_size_px: tuple[int, int] | None = None,
) -> ValidationReport:
    """List everything in ``path`` that the QuPath ``versions`` would reject or import differently than intended.

    ``versions`` are some of :data:`QUPATH_VERSIONS` (default: all; see :func:`parse_qupath_versions`).
    ``image_size_px`` is the ``(width, height)`` of the image QuPath shows (``validate --slide``): a feature
    that reaches far outside it (:func:`qpbridge.qupath.read.far_outside`) is an ``off-image`` error; without
    it, coordinates beyond :data:`qpbridge.qupath.read.ABSURD_COORDINATE_PX` are a ``huge-coordinates`` warning.
    Raises :class:`qpbridge.errors.GeoJSONError` when the file is missing, not JSON (not even the lenient
    JSON QuPath reads) or not GeoJSON.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.geojson"
    >>> _ = p.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
    ...     '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}, '
    ...     '"properties": {"objectType": "detection", "measurements": {"Circularity": "NaN"}}}]}')
    >>> report = validate_geojson(p)
    >>> report.ok, [i.code for i in report.issues]
    (False, ['nonfinite-measurement'])
    >>> print("\\n".join(report.verdict_lines()))  # doctest: +NORMALIZE_WHITESPACE
    QuPath 0.4: rejects the whole file: feature 0: a measurement written as the string "NaN" or "Infinity"
        (ClassCastException)
    QuPath 0.5-0.7: imports it as intended
    >>> validate_geojson(p, versions=("0.5", "0.6")).ok
    True
    """
    with gc_paused():
        return _validate(Path(path), check_versions(versions), image_size_px)


def _validate(path: Path, versions: tuple[str, ...], image_size_px: tuple[int, int] | None = None) -> ValidationReport:
    report = ValidationReport(str(path), versions=versions)
    docs, lenient = load_json_documents_leniently(path)
    name = path.name.lower()
    if not name.endswith(QUPATH_IMPORT_SUFFIXES):
        report.add(
            None,
            "bad-extension",
            f"QuPath imports only {', '.join(QUPATH_IMPORT_SUFFIXES)} files: it reads 0 objects from {path.name}; "
            "rename it",
        )
    if lenient:
        what = ", ".join(f"{kind} (line {line})" for kind, line in sorted(lenient.items(), key=lambda kv: kv[1]))
        report.add(
            None,
            "lenient-json",
            f"{docs[0].label} is not strict JSON: {what}: QuPath reads it (its Gson parser is lenient), strict JSON "
            "parsers and qpbridge's other commands refuse it; --fix writes strict JSON",
        )
    seen_ids: set[str] = set()
    index = 0
    for doc in docs:
        kind, objects = flatten_features(doc)
        report.top_level = kind
        if kind != "FeatureCollection":
            what = {"array": "a JSON array", "Feature": "a single Feature", "geometry": "a bare geometry"}[kind]
            report.add(
                None,
                "not-feature-collection",
                f"top level of {doc.label} is {what}, not a FeatureCollection: QuPath reads it, other tools may not",
            )
        if doc.nonstandard_numbers:
            report.add(
                None,
                "nonstandard-numbers",
                f"{doc.label} holds bare NaN/Infinity tokens, which are not JSON: QuPath's lenient parser "
                "takes them, strict parsers refuse the file",
            )
        for obj in objects:
            _check_feature(obj, index, report, seen_ids)
            index += 1
    _check_pending(report)
    _check_extent(report, image_size_px)
    report.issues.sort(key=lambda issue: -1 if issue.index is None else issue.index)  # stable: file order
    report.notes.sort(key=lambda issue: -1 if issue.index is None else issue.index)
    report.features = index
    if index == 0:
        report.add(None, "empty", "no features: QuPath imports nothing")
    return report


@dataclass
class FixResult:
    """What :func:`fix_geojson` read, wrote, and the validation of the written file.

    ``metadata_dropped`` counts the detections whose metadata was left out because a version asked
    mangles them for it (QuPath 0.5 logs a stack trace per detection carrying metadata).
    """

    read: ReadSummary
    written: WriteSummary
    report: ValidationReport
    metadata_dropped: int = 0


def _read_tolerantly(src: Path) -> ReadResult:
    """The tolerant reader's result, also for JSON that only QuPath's lenient parser takes."""
    try:
        return read_geojson(src, on_nonfinite="skip")
    except GeoJSONError:
        lenient = None if src.suffix.lower() == ".zip" else read_lenient_document(src)
        if lenient is None:
            raise
    with tempfile.TemporaryDirectory() as tmp:
        strict = Path(tmp) / "strict.geojson"
        strict.write_text(json.dumps(lenient.document.data), encoding="utf-8")
        return read_geojson(strict, on_nonfinite="skip")


def fix_geojson(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    versions: Sequence[str] = QUPATH_VERSIONS,
    **writer_kw: Any,
) -> FixResult:
    """Rewrite ``path`` as a clean QuPath GeoJSON file ``out`` (never over the input) for the QuPath ``versions``.

    The tolerant reader (which also takes the lenient JSON QuPath reads) closes rings, drops null
    geometries and features with NaN coordinates, keeps the polygonal parts of GeometryCollections,
    repairs invalid polygons and moves a misplaced ``objectType`` into ``properties``; the writer then
    rounds, re-checks validity, adds colours to classifications, replaces non-UUID ids and leaves out
    non-finite measurements (QuPath 0.4 rejects them as strings). When a version asked mangles a
    detection's ``metadata`` (0.5), it is left out. The result holds the validation of ``out`` for ``versions``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.geojson").write_text('[{"type": "Feature", "objectType": "detection", '
    ...     '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 9]]]}, '
    ...     '"properties": {"classification": {"name": "Tumor"}}}]')
    >>> result = fix_geojson(d / "a.geojson", d / "fixed.geojson")
    >>> result.report.ok, result.report.issues, result.written.by_object_type
    (True, [], {'detection': 1})
    """
    src, dst = Path(path), Path(out)
    versions = check_versions(versions)
    if src.resolve() == dst.resolve():
        raise InputError(f"--fix would overwrite the input {src}: give another output with -o")
    result = _read_tolerantly(src)
    dropped = 0
    if any(ISSUE_EFFECTS["detection-metadata"][QUPATH_READS_LIKE[v]].kind == "mangle" for v in versions):
        for feature in result.features:
            if feature.metadata and feature.object_type in _DETECTION_TYPES:
                feature.metadata = {}
                dropped += 1
    written = write_geojson(dst, result.features, **writer_kw)
    return FixResult(result.summary, written, validate_geojson(dst, versions), dropped)
