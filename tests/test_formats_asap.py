"""ASAP XML: reading (groups, types, exclusions), writing, and the round trip ASAP -> features -> ASAP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from shapely import MultiPolygon, Point, Polygon, box

from qpbridge.errors import FormatError, InputError
from qpbridge.formats.asap import read_asap, write_asap
from qpbridge.formats.common import NonFiniteValue
from qpbridge.qupath import Feature, read_geojson, write_geojson
from qpbridge.rasterize import rasterize_shapes


def annotation(name: str, kind: str, group: str, coords: list[tuple[float, float]], color: str = "#F4FA58",
               order: list[int] | None = None) -> str:
    order = order if order is not None else list(range(len(coords)))
    points = "".join(
        f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in sorted(zip(order, coords, strict=True),
                                                                               key=lambda t: -t[0])
    )  # written in reverse order: the reader must sort by Order
    return (f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="{color}">'
            f"<Coordinates>{points}</Coordinates></Annotation>")


def group(name: str, parent: str = "None", color: str = "#FF0000") -> str:
    return f'<Group Name="{name}" PartOfGroup="{parent}" Color="{color}"><Attributes /></Group>'


def asap_file(path: Path, annotations: list[str], groups: list[str]) -> Path:
    path.write_text(
        '<?xml version="1.0"?>\n<ASAP_Annotations>\n<Annotations>\n' + "\n".join(annotations)
        + "\n</Annotations>\n<AnnotationGroups>\n" + "\n".join(groups) + "\n</AnnotationGroups>\n</ASAP_Annotations>\n"
    )
    return path


def square(x: float, y: float, size: float) -> list[tuple[float, float]]:
    return [(x, y), (x + size, y), (x + size, y + size), (x, y + size)]


def test_types_groups_colours_and_order(tmp_path: Path) -> None:
    path = asap_file(tmp_path / "a.xml", [
        annotation("Annotation 0", "Polygon", "Tumor", square(0, 0, 100), color="#112233"),
        annotation("Annotation 1", "Spline", "Stroma", [(200, 0), (300, 50), (200, 100)]),
        annotation("Annotation 2", "Rectangle", "None", square(400, 0, 10), color="#00FF00"),
        annotation("Annotation 3", "Dot", "Mitosis", [(5.5, 6.25)]),
        annotation("Annotation 4", "PointSet", "Mitosis", [(1, 1), (2, 2), (3, 3)]),
        annotation("Annotation 5", "Measurement", "None", [(0, 0), (10, 10)]),
    ], [group("Tumor", color="#C81E1E"), group("Stroma", color="#1E90FF"), group("Mitosis", color="#FFFF00")])
    result = read_asap(path)
    got = [(f.name, f.class_name, f.color, f.object_type, f.geometry.geom_type) for f in result.features]
    assert got == [
        ("Annotation 0", "Tumor", (200, 30, 30), "annotation", "Polygon"),
        ("Annotation 1", "Stroma", (30, 144, 255), "annotation", "Polygon"),
        ("Annotation 2", None, (0, 255, 0), "annotation", "Polygon"),
        ("Annotation 3", "Mitosis", (255, 255, 0), "annotation", "Point"),
        ("Annotation 4", "Mitosis", (255, 255, 0), "annotation", "MultiPoint"),
    ]
    poly = result.features[0].geometry
    assert list(poly.exterior.coords) == [(0, 0), (100, 0), (100, 100), (0, 100), (0, 0)]  # sorted by Order
    assert result.features[1].geometry.area == 5000.0  # the spline's control points as a polygon
    assert result.features[3].geometry.equals(Point(5.5, 6.25))
    assert result.summary.total == 6
    assert result.summary.skipped == [(5, "Measurement (a ruler: a line, not an area)")]
    assert result.summary.not_area == [(3, "Point"), (4, "MultiPoint")]
    assert result.summary.by_class == {"Tumor": 1, "Stroma": 1, "Unclassified": 1, "Mitosis": 2}
    assert f"{path}: 1 x Measurement annotation(s) skipped (rulers: lines, not areas)" in result.warnings
    assert read_asap(path, object_type="detection").features[0].object_type == "detection"


def test_exclusions_cut_holes_and_keep_islands(tmp_path: Path) -> None:
    path = asap_file(tmp_path / "c16.xml", [
        annotation("T", "Polygon", "_0", square(0, 0, 100)),
        annotation("hole", "Polygon", "_2", square(20, 20, 60), color="#64FE2E"),
        annotation("island", "Polygon", "_1", square(40, 40, 20)),
        annotation("far", "Polygon", "_2", square(500, 500, 5)),
    ], [group("_0"), group("_1"), group("_2", color="#64FE2E")])
    result = read_asap(path)
    assert [(f.name, f.class_name) for f in result.features] == [("T", "_0"), ("island", "_1")]
    tumour = result.features[0].geometry
    assert tumour.area == 10000 - 3600 and len(tumour.interiors) == 1
    assert result.features[1].geometry.area == 400.0
    assert result.summary.total == 4
    assert result.summary.skipped == [(3, "exclusion that overlaps no other annotation")]
    assert f"{path}: 1 exclusion annotation(s) (group '_2') cut holes in 1 annotation(s)" in result.warnings
    plain = read_asap(path, exclusion_groups=())
    assert [f.class_name for f in plain.features] == ["_0", "_2", "_1", "_2"]
    assert plain.features[0].geometry.area == 10000


def test_nested_groups_own_or_top(tmp_path: Path) -> None:
    path = asap_file(tmp_path / "nested.xml", [
        annotation("a", "Polygon", "Grade 3", square(0, 0, 10)),
        annotation("b", "Polygon", "Tumor", square(20, 0, 10)),
        annotation("c", "Polygon", "Necrotic", square(0, 0, 4)),  # inside a; its group descends from Exclusion
        annotation("d", "Polygon", "Undeclared", square(40, 0, 10), color="#010203"),
    ], [group("Tumor", color="#FF0000"), group("Grade 3", "Tumor", color="#AA0000"), group("Exclusion"),
        group("Necrotic", "Exclusion")])
    own = read_asap(path)
    assert [(f.class_name, f.color) for f in own.features] == [
        ("Grade 3", (170, 0, 0)), ("Tumor", (255, 0, 0)), ("Undeclared", (1, 2, 3))]
    assert own.features[0].geometry.area == 100 - 16
    assert f"{path}: 1 x annotation(s) of group 'Undeclared', which AnnotationGroups does not declare: read with " \
           "that class" in own.warnings
    top = read_asap(path, group_level="top")
    assert [(f.class_name, f.color) for f in top.features] == [
        ("Tumor", (255, 0, 0)), ("Tumor", (255, 0, 0)), ("Undeclared", (1, 2, 3))]
    with pytest.raises(InputError, match="group_level must be one of 'own', 'top', got 'parent'"):
        read_asap(path, group_level="parent")


def test_class_map_and_unknown_group(tmp_path: Path) -> None:
    path = asap_file(tmp_path / "c.xml", [
        annotation("a", "Polygon", "_0", square(0, 0, 10)),
        annotation("b", "Polygon", "_1", square(20, 0, 10)),
        annotation("c", "Polygon", "_5", square(40, 0, 10)),
    ], [group("_0"), group("_1"), group("_5")])
    with pytest.raises(FormatError) as err:
        read_asap(path, class_map={"_0": "Tumor", "_1": "Tumor"})
    assert str(err.value) == (
        f"{path}: groups not in the class map: '_5' (1 object): add them to the class map (e.g. {{'_5': 'Tumor'}}), "
        "map them to None to drop them, or keep their names with on_unknown='keep'"
    )
    mapped = read_asap(path, class_map={"_0": "Tumor", "_1": "Tumor", "_5": None})
    assert [f.class_name for f in mapped.features] == ["Tumor", "Tumor"]
    assert mapped.summary.by_class == {"Tumor": 2}
    kept = read_asap(path, class_map={"_0": "Tumor"}, on_unknown="keep")
    assert [f.class_name for f in kept.features] == ["Tumor", "_1", "_5"]


def test_bad_files(tmp_path: Path) -> None:
    cut = tmp_path / "cut.xml"
    cut.write_text('<?xml version="1.0"?>\n<ASAP_Annotations><Annotations>\n<Annotation Name="A" Type="Polygon">'
                   '<Coordinates><Coordinate Order="0" X="1" Y=')
    with pytest.raises(FormatError, match=r"cut\.xml: malformed XML at line 3, column \d+ \(.*\): the file is trunc"):
        read_asap(cut)
    imagescope = tmp_path / "aperio.xml"
    imagescope.write_text('<Annotations MicronsPerPixel="0.25"><Annotation Id="1"/></Annotations>')
    with pytest.raises(FormatError) as err:
        read_asap(imagescope)
    assert str(err.value) == (
        f"{imagescope}: root element <Annotations>, not <ASAP_Annotations>: not an ASAP XML file (read Aperio "
        "ImageScope XML, root <Annotations>, with read_imagescope, or let read_annotations choose the reader)"
    )
    letters = asap_file(tmp_path / "letters.xml", [annotation("A", "Polygon", "T", [(0, 0), ("ten", 0), (5, 5)])],
                        [group("T")])
    with pytest.raises(FormatError) as err:
        read_asap(letters)
    assert str(err.value) == (
        f"{letters}: annotation 0 ('A', Polygon, group 'T'): Coordinate 1 X='ten' is not a number: fix or delete "
        "that element"
    )


def test_annotation_without_coordinates_is_skipped_and_named(tmp_path: Path) -> None:
    path = asap_file(tmp_path / "empty.xml", [
        '<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="T" Color="#F4FA58"><Coordinates /></Annotation>',
        annotation("Annotation 1", "Polygon", "T", [(0, 0), (1, 1)]),
        annotation("Annotation 2", "Polygon", "T", square(0, 0, 3)),
    ], [group("T")])
    result = read_asap(path)
    assert [f.name for f in result.features] == ["Annotation 2"]
    assert result.summary.skipped == [(0, "no coordinates"),
                                      (1, "Polygon with 2 distinct coordinate(s) (an area needs 3)")]
    assert result.warnings[:2] == [
        f"{path}: annotation 0 ('Annotation 0', Polygon, group 'T'): skipped: no coordinates",
        f"{path}: annotation 1 ('Annotation 1', Polygon, group 'T'): skipped: Polygon with 2 distinct coordinate(s) "
        "(an area needs 3)",
    ]


def test_nonfinite_and_decimal_commas(tmp_path: Path) -> None:
    path = asap_file(tmp_path / "nan.xml", [
        annotation("A", "Polygon", "T", [(0, 0), ("nan", 0), (5, 5)]),
        annotation("B", "Polygon", "T", [("0,5", "0,5"), ("10,5", "0,5"), ("10,5", "10,5")]),
    ], [group("T")])
    with pytest.raises(NonFiniteValue, match=r"annotation 0 \('A', Polygon, group 'T'\): Coordinate 1 X='nan' is not "
                                            "a finite number"):
        read_asap(path)
    result = read_asap(path, on_nonfinite="skip")
    assert [f.name for f in result.features] == ["B"]
    assert result.features[0].geometry.area == 50.0
    assert result.summary.skipped == [(0, "non-finite (NaN or infinite) coordinate")]


def _class_masks(features: list[Feature], shape: tuple[int, int]) -> dict[str | None, np.ndarray]:
    out = {}
    for name in {f.class_name for f in features}:
        geoms = [(f.geometry, 1) for f in features if f.class_name == name and f.geometry.area > 0]
        out[name] = rasterize_shapes(geoms, shape, Affine.identity())
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_write_then_read_keeps_every_polygon_and_hole(tmp_path: Path) -> None:
    donut = Polygon(square(10, 10, 80), [square(30, 30, 20), square(60.5, 60.5, 10)])
    island = box(35, 35, 45, 45)                      # inside the first hole of the donut
    parts = MultiPolygon([box(120, 10, 140, 30), Polygon(square(150, 10, 40), [square(160, 20, 10)])])
    features = [
        Feature(donut, "Tumor", (200, 0, 0), name="donut"),
        Feature(island, "Stroma", (0, 0, 200)),
        Feature(parts, "Tumor", (200, 0, 0), name="two parts"),
        Feature(Point(3, 4), "Mitosis"),
        Feature(shapely.MultiPoint([(1, 1), (2, 3)]), None),
        Feature(shapely.LineString([(0, 0), (5, 5)]), "Tumor"),
        Feature(Polygon(), "Tumor"),
    ]
    out = tmp_path / "out.xml"
    summary = write_asap(out, features)
    assert summary.written == 9 and summary.holes == 3
    assert summary.skipped == {"LineString (ASAP has no line annotation)": 1, "empty geometry": 1}
    back = read_asap(out)
    assert [(f.name, f.class_name) for f in back.features] == [
        ("donut", "Tumor"), ("Annotation 1", "Stroma"), ("two parts part 1", "Tumor"), ("two parts part 2", "Tumor"),
        ("Annotation 3", "Mitosis"), ("Annotation 4", None)]
    assert back.features[0].geometry.equals(donut)
    assert back.features[1].geometry.equals(island)    # the island in the hole is not cut
    assert MultiPolygon([back.features[2].geometry, back.features[3].geometry]).equals(parts)
    assert back.features[0].color == (200, 0, 0) and back.features[1].color == (0, 0, 200)
    assert back.features[4].geometry.equals(Point(3, 4))
    before, after = _class_masks(features[:3], (200, 200)), _class_masks(back.features, (200, 200))
    for name in ("Tumor", "Stroma"):
        assert _iou(before[name], after[name]) == 1.0
    # ... and ASAP -> features -> ASAP -> features once more gives the same polygons
    again = tmp_path / "again.xml"
    write_asap(again, back.features)
    twice = read_asap(again)
    assert len(twice.features) == len(back.features)
    for a, b in zip(back.features, twice.features, strict=True):
        assert a.class_name == b.class_name and a.geometry.equals(b.geometry)


def test_asap_geojson_asap_keeps_every_polygon(tmp_path: Path) -> None:
    # CAMELYON16-style file: tumour groups _0/_1, exclusions _2 inside them.
    rng = np.random.default_rng(5)
    annotations, n = [], 0
    for k in range(12):
        x, y = 300 * (k % 4), 300 * (k // 4)
        ring = [(x + 100 + r * np.cos(t), y + 100 + r * np.sin(t))
                for t, r in zip(np.linspace(0, 2 * np.pi, 40, endpoint=False), rng.uniform(60, 90, 40), strict=True)]
        # two decimals: what the GeoJSON writer keeps by default (precision=2), so no vertex moves on the way
        annotations.append(annotation(f"Annotation {n}", "Polygon", f"_{k % 2}", [(round(a, 2), round(b, 2))
                                                                                   for a, b in ring]))
        n += 1
        if k % 3 == 0:
            annotations.append(annotation(f"Annotation {n}", "Polygon", "_2", square(x + 80, y + 80, 30)))
            n += 1
    source = asap_file(tmp_path / "tumor_001.xml", annotations, [group("_0"), group("_1"), group("_2")])
    first = read_asap(source)
    assert len(first.features) == 12 and sum(len(f.geometry.interiors) for f in first.features) == 4
    geojson = tmp_path / "tumor_001.geojson"
    write_geojson(geojson, first.features)
    via_qupath = read_geojson(geojson)
    out = tmp_path / "tumor_001_back.xml"
    assert write_asap(out, via_qupath.features).holes == 4
    back = read_asap(out)
    assert len(back.features) == 12
    before, after = _class_masks(first.features, (1000, 1300)), _class_masks(back.features, (1000, 1300))
    assert set(before) == set(after) == {"_0", "_1"}
    for name in before:
        assert before[name].any() and _iou(before[name], after[name]) == 1.0
    for a, b in zip(first.features, back.features, strict=True):
        assert len(a.geometry.interiors) == len(b.geometry.interiors)
        assert shapely.equals_exact(shapely.normalize(a.geometry), shapely.normalize(b.geometry), tolerance=1e-6)


def test_writer_escapes_names_and_checks_the_exclusion_group(tmp_path: Path) -> None:
    out = tmp_path / "names.xml"
    write_asap(out, [Feature(box(0, 0, 1, 1), 'Tumor "A" & <B>', name="it's <mine>")])
    back = read_asap(out)
    assert (back.features[0].class_name, back.features[0].name) == ('Tumor "A" & <B>', "it's <mine>")
    with pytest.raises(InputError, match="exclusion_group must be a group name, got 'None'"):
        write_asap(out, [], exclusion_group="None")
    assert not list(tmp_path.glob(".*.tmp"))


def test_large_file_is_read_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    with open(path, "w") as fh:
        fh.write("<ASAP_Annotations><Annotations>")
        for k in range(3000):
            fh.write(annotation(f"A{k}", "Polygon", "T", square(k * 10, 0, 5)))
        fh.write("</Annotations><AnnotationGroups>" + group("T") + "</AnnotationGroups></ASAP_Annotations>")
    result = read_asap(path)
    assert len(result.features) == 3000 and result.summary.by_class == {"T": 3000}
    assert result.features[-1].geometry.bounds == (29990.0, 0.0, 29995.0, 5.0)
