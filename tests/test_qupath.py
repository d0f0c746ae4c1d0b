"""QuPath GeoJSON writer and tolerant reader (qpbridge.qupath)."""

from __future__ import annotations

import gzip
import json
import math
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely import MultiPolygon, Point, Polygon, box

from qpbridge.errors import GeoJSONError, OutputError
from qpbridge.qupath import (
    GEOJSON_SUFFIXES,
    OBJECT_TYPES,
    PREDICTION_SUFFIXES,
    QUPATH_IMPORT_SUFFIXES,
    QUPATH_OBJECT_TYPE_VALUES,
    Feature,
    GeoJSONWriter,
    class_color,
    clean_geometry,
    corrections_sidecar_path,
    geojson_file_base,
    is_geojson_path,
    legacy_type,
    meta_path,
    normalize_object_type,
    parse_classification,
    parse_qupath_color,
    qupath_object_type,
    read_geojson,
    require_features,
    validate_geojson,
    write_geojson,
)

# A file as QuPath exports it (docs/qupath-geojson.md, "What QuPath writes"), every part filled in.
QUPATH_EXAMPLE = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "6f1c7a52-0a4e-4c39-a1f0-3b0d4a5e8c11",
            "geometry": {"type": "Polygon", "coordinates": [[[90, 300], [350, 380], [400, 120], [90, 300]]]},
            "properties": {
                "objectType": "annotation",
                "name": "ROI 1",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                "isLocked": True,
            },
        },
        {
            "type": "Feature",
            "id": "0b8e2f4c-5d1a-4f7e-9c3b-2a6d8e0f1b22",
            "geometry": {"type": "Polygon", "coordinates": [[[10.12, 10.46], [25, 30], [30, 12], [10.12, 10.46]]]},
            "properties": {
                "objectType": "detection",
                "classification": {"names": ["Tumor", "Positive"], "color": [200, 50, 50]},
                "measurements": {"Area px": 150.5, "Broken": "NaN"},
            },
        },
        {
            "type": "Feature",
            "id": "9a3c5e7f-1b2d-4e6f-8a0c-4d2e6f8a0b33",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]]},
            "nucleusGeometry": {"type": "Polygon", "coordinates": [[[5, 5], [12, 5], [12, 12], [5, 12], [5, 5]]]},
            "properties": {"objectType": "cell", "classification": {"name": "Immune cells", "color": [80, 78, 167]}},
        },
    ],
}

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}


def dump(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def feature(geometry: Any = SQUARE, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": props}


# --- reader: the documented QuPath output -------------------------------------------------------------
def test_reads_qupath_example(tmp_path: Path) -> None:
    result = read_geojson(dump(tmp_path / "qupath.geojson", QUPATH_EXAMPLE))
    roi, det, cell = result.features
    assert (roi.object_type, roi.class_name, roi.color, roi.name) == ("annotation", "Tumor", (200, 0, 0), "ROI 1")
    assert roi.id == "6f1c7a52-0a4e-4c39-a1f0-3b0d4a5e8c11"
    assert roi.geometry.area == pytest.approx(abs(shapely.Polygon([(90, 300), (350, 380), (400, 120)]).area))
    assert (det.object_type, det.class_name, det.color) == ("detection", "Tumor: Positive", (200, 50, 50))
    assert det.measurements["Area px"] == 150.5 and math.isnan(det.measurements["Broken"])
    assert shapely.get_coordinates(det.geometry)[0].tolist() == [10.12, 10.46]
    assert (cell.object_type, cell.class_name, cell.color) == ("cell", "Immune cells", (80, 78, 167))
    assert cell.nucleus_geometry is not None and cell.nucleus_geometry.area == 49.0
    assert [f.source_index for f in result.features] == [0, 1, 2]
    s = result.summary
    assert s.total == 3 and s.by_object_type == {"annotation": 1, "detection": 1, "cell": 1}
    assert s.by_class == {"Tumor": 1, "Tumor: Positive": 1, "Immune cells": 1}
    assert s.skipped == [] and s.repaired == [] and result.warnings == []


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({**feature(), "properties": {"objectType": "detection"}}, "detection"),
        (feature(object_type="cell"), "cell"),  # old key, inside properties
        ({**feature(), "objectType": "detection"}, "detection"),  # TIAToolbox: outside properties
        ({**feature(), "object_type": "tile"}, "tile"),
        (feature(type="detection"), "detection"),
        ({**feature(), "id": "PathDetectionObject"}, "detection"),  # QuPath 0.2
        ({**feature(), "id": "PathCellObject"}, "cell"),
        (feature(objectType="tma_core"), "tmaCore"),
        (feature(), "annotation"),
        ({"type": "Feature", "geometry": SQUARE}, "annotation"),  # no properties at all
    ],
)
def test_object_type_spellings(tmp_path: Path, obj: dict[str, Any], expected: str) -> None:
    result = read_geojson(dump(tmp_path / "a.geojson", [obj]))
    assert [f.object_type for f in result.features] == [expected]


