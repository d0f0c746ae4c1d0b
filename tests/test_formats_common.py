"""What the annotation-format readers share: the collector, numbers, colours, exclusions, XML and JSON errors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely import box

from qpbridge.errors import FormatError, GeoJSONError, InputError, QpbridgeError
from qpbridge.formats.common import (
    FeatureCollector,
    FormatResult,
    NonFiniteValue,
    bgr_int_color,
    color_hex,
    ellipse_polygon,
    iter_xml,
    load_json_file,
    parse_css_color,
    parse_number,
    subtract_exclusions,
)
from qpbridge.qupath import Feature, ReadResult
from tests.conftest import SHARED_DATA

#: The shared real data; ``QPBRIDGE_SHARED_DATA`` points elsewhere (a worktree beside ``shared/`` has none).
SHARED = Path(os.environ.get("QPBRIDGE_SHARED_DATA", str(SHARED_DATA)))


def shared_data(*parts: str) -> Path:
    """A path of the shared real data, or skip the test (with the reason) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data absent: {path} (set QPBRIDGE_SHARED_DATA to its folder)")
    return path


def test_format_error_is_a_geojson_error() -> None:
    assert issubclass(FormatError, GeoJSONError) and issubclass(FormatError, QpbridgeError)
    assert issubclass(NonFiniteValue, FormatError)
    assert FormatError("x").exit_code == 1
    assert issubclass(FormatResult, ReadResult)


def test_parse_number() -> None:
    assert parse_number("12.25", "f.xml", "annotation 1", "X") == 12.25
    assert parse_number(" 3 ", "f.xml", "annotation 1", "X") == 3.0
    assert parse_number("12,5", "f.xml", "annotation 1", "X") == 12.5
    assert parse_number(7, "f.json", "element 0", "radius") == 7.0
    with pytest.raises(FormatError, match=r"^f\.xml: annotation 1: X='1,2,3' is not a number: fix or delete"):
        parse_number("1,2,3", "f.xml", "annotation 1", "X")
    with pytest.raises(FormatError, match=r"^f\.xml: annotation 1: Y=None is not a number"):
        parse_number(None, "f.xml", "annotation 1", "Y")
    with pytest.raises(NonFiniteValue, match=r"^f\.xml: annotation 1: X='nan' is not a finite number"):
        parse_number("nan", "f.xml", "annotation 1", "X")
    with pytest.raises(NonFiniteValue):
        parse_number(float("inf"), "f.json", "element 0", "points[0][0]")


def test_colors() -> None:
    # Aperio's LineColor: red in the lowest byte (COLORREF, "BGR").
    assert bgr_int_color("255") == (255, 0, 0)
    assert bgr_int_color("65280") == (0, 255, 0)
    assert bgr_int_color("16711680") == (0, 0, 255)
    assert bgr_int_color(0x0080FF) == (255, 128, 0)  # orange
    assert bgr_int_color("") is None
    assert parse_css_color("rgb(200,0,150)") == (200, 0, 150)
    assert parse_css_color("RGBA(0, 0, 255, 0.25)") == (0, 0, 255)
    assert parse_css_color("#ff7d00") == (255, 125, 0)
    assert parse_css_color("#F4FA58FF") == (244, 250, 88)
    assert parse_css_color("#0f0") == (0, 255, 0)
    assert parse_css_color("red") is None and parse_css_color(None) is None
    assert color_hex((255, 125, 0)) == "#FF7D00"


def test_ellipse_polygon() -> None:
    e = ellipse_polygon(100, 50, 20, 10, segments=64)
    assert len(e.exterior.coords) == 65
    assert e.bounds == pytest.approx((80, 40, 120, 60))
    assert e.area == pytest.approx(np.pi * 200, rel=0.002)
    turned = ellipse_polygon(0, 0, 20, 10, rotation_rad=np.pi / 2)
    assert turned.bounds == pytest.approx((-10, -20, 10, 20))
    assert ellipse_polygon(0, 0, 0, 5).is_empty


def test_subtract_exclusions_cuts_holes_and_keeps_islands() -> None:
    tumour = box(0, 0, 100, 100)
    island = box(40, 40, 60, 60)          # drawn inside the exclusion: stays whole
    other = box(200, 0, 300, 100)         # overlaps nothing
    crossing = box(90, 0, 150, 10)        # partly under the exclusion at the edge
    exclusions = [box(20, 20, 80, 80), box(140, 0, 160, 20), box(500, 500, 510, 510)]
    out, n_cut, unused = subtract_exclusions([tumour, island, other, crossing, shapely.Point(50, 50)], exclusions)
    assert n_cut == 2 and unused == [2]
    assert out[0].area == 10000 - 3600 and len(out[0].interiors) == 1
    assert out[1].equals(island) and out[2].equals(other)
    assert out[3].area == 60 * 10 - 10 * 10
    assert out[4].equals(shapely.Point(50, 50))
    # touching only at an edge cuts nothing
    out, n_cut, unused = subtract_exclusions([box(0, 0, 10, 10)], [box(10, 0, 20, 10)])
    assert n_cut == 0 and unused == [0] and out[0].equals(box(0, 0, 10, 10))


