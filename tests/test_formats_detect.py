"""Detecting a file's annotation format by its content, and reading any of them through read_annotations."""

from __future__ import annotations

import doctest
import gzip
import importlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely import box

from qpbridge.errors import FormatError, InputError
from qpbridge.formats import (
    FORMATS,
    FormatResult,
    detect_format,
    format_info,
    read_annotations,
    read_asap,
    read_dsa,
    read_imagescope,
    read_label_image,
    write_asap,
    write_label_image,
)
from qpbridge.qupath import Feature, read_geojson, write_geojson
from tests.test_formats_common import shared_data

ASAP = ('<?xml version="1.0"?>\n<!-- written by ASAP 1.9 -->\n<ASAP_Annotations><Annotations>'
        '<Annotation Name="A" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>'
        '<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="10" Y="0"/><Coordinate Order="2" X="10" Y="10"/>'
        '</Coordinates></Annotation></Annotations><AnnotationGroups><Group Name="_0" PartOfGroup="None" '
        'Color="#FF0000"><Attributes/></Group></AnnotationGroups></ASAP_Annotations>')
IMAGESCOPE = ('<Annotations MicronsPerPixel="0.5"><Annotation Id="1" Name="Tumor" LineColor="255"><Regions>'
              '<Region Id="1" Type="0"><Vertices><Vertex X="0" Y="0"/><Vertex X="8" Y="0"/><Vertex X="8" Y="8"/>'
              "</Vertices></Region></Regions></Annotation></Annotations>")
DSA = [{"_id": "5d633c49bd4404c6b1f3ddce", "annotation": {"name": "layer", "elements": [
    {"type": "polyline", "closed": True, "points": [[0, 0, 0], [6, 0, 0], [6, 6, 0]], "label": {"value": "roi"}}]}}]
FEATURE = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]},
           "properties": {"objectType": "annotation"}}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """One file of each kind, under names that do not give their format away."""
    out: dict[str, Path] = {}
    out["asap"] = tmp_path / "slide_1.json"
    out["asap"].write_text("\ufeff" + ASAP)
    out["imagescope"] = tmp_path / "slide_2.txt"
    out["imagescope"].write_text(IMAGESCOPE)
    out["dsa"] = tmp_path / "slide_3.geojson"
    out["dsa"].write_text(json.dumps(DSA))
    out["dsa_one"] = tmp_path / "slide_4.json"
    out["dsa_one"].write_text(json.dumps({"name": "x", "elements": DSA[0]["annotation"]["elements"]}))
    out["collection"] = tmp_path / "slide_5.xml"
    out["collection"].write_text(json.dumps({"type": "FeatureCollection", "features": [FEATURE]}))
    out["array"] = tmp_path / "slide_6.json"
    out["array"].write_text(json.dumps([FEATURE, FEATURE]))
    out["geometry"] = tmp_path / "slide_7.json"
    out["geometry"].write_text(json.dumps(FEATURE["geometry"]))
    out["gz_asap"] = tmp_path / "slide_8.gz"
    out["gz_asap"].write_bytes(gzip.compress(ASAP.encode()))
    out["gz_geojson"] = tmp_path / "slide_9.geojson.gz"
    out["gz_geojson"].write_bytes(gzip.compress(json.dumps(FEATURE).encode()))
    out["zip"] = tmp_path / "slide_10.zip"
    with zipfile.ZipFile(out["zip"], "w") as archive:
        archive.writestr("a.geojson", json.dumps(FEATURE))
    labels = np.zeros((8, 8), np.uint16)
    labels[1:4, 1:4] = 1
    for name, fmt in (("png", "PNG"), ("tif", "TIFF"), ("bmp", "BMP")):
        out[name] = tmp_path / f"labels_{name}.dat"
        Image.fromarray(labels.astype(np.uint8)).save(out[name], format=fmt)
    out["jpg"] = tmp_path / "mask.dat"
    Image.fromarray((labels * 255).astype(np.uint8)).save(out["jpg"], format="JPEG")
    # a GeoJSON whose first 64 KiB show no "type": decided by parsing it
    late = {"properties": {"note": "x" * 70_000}, "geometry": FEATURE["geometry"], "type": "Feature"}
    out["late"] = tmp_path / "late.json"
    out["late"].write_text(json.dumps(late))
    late_dsa = [{"description": "y" * 70_000, "name": "z", "elements": []}]
    out["late_dsa"] = tmp_path / "late_dsa.json"
    out["late_dsa"].write_text(json.dumps(late_dsa))
    return out


def test_detect_by_content(files: dict[str, Path]) -> None:
    detected = {name: detect_format(path) for name, path in files.items()}
    assert detected == {
        "asap": "asap", "imagescope": "imagescope", "dsa": "dsa", "dsa_one": "dsa", "collection": "geojson",
        "array": "geojson", "geometry": "geojson", "gz_asap": "asap", "gz_geojson": "geojson", "zip": "geojson",
        "png": "labels", "tif": "labels", "bmp": "labels", "jpg": "labels", "late": "geojson", "late_dsa": "dsa",
    }