def test_unknown_object_type_is_annotation_with_warning(tmp_path: Path) -> None:
    result = read_geojson(dump(tmp_path / "a.geojson", [feature(objectType="blob")]))
    assert result.features[0].object_type == "annotation"
    assert any("unknown object type 'blob'" in w for w in result.warnings)


def test_one_table_of_object_types_for_writer_reader_and_validator(tmp_path: Path) -> None:
    # Three lists said this: the writer's OBJECT_TYPES, validate's QUPATH_OBJECT_TYPES, the reader's aliases.
    assert set(OBJECT_TYPES) <= set(QUPATH_OBJECT_TYPE_VALUES.values())
    assert all(QUPATH_OBJECT_TYPE_VALUES[t] == t for t in OBJECT_TYPES)  # what QuPath writes, it reads back
    for value, kind in QUPATH_OBJECT_TYPE_VALUES.items():
        assert qupath_object_type(value) == normalize_object_type(value.upper()) == kind
    assert legacy_type("PathTileObject") == qupath_object_type("PathTileObject") == "tile"
    # QuPath compares case-sensitively; the tolerant reader (and --fix) keeps what was meant.
    objs = [feature(objectType=v) for v in ("Detection", "root", "tma_core")]
    result = read_geojson(dump(tmp_path / "a.geojson", objs))
    assert [f.object_type for f in result.features] == ["detection", "annotation", "tmaCore"]
    report = validate_geojson(tmp_path / "a.geojson")
    assert [(i.index, i.code) for i in report.issues if i.index is not None] == [(0, "unknown-object-type")]
    assert report.by_object_type == {"annotation": 2, "tmaCore": 1}


def test_one_owner_of_geojson_file_names(tmp_path: Path) -> None:
    # Five lists of endings: writer, validate, naming, diff and metrics each had their own.
    assert set(PREDICTION_SUFFIXES) <= set(GEOJSON_SUFFIXES) <= set(QUPATH_IMPORT_SUFFIXES)
    for suffix in GEOJSON_SUFFIXES:
        assert is_geojson_path(f"a{suffix.upper()}")
        with GeoJSONWriter(tmp_path / f"a{suffix}") as writer:
            writer.write(Feature(box(0, 0, 1, 1)))
        assert validate_geojson(tmp_path / f"a{suffix}").ok
    assert [geojson_file_base(f"s1{x}") for x in (".geojson", ".GeoJSON.gz", ".json", ".json.gz")] == [
        "s1", "s1", None, None,
    ]
    # masks found the sidecar of "s1.geojson.gz" but not of "S1.GEOJSON" (case); diff found both.
    assert corrections_sidecar_path("c/S1.GEOJSON") == Path("c/S1.json")
    assert corrections_sidecar_path("c/s1.geojson.gz") == Path("c/s1.json")
    assert corrections_sidecar_path("c/s1.json") is None


def test_qupath_colour_and_card_colour_have_distinct_names() -> None:
    import qpbridge.qupath
    from qpbridge.models import parse_color

    assert not hasattr(qpbridge.qupath, "parse_color")
    assert parse_qupath_color(-3670016) == (200, 0, 0) and parse_qupath_color("#c80000") is None  # lenient
    assert parse_color("#c80000") == (200, 0, 0)  # a card's colour: strict, hex allowed


