"""DSA / HistomicsTK annotation JSON: element types, classes, colours, open polylines, the real export."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely import box

from qpbridge.errors import FormatError
from qpbridge.formats.common import NonFiniteValue
from qpbridge.formats.dsa import document_elements, read_dsa
from tests.test_formats_common import shared_data


def polyline(points: list[tuple[float, float]], closed: bool = True, **extra: Any) -> dict[str, Any]:
    return {"type": "polyline", "closed": closed, "points": [[x, y, 0] for x, y in points], **extra}


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


SQUARE = [(0, 0), (10, 0), (10, 10), (0, 10)]


def test_element_types_classes_and_colours(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", [
        {"annotation": {"name": "tumour layer", "elements": [
            polyline(SQUARE, label={"value": "mostly_tumor"}, group="other", lineColor="rgb(255,0,0)"),
            polyline([(20, 0), (30, 0), (30, 10), (20, 10)], group="mostly_stroma", lineColor="rgba(255,125,0,0.5)",
                     holes=[[[22, 2, 0], [24, 2, 0], [24, 4, 0], [22, 4, 0]]]),
            {"type": "rectangle", "center": [55, 5, 0], "width": 10, "height": 4, "rotation": 0,
             "lineColor": "#00ff00"},
            {"type": "rectangle", "center": [100, 100, 0], "width": 10, "height": 4, "rotation": math.pi / 2},
            {"type": "circle", "center": [200, 200, 0], "radius": 10},
            {"type": "ellipse", "center": [300, 300, 0], "width": 40, "height": 20, "rotation": 0},
            {"type": "point", "center": [5, 6, 0], "label": {"value": "mitosis"}},
            polyline([(0, 50), (40, 50), (40, 60)], closed=False),
            {"type": "arrow", "points": [[0, 0, 0], [5, 5, 0]]},
            {"type": "heatmap", "points": [[0, 0, 0, 1]]},
        ]}},
        {"name": "bare document", "elements": [polyline([(400, 0), (410, 0), (410, 10)])]},
    ])
    result = read_dsa(path)
    got = [(f.source_index, f.class_name, f.color, f.geometry.geom_type) for f in result.features]
    assert got == [
        (0, "mostly_tumor", (255, 0, 0), "Polygon"),
        (1, "mostly_stroma", (255, 125, 0), "Polygon"),
        (2, "tumour layer", (0, 255, 0), "Polygon"),
        (3, "tumour layer", None, "Polygon"),
        (4, "tumour layer", None, "Polygon"),
        (5, "tumour layer", None, "Polygon"),
        (6, "mitosis", None, "Point"),
        (7, "tumour layer", None, "LineString"),
        (10, "bare document", None, "Polygon"),
    ]
    geoms = [f.geometry for f in result.features]
    assert geoms[0].area == 100 and geoms[1].area == 96 and len(geoms[1].interiors) == 1
    assert geoms[2].equals(box(50, 3, 60, 7))
    assert geoms[3].bounds == pytest.approx((98, 95, 102, 105))        # turned a quarter
    assert geoms[4].area == pytest.approx(math.pi * 100, rel=0.002)
    assert geoms[5].bounds == pytest.approx((280, 290, 320, 310))
    assert geoms[6].equals(shapely.Point(5, 6))
    assert result.summary.total == 11
    assert result.summary.not_area == [(6, "Point"), (7, "LineString")]
    assert result.summary.skipped == [(8, "element type arrow has no outline"),
                                      (9, "element type heatmap has no outline")]
    assert f"{path}: 1 x open polyline(s) read as lines, not areas (closed: false)" in result.warnings
    assert f"{path}: 1 x element(s) of type arrow skipped (no outline)" in result.warnings


def test_one_document_gzip_and_class_map(tmp_path: Path) -> None:
    data = {"name": "rois", "elements": [polyline(SQUARE, label={"value": "roi"}), polyline(SQUARE, group="blood")]}
    path = tmp_path / "one.json.gz"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    assert [f.class_name for f in read_dsa(path).features] == ["roi", "blood"]
    with pytest.raises(FormatError) as err:
        read_dsa(path, class_map={"roi": "Region*"})
    assert str(err.value) == (
        f"{path}: labels not in the class map: 'blood' (1 object): add them to the class map (e.g. {{'blood': "
        "'Tumor'}), map them to None to drop them, or keep their names with on_unknown='keep'"
    )
    mapped = read_dsa(path, class_map={"roi": "Region*", "blood": None})
    assert [f.class_name for f in mapped.features] == ["Region*"]


def test_bad_files(tmp_path: Path) -> None:
    geojson = write(tmp_path / "g.json", {"type": "FeatureCollection", "features": []})
    with pytest.raises(FormatError) as err:
        read_dsa(geojson)
    assert str(err.value) == (
        f"{geojson}: document 0 has no 'elements' list (keys: features, type): not a DSA annotation JSON file "
        "(a list of {'annotation': {'name', 'elements'}} documents)"
    )
    no_points = write(tmp_path / "p.json", {"elements": [{"type": "polyline", "closed": True}]})
    with pytest.raises(FormatError) as err:
        read_dsa(no_points)
    assert str(err.value) == (
        f"{no_points}: element 0 (document 0, type polyline): 'points' is missing or not a list of [x, y, z] points"
    )
    no_radius = write(tmp_path / "r.json", {"elements": [{"type": "circle", "center": [1, 2, 0]}]})
    with pytest.raises(FormatError, match=r"element 0 \(document 0, type circle\): no 'radius': a circle element"):
        read_dsa(no_radius)
    nan = tmp_path / "nan.json"
    nan.write_text('{"elements": [{"type": "point", "center": [NaN, 2, 0]}, {"type": "point", "center": [1, 2]}]}')
    with pytest.raises(NonFiniteValue, match=r"element 0 \(document 0, type point\): center\[0\]\[0\]=nan"):
        read_dsa(nan)
    assert len(read_dsa(nan, on_nonfinite="skip").features) == 1
    cut = tmp_path / "cut.json"
    cut.write_text('[{"annotation": {"elements": [{"type": "polyline", "points": [[1, 2')
    with pytest.raises(FormatError, match=r"cut\.json: malformed JSON at line 1, column \d+ .*: the file is truncated"):
        read_dsa(cut)
    tiny = write(tmp_path / "t.json", {"elements": [polyline([(0, 0), (1, 1), (0, 0)])]})
    assert read_dsa(tiny).summary.skipped == [(0, "closed polyline with 2 distinct point(s) (an area needs 3)")]


def test_document_elements() -> None:
    assert document_elements({"annotation": {"elements": [1]}}) == [(None, [1])]
    with pytest.raises(FormatError, match="the file: document 1 is a str, not a DSA annotation document"):
        document_elements([{"elements": []}, "x"])


def test_real_export_gives_98_labelled_areas() -> None:
    folder = shared_data("annotations", "dsa")
    path = next(folder.glob("*.json"))
    data = json.loads(path.read_text())
    assert len(data) == 62
    result = read_dsa(path)
    assert len(result.features) == 98 == result.summary.total
    assert all(f.geometry.geom_type in ("Polygon", "MultiPolygon") and f.geometry.area > 0 for f in result.features)
    assert result.summary.not_area == [] and result.summary.skipped == []
    assert result.summary.by_class == {
        "mostly_tumor": 38, "mostly_stroma": 35, "roi": 20, "mostly_lymphocytic_infiltrate": 5,
    }
    colors = {f.class_name: f.color for f in result.features}
    assert colors == {"mostly_tumor": (255, 0, 0), "mostly_stroma": (255, 125, 0), "roi": (200, 0, 150),
                      "mostly_lymphocytic_infiltrate": (0, 0, 255)}
    # the self-touching outlines of this export are made valid, each named once in summary.repaired
    assert len(result.summary.repaired) == 17
    first = result.features[0].geometry
    assert first.bounds == (44457.0, 44191.0, 44703.0, 44260.0)
