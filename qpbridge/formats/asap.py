"""ASAP XML (``<ASAP_Annotations>``, the format of ASAP and of the CAMELYON16/17 ground truth) <-> features.

The file::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
          <Coordinates><Coordinate Order="0" X="10.5" Y="20" /> ...</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups>
        <Group Name="Tumor" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
      </AnnotationGroups>
    </ASAP_Annotations>

Coordinates are level-0 pixels (x right, y down), as QuPath's.

Reading rules
-------------
- **Class** = the annotation's own group (``PartOfGroup``; ``"None"`` or empty = unclassified). ASAP users
  pick that group while drawing, and CAMELYON's groups (``_0``, ``_1``, ``_2``, ``metastases``) are all top
  level, so the own group is what a class means. ``group_level="top"`` resolves a nested group to its top
  group instead (``Tumor/Grade 3`` -> ``Tumor``). The colour is that group's ``Color``, else the
  annotation's. A group that ``AnnotationGroups`` does not declare is kept as a class, with one counted note.
- **Types**: ``Polygon`` and ``Rectangle`` are areas; ``Spline`` is read as the polygon of its control points
  (ASAP draws a smooth curve through them; the polygon is within a few pixels of it and is what most tools
  rasterize); ``Dot`` is a Point and ``PointSet`` a MultiPoint (object type as given, ``"annotation"`` by
  default); ``Measurement`` (a ruler) is skipped with a counted note; coordinates follow ``Order``.
- **Exclusions** (holes): the areas of *exclusion groups* (default ``{"_2", "Exclusion", "exclusion"}``:
  CAMELYON16 marks non-tumour regions inside a tumour with group ``_2``) are not features of their own: each is
  cut out of every other area it overlaps (so a tumour with an exclusion inside gets a hole), except out of
  an area that lies wholly inside it (an island drawn inside the hole stays whole). An annotation whose group
  descends from an exclusion group is an exclusion too. ``exclusion_groups=()`` reads them as plain classes.

Writing rules (:func:`write_asap`)
----------------------------------
One group per class (colour from the features, else :func:`qpbridge.qupath.class_color`), one ``Polygon``
annotation per polygon (a MultiPolygon gives one per part) and, for each hole, one annotation in the
exclusion group (default ``"Exclusion"``), so that ASAP -> features -> ASAP -> features keeps every polygon
and every hole. Points are written as ``Dot``, MultiPoints as ``PointSet``; lines are left out (ASAP has no
line annotation) and counted.

>>> import tempfile, pathlib
>>> from shapely import Polygon
>>> from qpbridge.qupath import Feature
>>> out = pathlib.Path(tempfile.mkdtemp()) / "a.xml"
>>> ring = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(4, 4), (6, 4), (6, 6), (4, 6)]])
>>> write_asap(out, [Feature(ring, "Tumor", (255, 0, 0))]).holes
1
>>> f = read_asap(out).features[0]
>>> f.class_name, f.color, f.geometry.area, len(f.geometry.interiors)
('Tumor', (255, 0, 0), 96.0, 1)
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely

from qpbridge.atomic import atomic_path
from qpbridge.errors import InputError
from qpbridge.formats.common import (
    FeatureCollector,
    FormatResult,
    FormatWriteSummary,
    NonFiniteValue,
    check_choice,
    color_hex,
    iter_xml,
    local_tag,
    parse_css_color,
    parse_number,
    subtract_exclusions,
)
from qpbridge.qupath import OBJECT_TYPES, Feature, class_color

__all__ = [
    "DEFAULT_EXCLUSION_GROUPS",
    "DEFAULT_WRITE_EXCLUSION_GROUP",
    "read_asap",
    "write_asap",
]

#: Groups whose areas are holes in the others (CAMELYON16's ``_2`` and the plain names).
DEFAULT_EXCLUSION_GROUPS: frozenset[str] = frozenset({"_2", "Exclusion", "exclusion"})
#: The group :func:`write_asap` writes holes into.
DEFAULT_WRITE_EXCLUSION_GROUP = "Exclusion"

_AREA_TYPES = ("Polygon", "Spline", "Rectangle")
_NO_GROUP = ("", "None")
_DEFAULT_COLOR = "#F4FA58"  # ASAP's default annotation colour
_EXCLUSION_COLOR = "#64FE2E"  # CAMELYON16's colour of group _2
_NOT_ASAP_HINT = (
    " (read Aperio ImageScope XML, root <Annotations>, with read_imagescope, or let read_annotations "
    "choose the reader)"
)


@dataclass
class _Annotation:
    index: int
    name: str
    kind: str
    group: str | None
    color: tuple[int, int, int] | None
    coords: np.ndarray
    usable: bool = True  # False once skipped (a non-finite coordinate)

    def label(self) -> str:
        group = f", group {self.group!r}" if self.group else ""
        return f"annotation {self.index} ({self.name!r}, {self.kind}{group})"


def _coordinates(elem: ET.Element, source: str, label: str) -> np.ndarray:
    rows: list[tuple[float, float, float]] = []
    for child in elem:
        if local_tag(child.tag) != "Coordinates":
            continue
        for k, coord in enumerate(child):
            if local_tag(coord.tag) != "Coordinate":
                continue
            order_text = coord.get("Order")
            try:
                order = float(order_text) if order_text is not None else float(k)
            except ValueError:
                order = float(k)
            rows.append((
                order,
                parse_number(coord.get("X"), source, label, f"Coordinate {k} X"),
                parse_number(coord.get("Y"), source, label, f"Coordinate {k} Y"),
            ))
    if not rows:
        return np.empty((0, 2))
    arr = np.asarray(rows, dtype=float)
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    return arr[:, 1:]


def read_asap(
    path: str | os.PathLike[str],
    *,
    exclusion_groups: Iterable[str] = DEFAULT_EXCLUSION_GROUPS,
    group_level: str = "own",
    class_map: Mapping[str, str | None] | None = None,
    on_unknown: str = "raise",
    object_type: str = "annotation",
    slide_size_px: tuple[int, int] | None = None,
    on_nonfinite: str = "raise",
) -> FormatResult:
    """Read an ASAP XML file into features (see the module docstring for the rules).

    Parameters
    ----------
    path
        The ``.xml`` file (gzip data is read too).
    exclusion_groups
        Group names whose areas are cut out of the other areas; ``()`` reads them as ordinary classes.
    group_level
        ``"own"`` (default): the class is the annotation's group; ``"top"``: its top-level group.
    class_map
        ``{group name: QuPath class name or None}`` applied after ``group_level``; a group it lacks is an
        error (``on_unknown="keep"`` keeps the group name, ``"skip"`` drops those annotations).
    object_type
        QuPath object type of every feature (``"annotation"``; ``"detection"`` for many small objects).
    slide_size_px
        ``(width, height)`` at level 0: geometries are clipped to the slide.
    on_nonfinite
        ``"raise"`` (default) or ``"skip"`` an annotation with a NaN/infinite coordinate.

    Returns
    -------
    FormatResult
        Features, a summary (``total`` counts every annotation element, exclusions included) and warnings.

    Raises
    ------
    FormatError
        Missing, truncated or malformed XML, another root element, a coordinate that is not a number,
        a group the class map lacks.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c16.xml"
    >>> _ = p.write_text('''<ASAP_Annotations><Annotations>
    ... <Annotation Name="A" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>
    ...  <Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="100" Y="0"/>
    ...  <Coordinate Order="2" X="100" Y="100"/><Coordinate Order="3" X="0" Y="100"/></Coordinates></Annotation>
    ... <Annotation Name="B" Type="Rectangle" PartOfGroup="_2" Color="#64FE2E"><Coordinates>
    ...  <Coordinate Order="0" X="40" Y="40"/><Coordinate Order="1" X="60" Y="40"/>
    ...  <Coordinate Order="2" X="60" Y="60"/><Coordinate Order="3" X="40" Y="60"/></Coordinates></Annotation>
    ... </Annotations><AnnotationGroups>
    ...  <Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes/></Group>
    ...  <Group Name="_2" PartOfGroup="None" Color="#64FE2E"><Attributes/></Group>
    ... </AnnotationGroups></ASAP_Annotations>''')
    >>> result = read_asap(p, class_map={"_0": "Tumor"})
    >>> [(f.class_name, f.color, f.geometry.area) for f in result.features], result.summary.total
    ([('Tumor', (255, 0, 0), 9600.0)], 2)
    """
    check_choice("group_level", group_level, ("own", "top"))
    check_choice("object_type", object_type, OBJECT_TYPES)
    collector = FeatureCollector(
        path, slide_size_px=slide_size_px, class_map=class_map, on_unknown=on_unknown, on_nonfinite=on_nonfinite,
        what="group",
    )
    groups, annotations = _parse(path, collector)
    targets, exclusions = _split_exclusions(annotations, groups, frozenset(exclusion_groups), collector)
    geoms = _cut_exclusions(targets, exclusions, collector)
    for (ann, _), geom in zip(targets, geoms, strict=True):
        chain = _ancestors(groups, ann.group) if ann.group is not None else []
        class_group = None if not chain else (chain[-1] if group_level == "top" else chain[0])
        color = groups.get(class_group, (None, None))[1] if class_group is not None else None
        feature = Feature(
            geometry=geom,
            class_name=class_group,
            color=color if color is not None else ann.color,
            object_type=object_type,
            name=ann.name,
        )
        collector.add(feature, index=ann.index, label=ann.label())
    result = collector.finish("asap")
    result.features.sort(key=lambda f: int(f.source_index or 0))
    return result


#: Group name -> (its parent group or ``None``, its colour or ``None``), as ``AnnotationGroups`` declares them.
_Groups = dict[str, tuple[str | None, tuple[int, int, int] | None]]


def _parse(path: str | os.PathLike[str], collector: FeatureCollector) -> tuple[_Groups, list[_Annotation]]:
    """The declared groups and every annotation of the file (streamed; elements cleared once read)."""
    source = str(path)
    groups: _Groups = {}
    annotations: list[_Annotation] = []
    stack: list[str] = []
    for event, elem in iter_xml(path, "ASAP_Annotations", "an ASAP XML file", _NOT_ASAP_HINT):
        tag = local_tag(elem.tag)
        if event == "start":
            stack.append(tag)
            continue
        stack.pop()
        parent = stack[-1] if stack else None
        if tag == "Annotation" and parent == "Annotations":
            index = len(annotations)
            group = (elem.get("PartOfGroup") or "").strip()
            ann = _Annotation(
                index=index,
                name=elem.get("Name") or f"Annotation {index}",
                kind=(elem.get("Type") or "").strip(),
                group=None if group in _NO_GROUP else group,
                color=parse_css_color(elem.get("Color")),
                coords=np.empty((0, 2)),
            )
            collector.element()
            try:
                ann.coords = _coordinates(elem, source, ann.label())
            except NonFiniteValue as exc:
                collector.nonfinite(index, ann.label(), exc)
                ann.usable = False
            annotations.append(ann)
            elem.clear()
        elif tag == "Group" and parent == "AnnotationGroups":
            name = (elem.get("Name") or "").strip()
            parent_group = (elem.get("PartOfGroup") or "").strip()
            if name:
                groups[name] = (None if parent_group in _NO_GROUP else parent_group, parse_css_color(elem.get("Color")))
            elem.clear()
    return groups, annotations


def _ancestors(groups: _Groups, group: str) -> list[str]:
    """``group`` and its parent groups, innermost first (a cycle ends the chain)."""
    chain = [group]
    while True:
        parent_group = groups.get(chain[-1], (None, None))[0]
        if parent_group is None or parent_group in chain:
            return chain
        chain.append(parent_group)


def _split_exclusions(
    annotations: list[_Annotation], groups: _Groups, exclusion_set: frozenset[str], collector: FeatureCollector
) -> tuple[list[tuple[_Annotation, shapely.Geometry]], list[tuple[_Annotation, shapely.Geometry]]]:
    """The usable annotations with their geometry: those read as objects, and the exclusion areas."""
    targets: list[tuple[_Annotation, shapely.Geometry]] = []
    exclusions: list[tuple[_Annotation, shapely.Geometry]] = []
    for ann in annotations:
        geom = _geometry(ann, collector)
        if geom is None:
            continue
        chain = _ancestors(groups, ann.group) if ann.group is not None else []
        if ann.group is not None and ann.group not in groups:
            collector.note(f"annotation(s) of group {ann.group!r}, which AnnotationGroups does not declare: "
                           "read with that class")
        if exclusion_set and any(g in exclusion_set for g in chain) and ann.kind in _AREA_TYPES:
            exclusions.append((ann, geom))
        else:
            targets.append((ann, geom))
    return targets, exclusions


def _cut_exclusions(
    targets: list[tuple[_Annotation, shapely.Geometry]],
    exclusions: list[tuple[_Annotation, shapely.Geometry]],
    collector: FeatureCollector,
) -> list[shapely.Geometry]:
    """The targets' geometries with the exclusion areas cut out; exclusions that cut nothing are skipped."""
    geoms, n_cut, unused = subtract_exclusions([g for _, g in targets], [g for _, g in exclusions])
    if exclusions:
        names = ", ".join(sorted({repr(a.group) for a, _ in exclusions}))
        collector.warn(
            f"{len(exclusions) - len(unused)} exclusion annotation(s) (group {names}) cut holes in {n_cut} "
            "annotation(s)"
        )
        for k in unused:
            ann = exclusions[k][0]
            collector.skip(ann.index, ann.label(), "exclusion that overlaps no other annotation")
    return geoms