@pytest.mark.parametrize(
    ("value", "name", "color"),
    [
        ("Tumor: Positive", "Tumor: Positive", None),
        ({"name": "Tumor", "colorRGB": -3670016}, "Tumor", (200, 0, 0)),  # Java's signed ARGB
        ({"names": ["Tumor", "Positive"], "color": [200, 50, 50]}, "Tumor: Positive", (200, 50, 50)),
        ({"name": "Stroma", "color": 0x00FF8000}, "Stroma", (255, 128, 0)),
        ({"name": "Stroma", "color": [1, 2, 3, 128]}, "Stroma", (1, 2, 3)),
        (
            {"name": "Positive", "colorRGB": -16776961, "parentClass": {"name": "Tumor", "colorRGB": -65536}},
            "Tumor: Positive",
            (0, 0, 255),
        ),
        (None, None, None),
        ({}, None, None),
    ],
)
def test_classification_forms(value: Any, name: str | None, color: tuple[int, int, int] | None) -> None:
    assert parse_classification(value) == (name, color)


def test_object_color_when_unclassified(tmp_path: Path) -> None:
    result = read_geojson(dump(tmp_path / "a.geojson", [feature(color=[9, 8, 7]), feature(color=-16711936)]))
    assert [f.color for f in result.features] == [(9, 8, 7), (0, 255, 0)]
    assert parse_qupath_color("red") is None


def test_measurements_list_and_nonfinite_strings(tmp_path: Path) -> None:
    meas = [{"name": "Area", "value": 12.5}, {"name": "Bad", "value": "Infinity"}, {"name": "X", "value": "abc"}]
    result = read_geojson(dump(tmp_path / "a.geojson", [feature(measurements=meas, metadata={"who": "AB", "n": 3})]))
    f = result.features[0]
    assert f.measurements["Area"] == 12.5 and f.measurements["Bad"] == math.inf and "X" not in f.measurements
    assert f.metadata == {"who": "AB", "n": "3"}
    assert any("1 measurement value(s) that are not numbers ignored" in w for w in result.warnings)


def test_top_level_forms(tmp_path: Path) -> None:
    bare_feature = read_geojson(dump(tmp_path / "f.json", feature(classification="Tumor")))
    assert [f.class_name for f in bare_feature.features] == ["Tumor"]
    nested = read_geojson(dump(tmp_path / "n.json", [[feature(classification="A")], [[feature(classification="B")]]]))
    assert [(f.class_name, f.source_index) for f in nested.features] == [("A", 0), ("B", 1)]
    geometry = read_geojson(dump(tmp_path / "g.geojson", SQUARE))
    assert [(f.object_type, f.class_name, f.geometry.area) for f in geometry.features] == [("annotation", None, 100.0)]


def test_child_objects_are_read(tmp_path: Path) -> None:
    child = {**feature(box_coords(2, 2, 4, 4), objectType="detection")}
    parent = feature(objectType="annotation", classification="Tumor", childObjects=[child])
    result = read_geojson(dump(tmp_path / "h.geojson", {"type": "FeatureCollection", "features": [parent]}))
    assert [(f.object_type, f.geometry.area) for f in result.features] == [("annotation", 100.0), ("detection", 4.0)]


def box_coords(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def test_holes_and_multipolygons_kept(tmp_path: Path) -> None:
    holed = {
        "type": "Polygon",
        "coordinates": [
            [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
            [[10, 10], [20, 10], [20, 20], [10, 20], [10, 10]],
        ],
    }
    multi = {
        "type": "MultiPolygon",
        "coordinates": [box_coords(0, 0, 1, 1)["coordinates"], box_coords(5, 5, 7, 7)["coordinates"]],
    }
    result = read_geojson(dump(tmp_path / "a.geojson", [feature(holed), feature(multi)]))
    a, b = result.features
    assert a.geometry.area == 9900 and len(a.geometry.interiors) == 1
    assert b.geometry.geom_type == "MultiPolygon" and b.geometry.area == 5
    assert result.summary.repaired == []


def test_points_and_lines_kept_but_not_areas(tmp_path: Path) -> None:
    objs = [
        feature({"type": "Point", "coordinates": [5, 6]}),
        feature({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}),
        feature({"type": "LineString", "coordinates": [[0, 0], [10, 10]]}),
    ]
    result = read_geojson(dump(tmp_path / "a.geojson", objs))
    assert [f.geometry.geom_type for f in result.features] == ["Point", "MultiPoint", "LineString"]
    assert result.summary.not_area == [(0, "Point"), (1, "MultiPoint"), (2, "LineString")]


def test_geometry_collection_keeps_polygonal_parts(tmp_path: Path) -> None:
    gc = {
        "type": "GeometryCollection",
        "geometries": [box_coords(0, 0, 10, 10), {"type": "Point", "coordinates": [50, 50]}, box_coords(20, 0, 30, 10)],
    }
    only_points = {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 1]}]}
    result = read_geojson(dump(tmp_path / "a.geojson", [feature(gc, classification="T"), feature(only_points)]))
    assert len(result.features) == 1
    f = result.features[0]
    assert f.geometry.geom_type == "MultiPolygon" and f.geometry.area == 200
    assert result.summary.repaired == [(0, "GeometryCollection reduced to its polygonal parts")]
    assert result.summary.skipped == [(1, "GeometryCollection without polygonal parts")]


