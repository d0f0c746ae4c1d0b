"""Write QuPath GeoJSON that QuPath 0.4-0.7 imports cleanly, streaming, at constant memory.

What is written follows "The rules qpbridge follows" in ``docs/qupath-geojson.md``: one FeatureCollection,
``properties.objectType`` always (:data:`~qpbridge.qupath.objects.OBJECT_TYPES`), a content-derived UUID
``id``, ``classification`` with both ``name`` (or ``names`` for a derived class) and ``color``, only
Polygon/MultiPolygon for areas, every ring closed and every geometry valid *after* rounding to ``precision``
decimals, measurements as an object of finite numbers, and only the names in
:data:`~qpbridge.qupath.project.GEOJSON_SUFFIXES`.

Features are processed in batches with shapely's vectorized functions and serialized with orjson; the
output goes to a temporary file beside the target that replaces the target only when the writer closes
without error.
"""

from __future__ import annotations

import colorsys
import contextlib
import gzip
import hashlib
import io
import math
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import orjson
import shapely

from qpbridge.atomic import atomic_write_bytes, commit, temporary_path
from qpbridge.errors import GeoJSONError, OutputError
from qpbridge.qupath.classes import UNCLASSIFIED, split_class_name
from qpbridge.qupath.objects import OBJECT_TYPES
from qpbridge.qupath.project import GEOJSON_SUFFIXES, META_SUFFIX, describe_suffixes

__all__ = [
    "Feature",
    "GeoJSONWriter",
    "WriteSummary",
    "class_color",
    "clean_geometry",
    "is_uuid",
    "meta_path",
    "write_geojson",
]

#: Namespace of the content-derived feature ids (uuid5-style: SHA-1 over namespace + content).
_ID_NAMESPACE = uuid.UUID("0f4c3f5e-3a63-5b7e-9d1e-71b0a9c1d2e4")

_BATCH = 2048
_FLUSH_BYTES = 1 << 20
_POLYGONAL = (3, 6)  # shapely type ids of Polygon, MultiPolygon
_INTEGRAL = re.compile(rb"\.0(?=[,\]])")


@dataclass
class Feature:
    """One QuPath object: a geometry in level-0 pixels with its class, colour and measurements.

    Attributes
    ----------
    geometry
        Level-0 pixel coordinates (x right, y down). Areas are Polygon/MultiPolygon; Point, MultiPoint
        and LineString are written as given.
    class_name
        QuPath classification; a derived class is written ``"Tumor: Positive"``. ``None`` = unclassified.
    color
        ``(r, g, b)`` 0-255; the writer falls back to its ``default_color`` map, then to a colour derived
        from the class name. The reader fills it from the classification (else the object's colour).
    object_type
        ``"annotation"`` (regions), ``"detection"`` (many small objects), ``"cell"``, ``"tile"``, ``"tmaCore"``.
    name, measurements, metadata
        QuPath's object name, numeric measurements and string metadata; written only when set.
    id
        A UUID string; the writer derives a stable one from the content when ``None`` (or not a UUID).
    nucleus_geometry
        Cells only: the nucleus, written as ``nucleusGeometry``.
    source_index
        Set by the reader: the feature's position in the file, for messages.

    Examples
    --------
    >>> from shapely import box
    >>> Feature(box(0, 0, 10, 10), "Tumor", object_type="detection").class_name
    'Tumor'
    """

    geometry: shapely.Geometry
    class_name: str | None = None
    color: tuple[int, int, int] | None = None
    object_type: str = "annotation"
    name: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    nucleus_geometry: shapely.Geometry | None = None
    source_index: int | None = None


