"""The correction loop for nuclei, end to end without QuPath: the ``sh`` blocks of docs/loop.md's nuclei section,
with a scripted pathologist who deletes, reclassifies and draws nuclei.

predict --nuclei-only -> validate -> the "pathologist" deletes 3 nuclei, relabels 4 and draws 2 missing ones
-> diff counts exactly those -> masks writes instance tiles holding the drawn nuclei and not the deleted ones ->
train --init-from (a few steps) -> predict with the fine-tuned model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from qpbridge.diff import diff_files
from qpbridge.models import load_model
from qpbridge.tiles import read_tile, read_tile_dataset
from tests.conftest import nuclei_model_installed
from tests.qupath_sim import QuPathObject, export_corrections, import_predictions
from tests.test_loop import loop_commands
from tests.test_loop import run as run_loop_line

FAST_TRAINING = ("--steps 500", "--steps 2 --batch-size 2")
IMAGE = {"image_name": "nuclei.svs", "width_px": 1536, "height_px": 1536, "pixel_size_um": 0.25}


def nuclei_commands() -> list[str]:
    """The shell lines of the ```sh blocks of docs/loop.md (the nuclei section), in order."""
    return loop_commands("sh")


def run(line: str) -> str:
    return run_loop_line(line, FAST_TRAINING)


def pathologist(objects: list[QuPathObject]) -> tuple[list[shapely.Geometry], list[shapely.Geometry]]:
    """Delete the 3 least probable nuclei, relabel the 4 largest invasive, draw 2 missing ones (4 x 4 um squares
    in tissue, away from every predicted nucleus). Returns the deleted and the drawn outlines."""
    nuclei = sorted(objects, key=lambda o: o.measurements["Detection probability"])
    deleted = nuclei[:3]
    for o in deleted:
        objects.remove(o)
    for o in sorted(nuclei[3:], key=lambda o: -o.geometry.area)[:4]:
        o.class_name, o.color, o.edited = "Invasive carcinoma", [215, 25, 35], True
    truth = json.loads(Path("nuclei.truth.geojson").read_text())["features"]
    tissue = shapely.union_all([shape(f["geometry"]) for f in truth
                                if f["properties"]["classification"]["name"] == "Tissue"])
    predicted = shapely.union_all([o.geometry for o in objects]).buffer(8)
    drawn: list[shapely.Geometry] = []
    for y in range(40, 1500, 48):
        for x in range(40, 1500, 48):
            square = shapely.box(x, y, x + 16, y + 16)
            if len(drawn) < 2 and tissue.contains(square) and not square.intersects(predicted):
                drawn.append(square)
                predicted = predicted.union(square.buffer(8))
    assert len(drawn) == 2, "no room to draw two missing nuclei"
    objects.extend(QuPathObject("annotation", None, None, g) for g in drawn)
    return [o.geometry for o in deleted], drawn


def instance_mosaic(folder: str) -> np.ndarray:
    ds = read_tile_dataset(folder)
    assert ds.role == "nuclei" and ds.mpp == 0.25
    whole = np.zeros((1536, 1536), np.int64)
    for t in ds.tiles:
        x0, y0 = (int(v) for v in t.image.stem.split("_")[-2:])
        labels = read_tile(t, ds.tile_px, instances=True)[1]
        whole[y0:y0 + ds.tile_px, x0:x0 + ds.tile_px] = labels[: 1536 - y0, : 1536 - x0]
    return whole


def test_nuclei_loop_document_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not nuclei_model_installed():
        pytest.skip("the shipped nuclei model monuseg-nuclei is absent")
    monkeypatch.chdir(tmp_path)
    commands = nuclei_commands()
    assert [c.split()[1] for c in commands if c.startswith("qpbridge")] == [
        "synth", "predict", "validate", "diff", "masks", "train", "predict"]
    for line in commands[:4]:
        run(line)
    features = json.loads(Path("project/qpbridge/nuclei.geojson").read_text())["features"]
    n = len(features)
    assert n >= 20 and {f["properties"]["objectType"] for f in features} == {"detection"}
    assert all("classification" not in f["properties"] for f in features)  # no region model ran

    objects = import_predictions(Path("project/qpbridge/nuclei.geojson"))
    deleted, drawn = pathologist(objects)
    image = {**IMAGE, "image_paths": [str(Path("nuclei.svs").resolve())], "image_uris": []}
    export_corrections(objects, Path("project/qpbridge/corrections"), "nuclei", image)

    table = run(commands[4])
    assert "nuclei relabelled: Unclassified -> Invasive carcinoma: 4" in table
    result = diff_files("project/qpbridge/nuclei.geojson", "project/qpbridge/corrections/nuclei.geojson",
                        slide="nuclei.svs").to_dict()
    counts = result["nuclei"]["per_class"]
    assert counts["Unclassified"] == {"predicted": n, "corrected": n - 7 + 2, "unchanged": n - 7, "reshaped": 0,
                                      "relabelled_out": 4, "relabelled_in": 0, "removed": 3, "added": 2}
    assert counts["Invasive carcinoma"]["relabelled_in"] == 4

    run(commands[5])  # masks: instance tiles from the corrections
    mosaic = instance_mosaic("nuclei-tiles")
    for g in drawn:
        c = g.centroid
        assert mosaic[int(c.y), int(c.x)] > 0          # the drawn nuclei are nuclei
    for g in deleted:
        c = g.representative_point()
        assert mosaic[int(c.y), int(c.x)] == 0         # the deleted ones are background

    for line in commands[6:]:
        run(line)
    tuned = load_model("my-models/nuclei-v2", role="nuclei")
    assert tuned.card.training["init_from"]["name"] == "monuseg-nuclei" and tuned.card.nuclei is not None
    meta = json.loads(Path("project/qpbridge/nuclei.geojson.meta.json").read_text())
    assert meta["models"]["nuclei"]["sha256"] == tuned.card.weights_sha256
