"""Aperio ImageScope XML (``<Annotations>``, also MoNuSeg's format) -> features.

The file::

    <Annotations MicronsPerPixel="0.252">
      <Annotation Id="1" Name="" LineColor="65280">
        <Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes>
        <Regions>
          <Region Id="1" Type="0" NegativeROA="0" Text="">
            <Vertices><Vertex X="32.28" Y="0.12"/> ...</Vertices>
          </Region>
        </Regions>
      </Annotation>
    </Annotations>

Vertices are level-0 pixels (x right, y down); ``MicronsPerPixel`` is reported as :attr:`FormatResult.mpp`.

Reading rules
-------------
- **One feature per region** (not per annotation layer), whatever its vertex count, except the regions below.
- **Region types**: ``0`` free-hand polygon and unknown types with 3+ vertices are polygons; ``1`` rectangle
  is the polygon of its corners (two vertices: the box they span); ``2`` ellipse is the ellipse inscribed in
  the box of its two vertices (64 vertices); ``3`` arrow and ``4`` ruler are lines, not areas: skipped with
  one counted note. A polygon region with fewer than 3 vertices is skipped (named in a warning).
- **Holes**: a region with ``NegativeROA="1"`` is cut out of the regions of the same annotation that it
  overlaps (except those wholly inside it); it is not a feature itself.
- **Class** of every region of an annotation: the annotation's ``Name`` if not empty; else the ``Value`` of its
  first ``Attribute`` if not empty; else that attribute's ``Name`` unless it is ImageScope's default column
  ``"Description"``; else the region's own label: its ``Text``, else the ``Value`` of its first ``Attribute``
  (BACH's whole-slide annotations name each region's class so: ``Text="Carcinoma in situ"`` in a layer
  without a name); else unclassified. ``class_from="region"`` puts the region's label first. A region's
  ``Text`` also becomes the feature's name.
- **Colour**: ``LineColor`` is a Windows COLORREF integer, red in the lowest byte (``255`` red, ``65280``
  green, ``16711680`` blue).
- **Object type**: ``"annotation"`` unless ``object_type`` says otherwise; MoNuSeg's nuclei are detections
  (:func:`suggest_object_type` proposes one from the shapes).

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.xml"
>>> _ = p.write_text('''<Annotations MicronsPerPixel="0.25"><Annotation Id="1" Name="Tumor" LineColor="255">
... <Regions><Region Id="1" Type="0" NegativeROA="0"><Vertices><Vertex X="0" Y="0"/><Vertex X="10" Y="0"/>
... <Vertex X="10" Y="10"/><Vertex X="0" Y="10"/></Vertices></Region></Regions></Annotation></Annotations>''')
>>> r = read_imagescope(p)
>>> [(f.class_name, f.color, f.geometry.area) for f in r.features], r.mpp
([('Tumor', (255, 0, 0), 100.0)], 0.25)
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import shapely

from qpbridge.errors import InputError
from qpbridge.formats.common import (
    FeatureCollector,
    FormatResult,
    NonFiniteValue,
    bgr_int_color,
    check_choice,
    ellipse_polygon,
    iter_xml,
    local_tag,
    parse_number,
    subtract_exclusions,
)
from qpbridge.qupath import OBJECT_TYPES, Feature

__all__ = ["REGION_TYPES", "read_imagescope", "suggest_object_type"]

#: ImageScope's region types.
REGION_TYPES = {0: "polygon", 1: "rectangle", 2: "ellipse", 3: "arrow", 4: "ruler"}
_LINE_TYPES = (3, 4)
_DEFAULT_ATTRIBUTE = "Description"  # the column ImageScope adds to every annotation layer
_NOT_IMAGESCOPE_HINT = " (read ASAP XML, root <ASAP_Annotations>, with read_asap, or let read_annotations choose)"


@dataclass
class _Layer:
    """One ``<Annotation>`` (an ImageScope layer) while its regions are read."""

    index: int
    name: str
    color: tuple[int, int, int] | None
    attributes: list[tuple[str, str]] = field(default_factory=list)
    positive: list[tuple[int, str, shapely.Geometry, str | None, str | None]] = field(default_factory=list)
    negative: list[tuple[int, str, shapely.Geometry]] = field(default_factory=list)

    def class_name(self) -> str | None:
        if self.name.strip():
            return self.name.strip()
        if self.attributes:
            name, value = self.attributes[0]
            if value.strip():
                return value.strip()
            if name.strip() and name.strip() != _DEFAULT_ATTRIBUTE:
                return name.strip()
        return None


def read_imagescope(
    path: str | os.PathLike[str],
    *,
    object_type: str = "annotation",
    class_from: str = "layer",
    class_map: Mapping[str, str | None] | None = None,
    on_unknown: str = "raise",
    slide_size_px: tuple[int, int] | None = None,
    on_nonfinite: str = "raise",
) -> FormatResult:
    """Read an Aperio ImageScope XML file into features, one per region (see the module docstring).

    Parameters
    ----------
    path
        The ``.xml`` file (gzip data is read too).
    object_type
        QuPath object type of every feature: ``"annotation"`` (default) or, for nuclei such as MoNuSeg's,
        ``"detection"`` (see :func:`suggest_object_type`).
    class_from
        ``"layer"`` (default): the annotation layer's class, else the region's own label (its ``Text``, else its
        first attribute's ``Value``); ``"region"``: the region's label, else the layer's.
    class_map
        ``{class name as read: QuPath class name or None}``; a name it lacks is an error
        (``on_unknown="keep"`` keeps it, ``"skip"`` drops those regions).
    slide_size_px
        ``(width, height)`` at level 0: geometries are clipped to the slide.
    on_nonfinite
        ``"raise"`` (default) or ``"skip"`` a region with a NaN/infinite vertex.

    Returns
    -------
    FormatResult
        Features (``source_index`` = the region's position in the file), ``mpp`` from ``MicronsPerPixel``.

    Raises
    ------
    FormatError
        Missing, truncated or malformed XML, another root element, a vertex that is not a number, a class
        the class map lacks.
    """
    check_choice("object_type", object_type, OBJECT_TYPES)
    check_choice("class_from", class_from, ("layer", "region"))
    source = str(path)
    collector = FeatureCollector(path, slide_size_px=slide_size_px, class_map=class_map, on_unknown=on_unknown,
                                 on_nonfinite=on_nonfinite)
    mpp: float | None = None
    stack: list[str] = []
    layer: _Layer | None = None
    n_layers = 0
    region_index = 0
    for event, elem in iter_xml(path, "Annotations", "an ImageScope XML file", _NOT_IMAGESCOPE_HINT):
        tag = local_tag(elem.tag)
        if event == "start":
            parent = stack[-1] if stack else None
            stack.append(tag)
            if tag == "Annotations" and parent is None:
                mpp = _mpp(elem.get("MicronsPerPixel"))
            elif tag == "Annotation" and parent == "Annotations":
                layer = _Layer(n_layers, elem.get("Name") or "", bgr_int_color(elem.get("LineColor")))
                n_layers += 1
            continue
        stack.pop()
        parent = stack[-1] if stack else None
        grandparent = stack[-2] if len(stack) > 1 else None
        if tag == "Attribute" and parent == "Attributes" and grandparent == "Annotation" and layer is not None:
            layer.attributes.append((elem.get("Name") or "", elem.get("Value") or ""))
        elif tag == "Region" and parent == "Regions" and layer is not None:
            collector.element()
            _region(elem, region_index, layer, collector, source)
            region_index += 1
            elem.clear()
        elif tag == "Annotation" and parent == "Annotations" and layer is not None:
            _finish_layer(layer, collector, object_type, class_from)
            layer = None
            elem.clear()
    result = collector.finish("imagescope", mpp=mpp)
    result.features.sort(key=lambda f: int(f.source_index or 0))
    return result


def _mpp(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _region(elem: ET.Element, index: int, layer: _Layer, collector: FeatureCollector, source: str) -> None:
    rid = elem.get("Id") or "?"
    label = f"region {index} (annotation {layer.index}, Region Id {rid})"
    type_text = (elem.get("Type") or "0").strip()
    try:
        kind = int(float(type_text))
    except ValueError:
        kind = -1
    coords: list[tuple[float, float]] = []
    try:
        for child in elem:
            if local_tag(child.tag) != "Vertices":
                continue
            for k, vertex in enumerate(child):
                if local_tag(vertex.tag) != "Vertex":
                    continue
                coords.append((
                    parse_number(vertex.get("X"), source, label, f"Vertex {k} X"),
                    parse_number(vertex.get("Y"), source, label, f"Vertex {k} Y"),
                ))
    except NonFiniteValue as exc:
        collector.nonfinite(index, label, exc)
        return
    if kind in _LINE_TYPES:
        name = REGION_TYPES[kind]
        collector.skip(index, label, f"{name} (a line, not an area)",
                       grouped=f"{name} region(s) skipped (lines, not areas)")
        return
    arr = np.asarray(coords, dtype=float).reshape(-1, 2)
    if not len(arr):
        collector.skip(index, label, "no vertices")
        return
    geom: shapely.Geometry
    if kind == 2:
        if len(arr) < 2:
            collector.skip(index, label, f"ellipse with {len(arr)} vertex (it needs the 2 corners of its box)")
            return
        (x0, y0), (x1, y1) = arr.min(axis=0), arr.max(axis=0)
        geom = ellipse_polygon((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2)
    elif kind == 1 and len(np.unique(arr, axis=0)) == 2:
        geom = shapely.box(*arr.min(axis=0), *arr.max(axis=0))
    else:
        distinct = len(np.unique(arr, axis=0))
        if distinct < 3:
            collector.skip(index, label, f"{REGION_TYPES.get(kind, 'region')} with {distinct} distinct vertices "
                           "(an area needs 3)")
            return
        if kind not in REGION_TYPES:
            collector.note(f"region(s) of unknown Type {type_text!r} read as polygons")
        geom = shapely.Polygon(arr)
    text = (elem.get("Text") or "").strip() or None
    if (elem.get("NegativeROA") or "0").strip() == "1":
        layer.negative.append((index, label, geom))
    else:
        layer.positive.append((index, label, geom, text, text or _region_attribute(elem)))


def _region_attribute(elem: ET.Element) -> str | None:
    """The ``Value`` of a region's first ``Attribute`` (``<Region><Attributes><Attribute Value=...>``), if any."""
    for child in elem:
        if local_tag(child.tag) == "Attributes":
            for attribute in child:
                if local_tag(attribute.tag) == "Attribute":
                    return (attribute.get("Value") or "").strip() or None
    return None


def _finish_layer(layer: _Layer, collector: FeatureCollector, object_type: str, class_from: str) -> None:
    geoms, _, unused = subtract_exclusions([g for _, _, g, _, _ in layer.positive],
                                           [g for _, _, g in layer.negative])
    for _ in range(len(layer.negative) - len(unused)):
        collector.note("negative region(s) (NegativeROA=1) cut out of the regions they overlap")
    for k in unused:
        index, label, _ = layer.negative[k]
        collector.skip(index, label, "negative region (NegativeROA=1) that overlaps no region of its annotation")
    layer_class = layer.class_name()
    for (index, label, _, text, region_class), geom in zip(layer.positive, geoms, strict=True):
        first, second = (layer_class, region_class) if class_from == "layer" else (region_class, layer_class)
        feature = Feature(geometry=geom, class_name=first or second, color=layer.color, object_type=object_type,
                          name=text)
        collector.add(feature, index=index, label=label)


def suggest_object_type(
    features: Iterable[Feature],
    *,
    mpp: float | None = None,
    min_count: int = 50,
    max_area_um2: float = 1000.0,
    fraction: float = 0.9,
) -> str:
    """``"detection"`` when the features look like many small objects (nuclei, cells), else ``"annotation"``.

    The rule: at least ``min_count`` areas, of which at least ``fraction`` are smaller than ``max_area_um2``
    (1000 um^2, a disc of ~36 um: larger than any nucleus, smaller than a gland). Areas are converted with
    ``mpp`` (level-0 um/px, e.g. :attr:`FormatResult.mpp`); without it, 0.25 um/px (40x) is assumed.
    QuPath draws and counts detections much faster than annotations and does not let them be edited one by
    one, which is what nuclei need.

    Examples
    --------
    >>> from shapely import box
    >>> nuclei = [Feature(box(i * 30, 0, i * 30 + 20, 20)) for i in range(60)]
    >>> suggest_object_type(nuclei, mpp=0.25), suggest_object_type(nuclei[:3], mpp=0.25)
    ('detection', 'annotation')
    """
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InputError(f"mpp must be a positive number of um/px, got {mpp!r}")
    scale = (mpp if mpp is not None else 0.25) ** 2
    areas = np.asarray(
        [f.geometry.area for f in features if f.geometry is not None and f.geometry.geom_type in ("Polygon",
                                                                                                   "MultiPolygon")],
        dtype=float,
    )
    if len(areas) < min_count:
        return "annotation"
    small = float(np.mean(areas * scale < max_area_um2))
    return "detection" if small >= fraction else "annotation"
