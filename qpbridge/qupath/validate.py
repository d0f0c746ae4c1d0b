"""Check a GeoJSON file against what QuPath 0.4-0.7 imports, feature by feature, and repair it.

:func:`validate_geojson` reads the raw JSON (not the tolerant reader, which repairs silently) and lists
every feature that QuPath would reject or mangle, with the reason (see ``docs/qupath-geojson.md``):

errors (QuPath 0.4-0.7 rejects the whole file, or the object arrives as something else)
    classification object without ``color``; null or missing geometry; unclosed ring or a ring with fewer
    than 4 positions; GeometryCollection (0.6+); polygon invalid after rounding to 0.01 px (bow-tie, hole
    outside its shell, zero-width spike, overlapping MultiPolygon parts; 0.6+ fails with "Reduction
    failed"); NaN/infinite coordinates; ``objectType`` outside ``properties`` (read as an annotation);
    measurement values that are not numbers; a file name QuPath does not import.
warnings (imports, but note it)
    a top-level array or bare Feature instead of a FeatureCollection; measurements as a list; NaN or
    Infinity measurements (0.4 cannot parse them); non-UUID or duplicate ids; unknown object types; rings
    that touch themselves at a vertex or MultiPolygon parts sharing an edge (harmless); slivers that
    collapse at 0.01 px (QuPath drops them).

:func:`fix_geojson` rewrites a file through the tolerant reader and :class:`qpbridge.qupath.GeoJSONWriter`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely

from qpbridge.errors import InputError
from qpbridge.qupath.objects import legacy_type, normalize_object_type, qupath_object_type
from qpbridge.qupath.project import QUPATH_IMPORT_SUFFIXES
from qpbridge.qupath.read import (
    GEOMETRY_TYPES,
    ReadSummary,
    feature_label,
    flatten_features,
    gc_paused,
    load_json_documents,
    make_valid_polygonal,
    parse_classification,
    read_geojson,
    simple_ring,
)
from qpbridge.qupath.write import WriteSummary, is_uuid, write_geojson

__all__ = ["FixResult", "Issue", "ValidationReport", "fix_geojson", "validate_geojson"]

Severity = Literal["error", "warning"]

_NONFINITE_STRINGS = {"nan", "infinity", "-infinity", "+infinity", "inf", "-inf"}
_FIX_HINT = "repair it with: qpbridge validate FILE --fix -o FIXED.geojson"


@dataclass
class Issue:
    """One finding: ``index`` is the feature's position in the file (``None`` for the file itself)."""

    index: int | None
    severity: Severity
    code: str
    message: str
    feature: str = "file"

    def line(self) -> str:
        """``feature 3 (id ..., class 'Tumor'): error: unclosed ring ...``"""
        return f"{self.feature}: {self.severity}: {self.message}"


