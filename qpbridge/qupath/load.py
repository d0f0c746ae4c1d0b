"""Load the JSON documents of a GeoJSON file, and the feature objects of each: what every reader starts from.

A file is ``.geojson``/``.json`` (a UTF-8 byte-order mark is dropped), any ``*.gz`` (gzip is recognised by its
magic bytes whatever the name) or a ``.zip`` (every entry that parses, QuPath's zipped exports); each parsed
text is a :class:`JsonDocument`. :func:`flatten_features` then gives a document's feature objects, depth first,
whatever the top level (FeatureCollection, Feature, JSON array, also nested, or a bare geometry).
:func:`qpbridge.qupath.read_geojson` (the tolerant reader) and :func:`qpbridge.qupath.validate_geojson` both
start here; JSON that only QuPath's lenient Gson parser takes is :mod:`qpbridge.qupath.lenient`'s.

Examples
--------
>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.geojson"
>>> _ = p.write_bytes(b'\\xef\\xbb\\xbf[{"type": "Polygon", "coordinates": []}]')
>>> [(kind, len(objects)) for kind, objects in map(flatten_features, load_json_documents(p))]
[('array', 1)]
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from qpbridge.errors import GeoJSONError

__all__ = [
    "GEOMETRY_TYPES",
    "JsonDocument",
    "flatten_features",
    "gc_paused",
    "iter_feature_objects",
    "load_json_documents",
]

GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)


@dataclass
class JsonDocument:
    """One parsed JSON text of a file (a ``.zip`` holds several). ``label`` names it in messages."""

    label: str
    data: Any
    nonstandard_numbers: bool = False  # bare NaN/Infinity tokens (not JSON; only lenient readers take them)


# --- loading ------------------------------------------------------------------------------------------
def _parse_json(raw: bytes, label: str) -> JsonDocument:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return JsonDocument(label, orjson.loads(raw))
    except orjson.JSONDecodeError:
        pass
    try:  # the stdlib parser takes the NaN/Infinity tokens that Python and Gson write
        text = raw.decode("utf-8")
        return JsonDocument(label, json.loads(text), nonstandard_numbers=True)
    except UnicodeDecodeError as exc:
        raise GeoJSONError(
            f"{label}: not UTF-8 text (byte {exc.start}): it is not a GeoJSON file; export it again from QuPath"
        ) from None
    except json.JSONDecodeError as exc:
        raise GeoJSONError(
            f"{label}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; "
            "the file is truncated or not JSON: export it again (File > Export objects as GeoJSON)"
        ) from None
    except RecursionError:
        raise GeoJSONError(f"{label}: JSON nested too deeply to read: export it again from QuPath") from None


def load_json_documents(path: str | os.PathLike[str]) -> list[JsonDocument]:
    """Read and parse a ``.geojson``/``.json`` file, any ``*.gz``, or every parsable entry of a ``.zip``.

    Gzip data is recognised by its magic bytes whatever the name. Raises :class:`GeoJSONError` for a
    missing file, malformed JSON (with line and column) or a zip without any JSON entry.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.geojson"
    >>> _ = p.write_text('{"type": "FeatureCollection", "features": []}')
    >>> load_json_documents(p)[0].data["type"]
    'FeatureCollection'
    """
    path = Path(path)
    if not path.exists():
        raise GeoJSONError(f"{path}: no such file: check the path")
    if path.is_dir():
        raise GeoJSONError(f"{path} is a folder: give a .geojson file")
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        return _load_zip(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GeoJSONError(f"{path}: cannot read ({exc.strerror}): check its permissions") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise GeoJSONError(f"{path}: broken gzip data ({exc}): the file is truncated; write it again") from None
    return [_parse_json(raw, str(path))]


def _load_zip(path: Path) -> list[JsonDocument]:
    docs: list[JsonDocument] = []
    failures: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                label = f"{path}!{info.filename}"
                try:
                    raw = archive.read(info)
                    if raw[:2] == b"\x1f\x8b":
                        raw = gzip.decompress(raw)
                    docs.append(_parse_json(raw, label))
                except (GeoJSONError, OSError, EOFError, zipfile.BadZipFile) as exc:
                    failures.append(str(exc))
    except zipfile.BadZipFile as exc:
        raise GeoJSONError(f"{path}: broken zip file ({exc}): write it again") from None
    if not docs:
        detail = f" ({failures[0]})" if failures else ""
        raise GeoJSONError(f"{path}: no JSON entry in this zip{detail}: zip GeoJSON files exported from QuPath")
    return docs


# --- structure ----------------------------------------------------------------------------------------
def flatten_features(doc: JsonDocument) -> tuple[str, list[Any]]:
    """The feature objects of a document, depth first, and the kind of its top level.

    Kind is ``"FeatureCollection"``, ``"array"``, ``"Feature"`` or ``"geometry"``. A bare geometry (at
    the top or inside a collection) becomes ``{"type": "Feature", "geometry": ..., "properties": {}}``;
    child objects (``properties.childObjects``/``children``) follow their parent. Entries that are not
    objects are returned as they are (the caller reports them). Raises :class:`GeoJSONError` when the
    JSON is not GeoJSON at all.

    Examples
    --------
    >>> child = {"type": "Feature", "geometry": None, "properties": {"name": "child"}}
    >>> parent = {"type": "Feature", "geometry": None, "properties": {"name": "parent", "childObjects": [child]}}
    >>> kind, objects = flatten_features(JsonDocument("a.geojson", [parent, {"type": "Point", "coordinates": [1, 2]}]))
    >>> kind, [o["properties"].get("name") for o in objects]
    ('array', ['parent', 'child', None])
    """
    data = doc.data
    out: list[Any] = []
    if isinstance(data, list):
        _flatten_list(data, out)
        return "array", out
    if not isinstance(data, dict):
        raise GeoJSONError(
            f"{doc.label}: top-level JSON is a {type(data).__name__}, not GeoJSON: "
            "expected a FeatureCollection (File > Export objects as GeoJSON in QuPath)"
        )
    kind = data.get("type")
    if kind == "FeatureCollection" or (kind is None and isinstance(data.get("features"), list)):
        features = data.get("features")
        if not isinstance(features, list):
            raise GeoJSONError(f"{doc.label}: FeatureCollection without a 'features' list: export it again")
        _flatten_list(features, out)
        return "FeatureCollection", out
    if kind == "Feature" or (kind is None and "geometry" in data):
        _append_feature(data, out)
        return "Feature", out
    if kind in GEOMETRY_TYPES:
        _append_feature(data, out)
        return "geometry", out
    keys = ", ".join(sorted(map(str, data))[:5])
    raise GeoJSONError(
        f"{doc.label}: JSON is not GeoJSON (top-level object with type {kind!r} and keys {keys}): "
        "expected a FeatureCollection, a Feature or a geometry"
    )


def _flatten_list(items: list[Any], out: list[Any]) -> None:
    for item in items:
        if isinstance(item, list):
            _flatten_list(item, out)
        elif isinstance(item, dict) and item.get("type") == "FeatureCollection":
            _flatten_list(item.get("features") or [], out)
        else:
            _append_feature(item, out)


def _append_feature(item: Any, out: list[Any]) -> None:
    if isinstance(item, dict) and item.get("type") in GEOMETRY_TYPES:
        item = {"type": "Feature", "geometry": item, "properties": {}}
    out.append(item)
    props = item.get("properties") if isinstance(item, dict) else None
    if isinstance(props, dict):
        children = props.get("childObjects", props.get("children"))
        if isinstance(children, list):
            _flatten_list(children, out)


def iter_feature_objects(path: str | os.PathLike[str]) -> Iterator[tuple[JsonDocument, str, int, Any]]:
    """Every raw feature object of a file: ``(document, top-level kind, index, object)`` (for validation).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.geojson"
    >>> _ = p.write_text('{"type": "Feature", "geometry": null, "properties": {}}')
    >>> [(kind, index, obj["type"]) for _, kind, index, obj in iter_feature_objects(p)]
    [('Feature', 0, 'Feature')]
    """
    index = 0
    for doc in load_json_documents(path):
        kind, objects = flatten_features(doc)
        for obj in objects:
            yield doc, kind, index, obj
            index += 1


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (it rescans millions of fresh JSON lists and costs ~5x the parse).

    Examples
    --------
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
