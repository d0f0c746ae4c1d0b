"""Coordinates that no slide has (1e300), objects far outside the image and GeoJSONs of another slide: `validate`
says so (a warning without --slide, an error with it) and `masks` refuses them with one line naming the feature
or the share of the area, unless --allow-off-slide (then warnings)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from qpbridge.cli import app
from qpbridge.qupath import validate_geojson
from qpbridge.qupath.read import ABSURD_COORDINATE_PX, far_outside

runner = CliRunner()
TUMOR_ID = "0b1e1c4e-7e8a-4f57-9d51-3c2b1a0f9e11"


def square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def geojson(path: Path, *features: tuple[list[list[float]], str, str | None]) -> Path:
    out: list[dict[str, Any]] = []
    for ring, name, fid in features:
        feature: dict[str, Any] = {
            "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name, "color": [200, 0, 0]}},
        }
        if fid is not None:
            feature["id"] = fid
        out.append(feature)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    return path


def lines(result: Result) -> list[str]:
    assert "Traceback" not in result.output
    return result.output.splitlines()


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    """Feature 1 (a Tumor with an id) has one vertex at x = 1e300."""
    return geojson(tmp_path / "huge.geojson", (square(16, 16, 96), "Benign", None),
                   ([[0, 0], [1e300, 0], [0, 50], [0, 0]], "Invasive carcinoma", TUMOR_ID))


def test_far_outside_is_farther_than_the_image_itself() -> None:
    box = (0.0, 0.0, 1024.0, 768.0)
    bounds = np.array([
        [-1000, -700, 2000, 1500],  # past the edges, but by less than the image's size: drawn past the edge
        [-1030, 0, 10, 10],  # more than one width to the left
        [0, 0, 10, 1537],  # more than one height below
        [5000, 5000, 5100, 5100],  # another slide's
    ])
    far, reach = far_outside(bounds, box)
    assert far.tolist() == [False, True, True, True]
    assert reach[1:].tolist() == [-1030.0, 1537.0, 5100.0]
    assert ABSURD_COORDINATE_PX == 1e7


# ---------------------------------------------------------------------------------------------- validate
def test_validate_warns_of_coordinates_no_slide_has(huge: Path) -> None:
    report = validate_geojson(huge)
    assert report.ok and [(i.index, i.code, i.severity) for i in report.issues] == [(1, "huge-coordinates", "warning")]
    result = runner.invoke(app, ["validate", str(huge)])
    assert result.exit_code == 0, result.output
    assert lines(result)[0] == (
        f"feature 1 (id {TUMOR_ID}, class 'Invasive carcinoma'): warning: coordinates reach 1e+300 px: no slide "
        "is that big (the largest are ~200,000 px on a side); in another unit, or from a broken transform? Check "
        "with --slide SLIDE"
    )
    assert "QuPath 0.4-0.7: imports it as intended" in result.output


def test_validate_with_the_slide_makes_far_objects_errors(huge: Path, pyramid_tiff: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(huge), "--slide", str(pyramid_tiff)])
    assert result.exit_code == 1, result.output
    out = lines(result)
    assert out[0] == (
        f"feature 1 (id {TUMOR_ID}, class 'Invasive carcinoma'): error: coordinates reach 1e+300 px, far outside "
        "the 1024 x 768 px image: QuPath places it where the image has no pixels; is it from another slide, or in "
        "another unit?"
    )
    assert "QuPath 0.4-0.7: imports it but mangles 1 object: 1 object far outside the image lies where it has no " \
           "pixels (unseen, measuring nothing)" in out
    data = json.loads(runner.invoke(app, ["validate", str(huge), "--slide", str(pyramid_tiff), "--json"]).output)
    assert [(i["index"], i["code"], i["effects"]["0.6"]) for i in data["issues"]] == [(1, "off-image", "mangle")]
    # An object drawn a little past the slide's edge is no issue; a NaN is an error (QuPath rejects the file).
    edge = geojson(tmp_path / "edge.geojson", (square(1000, 700, 100), "Benign", None))
    result = runner.invoke(app, ["validate", str(edge), "--slide", str(pyramid_tiff)])
    assert result.exit_code == 0 and "0 errors, 0 warnings" in result.output
    nan = tmp_path / "nan.geojson"
    nan.write_text(edge.read_text().replace("1100", "NaN", 1))
    result = runner.invoke(app, ["validate", str(nan)])
    assert result.exit_code == 1 and "error: NaN or infinite coordinate in a ring" in result.output
    # --fix keeps the object (it is no repair): the repaired file is judged against the slide too.
    fixed = tmp_path / "fixed.geojson"
    result = runner.invoke(app, ["validate", str(huge), "--slide", str(pyramid_tiff), "--fix", "-o", str(fixed)])
    assert result.exit_code == 1 and "  feature 1 (id" in result.output


def test_validate_slide_that_cannot_be_opened_is_one_line(huge: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(huge), "--slide", str(tmp_path / "nope.svs")])
    assert result.exit_code != 0 and [t for t in lines(result) if t.startswith("error:")]
    assert len([t for t in lines(result) if t.startswith("error:")]) == 1


# ------------------------------------------------------------------------------------------------- masks
def _masks(slide: Path, annotations: Path, *more: str) -> Result:
    return runner.invoke(app, ["masks", str(slide), str(annotations), "--dry-run", "--tile-mpp", "4", "--tile-px",
                               "64", "--min-tissue-frac", "0", *more])


def test_masks_refuses_an_object_far_outside_naming_it(huge: Path, pyramid_tiff: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _masks(pyramid_tiff, huge)
    assert result.exit_code == 1, result.output
    assert [t for t in lines(result) if t.startswith("error:")] == [
        f"error: {huge}: feature 1 (id {TUMOR_ID}, class 'Invasive carcinoma'): coordinates reach 1e+300 px, far "
        "outside the 1024 x 768 px image: is the GeoJSON from another slide, or in another unit? Fix or delete the "
        "object, or give --allow-off-slide to leave such objects out"
    ]
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]  # no numpy overflow on the way
    # --allow-off-slide: left out with a warning, the rest labelled.
    result = _masks(pyramid_tiff, huge, "--allow-off-slide", "--json")
    assert result.exit_code == 0, result.output
    assert (f"warning: feature 1 (id {TUMOR_ID}, class 'Invasive carcinoma'): coordinates reach 1e+300 px, far "
            "outside the 1024 x 768 px image: left out (--allow-off-slide)") in lines(result)
    summary = json.loads(result.stdout)
    assert summary["objects_painted"] == 1 and summary["pixels_by_label"]["1"] == 12 * 12  # 96 px of 0.5 um at 4 um/px
    assert summary["pixels_by_label"]["3"] == 0


def test_masks_refuses_a_geojson_mostly_off_the_slide(pyramid_tiff: Path, tmp_path: Path) -> None:
    # 10,000 px^2 on the slide, 40,000 beside it (within one slide width: not "far"), a Region* off it too.
    other = geojson(tmp_path / "other.geojson", (square(0, 0, 100), "Benign", None),
                    (square(1100, 0, 200), "Benign", None), (square(1100, 300, 400), "Region*", None))
    result = _masks(pyramid_tiff, other)
    assert result.exit_code == 1, result.output
    assert [t for t in lines(result) if t.startswith("error:")] == [
        f"error: 80% of the labelled area in {other} lies off the slide {pyramid_tiff} (1024 x 768 px at level 0): "
        "is the GeoJSON from another slide? Export it from this slide's QuPath image, or give --allow-off-slide to "
        "label only the part on the slide"
    ]
    result = _masks(pyramid_tiff, other, "--allow-off-slide", "--reviewed", "all")
    assert result.exit_code == 0, result.output
    assert ("warning: 80% of the labelled area lies off the slide (1024 x 768 px): only the part on it is labelled "
            "(--allow-off-slide)") in lines(result)
    assert "warning: 2 of 3 objects lie wholly outside the slide (1024 x 768 px)" in lines(result)
    # Half off is still labelled (a warning for the strays only).
    half = geojson(tmp_path / "half.geojson", (square(0, 0, 100), "Benign", None),
                   (square(1100, 0, 100), "Benign", None))
    result = _masks(pyramid_tiff, half)
    assert result.exit_code == 0, result.output
    assert "warning: 1 of 2 objects lie wholly outside the slide (1024 x 768 px)" in lines(result)


def test_masks_another_slide_entirely_still_names_the_span(pyramid_tiff: Path, tmp_path: Path) -> None:
    far = geojson(tmp_path / "far.geojson", ([[0, 2e6], [1e300, 2e6], [0, 3e6], [0, 2e6]], "Benign", None))
    result = _masks(pyramid_tiff, far)
    assert result.exit_code == 1
    assert (f"error: none of the 1 objects in {far} lie on the slide {pyramid_tiff} (1024 x 768 px at level 0): "
            "the objects span x 0 to 1e+300, y 2000000 to 3000000 px. Is the GeoJSON from another slide? Export it "
            "from this slide's QuPath image") in lines(result)