def test_detect_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.xml"
    empty.write_text("  \n")
    with pytest.raises(FormatError, match=r"empty\.xml: empty file: it holds no annotations; export them again"):
        detect_format(empty)
    other = tmp_path / "other.xml"
    other.write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>')
    with pytest.raises(FormatError) as err:
        detect_format(other)
    assert str(err.value) == (
        f"{other}: XML with root <svg>: neither ASAP XML (<ASAP_Annotations>) nor Aperio ImageScope XML (<Annotations>)"
    )
    text = tmp_path / "notes.txt"
    text.write_text("tumour at the top left")
    with pytest.raises(FormatError, match="not an annotation file qpbridge knows"):
        detect_format(text)
    with pytest.raises(FormatError, match=r"missing\.json: no such file: check the path"):
        detect_format(tmp_path / "missing.json")


def test_read_annotations_dispatches_by_content(files: dict[str, Path]) -> None:
    expected = {"asap": ("_0", 50.0), "imagescope": ("Tumor", 32.0), "dsa": ("roi", 18.0), "collection": (None, 8.0),
                "gz_asap": ("_0", 50.0), "zip": (None, 8.0), "png": (None, 9.0)}
    for name, (klass, area) in expected.items():
        result = read_annotations(files[name])
        assert isinstance(result, FormatResult)
        assert result.format_name == detect_format(files[name])
        assert (result.features[0].class_name, result.features[0].geometry.area) == (klass, area), name
    assert read_annotations(files["imagescope"]).mpp == 0.5
    clipped = read_annotations(files["asap"], slide_size_px=(5, 5))
    assert clipped.features[0].geometry.area == 12.5 and clipped.summary.clipped
    mapped = read_annotations(files["asap"], class_map={"_0": "Tumor"})
    assert mapped.features[0].class_name == "Tumor"
    as_class = read_annotations(files["png"], kind="class", class_map={1: "Tumor"})
    assert as_class.features[0].class_name == "Tumor" and as_class.format_name == "labels"
    for name in ("asap", "imagescope", "dsa", "collection", "png"):  # what validate passes, whatever the format
        assert read_annotations(files[name], on_nonfinite="skip").features
    forced = read_annotations(files["asap"], format="asap", exclusion_groups=())
    assert forced.features[0].class_name == "_0"


def test_read_annotations_option_errors(files: dict[str, Path]) -> None:
    with pytest.raises(InputError) as err:
        read_annotations(files["dsa"], exclusion_groups=())
    assert str(err.value) == (
        f"option(s) exclusion_groups do not apply to Digital Slide Archive / HistomicsTK annotation JSON "
        f"({files['dsa']}); it takes: object_type, class_map, on_unknown, on_nonfinite"
    )
    with pytest.raises(InputError, match="unknown annotation format 'xml': use one of geojson, asap, imagescope"):
        read_annotations(files["asap"], format="xml")
    with pytest.raises(FormatError, match="root element <ASAP_Annotations>, not <Annotations>"):
        read_annotations(files["asap"], format="imagescope")


def test_formats_table() -> None:
    assert list(FORMATS) == ["geojson", "asap", "imagescope", "dsa", "labels"]
    readers = {name: info.reader for name, info in FORMATS.items()}
    assert readers == {"geojson": read_geojson, "asap": read_asap, "imagescope": read_imagescope, "dsa": read_dsa,
                       "labels": read_label_image}
    writers = {name: info.writer for name, info in FORMATS.items()}
    assert writers == {"geojson": write_geojson, "asap": write_asap, "imagescope": None, "dsa": None,
                       "labels": write_label_image}
    assert format_info("labels").suffixes[:3] == (".png", ".tif", ".tiff")


def test_every_writer_output_is_detected_and_read_back(tmp_path: Path) -> None:
    feats = [Feature(box(0, 0, 4, 4), "Tumor")]
    write_asap(tmp_path / "out.xml", feats)
    write_geojson(tmp_path / "out.geojson", feats)
    write_label_image(tmp_path / "out.png", feats, (6, 6))
    for name in ("out.xml", "out.geojson", "out.png"):
        result = read_annotations(tmp_path / name)
        assert result.features[0].geometry.area == 16.0, name
    assert read_annotations(tmp_path / "out.xml").features[0].class_name == "Tumor"


def test_real_files_are_detected() -> None:
    assert detect_format(shared_data("monuseg-train", "xml", "TCGA-B0-5698-01Z-00-DX1.xml")) == "imagescope"
    dsa = next(shared_data("annotations", "dsa").glob("*.json"))
    assert detect_format(dsa) == "dsa"
    assert detect_format(shared_data("monuseg-train", "instances", "TCGA-B0-5698-01Z-00-DX1_instances.png")) == "labels"
    assert detect_format(shared_data("bcss-tumor", "masks", "1015.jpg")) == "labels"
    xml = shared_data("monuseg-train", "xml", "TCGA-B0-5710-01Z-00-DX1.xml")
    nuclei = read_annotations(xml, object_type="detection")
    assert nuclei.summary.by_object_type == {"detection": 359}


@pytest.mark.parametrize("module", ["common", "asap", "imagescope", "dsa", "labels", "detect", "__init__"])
def test_docstring_examples_run(module: str) -> None:
    name = "qpbridge.formats" if module == "__init__" else f"qpbridge.formats.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
