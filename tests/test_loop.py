"""The correction loop end to end, without QuPath: the commands of docs/loop.md, with a scripted pathologist.

synthetic slide -> predict -> the "pathologist" relabels a region, deletes a false positive and draws a missed
region, exported the way QuPath exports (FeatureCollection, UUIDs, colours) -> diff reports exactly those changes
-> masks -> train --init-from (a few steps) -> the new model loads and predict runs with it.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import shapely
from shapely.geometry import shape
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.diff import diff_files
from qpbridge.models import load_model
from qpbridge.qupath import PREDICTION_RELEASED_VALUE
from tests.qupath_sim import QuPathObject, export_corrections, export_settings, import_predictions, released_value

DOC = Path(__file__).resolve().parents[1] / "docs" / "loop.md"
MODELS = Path(__file__).resolve().parents[1] / "models"
runner = CliRunner()

#: The only change the test makes to the document's commands: a few training steps instead of five epochs.
FAST_TRAINING = ("--epochs 5", "--steps 2 --batch-size 2")


def loop_commands(fence: str = "bash") -> list[str]:
    """The shell lines of the ```bash blocks of docs/loop.md (```sh: its nuclei section), in order."""
    blocks = re.findall(rf"```{fence}\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def run(line: str, fast: tuple[str, str] = FAST_TRAINING) -> str:
    """Run one line of docs/loop.md (``fast`` replaces its training length) and return what it printed."""
    if line.startswith("mkdir -p "):
        Path(line.split()[-1]).mkdir(parents=True, exist_ok=True)
        return ""
    assert line.startswith("qpbridge "), f"docs/loop.md runs only qpbridge and mkdir, not: {line}"
    result = runner.invoke(app, shlex.split(line.replace(*fast))[1:])
    assert result.exit_code == 0, f"{line}\n{result.output}"
    return result.stdout


def pathologist(objects: list[QuPathObject], truth: Path) -> dict[str, float]:
    """In QuPath: relabel the largest Benign region to invasive, delete the largest in situ region, draw a
    missed in situ region. Returns the areas (um^2) that ``diff`` must report."""
    regions = [o for o in objects if o.class_name != "ROI"]

    def largest(name: str) -> QuPathObject:
        return max((o for o in regions if o.class_name == name), key=lambda o: o.geometry.area)

    relabel, delete = largest("Benign"), largest("In situ carcinoma")
    relabel.class_name, relabel.color, relabel.edited = "Invasive carcinoma", [215, 25, 35], True
    objects.remove(delete)
    predicted_union = shapely.union_all([o.geometry for o in objects])
    tissue = shapely.union_all([shape(f["geometry"]) for f in json.loads(truth.read_text())["features"]
                                if f["properties"]["classification"]["name"] == "Tissue"])
    missed = next(
        box for y in range(0, 3072, 100) for x in range(0, 4096, 100)
        if tissue.contains(box := shapely.box(x, y, x + 200, y + 200)) and not box.intersects(predicted_union)
    )
    objects.append(QuPathObject("annotation", "In situ carcinoma", [250, 160, 20], missed))
    mpp2 = 0.25**2
    return {"relabelled": relabel.geometry.area * mpp2, "removed": delete.geometry.area * mpp2,
            "added": missed.area * mpp2}


IMAGE = {"image_name": "slide.svs", "width_px": 4096, "height_px": 3072, "pixel_size_um": 0.25}


def correct_in_qupath(settings: dict | None = None) -> dict[str, float]:
    """Import the prediction, correct it, export with export_corrections.groovy's settings (its defaults)."""
    objects = import_predictions(Path("project/qpbridge/slide.geojson"))
    expected = pathologist(objects, Path("slide.truth.geojson"))
    image = {**IMAGE, "image_paths": [str(Path("slide.svs").resolve())], "image_uris": []}
    export_corrections(objects, Path("project/qpbridge/corrections"), "slide", image, settings)
    return expected


def check_diff(line: str, expected: dict[str, float]) -> None:
    table = run(line)
    assert "Benign" in table and "Invasive carcinoma" in table
    result = diff_files("project/qpbridge/slide.geojson", "project/qpbridge/corrections/slide.geojson",
                        slide="slide.svs").to_dict()
    assert result["area_unit"] == "um^2"
    assert result["relabelled_um2"] == {"Benign": {"Invasive carcinoma": pytest.approx(expected["relabelled"])}}
    per_class = result["per_class"]
    assert per_class["In situ carcinoma"]["removed_um2"] == pytest.approx(expected["removed"])
    assert per_class["In situ carcinoma"]["added_um2"] == pytest.approx(expected["added"])
    assert result["totals"]["changed_um2"] == pytest.approx(sum(expected.values()))