def test_unclosed_ring_closed_with_warning(tmp_path: Path) -> None:
    open_ring = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10]]]}
    obj = {**feature(open_ring, classification="Tumor"), "id": "abc"}
    result = read_geojson(dump(tmp_path / "a.geojson", [feature(), obj]))
    assert result.features[1].geometry.area == 100
    assert result.summary.repaired == [(1, "unclosed ring closed")]
    assert result.warnings == [f"{tmp_path / 'a.geojson'}: feature 1 (id abc, class 'Tumor'): unclosed ring closed"]


def test_invalid_polygon_repaired_with_warning(tmp_path: Path) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    result = read_geojson(dump(tmp_path / "a.geojson", [feature(bowtie, classification="Stroma")]))
    f = result.features[0]
    assert f.geometry.is_valid and f.geometry.area == 50
    ((index, reason),) = result.summary.repaired
    assert index == 0 and reason.startswith("invalid polygon (Self-intersection[5 5]")
    assert "feature 0 (class 'Stroma'): invalid polygon" in result.warnings[0]


def test_null_geometry_skipped(tmp_path: Path) -> None:
    result = read_geojson(dump(tmp_path / "a.geojson", [feature(None), feature()]))
    assert len(result.features) == 1 and result.features[0].source_index == 1
    assert result.summary.skipped == [(0, "null geometry")] and result.summary.total == 2


def test_clip_to_slide(tmp_path: Path) -> None:
    objs = [
        feature(box_coords(90, 90, 110, 110), classification="Edge"),
        feature(box_coords(200, 200, 210, 210), classification="Out"),
        feature(box_coords(10, 10, 20, 20), classification="In"),
    ]
    result = read_geojson(dump(tmp_path / "a.geojson", objs), slide_size_px=(100, 100))
    assert [(f.class_name, f.geometry.area) for f in result.features] == [("Edge", 100.0), ("In", 100.0)]
    assert result.summary.clipped == [(0, "clipped to the slide (100 x 100 px)")]
    assert result.summary.skipped == [(1, "wholly outside the slide")]
    assert any("feature 0 (class 'Edge'): clipped to the slide" in w for w in result.warnings)


# --- reader: files and errors -------------------------------------------------------------------------
def test_gz_and_zip(tmp_path: Path) -> None:
    gz = tmp_path / "objects.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(QUPATH_EXAMPLE).encode()))
    assert len(read_geojson(gz).features) == 3
    zipped = tmp_path / "objects.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("a.geojson", json.dumps(QUPATH_EXAMPLE))
        archive.writestr("readme.txt", "not json {")
        archive.writestr("b.json", json.dumps([feature(classification="Extra")]))
    result = read_geojson(zipped)
    assert [f.class_name for f in result.features][-1] == "Extra" and len(result.features) == 4
    assert [f.source_index for f in result.features] == [0, 1, 2, 3]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GeoJSONError, match=r"nope\.geojson: no such file"):
        read_geojson(tmp_path / "nope.geojson")


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text('{"type": "FeatureCollection",\n "features": [\n  {"type": "Feature",, }]}')
    with pytest.raises(GeoJSONError, match=r"bad\.geojson: malformed JSON at line 3, column 22: Expecting"):
        read_geojson(path)


def test_not_geojson(tmp_path: Path) -> None:
    with pytest.raises(GeoJSONError, match=r"JSON is not GeoJSON \(top-level object with type None and keys foo\)"):
        read_geojson(dump(tmp_path / "foo.json", {"foo": 1}))
    with pytest.raises(GeoJSONError, match="top-level JSON is a int"):
        read_geojson(dump(tmp_path / "n.json", 3))