def _geometry(ann: _Annotation, collector: FeatureCollector) -> shapely.Geometry | None:
    coords = ann.coords
    n = len(coords)
    if not ann.usable:
        return None
    if ann.kind == "Measurement":
        collector.skip(ann.index, ann.label(), "Measurement (a ruler: a line, not an area)",
                       grouped="Measurement annotation(s) skipped (rulers: lines, not areas)")
        return None
    if ann.kind not in (*_AREA_TYPES, "Dot", "PointSet"):
        collector.skip(ann.index, ann.label(), f"unknown Type {ann.kind!r} (expected Polygon, Spline, Rectangle, "
                       "Dot or PointSet)")
        return None
    if n == 0:
        collector.skip(ann.index, ann.label(), "no coordinates")
        return None
    if ann.kind == "Dot":
        if n > 1:
            collector.warn(f"{ann.label()}: Dot with {n} coordinates: the first is kept")
        return shapely.Point(coords[0])
    if ann.kind == "PointSet":
        return shapely.MultiPoint(coords)
    distinct = len(np.unique(coords, axis=0))
    if distinct < 3:
        collector.skip(ann.index, ann.label(), f"{ann.kind} with {distinct} distinct coordinate(s) (an area needs 3)")
        return None
    return shapely.Polygon(coords)