def test_collector_class_map_repair_clip_and_counts() -> None:
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    c = FeatureCollector("f.xml", slide_size_px=(50, 50), class_map={"_0": "Tumor", "_1": "Tumor", "drop": None})
    for index, (geom, klass) in enumerate([
        (box(0, 0, 10, 10), "_0"), (bowtie, "_1"), (box(40, 40, 60, 60), "_0"), (box(100, 100, 110, 110), "_0"),
        (box(0, 0, 1, 1), "drop"), (shapely.Point(5, 5), "_1"),
    ]):
        c.element()
        c.add(Feature(geom, klass), index=index, label=f"annotation {index}")
    result = c.finish("asap", mpp=0.25)
    assert [f.source_index for f in result.features] == [0, 1, 2, 5]
    assert [f.class_name for f in result.features] == ["Tumor"] * 4
    assert result.features[1].geometry.area == 50.0  # the bow-tie made valid: two triangles
    assert result.features[2].geometry.equals(box(40, 40, 50, 50))
    s = result.summary
    assert s.total == 6
    assert s.repaired == [(1, "invalid polygon (Self-intersection[5 5]) repaired")]
    assert s.clipped == [(2, "clipped to the slide (50 x 50 px)")]
    assert s.skipped == [(4, "class 'drop' mapped to None"), (3, "wholly outside the slide")]
    assert s.not_area == [(5, "Point")]
    assert s.by_class == {"Tumor": 4} and s.by_object_type == {"annotation": 4}
    assert result.mpp == 0.25 and result.format_name == "asap"
    assert "f.xml: annotation 1: invalid polygon (Self-intersection[5 5]) repaired" in result.warnings
    assert "f.xml: 1 x skipped: class 'drop' mapped to None" in result.warnings


def test_collector_unknown_classes() -> None:
    def collect(on_unknown: str) -> FeatureCollector:
        c = FeatureCollector("f.xml", class_map={"_0": "Tumor"}, on_unknown=on_unknown, what="group")
        for index, klass in enumerate(["_0", "_3", "_3", None]):
            c.add(Feature(box(index, 0, index + 1, 1), klass), index=index)
        return c

    with pytest.raises(FormatError) as err:
        collect("raise").finish("asap")
    assert str(err.value) == (
        "f.xml: groups not in the class map: '_3' (2 objects), 'Unclassified' (1 object): add them to the class map "
        "(e.g. {'Unclassified': 'Tumor'}), map them to None to drop them, or keep their names with on_unknown='keep'"
    )
    kept = collect("keep").finish("asap")
    assert [f.class_name for f in kept.features] == ["Tumor", "_3", "_3", None]
    skipped = collect("skip").finish("asap")
    assert [f.class_name for f in skipped.features] == ["Tumor"]
    assert skipped.summary.skipped == [(1, "group '_3' not in the class map"), (2, "group '_3' not in the class map"),
                                       (3, "group 'Unclassified' not in the class map")]
    with pytest.raises(InputError, match="on_unknown must be one of 'raise', 'keep', 'skip', got 'drop'"):
        FeatureCollector("f.xml", on_unknown="drop")


def test_collector_names_ten_repairs_then_counts() -> None:
    c = FeatureCollector("f.xml")
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    for index in range(13):
        c.add(Feature(bowtie), index=index)
    result = c.finish("imagescope")
    assert len(result.summary.repaired) == 13
    named = [w for w in result.warnings if "invalid polygon" in w]
    assert len(named) == 10
    assert result.warnings[-1] == "f.xml: 3 more element(s) repaired (all 13 are in summary.repaired)"


def test_iter_xml_errors(tmp_path: Path) -> None:
    truncated = tmp_path / "cut.xml"
    truncated.write_text('<?xml version="1.0"?>\n<ASAP_Annotations>\n\t<Annotations>\n\t\t<Annotation Name="A"')
    with pytest.raises(FormatError) as err:
        list(iter_xml(truncated, "ASAP_Annotations", "an ASAP XML file"))
    assert str(err.value) == (
        f"{truncated}: malformed XML at line 4, column 2 (unclosed token): the file is truncated or not XML: "
        "save it again from the program that wrote it"
    )
    wrong = tmp_path / "wrong.xml"
    wrong.write_text("<Annotations><Annotation/></Annotations>")
    with pytest.raises(FormatError, match=r"root element <Annotations>, not <ASAP_Annotations>: not an ASAP XML file$"):
        list(iter_xml(wrong, "ASAP_Annotations", "an ASAP XML file"))
    with pytest.raises(FormatError, match=r"missing\.xml: no such file: check the path"):
        list(iter_xml(tmp_path / "missing.xml", "Annotations", "an ImageScope XML file"))
    with pytest.raises(FormatError, match="is a folder"):
        list(iter_xml(tmp_path, "Annotations", "an ImageScope XML file"))
    zipped = tmp_path / "a.xml.gz"
    zipped.write_bytes(gzip.compress(b'<x:Annotations xmlns:x="urn:a"><x:Annotation/></x:Annotations>'))
    assert [e for e, _ in iter_xml(zipped, "Annotations", "an ImageScope XML file")] == ["start", "start", "end", "end"]


def test_load_json_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "a.json"
    bad.write_text('[{"annotation": {"elements": [\n{"type": "point",')
    with pytest.raises(FormatError) as err:
        load_json_file(bad, "a DSA annotation JSON file")
    assert str(err.value) == (
        f"{bad}: malformed JSON at line 2, column 18 (Expecting property name enclosed in double quotes): the file is "
        "truncated or not JSON: export a DSA annotation JSON file again"
    )
    nan = tmp_path / "nan.json"
    nan.write_text('{"x": NaN}')
    assert np.isnan(load_json_file(nan, "x")["x"])
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"x": "\xe9"}')
    with pytest.raises(FormatError, match=r"not UTF-8 text \(byte 7\): not a DSA"):
        load_json_file(latin, "a DSA annotation JSON file")