@dataclass
class ValidationReport:
    """Everything :func:`validate_geojson` found in one file."""

    path: str
    top_level: str = "FeatureCollection"
    features: int = 0
    by_object_type: dict[str, int] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    _pending: list[tuple[int, str, np.ndarray]] = field(default_factory=list, repr=False, compare=False)

    @property
    def errors(self) -> list[Issue]:
        """Issues that make QuPath 0.4-0.7 reject the file or import an object as something else."""
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        """Issues that import, but deserve a note."""
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when every feature imports as intended in QuPath 0.4-0.7 (warnings allowed)."""
        return not self.errors

    def add(self, index: int | None, severity: Severity, code: str, message: str, feature: str = "file") -> None:
        """Record one issue."""
        self.issues.append(Issue(index, severity, code, message, feature))

    def lines(self, max_lines: int = 50) -> list[str]:
        """One line per issue, at most ``max_lines`` and a ``... and N more`` line."""
        out = [issue.line() for issue in self.issues[:max_lines]]
        if len(self.issues) > max_lines:
            out.append(f"... and {len(self.issues) - max_lines} more (use --json to see them all)")
        return out

    def summary_line(self) -> str:
        """``file: 120 features (100 detection, 20 annotation); 2 errors, 3 warnings: ...``"""
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_object_type.items(), key=lambda kv: -kv[1]))
        counts = f"{len(self.errors)} error{'s' * (len(self.errors) != 1)}, "
        counts += f"{len(self.warnings)} warning{'s' * (len(self.warnings) != 1)}"
        head = f"{self.path}: {self.features} feature{'s' * (self.features != 1)}"
        head += f" ({kinds})" if kinds else ""
        verdict = (
            "QuPath 0.4-0.7 imports it as intended"
            if self.ok
            else f"QuPath 0.4-0.7 would reject or mangle it; {_FIX_HINT}"
        )
        return f"{head}; {counts}: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        return {
            "file": self.path,
            "ok": self.ok,
            "top_level": self.top_level,
            "features": self.features,
            "by_object_type": dict(self.by_object_type),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [
                {"index": i.index, "severity": i.severity, "code": i.code, "feature": i.feature, "message": i.message}
                for i in self.issues
            ],
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


def _classify_invalid(geom: shapely.Geometry) -> tuple[Severity, str, str] | None:
    """Why a (rounded) polygon is invalid and whether QuPath 0.6+ fails on it."""
    if shapely.is_valid(geom) or geom.is_empty:
        return None
    if make_valid_polygonal(geom).is_empty:
        return ("warning", "sliver", "collapses to nothing at 0.01 px (a sliver): QuPath drops it with a warning")
    if geom.geom_type == "MultiPolygon":
        parts = list(geom.geoms)
        for part in parts:
            found = _classify_invalid(part)
            if found is not None:
                return found
        total = sum(p.area for p in parts)
        if total - shapely.union_all(parts).area > 1e-9 * max(total, 1.0):
            return (
                "error",
                "overlapping-parts",
                "MultiPolygon parts overlap: QuPath 0.6+ rejects the whole file (Reduction failed)",
            )
        return ("warning", "touching-parts", "MultiPolygon parts share an edge: QuPath 0.6+ merges them")
    reason = shapely.is_valid_reason(geom)
    if _has_spike(geom):
        return (
            "error",
            "spike",
            f"zero-width spike ({reason}) after rounding to 0.01 px: QuPath 0.6+ rejects the whole file",
        )
    if reason.startswith("Ring Self-intersection"):
        return ("warning", "self-touching-ring", f"ring touches itself at a vertex ({reason}): harmless")
    if reason.startswith("Self-intersection"):
        return (
            "error",
            "self-intersection",
            f"self-intersecting ring (bow-tie, {reason}) after rounding to 0.01 px: QuPath 0.6+ rejects the whole file",
        )
    if reason.startswith("Hole lies outside shell"):
        return ("error", "hole-outside-shell", f"hole outside its shell ({reason}): QuPath 0.6+ rejects the file")
    if reason.startswith("Too few points"):
        return ("warning", "sliver", f"a ring collapses at 0.01 px ({reason}): QuPath drops that part")
    return ("error", "invalid-polygon", f"invalid polygon after rounding to 0.01 px ({reason}): QuPath 0.6+ rejects it")


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
            "warning",
            "measurements-list",
            "measurements as a [{name, value}] list: QuPath reads it, but writes an object since 0.4",
            label,
        )
        items = [(e.get("name"), e.get("value")) for e in value if isinstance(e, dict)]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        report.add(index, "warning", "bad-measurements", "measurements are neither an object nor a list", label)
        return
    nonfinite: list[str] = []
    bad: list[str] = []
    for key, raw in items:
        if isinstance(raw, bool) or raw is None:
            bad.append(str(key))
        elif isinstance(raw, (int, float)):
            if not math.isfinite(raw):
                nonfinite.append(str(key))
        elif isinstance(raw, str) and raw.strip().lower() in _NONFINITE_STRINGS:
            nonfinite.append(str(key))
        else:
            bad.append(str(key))
    if nonfinite:
        report.add(
            index,
            "warning",
            "nonfinite-measurement",
            f"NaN or infinite measurement(s) {', '.join(nonfinite[:3])}: QuPath 0.4 cannot parse them",
            label,
        )
    if bad:
        report.add(
            index,
            "error",
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
                    "warning",
                    "object-type-old-key",
                    "'object_type' is the old key: QuPath reads it but warns; use 'objectType'",
                    label,
                )
            kind = qupath_object_type(raw)
            if kind is None:
                report.add(
                    index,
                    "warning",
                    "unknown-object-type",
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
                    "error",
                    "object-type-outside-properties",
                    f"'{key}': {obj[key]!r} is outside 'properties': QuPath ignores it and creates an "
                    "annotation (move it into properties)",
                    label,
                )
            else:
                report.add(
                    index,
                    "warning",
                    "object-type-outside-properties",
                    f"'{key}' is outside 'properties': QuPath ignores it (annotation either way)",
                    label,
                )
            return "annotation"
    return "annotation"


def _check_feature(obj: Any, index: int, report: ValidationReport, seen_ids: set[str]) -> None:
    if not isinstance(obj, dict):
        report.add(
            index,
            "error",
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
        report.add(
            index, "error", "bad-properties", "'properties' is not an object: QuPath fails to import the file", label
        )
        props = {}
    otype = _check_object_type(obj, props, report, index, label)
    report.by_object_type[otype] = report.by_object_type.get(otype, 0) + 1
    if fid is not None and legacy_type(fid) is None:
        if not is_uuid(fid):
            report.add(
                index,
                "warning",
                "non-uuid-id",
                f"id {fid!r} is not a UUID: QuPath gives the object a random one",
                label,
            )
        elif fid in seen_ids:
            report.add(index, "warning", "duplicate-id", f"id {fid} is used by an earlier feature", label)
        else:
            seen_ids.add(fid)
    problem = _check_classification(props.get("classification"))
    if problem is not None:
        report.add(index, "error", problem[0], problem[1], label)
    _check_measurements(props.get("measurements"), report, index, label)
    if "geometry" not in obj:
        report.add(index, "error", "null-geometry", "no geometry: every QuPath version rejects the whole file", label)
    else:
        _check_geometry(obj["geometry"], "geometry", report, index, label)
    nucleus = obj.get("nucleusGeometry")
    if nucleus is not None:
        if otype != "cell":
            report.add(
                index,
                "warning",
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
        report.add(index, "error", exc.code, exc.message if where == "geometry" else f"{where}: {exc.message}", label)
        return
    found = _classify_invalid(geom)
    if found is not None:
        severity, code, message = found
        report.add(index, severity, code, message if where == "geometry" else f"{where}: {message}", label)


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
    polys = shapely.polygons(
        shapely.linearrings(np.concatenate(rings), indices=np.repeat(np.arange(len(rings)), lengths))
    )
    for k in np.flatnonzero(~shapely.is_valid(polys)).tolist():
        found = _classify_invalid(polys[k])
        if found is not None:
            index, label, _ = pending[k]
            report.add(index, found[0], found[1], found[2], label)


def validate_geojson(path: str | os.PathLike[str]) -> ValidationReport:
    """List everything in ``path`` that QuPath 0.4-0.7 would reject or import differently than intended.

    Raises :class:`qpbridge.errors.GeoJSONError` when the file is missing, not JSON or not GeoJSON.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.geojson"
    >>> _ = p.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
    ...     '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}, '
    ...     '"properties": {"objectType": "detection", "classification": {"name": "Tumor"}}}]}')
    >>> report = validate_geojson(p)
    >>> report.ok, [i.code for i in report.issues]
    (False, ['classification-no-color'])
    """
    with gc_paused():
        return _validate(Path(path))


def _validate(path: Path) -> ValidationReport:
    report = ValidationReport(str(path))
    docs = load_json_documents(path)
    name = path.name.lower()
    if not name.endswith(QUPATH_IMPORT_SUFFIXES):
        report.add(
            None,
            "error",
            "bad-extension",
            f"QuPath imports only {', '.join(QUPATH_IMPORT_SUFFIXES)} files: it reads 0 objects from {path.name}; "
            "rename it",
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
                "warning",
                "not-feature-collection",
                f"top level of {doc.label} is {what}, not a FeatureCollection: QuPath reads it, other tools may not",
            )
        if doc.nonstandard_numbers:
            report.add(
                None,
                "warning",
                "nonstandard-numbers",
                f"{doc.label} holds bare NaN/Infinity tokens, which are not JSON: QuPath's lenient parser "
                "takes them, strict parsers refuse the file",
            )
        for obj in objects:
            _check_feature(obj, index, report, seen_ids)
            index += 1
    _check_pending(report)
    report.issues.sort(key=lambda issue: -1 if issue.index is None else issue.index)  # stable: file order
    report.features = index
    if index == 0:
        report.add(None, "warning", "empty", "no features: QuPath imports nothing")
    return report


@dataclass
class FixResult:
    """What :func:`fix_geojson` read, wrote, and the validation of the written file."""

    read: ReadSummary
    written: WriteSummary
    report: ValidationReport


def fix_geojson(path: str | os.PathLike[str], out: str | os.PathLike[str], **writer_kw: Any) -> FixResult:
    """Rewrite ``path`` as a clean QuPath GeoJSON file ``out`` (never over the input).

    The tolerant reader closes rings, drops null geometries and features with NaN coordinates, keeps the
    polygonal parts of GeometryCollections, repairs invalid polygons and moves a misplaced ``objectType``
    into ``properties``; the writer then rounds, re-checks validity, adds colours to classifications,
    replaces non-UUID ids and leaves out non-finite measurements.

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
    if src.resolve() == dst.resolve():
        raise InputError(f"--fix would overwrite the input {src}: give another output with -o")
    result = read_geojson(src, on_nonfinite="skip")
    written = write_geojson(dst, result.features, **writer_kw)
    return FixResult(result.summary, written, validate_geojson(dst))
