"""Digital Slide Archive / HistomicsTK annotation JSON -> features.

The file is one annotation document or a list of them, each either a Girder export
(``{"annotation": {"name": ..., "elements": [...]}, "_id": ...}``) or a bare annotation
(``{"name": ..., "elements": [...]}``). Coordinates are base-level pixels (x right, y down), as QuPath's.

Reading rules
-------------
- **Elements**: ``polyline`` with ``closed: true`` is a polygon (its ``holes``, lists of points, are kept);
  an open ``polyline`` is a line, not an area: kept as a LineString feature (listed in
  ``summary.not_area``) with one counted note, so that ``validate`` and ``masks`` can say what they leave
  out. ``rectangle`` (``center``, ``width``, ``height``, ``rotation`` in radians), ``circle`` (``center``,
  ``radius``) and ``ellipse`` (as a rectangle) are areas (circles and ellipses as 64-vertex polygons);
  ``point`` is a Point. Other types (``arrow``, ``heatmap``, ``griddata``, ``image``, ``pixelmap``) have no
  outline: skipped with a counted note. The third coordinate (z) is ignored.
- **Class** = the element's ``label.value``, else its ``group``, else the name of its document. HistomicsUI
  shows ``label.value`` as the element's label and uses ``group`` for styling; the document name is what a
  user who drew a whole layer of one tissue type named it.
- **Colour** = ``lineColor`` (``"rgb(r,g,b)"``, ``"rgba(r,g,b,a)"`` or ``"#rrggbb"``).

>>> import json, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.json"
>>> _ = p.write_text(json.dumps({"annotation": {"name": "layer", "elements": [
...     {"type": "polyline", "closed": True, "points": [[0, 0, 0], [10, 0, 0], [10, 10, 0]],
...      "label": {"value": "mostly_tumor"}, "lineColor": "rgb(255,0,0)"},
...     {"type": "rectangle", "center": [50, 50, 0], "width": 20, "height": 10, "group": "roi"}]}}))
>>> [(f.class_name, f.color, f.geometry.area) for f in read_dsa(p).features]
[('mostly_tumor', (255, 0, 0), 50.0), ('roi', None, 200.0)]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import shapely

from qpbridge.errors import FormatError
from qpbridge.formats.common import (
    FeatureCollector,
    FormatResult,
    NonFiniteValue,
    check_choice,
    ellipse_polygon,
    load_json_file,
    parse_css_color,
    parse_number,
)
from qpbridge.qupath import OBJECT_TYPES, Feature

__all__ = ["AREA_ELEMENTS", "document_elements", "read_dsa"]

#: Element types read as areas (``polyline`` only when closed).
AREA_ELEMENTS = ("polyline", "rectangle", "circle", "ellipse")
_FORMAT = "a DSA annotation JSON file"


def document_elements(data: Any, source: str = "the file") -> list[tuple[str | None, list[Any]]]:
    """``(document name, elements)`` of every annotation document of parsed DSA JSON.

    Raises :class:`FormatError` when ``data`` holds no annotation document (a GeoJSON file, say).

    >>> document_elements([{"annotation": {"name": "a", "elements": []}}, {"name": "b", "elements": [{}]}])
    [('a', []), ('b', [{}])]
    """
    docs = data if isinstance(data, list) else [data]
    out: list[tuple[str | None, list[Any]]] = []
    for k, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise FormatError(f"{source}: document {k} is a {type(doc).__name__}, not a DSA annotation document")
        body = doc.get("annotation", doc)
        if not isinstance(body, dict) or not isinstance(body.get("elements"), list):
            keys = ", ".join(sorted(map(str, doc))[:6])
            raise FormatError(
                f"{source}: document {k} has no 'elements' list (keys: {keys}): not {_FORMAT} "
                "(a list of {'annotation': {'name', 'elements'}} documents)"
            )
        name = body.get("name")
        out.append((str(name) if isinstance(name, str) and name.strip() else None, body["elements"]))
    return out


def read_dsa(
    path: str | os.PathLike[str],
    *,
    object_type: str = "annotation",
    class_map: Mapping[str, str | None] | None = None,
    on_unknown: str = "raise",
    slide_size_px: tuple[int, int] | None = None,
    on_nonfinite: str = "raise",
) -> FormatResult:
    """Read a DSA / HistomicsTK annotation JSON file into features, one per element (see the module docstring).

    Parameters
    ----------
    path
        The ``.json`` file (gzip data is read too).
    object_type
        QuPath object type of every feature (``"annotation"`` by default).
    class_map
        ``{label as read: QuPath class name or None}``; a label it lacks is an error (``on_unknown="keep"``
        keeps it, ``"skip"`` drops those elements).
    slide_size_px
        ``(width, height)`` at level 0: geometries are clipped to the slide.
    on_nonfinite
        ``"raise"`` (default) or ``"skip"`` an element with a NaN/infinite coordinate.

    Returns
    -------
    FormatResult
        Features (``source_index`` = the element's position, counted over all documents) and warnings.

    Raises
    ------
    FormatError
        Missing or malformed JSON, no annotation document, an element without its coordinates or with values
        that are not numbers, a label the class map lacks.
    """
    check_choice("object_type", object_type, OBJECT_TYPES)
    source = str(path)
    data = load_json_file(path, _FORMAT)
    collector = FeatureCollector(path, slide_size_px=slide_size_px, class_map=class_map, on_unknown=on_unknown,
                                 on_nonfinite=on_nonfinite, what="label")
    index = 0
    for doc_index, (doc_name, elements) in enumerate(document_elements(data, source)):
        for element in elements:
            collector.element()
            label = f"element {index} (document {doc_index}"
            label += f" {doc_name!r}" if doc_name else ""
            kind = element.get("type") if isinstance(element, dict) else None
            label += f", type {kind})" if kind else ")"
            if not isinstance(element, dict):
                collector.skip(index, label, f"not an element object ({type(element).__name__})")
                index += 1
                continue
            try:
                geom = _geometry(element, kind, source, label, index, collector)
            except NonFiniteValue as exc:
                collector.nonfinite(index, label, exc)
                geom = None
            if geom is not None:
                raw_label = element.get("label")
                value = raw_label.get("value") if isinstance(raw_label, dict) else None
                group = element.get("group")
                class_name = next(
                    (str(v).strip() for v in (value, group, doc_name) if isinstance(v, str) and v.strip()), None
                )
                feature = Feature(geometry=geom, class_name=class_name, color=parse_css_color(element.get("lineColor")),
                                  object_type=object_type)
                collector.add(feature, index=index, label=label)
            index += 1
    return collector.finish("dsa")


def _points(raw: Any, source: str, label: str, what: str) -> np.ndarray:
    if not isinstance(raw, list):
        raise FormatError(f"{source}: {label}: '{what}' is missing or not a list of [x, y, z] points")
    rows = []
    for k, point in enumerate(raw):
        if not isinstance(point, list) or len(point) < 2:
            raise FormatError(f"{source}: {label}: {what}[{k}] is not an [x, y, z] point: {point!r}")
        rows.append((parse_number(point[0], source, label, f"{what}[{k}][0]"),
                     parse_number(point[1], source, label, f"{what}[{k}][1]")))
    return np.asarray(rows, dtype=float).reshape(-1, 2)


def _value(element: dict[str, Any], key: str, source: str, label: str, default: float | None = None) -> float:
    raw = element.get(key)
    if raw is None:
        if default is not None:
            return default
        raise FormatError(f"{source}: {label}: no '{key}': a {element.get('type')} element needs it")
    return parse_number(raw, source, label, key)


def _center(element: dict[str, Any], source: str, label: str) -> tuple[float, float]:
    pts = _points([element.get("center")] if element.get("center") is not None else None, source, label, "center")
    return float(pts[0, 0]), float(pts[0, 1])


def _geometry(
    element: dict[str, Any], kind: Any, source: str, label: str, index: int, collector: FeatureCollector
) -> shapely.Geometry | None:
    if kind == "polyline":
        pts = _points(element.get("points"), source, label, "points")
        distinct = len(np.unique(pts, axis=0)) if len(pts) else 0
        if element.get("closed") is True:
            if distinct < 3:
                collector.skip(index, label, f"closed polyline with {distinct} distinct point(s) (an area needs 3)")
                return None
            holes = []
            for h, hole in enumerate(element.get("holes") or []):
                ring = _points(hole, source, label, f"holes[{h}]")
                if len(np.unique(ring, axis=0)) >= 3:
                    holes.append(ring)
            return shapely.Polygon(pts, holes)
        if distinct < 2:
            collector.skip(index, label, f"open polyline with {distinct} distinct point(s)")
            return None
        collector.note("open polyline(s) read as lines, not areas (closed: false)")
        return shapely.LineString(pts)
    if kind == "point":
        return shapely.Point(_center(element, source, label))
    if kind in ("rectangle", "ellipse"):
        cx, cy = _center(element, source, label)
        width = _value(element, "width", source, label)
        height = _value(element, "height", source, label)
        rotation = _value(element, "rotation", source, label, default=0.0)
        if not (width > 0 and height > 0):
            collector.skip(index, label, f"{kind} of {width} x {height} px (not an area)")
            return None
        if kind == "ellipse":
            return ellipse_polygon(cx, cy, width / 2, height / 2, rotation)
        dx, dy = width / 2, height / 2
        corners = np.array([(-dx, -dy), (dx, -dy), (dx, dy), (-dx, dy)])
        c, s = math.cos(rotation), math.sin(rotation)
        return shapely.Polygon(np.column_stack([cx + c * corners[:, 0] - s * corners[:, 1],
                                                cy + s * corners[:, 0] + c * corners[:, 1]]))
    if kind == "circle":
        cx, cy = _center(element, source, label)
        radius = _value(element, "radius", source, label)
        if not radius > 0:
            collector.skip(index, label, f"circle of radius {radius} (not an area)")
            return None
        return ellipse_polygon(cx, cy, radius, radius)
    shown = kind if isinstance(kind, str) else repr(kind)
    collector.skip(index, label, f"element type {shown} has no outline",
                   grouped=f"element(s) of type {shown} skipped (no outline)")
    return None