def test_export_rule_is_the_scripts() -> None:
    """The scripted export selects what export_corrections.groovy selects, with the script's defaults."""
    source = (Path(__file__).resolve().parents[1] / "groovy" / "export_corrections.groovy").read_text()
    selection = re.search(r"List<PathObject> objects = new ArrayList<>\(QP.getAnnotationObjects\(\)\)\n(.*?)\nif "
                          r"\(objects.isEmpty\(\)\)", source, re.S)
    assert selection is not None
    code = re.sub(r"\s+", " ", selection.group(1))
    assert ("for (PathObject detection : QP.getDetectionObjects()) { // cells and tiles are detections too "
            "if (qpbridgeIsPrediction(detection)) { objects.add(detection) predictionDetections++ } "
            "else if (INCLUDE_DETECTIONS) { objects.add(detection) otherDetections++ } }") in code
    assert "measurements.put(QPBRIDGE_PREDICTION_MEASUREMENT, QPBRIDGE_RELEASED_VALUE)" in source
    assert "exported.put('qpbridge_predictions', true)" in source
    assert "exported.put('other_detections', INCLUDE_DETECTIONS)" in source
    assert "sidecar.put('exported', exported)" in source and "sidecar.put('format_version', 2)" in source
    assert export_settings() == {"INCLUDE_DETECTIONS": False, "RELEASE_EDITED_PREDICTIONS": True}
    assert released_value() == PREDICTION_RELEASED_VALUE


def test_loop_document_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (MODELS / "deepbatch-synth-cell" / "card.json").exists():
        pytest.skip("shipped models absent")
    monkeypatch.chdir(tmp_path)
    commands = loop_commands()
    assert [c.split()[1] for c in commands if c.startswith("qpbridge")] == [
        "synth", "predict", "validate", "diff", "diff", "masks", "train", "predict"]
    first_diff = next(i for i, c in enumerate(commands) if c.startswith("qpbridge diff"))
    for line in commands[:first_diff]:
        run(line)
    features = json.loads(Path("project/qpbridge/slide.geojson").read_text())["features"]
    assert {f["properties"]["objectType"] for f in features} == {"annotation"}  # editable class regions
    check_diff(commands[first_diff], correct_in_qupath())

    for line in commands[first_diff + 1:]:
        run(line)
    assert Path("changed.geojson").exists()
    tuned = load_model("my-models/deepbatch-cell-v2", role="cell")
    assert tuned.card.training["init_from"] is not None and tuned.card.mpp == 1.0
    meta = json.loads(Path("project/qpbridge/slide.geojson.meta.json").read_text())
    assert meta["models"]["cell"]["sha256"] == tuned.card.weights_sha256


def _first_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, predict_extra: str) -> list[str]:
    """docs/loop.md up to its first diff, predicting with ``predict_extra`` options."""
    if not (MODELS / "deepbatch-synth-cell" / "card.json").exists():
        pytest.skip("shipped models absent")
    monkeypatch.chdir(tmp_path)
    commands = loop_commands()
    first_diff = next(i for i, c in enumerate(commands) if c.startswith("qpbridge diff"))
    for line in commands[:first_diff]:
        run(line + predict_extra if line.startswith("qpbridge predict") else line)
    return commands[first_diff:]


def test_loop_with_detections_and_the_default_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Class regions written as detections: the default export still holds every prediction, so diff reports
    exactly the pathologist's changes and masks labels the relabelled region invasive."""
    rest = _first_turn(tmp_path, monkeypatch, " --object-type detection")
    features = json.loads(Path("project/qpbridge/slide.geojson").read_text())["features"]
    assert {f["properties"]["objectType"] for f in features if f["properties"]["classification"]["name"] != "ROI"} \
        == {"detection"}
    check_diff(rest[0], correct_in_qupath())
    masks = next(line for line in rest if line.startswith("qpbridge masks"))
    run(masks)
    manifest = Path("tiles/manifest.csv").read_text()
    assert manifest.count("\n") > 5


def test_an_export_without_the_detections_is_not_read_as_deleting_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older export script's default (annotations only, sidecar format 1) left the predicted detections
    out: diff and masks refuse it, naming INCLUDE_DETECTIONS, instead of reporting them all deleted."""
    rest = _first_turn(tmp_path, monkeypatch, " --object-type detection")
    objects = import_predictions(Path("project/qpbridge/slide.geojson"))
    kept = [o for o in objects if o.object_type == "annotation"]
    folder = Path("project/qpbridge/corrections")
    image = {**IMAGE, "image_paths": [str(Path("slide.svs").resolve())], "image_uris": []}
    export_corrections(kept, folder, "slide", image, {"INCLUDE_DETECTIONS": False, "RELEASE_EDITED_PREDICTIONS": True})
    sidecar = json.loads((folder / "slide.json").read_text())
    sidecar["format_version"] = 1
    del sidecar["exported"]
    (folder / "slide.json").write_text(json.dumps(sidecar))
    for line in (rest[0], next(line for line in rest if line.startswith("qpbridge masks"))):
        result = runner.invoke(app, shlex.split(line)[1:])
        assert result.exit_code == 2, result.output
        assert "project/qpbridge/corrections/slide.geojson holds no detections, but the predictions hold" in \
            result.output
        assert "set INCLUDE_DETECTIONS = true in an older copy of the script" in result.output
    assert not Path("tiles").exists()