def test_nan_coordinates_name_the_feature(tmp_path: Path) -> None:
    path = tmp_path / "nan.geojson"
    path.write_text(
        '[{"type": "Feature", "id": "x1", "geometry": {"type": "Polygon", "coordinates": '
        '[[[0, 0], [NaN, 0], [5, 5], [0, 0]]]}, "properties": {"classification": "Tumor"}}]'
    )
    with pytest.raises(GeoJSONError, match=r"feature 0 \(id x1, class 'Tumor'\) has a non-finite .* coordinate"):
        read_geojson(path)
    result = read_geojson(path, on_nonfinite="skip")
    assert result.features == [] and result.summary.skipped[0][0] == 0
    with_hole = [
        feature(
            {
                "type": "Polygon",
                "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]], [[1, 1], ["Infinity", 1], [2, 2], [1, 1]]],
            }
        )
    ]
    with pytest.raises(GeoJSONError, match="feature 0 has a non-finite"):
        read_geojson(dump(tmp_path / "inf.geojson", with_hole))


def test_empty_collection_and_require_features(tmp_path: Path) -> None:
    path = dump(tmp_path / "empty.geojson", {"type": "FeatureCollection", "features": []})
    result = read_geojson(path)
    assert result.features == [] and result.summary.total == 0
    with pytest.raises(GeoJSONError, match=r"no features in .*empty\.geojson"):
        require_features(result, path)
    assert require_features(read_geojson(dump(tmp_path / "one.geojson", [feature()])), path).features


