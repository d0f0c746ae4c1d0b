"""Tests of :mod:`qpbridge.qupath.project`: base names, folders, the prediction marker, corrections sidecars.

That the Groovy scripts follow the same rules is checked in ``tests/test_groovy.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from qpbridge import __version__
from qpbridge.errors import InputError
from qpbridge.qupath import project


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("slide1.svs", "slide1"),
        ("SLIDE1.SVS", "SLIDE1"),
        ("/data/slides/Case 12.ndpi", "Case 12"),
        ("C:\\slides\\biopsy.mrxs", "biopsy"),
        ("scan.ome.tiff", "scan"),
        ("scan.OME.TIF", "scan"),
        ("scan.tiff", "scan"),
        ("x.svslide", "x"),
        ("x.tif.svs", "x.tif"),  # one extension only
        ("a.b.c.jpeg", "a.b.c"),
        ("notes.txt", "notes.txt"),  # not a slide extension: kept
        ("plain", "plain"),
        (".svs", ".svs"),  # nothing would be left: kept
        ("tma.czi - Scene #1", "tma.czi - Scene #1"),  # one series of a multi-image file
        ('what:is*this?"<name>|.scn', "what_is_this___name__"),
        ("tab\tand\x01control\x7f.bif", "tab_and_control_"),
        ("emoji 🙂.svs", "emoji 🙂"),
        ("trailing space .svs ", "trailing space .svs "),
    ],
)
def test_image_basename(name: str, base: str) -> None:
    assert project.image_basename(name) == base


def test_image_basename_takes_paths() -> None:
    assert project.image_basename(Path("/data/slides/slide 7.svs")) == "slide 7"


@pytest.mark.parametrize("name", ["", "folder/", "C:\\slides\\"])
def test_image_basename_rejects_names_with_nothing_left(name: str) -> None:
    with pytest.raises(InputError, match="cannot make a file name from the image name"):
        project.image_basename(name)


@given(st.text(min_size=1, max_size=30), st.sampled_from(project.SLIDE_EXTENSIONS))
def test_basename_is_a_safe_file_name_and_drops_exactly_one_extension(text: str, extension: str) -> None:
    try:
        base = project.image_basename(text)
    except InputError:
        assert text.endswith(("/", "\\"))
        return
    assert base
    longer = [e for e in project.SLIDE_EXTENSIONS if len(e) > len(extension)]
    assume(not (base + extension).lower().endswith(tuple(longer)))  # e.g. "x.ome" + ".tif"
    assert not any(c in base for c in '\\/:*?"<>|') and all(ord(c) >= 0x20 and ord(c) != 0x7F for c in base)
    assert project.image_basename(base + extension) == base
    assert project.image_basename(base + extension.upper()) == base


def test_prediction_file_names_and_folders() -> None:
    assert project.prediction_filename("/slides/slide1.svs") == "slide1.geojson"
    assert project.prediction_filename("slide1.svs", gzip=True) == "slide1.geojson.gz"
    assert project.predictions_dir("/data/study/project.qpproj") == Path("/data/study/qpbridge")
    assert project.predictions_dir("/data/study") == Path("/data/study/qpbridge")
    assert project.prediction_path("/data/study", "slide1.svs") == Path("/data/study/qpbridge/slide1.geojson")
    assert project.corrections_dir("/data/study/project.qpproj") == Path("/data/study/qpbridge/corrections")


def test_corrections_paths() -> None:
    geojson, sidecar = project.corrections_paths("/data/study/project.qpproj", "/slides/Case 3.ndpi")
    assert geojson == Path("/data/study/qpbridge/corrections/Case 3.geojson")
    assert sidecar == Path("/data/study/qpbridge/corrections/Case 3.json")


def test_prediction_properties_mark_a_feature() -> None:
    properties = project.prediction_properties("run-7", version="1.2.3")
    assert properties == {
        "measurements": {"qpbridge prediction": 1.0},
        "metadata": {"qpbridge": "1.2.3", "qpbridge_run": "run-7"},
    }
    assert project.is_prediction_feature({"type": "Feature", "properties": properties})
    default = project.prediction_properties("run-8")
    assert default["metadata"]["qpbridge"] == __version__
    assert default["metadata"]["qpbridge_run"] == "run-8"


@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        ({"properties": {"measurements": {"qpbridge prediction": 1.5, "Area px": 3}}}, True),
        ({"properties": {"measurements": [{"name": "qpbridge prediction", "value": 1.0}]}}, True),
        ({"properties": {"measurements": {"Area px": 3}}}, False),
        ({"properties": {"measurements": [{"name": "Area px", "value": 3}], "name": "qpbridge prediction"}}, False),
        ({"properties": {"metadata": {"qpbridge": "0.1.0"}}}, False),  # metadata alone is not the marker
        ({"properties": None}, False),
        ({"geometry": None}, False),
    ],
)
def test_is_prediction_feature(feature: dict[str, object], expected: bool) -> None:
    assert project.is_prediction_feature(feature) is expected


def _write_sidecar(path: Path, **fields: object) -> Path:
    # The layout export_corrections.groovy writes (Gson, pretty printed).
    data: dict[str, object] = {
        "format": "qpbridge-corrections-sidecar",
        "format_version": 1,
        "image_name": "slide1.svs",
        "image_paths": [],
        "image_uris": [],
        "width_px": 4000,
        "height_px": 3000,
        "pixel_size_um": 0.2527,
        "geojson": "slide1.geojson",
        "annotations": 3,
        "detections": 0,
        "untouched_predictions": 1,
    }
    data.update(fields)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def test_read_corrections_sidecar_returns_the_slide(tmp_path: Path) -> None:
    slide = tmp_path / "slide1.svs"
    slide.write_bytes(b"")
    sidecar = _write_sidecar(tmp_path / "slide1.json", image_paths=[str(slide)], image_uris=[slide.as_uri()])
    assert project.read_corrections_sidecar(sidecar) == slide
    info = project.load_corrections_sidecar(sidecar)
    assert info == project.CorrectionsSidecar(
        image_name="slide1.svs",
        image_paths=(str(slide),),
        image_uris=(slide.as_uri(),),
        width_px=4000,
        height_px=3000,
        pixel_size_um=0.2527,
        format_version=1,
        detections=0,
    )
    assert not info.holds_every_prediction  # format 1: detections only with INCLUDE_DETECTIONS
    new = project.load_corrections_sidecar(_write_sidecar(
        tmp_path / "v2.json", image_paths=[str(slide)], format_version=2,
        exported={"annotations": True, "qpbridge_predictions": True, "other_detections": False}))
    assert new.holds_every_prediction and new.exported == {
        "annotations": True, "qpbridge_predictions": True, "other_detections": False}


def test_read_corrections_sidecar_skips_paths_that_do_not_exist(tmp_path: Path) -> None:
    slide = tmp_path / "copy" / "slide1.svs"
    slide.parent.mkdir()
    slide.write_bytes(b"")
    sidecar = _write_sidecar(tmp_path / "s.json", image_paths=["/nowhere/slide1.svs", str(slide)])
    assert project.read_corrections_sidecar(sidecar) == slide


def test_read_corrections_sidecar_when_no_file_exists(tmp_path: Path) -> None:
    sidecar = _write_sidecar(tmp_path / "s.json", image_paths=["D:\\scans\\slide1.svs"])
    with pytest.raises(InputError) as error:
        project.read_corrections_sidecar(sidecar)
    assert str(error.value) == (
        f"slide of image 'slide1.svs' not found: the corrections sidecar {sidecar} lists D:\\scans\\slide1.svs, "
        "none of which exists on this machine; give the slide path with --slide"
    )
    assert project.read_corrections_sidecar(sidecar, must_exist=False) == Path("D:\\scans\\slide1.svs")


def test_read_corrections_sidecar_without_a_local_file(tmp_path: Path) -> None:
    sidecar = _write_sidecar(tmp_path / "s.json", image_uris=["https://omero.example/image/7"])
    with pytest.raises(InputError, match=r"records no local file .*https://omero.example/image/7.*--slide"):
        project.read_corrections_sidecar(sidecar)


def test_load_corrections_sidecar_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"s\.json not found: run groovy/export_corrections\.groovy"):
        project.load_corrections_sidecar(tmp_path / "s.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"image_name": ', encoding="utf-8")
    with pytest.raises(InputError, match="is not valid JSON"):
        project.load_corrections_sidecar(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]", encoding="utf-8")
    with pytest.raises(InputError, match="must hold a JSON object, got list"):
        project.load_corrections_sidecar(listed)
    no_name = _write_sidecar(tmp_path / "no_name.json", image_name=None)
    with pytest.raises(InputError, match="has no 'image_name' string"):
        project.load_corrections_sidecar(no_name)
    bad_paths = _write_sidecar(tmp_path / "bad_paths.json", image_paths="/x/slide1.svs")
    with pytest.raises(InputError, match="has no 'image_paths' list of strings"):
        project.load_corrections_sidecar(bad_paths)


def test_load_corrections_sidecar_optional_fields(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.json"
    sparse.write_text(json.dumps({"image_name": "a.svs", "image_paths": ["/x/a.svs"]}), encoding="utf-8")
    info = project.load_corrections_sidecar(sparse)
    assert (info.width_px, info.height_px, info.pixel_size_um, info.image_uris) == (None, None, None, ())
    odd = _write_sidecar(tmp_path / "odd.json", width_px=True, pixel_size_um=-1.0, image_uris="x")
    info = project.load_corrections_sidecar(odd)
    assert (info.width_px, info.pixel_size_um, info.image_uris) == (None, None, ())
