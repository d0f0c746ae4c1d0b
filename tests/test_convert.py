"""``qpbridge convert``: every readable format into QuPath GeoJSON, and GeoJSON into ASAP XML and label images."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from PIL import Image
from shapely import box
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError
from qpbridge.formats import (
    class_labels,
    convert_annotations,
    load_label_image,
    output_format,
    read_annotations,
    read_asap,
    rename_classes,
    write_asap,
)
from qpbridge.qupath import Feature, read_geojson, validate_geojson, write_geojson
from qpbridge.rasterize import rasterize_shapes
from tests.test_formats_asap import annotation, asap_file, group, square
from tests.test_formats_common import shared_data

MONUSEG_XML = ("monuseg-train", "xml", "TCGA-B0-5698-01Z-00-DX1.xml")
MONUSEG_INSTANCES = ("monuseg-train", "instances", "TCGA-B0-5698-01Z-00-DX1_instances.png")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["convert", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def assert_imports_cleanly(path: Path) -> None:
    """QuPath 0.4-0.7 import it as intended: no error and no warning (asserted on the issues, not the summary)."""
    report = validate_geojson(path)
    assert report.ok, [i.message for i in report.issues]
    assert [i.message for i in report.issues] == []


def class_mask(features: list[Feature], name: str, shape: tuple[int, int] = (200, 400)) -> np.ndarray:
    geoms = [f.geometry for f in features if f.class_name == name]
    return rasterize_shapes([(g, 1) for g in geoms], shape, Affine.identity())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture()
def asap_with_holes(tmp_path: Path) -> Path:
    """Two tumour areas (one with a hole and an island inside the hole), stroma, and a ruler."""
    return asap_file(tmp_path / "A01.xml", [
        annotation("T1", "Polygon", "Tumor", square(10, 10, 100)),
        annotation("hole", "Polygon", "_2", square(30, 30, 40), color="#64FE2E"),
        annotation("island", "Polygon", "Tumor", square(45, 45, 10)),
        annotation("T2", "Polygon", "Tumor", [(200, 20), (260, 30), (250, 90), (210, 80)]),
        annotation("S", "Spline", "Stroma", [(300, 100), (380, 120), (350, 190), (290, 170)]),
        annotation("ruler", "Measurement", "None", [(0, 0), (50, 50)]),
    ], [group("Tumor", color="#C81E1E"), group("Stroma", color="#1E90FF"), group("_2", color="#64FE2E")])


# --- ASAP <-> GeoJSON ---------------------------------------------------------------------------------
def test_asap_to_geojson_to_asap_keeps_every_pixel_and_hole(asap_with_holes: Path, tmp_path: Path) -> None:
    code, stdout, stderr = invoke(asap_with_holes, "-o", tmp_path / "A01.geojson")
    assert code == 0, stderr
    assert stdout == ""
    assert stderr.splitlines()[-1] == (
        f"{asap_with_holes} (ASAP XML) -> {tmp_path / 'A01.geojson'} (QuPath GeoJSON): 4 objects (4 annotation; "
        "Tumor 3, Stroma 1) of 6 read; 1 skipped (1 on reading)"
    )
    assert_imports_cleanly(tmp_path / "A01.geojson")
    geo = read_geojson(tmp_path / "A01.geojson").features
    assert [(f.class_name, f.color, f.object_type) for f in geo] == [
        ("Tumor", (200, 30, 30), "annotation"), ("Tumor", (200, 30, 30), "annotation"),
        ("Tumor", (200, 30, 30), "annotation"), ("Stroma", (30, 144, 255), "annotation"),
    ]
    assert len(geo[0].geometry.interiors) == 1 and geo[0].geometry.area == 10000 - 1600

    code, _, stderr = invoke(tmp_path / "A01.geojson", "-o", tmp_path / "back.xml")
    assert code == 0, stderr
    assert stderr.splitlines()[-1].endswith(
        "4 objects (4 annotation; Tumor 3, Stroma 1) of 4 read; 1 hole as exclusions"
    )
    original, back = read_asap(asap_with_holes).features, read_asap(tmp_path / "back.xml").features
    assert len(back) == len(original) == 4
    assert sum(len(f.geometry.interiors) for f in back) == 1
    for name in ("Tumor", "Stroma"):
        expected = class_mask(original, name)
        assert expected.sum() > 1000
        assert iou(class_mask(back, name), expected) == 1.0
    root = ET.parse(tmp_path / "back.xml").getroot()
    groups = {g.get("Name"): g.get("Color") for g in root.iter("Group")}
    assert groups == {"Tumor": "#C81E1E", "Stroma": "#1E90FF", "Exclusion": "#64FE2E"}


def test_exclusion_groups_read_and_written(tmp_path: Path) -> None:
    path = asap_file(tmp_path / "holes.xml", [
        annotation("T", "Polygon", "Tumor", square(0, 0, 100)),
        annotation("cut", "Polygon", "Lumen", square(20, 20, 20)),
    ], [group("Tumor"), group("Lumen")])
    plain = convert_annotations(path, tmp_path / "plain.geojson")
    assert plain.by_class == {"Tumor": 1, "Lumen": 1}
    cut = convert_annotations(path, tmp_path / "cut.geojson", exclusion_groups=["Lumen"])
    assert cut.by_class == {"Tumor": 1}
    assert read_geojson(tmp_path / "cut.geojson").features[0].geometry.area == 10000 - 400
    convert_annotations(tmp_path / "cut.geojson", tmp_path / "back.xml", exclusion_groups=["Lumen"])
    root = ET.parse(tmp_path / "back.xml").getroot()
    assert [a.get("PartOfGroup") for a in root.iter("Annotation")] == ["Tumor", "Lumen"]
    assert read_asap(tmp_path / "back.xml", exclusion_groups=["Lumen"]).features[0].geometry.area == 9600.0


# --- ImageScope, DSA, label images -> GeoJSON ------------------------------------------------------------
def test_monuseg_imagescope_gives_one_detection_per_region(tmp_path: Path) -> None:
    xml = shared_data(*MONUSEG_XML)
    regions = [r for r in ET.parse(xml).getroot().iter("Region")]
    with_area = [r for r in regions if len({(v.get("X"), v.get("Y")) for v in r.iter("Vertex")}) >= 3]
    assert len(regions) == 357
    code, _, stderr = invoke(xml, "-o", tmp_path / "nuclei.geojson")
    assert code == 0, stderr
    assert_imports_cleanly(tmp_path / "nuclei.geojson")
    result = read_geojson(tmp_path / "nuclei.geojson")
    assert result.summary.by_object_type == {"detection": len(with_area)}
    assert stderr.splitlines()[-1].startswith(
        f"{xml} (Aperio ImageScope XML) -> {tmp_path / 'nuclei.geojson'} (QuPath GeoJSON): 357 objects "
        "(357 detection; Unclassified 357) of 357 read"
    )
    as_regions = convert_annotations(xml, tmp_path / "regions.geojson", object_type="annotation")
    assert as_regions.by_object_type == {"annotation": 357}


def test_dsa_gives_its_closed_polylines_with_their_labels(tmp_path: Path) -> None:
    dsa = next(shared_data("annotations", "dsa").glob("*.json"))
    documents = json.loads(dsa.read_text())
    labels: dict[str, int] = {}
    for doc in documents:
        for element in doc["annotation"]["elements"]:
            if element["type"] == "polyline" and element.get("closed"):
                labels[element["label"]["value"]] = labels.get(element["label"]["value"], 0) + 1
    assert sum(labels.values()) == 98
    code, _, stderr = invoke(dsa, "-o", tmp_path / "dsa.geojson")
    assert code == 0, stderr
    assert_imports_cleanly(tmp_path / "dsa.geojson")
    result = read_geojson(tmp_path / "dsa.geojson")
    assert result.summary.by_class == labels == {
        "mostly_tumor": 38, "mostly_stroma": 35, "roi": 20, "mostly_lymphocytic_infiltrate": 5,
    }
    assert result.summary.by_object_type == {"annotation": 98}
    assert all(f.color is not None for f in result.features)


def test_small_dsa_document_with_lines_points_and_colours(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"name": "layer", "elements": [
        {"type": "polyline", "closed": True, "points": [[0, 0, 0], [40, 0, 0], [40, 40, 0]],
         "label": {"value": "tumor"}, "lineColor": "rgb(255,0,0)"},
        {"type": "polyline", "closed": False, "points": [[0, 0, 0], [50, 50, 0]]},
        {"type": "point", "center": [5, 5, 0], "group": "mitosis"},
        {"type": "arrow", "points": [[0, 0, 0], [1, 1, 0]]},
    ]}))
    result = convert_annotations(path, tmp_path / "doc.geojson")
    assert result.summary_line() == (
        f"{path} (Digital Slide Archive / HistomicsTK annotation JSON) -> {tmp_path / 'doc.geojson'} (QuPath "
        "GeoJSON): 3 objects (3 annotation; layer 1, mitosis 1, tumor 1) of 4 read; 1 skipped (1 on reading); "
        "1 line written as lines"
    )
    assert_imports_cleanly(tmp_path / "doc.geojson")
    to_asap = convert_annotations(tmp_path / "doc.geojson", tmp_path / "doc.xml")
    assert (to_asap.written, to_asap.lines, to_asap.skipped) == (2, 1, {})
    assert to_asap.summary_line().endswith("of 3 read; 1 line left out")


def test_label_images_round_trip_pixel_exact(tmp_path: Path) -> None:
    instances = np.zeros((40, 60), np.uint16)
    instances[2:12, 3:15] = 5
    instances[5:8, 6:9] = 0           # a hole in instance 5
    instances[12:20, 3:15] = 9        # touches instance 5
    instances[30:38, 40:58] = 300
    Image.fromarray(instances).save(tmp_path / "inst.png")
    code, _, stderr = invoke(tmp_path / "inst.png", "-o", tmp_path / "inst.geojson")
    assert code == 0, stderr
    assert_imports_cleanly(tmp_path / "inst.geojson")
    assert read_geojson(tmp_path / "inst.geojson").summary.by_object_type == {"detection": 3}
    code, _, stderr = invoke(tmp_path / "inst.geojson", "-o", tmp_path / "back.tif", "--size-px", "60x40")
    assert code == 0, stderr
    assert stderr.splitlines()[-1].endswith("of 3 read; instance labels, 60 x 40 px")
    back, _ = load_label_image(tmp_path / "back.tif")
    np.testing.assert_array_equal(back, instances)

    classes = np.zeros((30, 30), np.uint8)
    classes[0:20, 0:20] = 1
    classes[5:10, 5:10] = 2           # class 2 inside class 1: a hole in it
    classes[20:30, 10:30] = 3
    Image.fromarray(classes).save(tmp_path / "classes.png")
    first = convert_annotations(tmp_path / "classes.png", tmp_path / "classes.geojson", kind="class")
    assert first.by_class == {"1": 1, "2": 1, "3": 1} and first.by_object_type == {"annotation": 3}
    assert_imports_cleanly(tmp_path / "classes.geojson")
    again = convert_annotations(tmp_path / "classes.geojson", tmp_path / "again.png", slide_size_px=(30, 30))
    assert again.kind == "class"
    np.testing.assert_array_equal(load_label_image(tmp_path / "again.png")[0], classes)


def test_label_images_at_another_resolution(tmp_path: Path) -> None:
    labels = np.zeros((10, 12), np.uint8)
    labels[2:6, 3:9] = 1
    labels[6:9, 1:4] = 3
    Image.fromarray(labels).save(tmp_path / "low.png")
    code, _, stderr = invoke(tmp_path / "low.png", "-o", tmp_path / "low.geojson", "--kind", "class",
                             "--mpp", "0.5", "--label-mpp", "2")
    assert code == 0, stderr
    feats = read_geojson(tmp_path / "low.geojson").features
    assert feats[0].geometry.bounds == (12.0, 8.0, 36.0, 24.0)  # 4 level-0 px per label px
    code, _, stderr = invoke(tmp_path / "low.geojson", "-o", tmp_path / "again.png", "--size-px", "48x40",
                             "--mpp", "0.5", "--label-mpp", "2")
    assert code == 0, stderr
    assert stderr.splitlines()[-1].endswith("class labels, 12 x 10 px at 2 um/px")
    again, recorded = load_label_image(tmp_path / "again.png")
    np.testing.assert_array_equal(again, labels)
    assert recorded == pytest.approx(2.0)
    # read back without --label-mpp: the resolution the file records places it
    placed = read_annotations(tmp_path / "again.png", kind="class", slide_mpp=0.5, on_missing_mpp="level0")
    assert placed.features[0].geometry.bounds == pytest.approx((12.0, 8.0, 36.0, 24.0))
    level0 = convert_annotations(tmp_path / "low.geojson", tmp_path / "level0.png", slide_size_px=(48, 40))
    assert level0.size_px == (48, 40) and level0.mpp is None


def test_monuseg_instances_to_geojson_and_back(tmp_path: Path) -> None:
    png = shared_data(*MONUSEG_INSTANCES)
    result = convert_annotations(png, tmp_path / "nuclei.geojson")
    assert result.by_object_type == {"detection": 357}
    assert_imports_cleanly(tmp_path / "nuclei.geojson")
    back = convert_annotations(tmp_path / "nuclei.geojson", tmp_path / "back.png", slide_size_px=(1000, 1000))
    assert back.kind == "instance"
    np.testing.assert_array_equal(load_label_image(tmp_path / "back.png")[0], load_label_image(png)[0])


# --- classes and object types -------------------------------------------------------------------------
def test_class_map_renames_drops_and_recolours(asap_with_holes: Path, tmp_path: Path) -> None:
    code, _, stderr = invoke(asap_with_holes, "-o", tmp_path / "mapped.geojson",
                             "--class-map", "Tumor=3,Stroma=skip")
    assert code == 0, stderr
    assert stderr.splitlines()[-1].endswith(
        "3 objects (3 annotation; Invasive carcinoma 3) of 6 read; 2 skipped (1 by the class map, 1 on reading)"
    )
    feats = read_geojson(tmp_path / "mapped.geojson").features
    assert {(f.class_name, f.color) for f in feats} == {("Invasive carcinoma", (215, 25, 35))}
    renamed, dropped = rename_classes(
        [Feature(box(0, 0, 1, 1), "tumor: positive"), Feature(box(0, 0, 1, 1)), Feature(box(0, 0, 1, 1), "Pen")],
        {"Tumor": "Carcinoma", "Unclassified": "region", "Pen": "ignore"},
    )
    assert [f.class_name for f in renamed] == ["Carcinoma", "Region*", "Ignore*"] and dropped == 0
    with pytest.raises(InputError, match="label 7 names no class"):
        rename_classes([], {"Tumor": 7})


def test_class_labels_for_label_images(tmp_path: Path) -> None:
    assert class_labels(["Benign", "tissue", "Pen mark", "Region*", "12"]) == {
        "Benign": 1, "tissue": 0, "Pen mark": 255, "Region*": None, "12": 12,
    }
    assert class_labels(["Tumor", "Stroma"], {"Tumor": 3, "stroma": "ignore"}) == {"Tumor": 3, "Stroma": 255}
    feats = [Feature(box(0, 0, 10, 10), "Stroma"), Feature(box(2, 2, 8, 8), "Tumor"), Feature(box(0, 0, 3, 3), "x")]
    write_geojson(tmp_path / "t.geojson", feats)
    code, _, stderr = invoke(tmp_path / "t.geojson", "-o", tmp_path / "t.png", "--size-px", "10x10")
    assert code == 2
    assert stderr == ("error: classes without a label: 'Stroma', 'Tumor', 'x': give them one with --class-map "
                      "(e.g. 'Stroma=1'; skip leaves them out)\n")
    code, _, stderr = invoke(tmp_path / "t.geojson", "-o", tmp_path / "t.png", "--size-px", "10x10",
                             "--class-map", "Stroma=1,Tumor=3,x=skip")
    assert code == 0, stderr
    img, _ = load_label_image(tmp_path / "t.png")
    assert (int(img[5, 5]), int(img[0, 9]), int(img[0, 0])) == (3, 1, 1)  # higher label over lower; x skipped


def test_object_types_auto_and_forced(tmp_path: Path) -> None:
    nuclei = [annotation(f"n{k}", "Polygon", "Nucleus", square(30 * (k % 10), 30 * (k // 10), 20)) for k in range(60)]
    path = asap_file(tmp_path / "nuclei.xml", nuclei, [group("Nucleus")])
    assert convert_annotations(path, tmp_path / "a.geojson").by_object_type == {"detection": 60}
    forced = convert_annotations(path, tmp_path / "b.geojson", object_type="annotation")
    assert forced.by_object_type == {"annotation": 60}
    few = asap_file(tmp_path / "few.xml", nuclei[:3], [group("Nucleus")])
    assert convert_annotations(few, tmp_path / "c.geojson").by_object_type == {"annotation": 3}
    write_geojson(tmp_path / "mixed.geojson", [Feature(box(0, 0, 9, 9), "ROI"),
                                               Feature(box(0, 0, 2, 2), "Tumor", object_type="detection")])
    kept = convert_annotations(tmp_path / "mixed.geojson", tmp_path / "d.geojson")
    assert kept.by_object_type == {"annotation": 1, "detection": 1}


def test_output_format_by_name() -> None:
    names = ["x.GEOJSON.GZ", "x.json", "x.json.gz", "A01.xml", "m.png", "m.TIF", "m.tiff"]
    assert [output_format(n) for n in names] == ["geojson", "geojson", "geojson", "asap", "labels", "labels", "labels"]
    for bad in ("x.xml.gz", "x.jpg", ".geojson"):
        with pytest.raises(InputError, match="cannot tell the output format"):
            output_format(bad)


@pytest.mark.parametrize("kind", ["asap", "imagescope", "dsa", "labels", "geojson"])
def test_every_input_format_gives_geojson_that_validates(kind: str, tmp_path: Path) -> None:
    feats = [Feature(shapely.Polygon([(0, 0), (50, 0), (50, 50), (0, 50)], [[(10, 10), (20, 10), (20, 20)]]),
                     "Tumor"), Feature(box(60, 0, 90, 30), "Stroma")]
    if kind == "asap":
        source = tmp_path / "in.xml"
        write_asap(source, feats)
    elif kind == "imagescope":
        source = tmp_path / "in.xml"
        source.write_text('<Annotations MicronsPerPixel="0.25"><Annotation Id="1" Name="Tumor" LineColor="255">'
                          '<Regions><Region Id="1" Type="1"><Vertices><Vertex X="0" Y="0"/><Vertex X="50" Y="50"/>'
                          '</Vertices></Region></Regions></Annotation></Annotations>')
    elif kind == "dsa":
        source = tmp_path / "in.json"
        source.write_text(json.dumps([{"annotation": {"name": "a", "elements": [
            {"type": "rectangle", "center": [25, 25, 0], "width": 50, "height": 50, "label": {"value": "Tumor"}}]}}]))
    elif kind == "labels":
        source = tmp_path / "in.png"
        Image.fromarray(np.pad(np.ones((50, 50), np.uint8), ((0, 10), (0, 10)))).save(source)
    else:
        source = tmp_path / "in.json"
        write_geojson(source, feats)
    for suffix in (".geojson", ".geojson.gz"):
        out = tmp_path / f"out{suffix}"
        code, _, stderr = invoke(source, "-o", out)
        assert code == 0, stderr
        assert_imports_cleanly(out)
        assert read_geojson(out).features[0].geometry.area > 0


# --- bad input ----------------------------------------------------------------------------------------
def test_bad_input_is_one_error_line(asap_with_holes: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.xml"
    other.write_text("<svg/>")
    broken = tmp_path / "broken.xml"
    broken.write_text("<ASAP_Annotations><Annotations><Annotation")
    cases = [
        ((tmp_path / "missing.xml", "-o", tmp_path / "o.geojson"), 1,
         f"error: {tmp_path / 'missing.xml'}: no such file: check the path"),
        ((other, "-o", tmp_path / "o.geojson"), 1,
         f"error: {other}: XML with root <svg>: neither ASAP XML (<ASAP_Annotations>) nor Aperio ImageScope XML "
         "(<Annotations>)"),
        ((broken, "-o", tmp_path / "o.geojson"), 1,
         f"error: {broken}: malformed XML at line 1, column 31 (unclosed token): the file is truncated or not XML: "
         "save it again from the program that wrote it"),
        ((asap_with_holes, "-o", tmp_path / "o.txt"), 2,
         f"error: cannot tell the output format of {tmp_path / 'o.txt'}: name it .geojson or .geojson.gz (QuPath "
         "GeoJSON), .xml (ASAP XML) or .png, .tif, .tiff (label image)"),
        ((asap_with_holes, "-o", tmp_path / "o.png"), 2,
         f"error: writing the label image {tmp_path / 'o.png'} needs the image's size: give the slide the objects "
         "belong to (--slide) or its level-0 size (--size-px WIDTHxHEIGHT)"),
        ((asap_with_holes, "-o", tmp_path / "o.png", "--size-px", "10"), 2,
         "error: --size-px '10' is not WIDTHxHEIGHT in pixels (e.g. --size-px 2220x2967)"),
        ((asap_with_holes, "-o", tmp_path / "o.png", "--size-px", "9x9", "--label-mpp", "2"), 2,
         "error: a label image at 2 um/px needs the slide's level-0 um/px to be placed: give the slide (--slide) "
         "or its pixel size (--mpp)"),
        ((asap_with_holes, "-o", asap_with_holes), 2,
         f"error: the output {asap_with_holes} is the input: give another output with -o"),
        ((asap_with_holes, "-o", tmp_path / "nowhere" / "o.geojson"), 1,
         f"error: output folder {tmp_path / 'nowhere'} does not exist: create it or choose another path"),
        ((asap_with_holes, "-o", tmp_path / "o.geojson", "--object-type", "cell"), 2,
         "error: object_type must be one of 'auto', 'annotation', 'detection', got 'cell'"),
        ((asap_with_holes, "-o", tmp_path / "o.geojson", "--from", "xml"), 2,
         "error: unknown annotation format 'xml': use one of geojson, asap, imagescope, dsa, labels"),
        ((asap_with_holes, "-o", tmp_path / "o.geojson", "--class-map", "Tumor"), 2,
         "error: --class-map 'Tumor' is neither NAME=LABEL pairs, a JSON file, nor a known model name "
         "(see `qpbridge models list`)"),
    ]
    for args, code, message in cases:
        got_code, stdout, stderr = invoke(*args)
        assert (got_code, stderr) == (code, message + "\n"), args
        assert stdout == ""
    assert not (tmp_path / "o.geojson").exists() and not (tmp_path / "o.png").exists()


def test_help_has_examples() -> None:
    result = CliRunner().invoke(app, ["convert", "--help"])
    assert result.exit_code == 0
    assert "qpbridge convert A01.xml -o A01.geojson" in result.stdout
    assert "qpbridge convert corrected.geojson -o corrected.xml" in result.stdout


# --- what convert builds on ---------------------------------------------------------------------------
def test_imagescope_regions_carry_their_own_class_when_the_layer_has_none(tmp_path: Path) -> None:
    def region(rid: int, x: int, text: str = "", value: str | None = None) -> str:
        attrs = (f'<Attributes><Attribute Name="Class" Id="1" Value="{value}"/></Attributes>' if value
                 else "<Attributes/>")
        points = "".join(f'<Vertex X="{px}" Y="{py}"/>' for px, py in square(x, 0, 10))
        return f'<Region Id="{rid}" Type="0" Text="{text}">{attrs}<Vertices>{points}</Vertices></Region>'

    path = tmp_path / "bach.xml"
    path.write_text(
        '<Annotations><Annotation Id="1" Name=""><Attributes><Attribute Name="Description" Id="0" Value=""/>'
        f'</Attributes><Regions>{region(1, 0, "Benign")}{region(2, 20, value="Carcinoma in situ")}{region(3, 40)}'
        '</Regions></Annotation><Annotation Id="2" Name="Stroma"><Regions>'
        f'{region(4, 60, "Carcinoma invasive")}</Regions></Annotation></Annotations>'
    )
    layer_first = read_annotations(path)
    assert [(f.class_name, f.name) for f in layer_first.features] == [
        ("Benign", "Benign"), ("Carcinoma in situ", None), (None, None), ("Stroma", "Carcinoma invasive"),
    ]
    region_first = read_annotations(path, class_from="region")
    assert [f.class_name for f in region_first.features] == ["Benign", "Carcinoma in situ", None, "Carcinoma invasive"]


def test_files_named_as_geojson_keep_the_geojson_errors(tmp_path: Path) -> None:
    from qpbridge.errors import QpbridgeError

    def outcome(reader: object, path: Path) -> tuple[str, str]:
        try:
            result = reader(path)  # type: ignore[operator]
        except QpbridgeError as exc:
            return type(exc).__name__, str(exc)
        return "read", repr((result.features, result.summary, result.warnings))

    cases = {"empty.geojson": "", "words.geojson": "not json", "list.json": "[1, 2]", "gz.geojson.gz": "x"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    for name in [*cases, "missing.geojson"]:
        expected = outcome(read_geojson, tmp_path / name)
        assert outcome(read_annotations, tmp_path / name) == expected, name
        assert expected[0] != "read" or name == "list.json"


def test_annotation_suffix_rules() -> None:
    from qpbridge.qupath.project import annotation_file_base, is_annotation_path

    assert [is_annotation_path(n) for n in ("A01.XML", "a.xml.gz", "c.json", "c.geojson.gz", "m.png", "s.svs")] == [
        True, True, True, True, False, False,
    ]
    assert [annotation_file_base(n) for n in ("A01.xml", "A01.XML.gz", "s.geojson", "s.json", ".xml")] == [
        "A01", "A01", "s", None, None,
    ]


@pytest.mark.parametrize(
    "module", ["qpbridge.formats.convert", "qpbridge.formats.pairing", "qpbridge.commands.convert"]
)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_jpeg_tumour_mask_with_a_threshold(tmp_path: Path) -> None:
    jpeg = shared_data("bcss-tumor", "masks", "1015.jpg")
    code, _, stderr = invoke(jpeg, "-o", tmp_path / "tumour.geojson", "--kind", "class", "--threshold", "127",
                             "--class-map", "1=Invasive carcinoma")
    assert code == 0, stderr
    assert_imports_cleanly(tmp_path / "tumour.geojson")
    feats = read_geojson(tmp_path / "tumour.geojson").features
    assert [(f.class_name, f.object_type) for f in feats] == [("Invasive carcinoma", "annotation")]
    mask, _ = load_label_image(jpeg, threshold=127)
    assert feats[0].geometry.area == float(mask.sum())
    code, _, stderr = invoke(jpeg, "-o", tmp_path / "x.geojson")
    assert (code, stderr) == (1, f"error: {jpeg}: a JPEG (lossy: its edges hold every grey), not a label image: "
                                 "read it as a black-and-white mask with a threshold (threshold=127; qpbridge "
                                 "convert --threshold 127)\n")