@dataclass
class WriteSummary:
    """What a :class:`GeoJSONWriter` wrote.

    ``repaired`` counts features whose geometry was invalid after rounding (or a GeometryCollection) and
    was made valid; ``dropped_empty`` those that were empty, null or collapsed to nothing;
    ``skipped_measurements`` the non-finite or non-numeric measurement values left out;
    ``replaced_ids`` the given ids that were not UUIDs, or repeated an earlier id, and were replaced by
    derived ones.
    """

    written: int = 0
    dropped_empty: int = 0
    repaired: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    by_object_type: dict[str, int] = field(default_factory=dict)
    skipped_measurements: int = 0
    replaced_ids: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready data."""
        return asdict(self)


def class_color(name: str) -> tuple[int, int, int]:
    """A deterministic, fairly saturated colour for a class name (same name -> same colour).

    Examples
    --------
    >>> class_color("Tumor") == class_color("Tumor")
    True
    """
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    sat = 0.55 + 0.35 * digest[2] / 255.0
    val = 0.70 + 0.25 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (round(r * 255), round(g * 255), round(b * 255))


def _check_color(color: Any, what: str) -> tuple[int, int, int]:
    try:
        rgb = tuple(int(c) for c in color)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or any(c < 0 or c > 255 for c in rgb) or any(float(c) != int(c) for c in color):
        raise GeoJSONError(f"colour {color!r} of {what} is not (r, g, b) with integers 0-255: give e.g. (200, 0, 0)")
    return (rgb[0], rgb[1], rgb[2])


def _round_coords(geoms: Any, precision: int) -> Any:
    return shapely.transform(geoms, lambda xy: np.round(xy, precision))


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of ``geom`` as a Polygon/MultiPolygon (empty Polygon when there is none)."""
    tid = shapely.get_type_id(geom)
    if tid in _POLYGONAL:
        return geom
    if tid == 7:  # GeometryCollection
        parts = [p for p in shapely.get_parts(geom) if shapely.get_type_id(p) in _POLYGONAL]
        if len(parts) == 1:
            return parts[0]
        if parts:
            merged = shapely.union_all(parts)
            return _polygonal(merged) if shapely.get_type_id(merged) == 7 else merged
    return shapely.Polygon()


def _repair_polygonal(geom: shapely.Geometry, precision: int) -> shapely.Geometry | None:
    """Make ``geom`` a valid (Multi)Polygon on the ``10**-precision`` grid; ``None`` if nothing is left."""
    grid = 10.0**-precision
    for _ in range(3):
        try:
            geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
        except TypeError:  # shapely < 2.1: no method argument
            geom = shapely.make_valid(geom)
        geom = _polygonal(geom)
        if geom.is_empty:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate input: GEOS copes, numpy warns
            geom = _polygonal(shapely.set_precision(geom, grid))
        geom = _round_coords(geom, precision)
        if geom.is_empty:
            return None
        if shapely.is_valid(geom):
            if shapely.get_type_id(geom) == 6 and shapely.get_num_geometries(geom) == 1:
                geom = shapely.get_geometry(geom, 0)  # a one-part MultiPolygon is a Polygon
            return geom
    return None


def clean_geometry(geom: shapely.Geometry | None, precision: int = 2) -> tuple[shapely.Geometry | None, bool]:
    """Round ``geom`` to ``precision`` decimals and make sure it is still valid; repair it if not.

    Returns ``(geometry, repaired)``; geometry is ``None`` when nothing is left (null, empty, or a sliver
    thinner than the grid). Areas come back as Polygon/MultiPolygon whose parts do not overlap; a
    GeometryCollection keeps its polygonal parts (none: ``None``); a LinearRing becomes a LineString.

    Examples
    --------
    >>> from shapely import Polygon
    >>> bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    >>> fixed, repaired = clean_geometry(bowtie)
    >>> fixed.geom_type, repaired, fixed.area
    ('MultiPolygon', True, 50.0)
    """
    if geom is None or shapely.is_empty(geom):
        return None, False
    tid = int(shapely.get_type_id(geom))
    if tid == 7:  # GeometryCollection: its polygonal parts, or nothing
        poly = _polygonal(geom)
        return (None if poly.is_empty else _repair_polygonal(poly, precision)), True
    rounded = _round_coords(geom, precision)
    if tid in _POLYGONAL:
        if not shapely.is_empty(rounded) and shapely.is_valid(rounded):
            return rounded, False
        return _repair_polygonal(geom, precision), True
    if tid == 2:  # LinearRing: not a GeoJSON type, write it as a LineString
        rounded = shapely.LineString(shapely.get_coordinates(rounded))
    return (None if shapely.is_empty(rounded) else rounded), False


def _geometry_json(geom: shapely.Geometry) -> bytes:
    return _INTEGRAL.sub(b"", shapely.to_geojson(geom).encode("ascii"))


_ID_HASH = hashlib.sha1(_ID_NAMESPACE.bytes)


