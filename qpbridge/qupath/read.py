"""Read QuPath GeoJSON tolerantly: everything QuPath 0.2-0.7 and its peers write.

Top level: FeatureCollection, Feature, JSON array (also nested) or a bare geometry; files ``.geojson``,
``.json``, any ``*.gz`` and ``.zip`` (every entry that parses). Object types, classifications,
measurements and colours are accepted in all the spellings QuPath accepts, and object types in any letter
case (:func:`qpbridge.qupath.objects.normalize_object_type`; see ``docs/qupath-geojson.md``); shapes QuPath
would reject (unclosed rings, GeometryCollections, invalid polygons) are repaired with a
warning that names the feature, so that corrected annotations are never silently lost.

Loading the file (plain, gzip, zip, byte-order marks) and finding its feature objects is
:mod:`qpbridge.qupath.load`'s; this module turns each object into a :class:`~qpbridge.qupath.Feature`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely

from qpbridge.errors import GeoJSONError
from qpbridge.qupath.classes import UNCLASSIFIED, join_class_names
from qpbridge.qupath.load import flatten_features, gc_paused, load_json_documents
from qpbridge.qupath.objects import LEGACY_TYPE_IDS, legacy_type, normalize_object_type
from qpbridge.qupath.write import Feature

__all__ = [
    "ABSURD_COORDINATE_PX",
    "ReadResult",
    "ReadSummary",
    "feature_label",
    "far_outside",
    "far_outside_message",
    "make_valid_polygonal",
    "parse_classification",
    "parse_qupath_color",
    "read_geojson",
    "require_features",
    "simple_ring",
]

_MAX_WARNINGS = 200
_AREA_TYPES = ("Polygon", "MultiPolygon")

#: No slide is this large (level-0 px; the largest whole-slide scans are ~200,000 px on a side): coordinates
#: beyond it are another unit or a broken transform, never a place on a slide.
ABSURD_COORDINATE_PX = 1e7


@dataclass
class ReadSummary:
    """What :func:`read_geojson` found.

    ``total`` counts every feature entry in the file; ``skipped``, ``repaired``, ``clipped`` and
    ``not_area`` hold ``(index, reason)`` for the features concerned (index = position in the file,
    depth first through arrays and child objects). ``by_object_type``/``by_class`` count the features
    returned (unclassified as ``"Unclassified"``).
    """

    total: int = 0
    by_object_type: dict[str, int] = field(default_factory=dict)
    by_class: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    repaired: list[tuple[int, str]] = field(default_factory=list)
    clipped: list[tuple[int, str]] = field(default_factory=list)
    not_area: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class ReadResult:
    """Features read from a file, a summary and the warnings raised while reading."""

    features: list[Feature]
    summary: ReadSummary
    warnings: list[str] = field(default_factory=list)


# --- values -------------------------------------------------------------------------------------------
def parse_qupath_color(value: Any) -> tuple[int, int, int] | None:
    """``(r, g, b)`` of a colour in a QuPath GeoJSON file, or ``None`` when it is not one.

    Accepts what QuPath writes and reads: ``[r, g, b]`` (also ``[r, g, b, a]``; values clamped to 0-255),
    a packed (signed ARGB) int as in the legacy ``colorRGB``, or ``[packed]``. Never raises: an unusable
    colour is ``None`` and the object keeps its class colour. (A model card's colour is another contract,
    strict and with ``"#rrggbb"``: :func:`qpbridge.models.parse_color`.)

    Examples
    --------
    >>> parse_qupath_color(-3670016), parse_qupath_color([200, 0, 0]), parse_qupath_color(None)
    ((200, 0, 0), (200, 0, 0), None)
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        packed = int(value) & 0xFFFFFF
        return ((packed >> 16) & 255, (packed >> 8) & 255, packed & 255)
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return parse_qupath_color(value[0])
        if len(value) in (3, 4):
            try:
                r, g, b = (max(0, min(255, int(c))) for c in value[:3])
            except (TypeError, ValueError):
                return None
            return (r, g, b)
    return None