# --- writing ------------------------------------------------------------------------------------------
def _number(value: float) -> str:
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = np.format_float_positional(float(value), trim="-")
    return text


def _coordinates_xml(coords: np.ndarray) -> str:
    if len(coords) > 1 and np.array_equal(coords[0], coords[-1]):
        coords = coords[:-1]  # ASAP rings are implicitly closed
    return "".join(
        f'\t\t\t\t<Coordinate Order="{k}" X="{_number(x)}" Y="{_number(y)}" />\n'
        for k, (x, y) in enumerate(coords.tolist())
    )


def _annotation_xml(name: str, kind: str, group: str | None, color: str, coords: np.ndarray) -> str:
    return (
        f"\t\t<Annotation Name={quoteattr(name)} Type=\"{kind}\" PartOfGroup={quoteattr(group or 'None')} "
        f"Color=\"{color}\">\n\t\t\t<Coordinates>\n{_coordinates_xml(coords)}\t\t\t</Coordinates>\n\t\t</Annotation>\n"
    )


def write_asap(
    path: str | os.PathLike[str],
    features: Iterable[Feature],
    *,
    exclusion_group: str = DEFAULT_WRITE_EXCLUSION_GROUP,
) -> FormatWriteSummary:
    """Write features as an ASAP XML file (atomically; see the module docstring for the rules).

    Parameters
    ----------
    path
        The ``.xml`` file to write (replaced if it exists).
    features
        Features in level-0 pixels (:class:`qpbridge.qupath.Feature`).
    exclusion_group
        The group the holes are written into; it must be one that :func:`read_asap` treats as an exclusion
        group (the default ``"Exclusion"`` is).

    Returns
    -------
    FormatWriteSummary
        ``written`` annotations (holes included), ``holes``, and features left out by reason.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import MultiPolygon, Point, LineString, box
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.xml"
    >>> s = write_asap(out, [Feature(MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)]), "Tumor"),
    ...                      Feature(Point(5, 5), "Mitosis"), Feature(LineString([(0, 0), (1, 1)]))])
    >>> s.written, s.skipped
    (3, {'LineString (ASAP has no line annotation)': 1})
    """
    if not exclusion_group or exclusion_group in _NO_GROUP:
        raise InputError(f"exclusion_group must be a group name, got {exclusion_group!r}")
    summary = FormatWriteSummary()
    group_colors: dict[str, str] = {}
    uses_exclusions = False
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write('<?xml version="1.0"?>\n<ASAP_Annotations>\n\t<Annotations>\n')
        count = 0
        for position, feature in enumerate(features):
            geom = feature.geometry
            group = feature.class_name if feature.class_name not in (None, *_NO_GROUP) else None
            if group is not None and group not in group_colors:
                group_colors[group] = color_hex(feature.color or class_color(group))
            color = group_colors[group] if group is not None else (
                color_hex(feature.color) if feature.color else _DEFAULT_COLOR
            )
            base = feature.name or f"Annotation {position}"
            if geom is None or geom.is_empty:
                summary.skip("empty geometry")
                continue
            coords_ok = bool(np.isfinite(shapely.get_coordinates(geom)).all())
            if not coords_ok:
                summary.skip("non-finite coordinate")
                continue
            kind = geom.geom_type
            if kind == "Point":
                fh.write(_annotation_xml(base, "Dot", group, color, shapely.get_coordinates(geom)))
                count += 1
            elif kind == "MultiPoint":
                fh.write(_annotation_xml(base, "PointSet", group, color, shapely.get_coordinates(geom)))
                count += 1
            elif kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
                parts = [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon" and not p.is_empty]
                if not parts:
                    summary.skip(f"{kind} without polygons")
                    continue
                for k, part in enumerate(parts):
                    name = base if len(parts) == 1 else f"{base} part {k + 1}"
                    fh.write(_annotation_xml(name, "Polygon", group, color, shapely.get_coordinates(part.exterior)))
                    count += 1
                    for h, hole in enumerate(part.interiors):
                        fh.write(_annotation_xml(
                            f"{name} hole {h + 1}", "Polygon", exclusion_group, _EXCLUSION_COLOR,
                            shapely.get_coordinates(hole),
                        ))
                        count += 1
                        summary.holes += 1
                        uses_exclusions = True
            else:
                summary.skip(f"{kind} (ASAP has no line annotation)")
                continue
        fh.write("\t</Annotations>\n\t<AnnotationGroups>\n")
        if uses_exclusions and exclusion_group not in group_colors:
            group_colors[exclusion_group] = _EXCLUSION_COLOR
        for name, color in group_colors.items():
            fh.write(
                f"\t\t<Group Name={quoteattr(name)} PartOfGroup=\"None\" Color=\"{color}\">\n"
                "\t\t\t<Attributes />\n\t\t</Group>\n"
            )
        fh.write("\t</AnnotationGroups>\n</ASAP_Annotations>\n")
        summary.written = count
    return summary