# --- writer -------------------------------------------------------------------------------------------
def written(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    data = json.loads(raw)
    assert data["type"] == "FeatureCollection"
    return list(data["features"])


def test_writer_output_format(tmp_path: Path) -> None:
    out = tmp_path / "out.geojson"
    feats = [
        Feature(
            box(0, 0, 8.004, 8), "Tumor", object_type="detection", measurements={"a": 1.5, "b": math.nan}, name="x"
        ),
        Feature(box(0, 0, 4, 4), "Tumor: Positive", color=(1, 2, 3), metadata={"k": "v"}),
        Feature(box(0, 0, 4, 4), None, color=(9, 9, 9)),
        Feature(box(0, 0, 20, 20), "Immune", object_type="cell", nucleus_geometry=box(5, 5, 10.333, 10)),
    ]
    summary = write_geojson(out, feats, default_color={"Immune": (80, 78, 167)})
    a, b, c, d = written(out)
    assert a["geometry"] == {"type": "Polygon", "coordinates": [[[8, 0], [8, 8], [0, 8], [0, 0], [8, 0]]]}
    assert a["properties"] == {
        "objectType": "detection",
        "classification": {"name": "Tumor", "color": list(class_color("Tumor"))},
        "name": "x",
        "measurements": {"a": 1.5},
    }
    assert b["properties"] == {
        "objectType": "annotation",
        "metadata": {"k": "v"},
        "classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]},
    }
    assert c["properties"] == {"objectType": "annotation", "color": [9, 9, 9]}
    assert d["properties"]["classification"] == {"name": "Immune", "color": [80, 78, 167]}
    assert d["nucleusGeometry"]["coordinates"][0][0] == [10.33, 5]
    assert all(uuid.UUID(f["id"]).version == 5 for f in (a, b, c, d))
    text = out.read_text()
    assert "8.0," not in text and "[8,0]" in text  # whole numbers without ".0"
    assert summary.written == 4 and summary.skipped_measurements == 1
    assert summary.by_class == {"Tumor": 1, "Tumor: Positive": 1, "Unclassified": 1, "Immune": 1}
    assert summary.by_object_type == {"detection": 1, "annotation": 2, "cell": 1}


def test_class_color_deterministic_and_spread() -> None:
    assert class_color("Tumor") == class_color("Tumor")
    colors = {class_color(f"class {i}") for i in range(50)}
    assert len(colors) == 50
    assert all(0 <= v <= 255 for rgb in colors for v in rgb)


def test_writer_repairs_and_drops(tmp_path: Path) -> None:
    out = tmp_path / "out.geojson"
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    sliver = Polygon([(0, 0), (50, 0), (50, 0.001), (0, 0.001)])
    near = MultiPolygon([box(0, 0, 1, 1), box(1.004, 0, 2, 1)])  # parts 0.004 px apart: touch after rounding
    spike = Polygon([(0, 0), (10, 0), (10, 5), (30, 5.001), (10, 5.002), (10, 10), (0, 10)])
    gc = shapely.GeometryCollection([box(0, 0, 3, 3), Point(9, 9)])
    with GeoJSONWriter(out) as writer:
        counts = [writer.write(Feature(g, "T")) for g in (bowtie, sliver, near, spike, gc, None, Polygon())]
    assert counts == [1, 0, 1, 1, 1, 0, 0]
    assert (writer.summary.written, writer.summary.repaired, writer.summary.dropped_empty) == (4, 4, 3)
    geoms = [shapely.geometry.shape(f["geometry"]) for f in written(out)]
    assert [g.geom_type for g in geoms] == ["MultiPolygon", "Polygon", "Polygon", "Polygon"]
    assert geoms[0].area == 50 and geoms[1].area == pytest.approx(2.0) and geoms[2].area == 100
    assert geoms[3].area == 9 and all(g.is_valid for g in geoms)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not end in .geojson"):
        GeoJSONWriter(tmp_path / "out.txt")
    with pytest.raises(OutputError, match="does not exist"):
        GeoJSONWriter(tmp_path / "missing" / "out.geojson")
    with pytest.raises(GeoJSONError, match="object type 'blob' is not one QuPath knows"):
        write_geojson(tmp_path / "a.geojson", [Feature(box(0, 0, 1, 1), object_type="blob")])
    with pytest.raises(GeoJSONError, match=r"colour \(300, 0, 0\) of class 'T'"):
        write_geojson(tmp_path / "a.geojson", [Feature(box(0, 0, 1, 1), "T", color=(300, 0, 0))])
    with pytest.raises(GeoJSONError, match="non-finite"):
        write_geojson(tmp_path / "a.geojson", [Feature(Polygon([(0, 0), (math.nan, 0), (1, 1)]))])
    assert list(tmp_path.iterdir()) == []  # every failure left nothing behind


def test_atomic_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out.geojson"
    with pytest.raises(RuntimeError), GeoJSONWriter(out) as writer:
        writer.write(Feature(box(0, 0, 1, 1), "T"))
        raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []
    out.write_text("previous result")
    with pytest.raises(RuntimeError), GeoJSONWriter(out) as writer:
        writer.write(Feature(box(0, 0, 1, 1), "T"))
        raise RuntimeError("model crashed")
    assert out.read_text() == "previous result" and list(tmp_path.iterdir()) == [out]


def test_generator_error_leaves_nothing(tmp_path: Path) -> None:
    def features() -> Any:
        yield Feature(box(0, 0, 1, 1), "T")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_geojson(tmp_path / "out.geojson.gz", features(), meta={"model": "m"})
    assert list(tmp_path.iterdir()) == []


def test_stable_ids(tmp_path: Path) -> None:
    def ids(feats: list[Feature], name: str) -> list[str]:
        write_geojson(tmp_path / name, feats)
        return [f["id"] for f in written(tmp_path / name)]

    base = [Feature(box(0, 0, 10, 10), "Tumor"), Feature(box(5, 5, 15, 15), "Tumor")]
    first = ids(base, "a.geojson")
    assert ids([Feature(box(0, 0, 10.001, 10), "Tumor"), base[1]], "b.geojson") == first  # same after rounding
    assert ids([base[1]], "c.geojson") == first[1:]  # independent of position
    assert ids([Feature(box(0, 0, 10, 10), "Stroma")], "d.geojson")[0] != first[0]
    assert ids([Feature(box(0, 0, 10, 10), "Tumor", object_type="detection")], "e.geojson")[0] != first[0]
    assert ids([Feature(box(0, 0, 10.01, 10), "Tumor")], "f.geojson")[0] != first[0]
    twice = ids([base[0], base[0]], "g.geojson")
    assert twice[0] == first[0] and twice[1] != twice[0]  # a repeat in one file still gets a unique id
    given = str(uuid.uuid4())
    assert ids([Feature(box(0, 0, 1, 1), id=given), Feature(box(0, 0, 1, 1), id="roi-7")], "h.geojson")[0] == given


def test_gz_round_trip_and_meta(tmp_path: Path) -> None:
    out = tmp_path / "cells.geojson.gz"
    feats = [
        Feature(box(i * 10, 0, i * 10 + 5.5, 5), "Tumor", object_type="detection", measurements={"Area um^2": float(i)})
        for i in range(300)
    ]
    summary = write_geojson(out, iter(feats), meta={"model": "cell-unet", "mpp": 0.25, "path": tmp_path})
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    back = read_geojson(out)
    assert summary.written == len(back.features) == 300
    assert [f.measurements["Area um^2"] for f in back.features] == [float(i) for i in range(300)]
    assert back.features[7].geometry.equals(box(70, 0, 75.5, 5))
    meta = json.loads(meta_path(out).read_text())
    assert meta_path(out).name == "cells.geojson.gz.meta.json"
    assert meta["model"] == "cell-unet" and meta["mpp"] == 0.25 and meta["path"] == str(tmp_path)
    assert meta["counts"]["written"] == 300 and meta["counts"]["by_object_type"] == {"detection": 300}
    assert meta["file"] == "cells.geojson.gz" and "qpbridge_version" in meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.geojson.gz", "cells.geojson.gz.meta.json"]


def test_reader_writer_round_trip(tmp_path: Path) -> None:
    holed = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(10, 10), (20, 10), (20, 20), (10, 20)]])
    feats = [
        Feature(
            holed,
            "Invasive carcinoma",
            (215, 25, 35),
            "annotation",
            name="region A",
            measurements={"Area um^2": 2475.0, "p": 0.93},
            metadata={"model": "roi"},
        ),
        Feature(
            MultiPolygon([box(200, 200, 210, 210), box(300, 300, 305.25, 305)]),
            "Tumor: Positive",
            (200, 50, 50),
            "detection",
        ),
        Feature(box(0, 0, 12, 12), "Immune cells", (80, 78, 167), "cell", nucleus_geometry=box(3, 3, 6, 6)),
        Feature(Point(5.5, 7.25), "Marker", (1, 2, 3)),
    ]
    write_geojson(tmp_path / "rt.geojson", feats)
    back = read_geojson(tmp_path / "rt.geojson")
    assert len(back.features) == 4 and back.warnings == []
    for before, after in zip(feats, back.features, strict=True):
        assert (after.class_name, after.color, after.object_type, after.name) == (
            before.class_name,
            before.color,
            before.object_type,
            before.name,
        )
        assert after.measurements == before.measurements and after.metadata == before.metadata
        assert after.geometry.equals(before.geometry)
        assert uuid.UUID(after.id or "")
    assert len(back.features[0].geometry.interiors) == 1 and back.features[0].geometry.area == 9900
    assert back.features[2].nucleus_geometry is not None and back.features[2].nucleus_geometry.equals(box(3, 3, 6, 6))
    again = tmp_path / "rt2.geojson"
    write_geojson(again, back.features)
    assert again.read_bytes() == (tmp_path / "rt.geojson").read_bytes()  # ids kept, output identical