def parse_classification(value: Any) -> tuple[str | None, tuple[int, int, int] | None]:
    """``(class name, colour)`` from any classification QuPath reads; ``(None, None)`` = unclassified.

    Examples
    --------
    >>> parse_classification({"names": ["Tumor", "Positive"], "color": [200, 50, 50]})
    ('Tumor: Positive', (200, 50, 50))
    >>> parse_classification("Stroma"), parse_classification({})
    (('Stroma', None), (None, None))
    """
    if value is None:
        return None, None
    if isinstance(value, str):
        return (value.strip() or None), None
    if isinstance(value, list):
        return join_class_names(value), None
    if not isinstance(value, dict) or not value:
        return None, None
    name: str | None = None
    names_raw = value.get("names")
    if isinstance(names_raw, list) and names_raw:
        name = join_class_names(names_raw)
    elif isinstance(value.get("name"), str):
        name = value["name"].strip() or None
    parent = value.get("parentClass")
    if isinstance(parent, dict) and name is not None:  # QuPath 0.3 and older: nested parent classes
        parent_name, _ = parse_classification(parent)
        if parent_name:
            name = join_class_names([parent_name, name])
    color = parse_qupath_color(value.get("color"))
    if color is None:
        color = parse_qupath_color(value.get("colorRGB"))
    return name, color


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _parse_measurements(value: Any) -> tuple[dict[str, float], int]:
    """Measurements from an object or a ``[{"name", "value"}]`` list; returns them and how many were unusable."""
    out: dict[str, float] = {}
    bad = 0
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = []
        for entry in value:
            if isinstance(entry, dict) and "name" in entry:
                items.append((entry["name"], entry.get("value")))
            else:
                bad += 1
    else:
        return out, 0
    for key, raw in items:
        number = _number(raw)
        if number is None:
            bad += 1
        else:
            out[str(key)] = number
    return out, bad


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    out = {}
    for key, raw in value.items():
        if isinstance(raw, bool):
            out[str(key)] = "true" if raw else "false"
        elif isinstance(raw, (str, int, float)):
            out[str(key)] = str(raw)
    return out


def feature_label(index: int, fid: Any = None, class_name: str | None = None) -> str:
    """``feature 12 (id 6f1c..., class 'Tumor')`` for messages."""
    bits = []
    if isinstance(fid, str) and fid:
        bits.append(f"id {fid}")
    if class_name:
        bits.append(f"class {class_name!r}")
    return f"feature {index}" + (f" ({', '.join(bits)})" if bits else "")


# --- geometry -----------------------------------------------------------------------------------------
class _Skip(Exception):
    """A feature that cannot be used; the message is the reason."""


class _NonFinite(Exception):
    """A NaN or infinite coordinate."""


def _positions(raw: Any, what: str) -> np.ndarray:
    if not isinstance(raw, list):
        raise _Skip(f"{what} coordinates are not a list")
    try:
        arr = np.asarray(raw, dtype=float)
    except (ValueError, TypeError):
        try:  # ragged: some positions with a 3rd value
            arr = np.asarray([p[:2] for p in raw], dtype=float)
        except (ValueError, TypeError, IndexError):
            raise _Skip(f"{what} coordinates are not numbers") from None
    if arr.ndim == 1 and arr.size == 0:
        return np.empty((0, 2))
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise _Skip(f"{what} coordinates are not a list of [x, y] positions")
    arr = arr[:, :2]
    if not np.isfinite(arr).all():
        raise _NonFinite(what)
    return arr


def _ring(raw: Any, notes: list[str]) -> np.ndarray | None:
    arr = _positions(raw, "ring")
    if len(arr) == 0:
        return None
    if not np.array_equal(arr[0], arr[-1]):
        notes.append("unclosed ring closed")
        arr = np.vstack([arr, arr[:1]])
    if len(arr) < 4:
        notes.append(f"ring with {len(arr)} positions dropped")
        return None
    return arr


def _polygon(raw: Any, notes: list[str]) -> shapely.Polygon:
    if not isinstance(raw, list):
        raise _Skip("polygon coordinates are not a list")
    rings = [_ring(r, notes) for r in raw]
    if not rings or rings[0] is None:
        return shapely.Polygon()
    holes = [r for r in rings[1:] if r is not None]
    return shapely.Polygon(rings[0], holes)