def _stable_id_bytes(object_type: str, class_name: str | None, wkb: bytes) -> bytearray:
    """16 bytes of a version-5-style UUID over the namespace, object type, class and geometry WKB."""
    sha = _ID_HASH.copy()
    sha.update(f"{object_type}\x00{class_name}\x00".encode())
    sha.update(wkb)
    raw = bytearray(sha.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw


def _uuid_text(raw: bytes | bytearray) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_uuid(value: object) -> bool:
    """True for a hyphenated UUID string (the form QuPath writes and keeps on import).

    Examples
    --------
    >>> is_uuid("6f1c7a52-0a4e-4c39-a1f0-3b0d4a5e8c11"), is_uuid("PathDetectionObject")
    (True, False)
    """
    return isinstance(value, str) and _UUID_TEXT.fullmatch(value) is not None


class GeoJSONWriter:
    """Stream features into one QuPath GeoJSON FeatureCollection at constant memory.

    ``.geojson``/``.json`` is written plain, ``.geojson.gz``/``.json.gz`` gzip-compressed (QuPath 0.4+ reads
    both). The file appears at ``path`` only when the ``with`` block ends without an exception; otherwise
    the temporary file is deleted and an existing ``path`` is left untouched.

    Parameters
    ----------
    path
        Output file.
    default_color
        Class name -> ``(r, g, b)`` for features without their own colour.
    precision
        Decimals of the written coordinates (QuPath uses 2: 0.01 px).
    gzip_level
        zlib level for ``.gz`` outputs (1 is ~4x faster than 6 for little size difference).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "cells.geojson"
    >>> with GeoJSONWriter(out, default_color={"Tumor": (200, 0, 0)}) as writer:
    ...     writer.write(Feature(box(0, 0, 8.004, 8), "Tumor", object_type="detection"))
    1
    >>> writer.summary.written, writer.summary.by_class
    (1, {'Tumor': 1})
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default_color: dict[str, tuple[int, int, int]] | None = None,
        precision: int = 2,
        gzip_level: int = 1,
    ) -> None:
        self.path = Path(path)
        name = self.path.name.lower()
        if not name.endswith(GEOJSON_SUFFIXES):
            raise OutputError(
                f"output {self.path} does not end in {describe_suffixes(GEOJSON_SUFFIXES)}: "
                "QuPath imports only those; rename the output"
            )
        if not self.path.parent.is_dir():
            raise OutputError(f"output folder {self.path.parent} does not exist: create it or choose another path")
        if not 0 <= precision <= 8:
            raise GeoJSONError(f"precision must be 0-8 decimals, got {precision}: QuPath uses 2")
        self.precision = precision
        self.summary = WriteSummary()
        self._default_color = {k: _check_color(v, f"class {k!r}") for k, v in (default_color or {}).items()}
        self._seen_ids: set[int] = set()  # 64 bits of each derived id, to keep ids unique in the file
        self._props_cache: dict[tuple[str, str | None, tuple[int, int, int] | None], bytes] = {}
        self._tmp = temporary_path(self.path)
        try:
            self._raw: IO[bytes] = open(self._tmp, "wb")  # noqa: SIM115 (closed in close/abort)
        except OSError as exc:
            raise OutputError(f"cannot write in {self.path.parent}: {exc.strerror}; choose another folder") from None
        self._out: IO[bytes] | gzip.GzipFile
        if name.endswith(".gz"):
            self._out = gzip.GzipFile(
                filename=self.path.name[:-3], mode="wb", fileobj=self._raw, compresslevel=gzip_level, mtime=0
            )
        else:
            self._out = self._raw
        self._buffer = io.BytesIO()
        self._first = True
        self._closed = False
        self._buffer.write(b'{"type":"FeatureCollection","features":[\n')

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> GeoJSONWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """Finish the FeatureCollection and move the file into place (atomic)."""
        if self._closed:
            return
        try:
            self._buffer.write(b"\n]}\n")
            self._flush(force=True)
            if self._out is not self._raw:
                self._out.close()
            self._raw.close()
            commit(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Discard everything written so far; ``path`` is left as it was."""
        self._closed = True
        for handle in (self._out, self._raw):
            with contextlib.suppress(Exception):  # best effort while discarding
                handle.close()
        self._tmp.unlink(missing_ok=True)

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, feature: Feature) -> int:
        """Write one feature; returns 1, or 0 when its geometry was null, empty or collapsed to nothing."""
        return self._write_batch([feature])

    def write_many(self, features: Iterable[Feature]) -> int:
        """Write features (any iterable, consumed lazily in batches); returns how many were written."""
        written = 0
        for batch in _batches(features, _BATCH):
            written += self._write_batch(batch)
        return written

    def _write_batch(self, batch: list[Feature]) -> int:
        if self._closed:
            raise GeoJSONError(f"writer for {self.path} is already closed: open a new GeoJSONWriter")
        prec = self.precision
        geoms = np.empty(len(batch), dtype=object)
        geoms[:] = [f.geometry for f in batch]
        for g in geoms:
            if g is not None and not isinstance(g, shapely.Geometry):
                raise GeoJSONError(
                    f"feature geometry must be a shapely geometry, got {type(g).__name__}: "
                    "build it with shapely (e.g. shapely.Polygon)"
                )
        if not np.isfinite(shapely.get_coordinates(geoms)).all():
            for feat, g in zip(batch, geoms, strict=True):
                if g is not None and not np.isfinite(shapely.get_coordinates(g)).all():
                    raise GeoJSONError(
                        f"feature {_describe(feat)} has a non-finite (NaN or infinite) coordinate: "
                        "drop or fix it before writing"
                    )
        type_ids = shapely.get_type_id(geoms)
        rounded = _round_coords(geoms, prec)
        fast = np.isin(type_ids, _POLYGONAL) & shapely.is_valid(rounded) & ~shapely.is_empty(rounded)
        fast |= np.isin(type_ids, (0, 1, 4, 5)) & ~shapely.is_empty(rounded)
        for i in np.flatnonzero(~fast):
            fixed, repaired = clean_geometry(geoms[i], prec)
            rounded[i] = fixed
            if repaired and fixed is not None:
                self.summary.repaired += 1
        keep = [i for i, g in enumerate(rounded) if g is not None]
        self.summary.dropped_empty += len(batch) - len(keep)
        if not keep:
            return 0
        rounded = rounded[keep]
        wkbs = shapely.to_wkb(rounded)
        # one regex pass over the batch: whole numbers without ".0", as QuPath writes them
        geo_json = _INTEGRAL.sub(b"", "\n".join(shapely.to_geojson(rounded).tolist()).encode("ascii")).split(b"\n")
        chunks = [self._feature_bytes(batch[i], wkb, gj) for i, wkb, gj in zip(keep, wkbs, geo_json, strict=True)]
        written = len(chunks)
        if chunks:
            if not self._first:
                self._buffer.write(b",\n")
            self._first = False
            self._buffer.write(b",\n".join(chunks))
            self._flush()
        self.summary.written += written
        return written

    def _feature_bytes(self, feat: Feature, wkb: bytes, geo_json: bytes) -> bytes:
        otype = feat.object_type or "annotation"
        fid = feat.id
        if fid is not None and is_uuid(fid):
            key = int(fid[:8] + fid[9:13] + fid[14:18], 16)
            if key in self._seen_ids:
                fid = None  # a repeated id: derive a fresh one
            else:
                self._seen_ids.add(key)
        elif fid is not None:
            fid = None  # not a UUID: QuPath would replace it with a random one; derive a stable one instead
        if fid is None:
            if feat.id is not None:
                self.summary.replaced_ids += 1
            fid = self._unique_id(otype, feat.class_name, wkb)
        parts = [
            b'{"type":"Feature","id":"',
            fid.encode("ascii"),
            b'","geometry":',
            geo_json,
        ]
        if feat.nucleus_geometry is not None and otype == "cell":
            nucleus, _ = clean_geometry(feat.nucleus_geometry, self.precision)
            if nucleus is not None:
                parts += [b',"nucleusGeometry":', _geometry_json(nucleus)]
        parts.append(self._properties_head(otype, feat.class_name, feat.color))
        if feat.name is not None:
            parts += [b',"name":', orjson.dumps(str(feat.name))]
        if feat.measurements:
            finite = self._finite_measurements(feat.measurements)
            if finite:
                parts += [b',"measurements":', orjson.dumps(finite)]
        if feat.metadata:
            parts += [b',"metadata":', orjson.dumps({str(k): str(v) for k, v in feat.metadata.items()})]
        parts.append(b"}}")
        label = feat.class_name if feat.class_name is not None else UNCLASSIFIED
        self.summary.by_class[label] = self.summary.by_class.get(label, 0) + 1
        self.summary.by_object_type[otype] = self.summary.by_object_type.get(otype, 0) + 1
        return b"".join(parts)

    def _unique_id(self, object_type: str, class_name: str | None, wkb: bytes) -> str:
        """The content-derived id; a repeat of identical content in this file gets the next one in sequence."""
        raw = _stable_id_bytes(object_type, class_name, wkb)
        key = int.from_bytes(raw[:8], "big")
        repeat = 0
        while key in self._seen_ids:
            repeat += 1
            raw = _stable_id_bytes(object_type, class_name, wkb + repeat.to_bytes(4, "little"))
            key = int.from_bytes(raw[:8], "big")
        self._seen_ids.add(key)
        return _uuid_text(raw)

    def _properties_head(self, otype: str, class_name: str | None, color: tuple[int, int, int] | None) -> bytes:
        if color is not None:
            color = tuple(color)  # type: ignore[assignment]
        key = (otype, class_name, color)
        head = self._props_cache.get(key)
        if head is None:
            if otype not in OBJECT_TYPES:
                raise GeoJSONError(
                    f"object type {otype!r} is not one QuPath knows: use one of {', '.join(OBJECT_TYPES)}"
                )
            props: dict[str, Any] = {"objectType": otype}
            if class_name is not None:
                if color is not None:
                    rgb = _check_color(color, f"class {class_name!r}")
                else:
                    rgb = self._default_color.get(class_name) or class_color(class_name)
                names = split_class_name(class_name)
                if len(names) > 1:
                    props["classification"] = {"names": names, "color": list(rgb)}
                else:
                    props["classification"] = {"name": class_name, "color": list(rgb)}
            elif color is not None:
                props["color"] = list(_check_color(color, "an unclassified object"))
            head = b',"properties":' + orjson.dumps(props)[:-1]  # left open for name/measurements
            self._props_cache[key] = head
        return head

    def _finite_measurements(self, measurements: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in measurements.items():
            if isinstance(value, str):
                self.summary.skipped_measurements += 1
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.summary.skipped_measurements += 1
                continue
            if math.isfinite(number):
                out[str(key)] = number
            else:
                self.summary.skipped_measurements += 1
        return out

    def _flush(self, force: bool = False) -> None:
        if force or self._buffer.tell() >= _FLUSH_BYTES:
            self._out.write(self._buffer.getbuffer())
            self._buffer = io.BytesIO()


def _describe(feat: Feature) -> str:
    bits = [str(feat.source_index) if feat.source_index is not None else "?"]
    if feat.id:
        bits.append(f"id {feat.id}")
    if feat.class_name:
        bits.append(f"class {feat.class_name!r}")
    return f"{bits[0]} ({', '.join(bits[1:])})" if len(bits) > 1 else bits[0]


def _batches(items: Iterable[Feature], size: int) -> Iterator[list[Feature]]:
    batch: list[Feature] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def meta_path(path: str | os.PathLike[str]) -> Path:
    """The provenance sidecar of an output: ``<out>.meta.json`` (``slide.geojson.meta.json``)."""
    path = Path(path)
    return path.with_name(path.name + META_SUFFIX)


def write_geojson(
    path: str | os.PathLike[str],
    features: Iterable[Feature],
    *,
    meta: dict[str, Any] | None = None,
    **kw: Any,
) -> WriteSummary:
    """Write features to a QuPath GeoJSON file (atomic), plus a provenance sidecar when ``meta`` is given.

    Parameters
    ----------
    path
        ``.geojson``, ``.json``, ``.geojson.gz`` or ``.json.gz``.
    features
        Any iterable of :class:`Feature`; consumed lazily.
    meta
        Provenance (model, um/px, parameters...) written with the qpbridge version, the time and the
        counts to ``<path>.meta.json``; values that are not JSON are written as strings.
    **kw
        Passed to :class:`GeoJSONWriter` (``default_color``, ``precision``, ``gzip_level``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "roi.geojson"
    >>> summary = write_geojson(out, [Feature(box(0, 0, 100, 50), "ROI")], meta={"model": "roi-unet"})
    >>> summary.written, meta_path(out).exists()
    (1, True)
    """
    with GeoJSONWriter(path, **kw) as writer:
        writer.write_many(features)
    if meta is not None:
        from qpbridge import __version__

        record: dict[str, Any] = {
            "qpbridge_version": __version__,
            "file": Path(path).name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        record.update(meta)
        record["counts"] = writer.summary.to_dict()
        data = orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str)
        atomic_write_bytes(meta_path(path), data + b"\n")
    return writer.summary