def test_clean_geometry_contract() -> None:
    assert clean_geometry(None) == (None, False)
    fixed, repaired = clean_geometry(Polygon([(0, 0), (10, 10), (10, 0), (0, 10)]))
    assert repaired and fixed is not None and fixed.area == 50
    ring = shapely.LinearRing([(0, 0), (1, 0), (1, 1)])
    line, _ = clean_geometry(ring)
    assert line is not None and line.geom_type == "LineString"


# --- property test: nasty shapes never produce a file QuPath rejects ----------------------------------
_DECIMALS = re.compile(r"-?\d+\.\d{3,}")

coord = st.floats(min_value=0, max_value=60, allow_nan=False, allow_infinity=False)
tiny = st.sampled_from([0.0, 0.001, 0.004, 0.005, 0.006, 0.0049, 0.01, 0.015])


@st.composite
def nasty_polygon(draw: st.DrawFn) -> shapely.Geometry:
    kind = draw(st.sampled_from(["random", "bowtie", "spike", "sliver", "near", "selftouch", "holeout", "overlap"]))
    x, y = draw(coord), draw(coord)
    s = draw(st.floats(min_value=0.002, max_value=30))
    eps = draw(tiny)
    if kind == "random":
        pts = draw(st.lists(st.tuples(coord, coord), min_size=3, max_size=9))
        return Polygon(pts)
    if kind == "bowtie":
        return Polygon([(x, y), (x + s, y + s), (x + s, y), (x, y + s)])
    if kind == "spike":
        return Polygon(
            [
                (x, y),
                (x + s, y),
                (x + s, y + s / 2),
                (x + 3 * s, y + s / 2 + eps),
                (x + s, y + s / 2 + 2 * eps),
                (x + s, y + s),
                (x, y + s),
            ]
        )
    if kind == "sliver":
        return Polygon([(x, y), (x + s, y), (x + s, y + eps), (x, y + eps)])
    if kind == "near":
        return MultiPolygon([box(x, y, x + s, y + s), box(x + s + eps, y, x + 2 * s, y + s)])
    if kind == "selftouch":
        return Polygon([(x, y), (x + s, y), (x + s / 2, y + s / 2), (x + s, y + s), (x, y + s), (x + s / 2, y + s / 2)])
    if kind == "holeout":
        return Polygon(box(x, y, x + s, y + s).exterior.coords, [box(x + 2 * s, y, x + 3 * s, y + s).exterior.coords])
    return MultiPolygon([box(x, y, x + s, y + s), box(x + s / 2 - eps, y, x + 2 * s, y + s)])