def _geometry(gj: Any, notes: list[str]) -> shapely.Geometry:
    if gj is None:
        raise _Skip("null geometry")
    if not isinstance(gj, dict):
        raise _Skip("geometry is not a GeoJSON object")
    kind = gj.get("type")
    coords = gj.get("coordinates")
    if kind == "Polygon":
        return _polygon(coords, notes)
    if kind == "MultiPolygon":
        if not isinstance(coords, list):
            raise _Skip("MultiPolygon coordinates are not a list")
        polys = [p for p in (_polygon(c, notes) for c in coords) if not p.is_empty]
        return shapely.MultiPolygon(polys) if polys else shapely.MultiPolygon()
    if kind == "Point":
        arr = _positions([coords], "point")
        return shapely.Point(arr[0]) if len(arr) else shapely.Point()
    if kind == "MultiPoint":
        return shapely.MultiPoint(_positions(coords, "MultiPoint"))
    if kind == "LineString":
        arr = _positions(coords, "LineString")
        return shapely.LineString(arr) if len(arr) >= 2 else shapely.LineString()
    if kind == "MultiLineString":
        if not isinstance(coords, list):
            raise _Skip("MultiLineString coordinates are not a list")
        lines = [_positions(c, "line") for c in coords]
        return shapely.MultiLineString([ln for ln in lines if len(ln) >= 2])
    if kind == "GeometryCollection":
        parts = gj.get("geometries")
        if not isinstance(parts, list):
            raise _Skip("GeometryCollection without a 'geometries' list")
        notes.append("GeometryCollection reduced to its polygonal parts")
        geoms = [_geometry(p, notes) for p in parts]
        polys = [g for g in geoms if shapely.get_type_id(g) in (3, 6) and not g.is_empty]
        if polys:
            return _merge_polygonal(polys)
        others = [g for g in geoms if not g.is_empty]
        if others:
            raise _Skip("GeometryCollection without polygonal parts")
        return shapely.Polygon()
    raise _Skip(f"geometry type {kind!r} is not GeoJSON")


def simple_ring(gj: Any) -> np.ndarray | None:
    """The ring of a Polygon without holes as an (n, 2) array (not yet checked), else ``None``.

    The fast path of the reader and of :func:`qpbridge.qupath.validate_geojson`: most features are such
    polygons, and their rings are built into shapely polygons in one vectorized call.

    Examples
    --------
    >>> simple_ring({"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}).shape
    (4, 2)
    >>> simple_ring({"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [0, 0]], [[1, 1], [2, 1], [1, 1]]]}) is None
    True
    """
    if type(gj) is not dict or gj.get("type") != "Polygon":
        return None
    coords = gj.get("coordinates")
    if type(coords) is not list or len(coords) != 1:
        return None
    try:
        arr = np.asarray(coords[0], dtype=float)
    except (ValueError, TypeError):
        return None
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        return None
    return arr


def _merge_polygonal(polys: list[shapely.Geometry]) -> shapely.Geometry:
    if len(polys) == 1:
        return polys[0]
    merged = shapely.union_all([_make_valid(p) for p in polys])
    return _polygonal_part(merged)


def _make_valid(geom: shapely.Geometry) -> shapely.Geometry:
    try:
        return shapely.make_valid(geom, method="structure", keep_collapsed=False)
    except TypeError:  # shapely < 2.1
        return shapely.make_valid(geom)


def make_valid_polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """``geom`` made valid, polygonal parts only (an empty Polygon when nothing of it has an area).

    Examples
    --------
    >>> make_valid_polygonal(shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])).area
    50.0
    """
    return _polygonal_part(_make_valid(geom))


def _polygonal_part(geom: shapely.Geometry) -> shapely.Geometry:
    if shapely.get_type_id(geom) in (3, 6):
        return geom
    parts = [p for p in shapely.get_parts(geom) if shapely.get_type_id(p) in (3, 6)]
    if not parts:
        return shapely.Polygon()
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


