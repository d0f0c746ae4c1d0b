"""The correction loop end to end, without QuPath: the commands of docs/loop.md, with a scripted pathologist.

synthetic slide -> predict -> the "pathologist" relabels a region, deletes a false positive and draws a missed
region, exported the way QuPath exports (FeatureCollection, UUIDs, colours) -> diff reports exactly those changes
-> masks -> train --init-from (a few steps) -> the new model loads and predict runs with it.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from pathlib import Path

import pytest
import shapely
from shapely.geometry import mapping, shape
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.diff import diff_files
from qpbridge.models import load_model
from qpbridge.qupath import PREDICTION_MEASUREMENT

DOC = Path(__file__).resolve().parents[1] / "docs" / "loop.md"
MODELS = Path(__file__).resolve().parents[1] / "models"
runner = CliRunner()

#: The only change the test makes to the document's commands: a few training steps instead of five epochs.
FAST_TRAINING = ("--epochs 5", "--steps 2 --batch-size 2")


def loop_commands() -> list[str]:
    """The shell lines of the ```bash blocks of docs/loop.md, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def run(line: str) -> str:
    if line.startswith("mkdir -p "):
        Path(line.split()[-1]).mkdir(parents=True, exist_ok=True)
        return ""
    assert line.startswith("qpbridge "), f"docs/loop.md runs only qpbridge and mkdir, not: {line}"
    result = runner.invoke(app, shlex.split(line.replace(*FAST_TRAINING))[1:])
    assert result.exit_code == 0, f"{line}\n{result.output}"
    return result.stdout


def _qupath_feature(geometry: object, class_name: str, color: list[int], object_type: str,
                    measurements: dict[str, float]) -> dict:
    """A feature as QuPath's exportObjectsToGeoJson writes it (random UUID, classification with colour)."""
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": mapping(geometry),
        "properties": {"objectType": object_type, "classification": {"name": class_name, "color": color},
                       "measurements": measurements},
    }


def pathologist(predicted: Path, truth: Path, corrected: Path) -> dict[str, float]:
    """Relabel the largest Benign region to invasive, delete the largest in situ region, draw a missed region."""
    features = json.loads(predicted.read_text())["features"]
    detections = [f for f in features if f["properties"]["classification"]["name"] != "ROI"]  # the class regions

    def largest(name: str) -> dict:
        candidates = [f for f in detections if f["properties"]["classification"]["name"] == name]
        return max(candidates, key=lambda f: shape(f["geometry"]).area)

    relabel, delete = largest("Benign"), largest("In situ carcinoma")
    predicted_union = shapely.union_all([shape(f["geometry"]) for f in features])
    tissue = shapely.union_all([shape(f["geometry"]) for f in json.loads(truth.read_text())["features"]
                                if f["properties"]["classification"]["name"] == "Tissue"])
    missed = next(
        box for y in range(0, 3072, 100) for x in range(0, 4096, 100)
        if tissue.contains(box := shapely.box(x, y, x + 200, y + 200)) and not box.intersects(predicted_union)
    )
    out = []
    for feature in features:
        if feature is delete:
            continue
        props = feature["properties"]
        cls = props["classification"]
        measurements = dict(props.get("measurements", {}))
        if feature is relabel:
            cls = {"name": "Invasive carcinoma", "color": [215, 25, 35]}
            measurements.pop(PREDICTION_MEASUREMENT)  # QuPath's import script drops the marker of edited objects
        out.append(_qupath_feature(shape(feature["geometry"]), cls["name"], cls["color"], props["objectType"],
                                   measurements))
    out.append(_qupath_feature(missed, "In situ carcinoma", [250, 160, 20], "annotation", {}))
    corrected.parent.mkdir(parents=True, exist_ok=True)
    corrected.write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    # export_corrections.groovy records the image's file beside the corrections.
    sidecar = {"image_name": "slide.svs", "image_paths": [str(Path("slide.svs").resolve())]}
    corrected.with_suffix(".json").write_text(json.dumps(sidecar))
    mpp2 = 0.25**2
    return {"relabelled": shape(relabel["geometry"]).area * mpp2, "removed": shape(delete["geometry"]).area * mpp2,
            "added": missed.area * mpp2}


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
    expected = pathologist(Path("project/qpbridge/slide.geojson"), Path("slide.truth.geojson"),
                           Path("project/qpbridge/corrections/slide.geojson"))

    table = run(commands[first_diff])
    assert "Benign" in table and "Invasive carcinoma" in table
    result = diff_files("project/qpbridge/slide.geojson", "project/qpbridge/corrections/slide.geojson",
                        slide="slide.svs").to_dict()
    assert result["area_unit"] == "um^2"
    assert result["relabelled_um2"] == {"Benign": {"Invasive carcinoma": pytest.approx(expected["relabelled"])}}
    per_class = result["per_class"]
    assert per_class["In situ carcinoma"]["removed_um2"] == pytest.approx(expected["removed"])
    assert per_class["In situ carcinoma"]["added_um2"] == pytest.approx(expected["added"])
    assert result["totals"]["changed_um2"] == pytest.approx(sum(expected.values()))

    for line in commands[first_diff + 1:]:
        run(line)
    assert Path("changed.geojson").exists()
    tuned = load_model("my-models/deepbatch-cell-v2", role="cell")
    assert tuned.card.training["init_from"] is not None and tuned.card.mpp == 1.0
    meta = json.loads(Path("project/qpbridge/slide.geojson.meta.json").read_text())
    assert meta["models"]["cell"]["sha256"] == tuned.card.weights_sha256