def assert_qupath_safe(features: list[dict[str, Any]], text: str) -> None:
    assert not _DECIMALS.search(text), "coordinates with more than 2 decimals"
    ids = set()
    for f in features:
        props = f["properties"]
        assert props["objectType"] in {"annotation", "detection", "cell"}
        cls = props.get("classification")
        if cls is not None:
            assert ("name" in cls or "names" in cls) and len(cls["color"]) == 3
        geom = f["geometry"]
        assert geom is not None and geom["type"] in {"Polygon", "MultiPolygon"}
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for rings in polys:
            for ring in rings:
                assert ring[0] == ring[-1] and len(ring) >= 4
        shape = shapely.geometry.shape(geom)
        assert shape.is_valid, shapely.is_valid_reason(shape)
        assert not shape.is_empty and shape.area > 0
        if geom["type"] == "MultiPolygon":
            parts = list(shape.geoms)
            assert sum(p.area for p in parts) == pytest.approx(shapely.union_all(parts).area)
        ids.add(f["id"])
    assert len(ids) == len(features)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(nasty_polygon(), min_size=1, max_size=6), object_type=st.sampled_from(["annotation", "detection"])
)
def test_writer_never_writes_what_qupath_rejects(tmp_path: Path, shapes: list[Any], object_type: str) -> None:
    out = tmp_path / "nasty.geojson"
    summary = write_geojson(out, [Feature(g, f"C{i % 2}", object_type=object_type) for i, g in enumerate(shapes)])
    feats = written(out)
    assert len(feats) == summary.written and summary.written + summary.dropped_empty == len(shapes)
    assert_qupath_safe(feats, out.read_text())


def test_large_batch_is_safe_and_fast_enough(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 5000, size=(5000, 2))
    angles = np.linspace(0, 2 * np.pi, 9, endpoint=False)
    pts = centres[:, None, :] + np.stack([np.cos(angles), np.sin(angles)], 1)[None] * rng.uniform(0.01, 6, (5000, 1, 1))
    polys = shapely.polygons(pts)
    out = tmp_path / "many.geojson"
    summary = write_geojson(out, (Feature(p, "Nucleus", object_type="detection") for p in polys))
    feats = written(out)
    assert summary.written == len(feats) and summary.written + summary.dropped_empty == 5000
    assert summary.written > 4900
    assert_qupath_safe(feats, out.read_text())


def test_real_nuclei_round_trip_pixel_exact(tmp_path: Path) -> None:
    """MoNuSeg nucleus masks -> polygons -> writer -> reader -> rasterize reproduces the mask exactly."""
    from PIL import Image
    from rasterio import features as rio_features

    masks = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg-train" / "masks"
    if not masks.is_dir():
        pytest.skip(f"shared test data absent: {masks}")
    mask = (np.asarray(Image.open(sorted(masks.glob("*.png"))[0])) > 0).astype(np.uint8)
    polys = [shapely.geometry.shape(g) for g, v in rio_features.shapes(mask, mask=mask > 0) if v == 1]
    out = tmp_path / "nuclei.geojson.gz"
    summary = write_geojson(out, (Feature(p, "Nucleus", object_type="detection") for p in polys))
    assert summary.written == len(polys) > 100 and summary.dropped_empty == 0
    text = gzip.decompress(out.read_bytes()).decode()
    assert_qupath_safe(json.loads(text)["features"], text)
    back = read_geojson(out)
    assert back.warnings == [] and len(back.features) == len(polys)
    burned = rio_features.rasterize(((f.geometry, 1) for f in back.features), out_shape=mask.shape, dtype=np.uint8)
    assert np.array_equal(burned, mask)