# --- coordinates far from the image ---------------------------------------------------------------------
def far_outside(
    bounds: np.ndarray, image_box: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Which features reach far outside an image, and the coordinate of each that reaches farthest.

    ``bounds`` is ``(n, 4)``: each feature's ``xmin, ymin, xmax, ymax`` (``shapely.bounds``; NaN rows, empty
    geometries, never count); ``image_box`` the image in the same coordinates (QuPath's level-0 pixels).
    *Far* is farther from the image than its own width (x) or height (y): an object drawn past the edge of
    a slide stays within that, one placed by another slide's or another unit's coordinates does not. Returns
    a boolean mask and, per feature, the coordinate farthest beyond the allowed band (NaN where not far).

    Examples
    --------
    >>> bounds = np.array([[10, 10, 90, 90], [-50, 0, 150, 40], [0, 0, 1e300, 5], [np.nan] * 4])
    >>> far, reach = far_outside(bounds, (0, 0, 100, 50))
    >>> far.tolist(), float(reach[2])
    ([False, False, True, False], 1e+300)
    """
    x0, y0, x1, y1 = (float(v) for v in image_box)
    width, height = x1 - x0, y1 - y0
    b = np.asarray(bounds, dtype=float).reshape(-1, 4)
    with np.errstate(invalid="ignore", over="ignore"):
        beyond = np.stack([
            (x0 - width) - b[:, 0], (y0 - height) - b[:, 1], b[:, 2] - (x1 + width), b[:, 3] - (y1 + height),
        ], axis=1)
        far = np.nan_to_num(beyond, nan=-np.inf).max(axis=1) > 0
    reach = np.full(len(b), np.nan)
    if far.any():
        which = np.nan_to_num(beyond[far], nan=-np.inf).argmax(axis=1)
        reach[far] = b[far][np.arange(int(far.sum())), which]
    return far, reach


def far_outside_message(reach_px: float, size_px: tuple[int, int]) -> str:
    """What :func:`far_outside` found, in words (the caller names the feature).

    >>> far_outside_message(1e300, (4096, 3072))
    'coordinates reach 1e+300 px, far outside the 4096 x 3072 px image'
    """
    return f"coordinates reach {reach_px:g} px, far outside the {size_px[0]} x {size_px[1]} px image"


# --- reading ------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, slide_size_px: tuple[int, int] | None, on_nonfinite: str) -> None:
        self.summary = ReadSummary()
        self.features: list[Feature] = []
        self._pending: list[tuple[int, np.ndarray]] = []  # (slot in features, closed ring) of simple polygons
        self._dropped: set[int] = set()  # id() of features already reported as skipped
        self.warnings: list[str] = []
        self._hidden_warnings = 0
        self.on_nonfinite = on_nonfinite
        self.slide_box = None
        if slide_size_px is not None:
            w, h = slide_size_px
            if not (w > 0 and h > 0):
                raise GeoJSONError(f"slide size must be positive pixels, got {slide_size_px}: give (width, height)")
            self.slide_box = shapely.box(0, 0, w, h)
            self.slide_size_px = (w, h)

    def warn(self, label: str, message: str) -> None:
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(f"{label}: {message}")
        else:
            self._hidden_warnings += 1

    def finish_warnings(self) -> None:
        if self._hidden_warnings:
            self.warnings.append(f"... and {self._hidden_warnings} more warnings (see the summary)")

    def read_feature(self, obj: Any, index: int, source: str) -> None:
        self.summary.total += 1
        if not isinstance(obj, dict):
            self._skip(index, source, f"feature {index}", f"not a GeoJSON Feature ({type(obj).__name__})")
            return
        props = obj.get("properties")
        props = props if isinstance(props, dict) else {}
        fid = obj.get("id")
        class_name, class_color = parse_classification(props.get("classification"))
        object_type = self._object_type(obj, props, source, index, fid, class_name)
        notes: list[str] = []
        gj = obj.get("geometry")
        ring = simple_ring(gj)
        try:
            geom = None if ring is not None else _geometry(gj, notes)
        except _Skip as exc:
            self._skip(index, source, feature_label(index, fid, class_name), str(exc))
            return
        except _NonFinite as exc:
            self._nonfinite(index, source, feature_label(index, fid, class_name), str(exc))
            return
        nucleus = None
        nucleus_gj = obj.get("nucleusGeometry", props.get("nucleusGeometry"))
        if object_type == "cell" and nucleus_gj is not None:
            try:
                nucleus = _geometry(nucleus_gj, [])
            except (_Skip, _NonFinite):
                self.warn(f"{source}: {feature_label(index, fid, class_name)}", "unreadable nucleusGeometry ignored")
        measurements, bad = _parse_measurements(props.get("measurements"))
        if bad:
            self.warn(
                f"{source}: {feature_label(index, fid, class_name)}",
                f"{bad} measurement value(s) that are not numbers ignored",
            )
        name = props.get("name")
        metadata = props.get("metadata")
        feature = Feature(
            geometry=geom,
            class_name=class_name,
            color=class_color if class_color is not None else parse_qupath_color(props.get("color")),
            object_type=object_type,
            name=None if name is None else str(name),
            measurements=measurements,
            id=fid if isinstance(fid, str) and fid not in LEGACY_TYPE_IDS else None,
            metadata=_metadata(metadata) if metadata else {},
            nucleus_geometry=nucleus,
            source_index=index,
        )
        if ring is not None:
            if not (ring[0, 0] == ring[-1, 0] and ring[0, 1] == ring[-1, 1]):
                notes.append("unclosed ring closed")
                ring = np.vstack([ring, ring[:1]])
            if len(ring) < 4:
                self._skip(index, source, feature_label(index, fid, class_name), f"ring with {len(ring)} positions")
                return
            self._pending.append((len(self.features), ring))
        if notes:
            reason = "; ".join(dict.fromkeys(notes))
            self.summary.repaired.append((index, reason))
            self.warn(f"{source}: {feature_label(index, fid, class_name)}", reason)
        self.features.append(feature)

    def _nonfinite(self, index: int, source: str, label: str, what: str) -> None:
        if self.on_nonfinite == "skip":
            self._skip(index, source, label, f"non-finite (NaN or infinite) coordinate in a {what}")
            return
        raise GeoJSONError(
            f"{source}: {label} has a non-finite (NaN or infinite) coordinate in a {what}: "
            "fix or delete that object and export again"
        )

    def build_pending(self, source: str) -> None:
        """Create the simple polygons collected by :meth:`read_feature` in one vectorized call."""
        if not self._pending:
            return
        slots = [slot for slot, _ in self._pending]
        rings = [ring for _, ring in self._pending]
        self._pending = []
        coords = np.concatenate(rings)
        lengths = np.fromiter((len(r) for r in rings), dtype=np.intp, count=len(rings))
        finite = np.isfinite(coords).all(axis=1)
        if not finite.all():
            ring_of = np.repeat(np.arange(len(rings)), lengths)
            bad = set(np.unique(ring_of[~finite]).tolist())
            for k in sorted(bad):
                feat = self.features[slots[k]]
                index = int(feat.source_index or 0)
                self._nonfinite(index, source, feature_label(index, feat.id, feat.class_name), "ring")
                feat.geometry = shapely.Polygon()
                self._dropped.add(id(feat))  # skipped (counted above); removed in check_geometries
            keep = np.array([k not in bad for k in range(len(rings))])
            slots = [slot for slot, ok in zip(slots, keep, strict=True) if ok]
            coords = coords[np.repeat(keep, lengths)]
            lengths = lengths[keep]
        polys = shapely.polygons(shapely.linearrings(coords, indices=np.repeat(np.arange(len(lengths)), lengths)))
        for slot, poly in zip(slots, polys, strict=True):
            self.features[slot].geometry = poly

    def _object_type(
        self, obj: dict[str, Any], props: dict[str, Any], source: str, index: int, fid: Any, class_name: str | None
    ) -> str:
        for raw in (
            props.get("objectType"),
            props.get("object_type"),
            obj.get("objectType"),
            obj.get("object_type"),
            props.get("type"),
            obj.get("id") if legacy_type(obj.get("id")) else None,
        ):
            if raw is None:
                continue
            legacy = legacy_type(raw)
            if legacy is not None:
                return legacy
            kind = normalize_object_type(raw)
            if kind is None:
                label = feature_label(index, fid, class_name)
                self.warn(f"{source}: {label}", f"unknown object type {raw!r} read as an annotation")
                return "annotation"
            return kind
        return "annotation"

    def _skip(self, index: int, source: str, label: str, reason: str) -> None:
        self.summary.skipped.append((index, reason))
        self.warn(f"{source}: {label}", f"skipped: {reason}")

    def check_geometries(self, source: str, first: int) -> None:
        """Repair invalid areas, clip to the slide, drop empties (features[first:], vectorized)."""
        batch = self.features[first:]
        if not batch:
            return
        geoms = np.empty(len(batch), dtype=object)
        geoms[:] = [f.geometry for f in batch]
        areas = np.isin(shapely.get_type_id(geoms), (3, 6))
        invalid = areas & ~shapely.is_valid(geoms)
        for i in np.flatnonzero(invalid).tolist():
            feat = batch[i]
            reason = shapely.is_valid_reason(feat.geometry)
            feat.geometry = _polygonal_part(_make_valid(feat.geometry))
            label = feature_label(int(feat.source_index or 0), feat.id, feat.class_name)
            self.summary.repaired.append((int(feat.source_index or 0), f"invalid polygon ({reason}) repaired"))
            self.warn(f"{source}: {label}", f"invalid polygon ({reason}) repaired")
        outside: set[int] = set()
        if self.slide_box is not None:
            geoms[:] = [f.geometry for f in batch]
            inside = shapely.covered_by(geoms, self.slide_box)
            w, h = self.slide_size_px
            for i in np.flatnonzero(~inside & ~shapely.is_empty(geoms)).tolist():
                feat = batch[i]
                clipped = shapely.intersection(feat.geometry, self.slide_box)
                if areas[i]:
                    clipped = _polygonal_part(clipped)
                feat.geometry = clipped
                if clipped.is_empty:
                    outside.add(i)  # reported below
                    continue
                label = feature_label(int(feat.source_index or 0), feat.id, feat.class_name)
                self.summary.clipped.append((int(feat.source_index or 0), f"clipped to the slide ({w} x {h} px)"))
                self.warn(f"{source}: {label}", f"clipped to the slide ({w} x {h} px)")
                if feat.nucleus_geometry is not None:
                    feat.nucleus_geometry = shapely.intersection(feat.nucleus_geometry, self.slide_box)
        kept: list[Feature] = []
        for i, feat in enumerate(batch):
            index = int(feat.source_index or 0)
            if id(feat) in self._dropped:
                continue
            if feat.geometry.is_empty:
                label = feature_label(index, feat.id, feat.class_name)
                reason = "wholly outside the slide" if i in outside else "empty geometry"
                self._skip(index, source, label, reason)
                continue
            kind = feat.geometry.geom_type
            if kind not in _AREA_TYPES:
                self.summary.not_area.append((index, kind))
            otype = feat.object_type
            klass = feat.class_name if feat.class_name is not None else UNCLASSIFIED
            self.summary.by_object_type[otype] = self.summary.by_object_type.get(otype, 0) + 1
            self.summary.by_class[klass] = self.summary.by_class.get(klass, 0) + 1
            kept.append(feat)
        self.features[first:] = kept


def read_geojson(
    path: str | os.PathLike[str],
    *,
    slide_size_px: tuple[int, int] | None = None,
    on_nonfinite: Literal["raise", "skip"] = "raise",
) -> ReadResult:
    """Read every object of a QuPath GeoJSON file (or of its peers' files), repairing what QuPath would reject.

    Parameters
    ----------
    path
        ``.geojson``, ``.json``, any ``*.gz``, or a ``.zip`` (every entry that parses).
    slide_size_px
        ``(width, height)`` of the slide at level 0: geometries are clipped to it with a warning, and
        features wholly outside are skipped (and counted).
    on_nonfinite
        ``"raise"`` (default): a NaN/infinite coordinate is a :class:`GeoJSONError` naming the feature;
        ``"skip"``: the feature is skipped and counted.

    Returns
    -------
    ReadResult
        Features (level-0 pixel geometries; Point/Line features are kept and listed in
        ``summary.not_area``), a :class:`ReadSummary` and warnings naming each repaired, clipped or
        skipped feature. An empty collection gives an empty result (see :func:`require_features`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.geojson"
    >>> _ = p.write_text('{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
    ...     '[[[0, 0], [10, 0], [10, 10], [0, 10]]]}, "properties": {"objectType": "detection", '
    ...     '"classification": {"name": "Tumor", "color": [200, 0, 0]}}}')
    >>> result = read_geojson(p)
    >>> f = result.features[0]
    >>> f.object_type, f.class_name, f.color, f.geometry.area, result.summary.repaired
    ('detection', 'Tumor', (200, 0, 0), 100.0, [(0, 'unclosed ring closed')])
    """
    with gc_paused():  # millions of small lists: the cyclic GC would cost more than the parsing
        docs = load_json_documents(path)
        reader = _Reader(slide_size_px, on_nonfinite)
        index = 0
        for doc in docs:
            _, objects = flatten_features(doc)
            first = len(reader.features)
            for obj in objects:
                reader.read_feature(obj, index, doc.label)
                index += 1
            reader.build_pending(doc.label)
            reader.check_geometries(doc.label, first)
        reader.finish_warnings()
    return ReadResult(reader.features, reader.summary, reader.warnings)


def require_features(result: ReadResult, path: str | os.PathLike[str]) -> ReadResult:
    """Return ``result``, or raise :class:`GeoJSONError` when it holds no features.

    Examples
    --------
    >>> require_features(ReadResult([], ReadSummary()), "empty.geojson")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qpbridge.errors.GeoJSONError: no features in empty.geojson: ...
    """
    if not result.features:
        skipped = (
            f" ({len(result.summary.skipped)} skipped: {result.summary.skipped[0][1]}...)"
            if (result.summary.skipped)
            else ""
        )
        raise GeoJSONError(
            f"no features in {Path(path)}{skipped}: export the objects from QuPath "
            "(File > Export objects as GeoJSON) and check that the right file was given"
        )
    return result
