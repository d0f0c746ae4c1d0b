"""evaluate --instances: Dice, AJI, PQ, F1 of nuclei in GeoJSON or instance masks, against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError
from qpbridge.instance_eval import evaluate_instances
from qpbridge.qupath import Feature, GeoJSONWriter

runner = CliRunner()


def _geojson(path: Path, boxes: list[tuple[int, int, int, int]], object_type: str = "detection") -> Path:
    with GeoJSONWriter(path) as writer:
        for box in boxes:
            geom = shapely.box(*box)
            if object_type == "cell":  # the cell is twice as wide: the nucleus is what is scored
                x0, y0, x1, y1 = box
                writer.write_many([Feature(shapely.box(x0 - 5, y0, x1 + 5, y1), object_type="cell",
                                           nucleus_geometry=geom)])
            else:
                writer.write_many([Feature(geom, object_type=object_type, measurements={"Nucleus: Area": 1.0})])
    return path


def test_two_squares_by_hand(tmp_path: Path) -> None:
    # Reference: two 4 x 4 squares; prediction: one square shifted right by 1 (IoU 12 / 20 with the first).
    truth = _geojson(tmp_path / "truth.geojson", [(1, 1, 5, 5), (6, 1, 10, 5)], "annotation")
    pred = _geojson(tmp_path / "pred.geojson", [(2, 1, 6, 5)], "cell")
    result = runner.invoke(app, ["evaluate", str(pred), str(truth), "--instances", "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"], s["n_ref"]) == (1, 0, 1, 1, 2)
    assert s["dice"] == pytest.approx(2 * 12 / (16 + 32))  # 0.5
    assert s["aji"] == pytest.approx(12 / (20 + 16))  # the missed square adds its area to the union
    assert s["sq"] == pytest.approx(0.6) and s["rq"] == pytest.approx(1 / 1.5)
    assert s["pq"] == pytest.approx(0.4) and s["f1"] == pytest.approx(2 / 3)
    text = runner.invoke(app, ["evaluate", str(pred), str(truth), "--instances"])
    assert "AJI 0.3333  PQ 0.4000" in text.output and "TP 1, FP 0, FN 1" in text.output


def test_grid_mpp_and_masks(tmp_path: Path) -> None:
    truth = _geojson(tmp_path / "truth.geojson", [(0, 0, 8, 8)])
    pred = _geojson(tmp_path / "pred.geojson", [(0, 0, 8, 6)])
    # At 1 um/px over a 0.5 um/px slide a grid pixel is 2 level-0 px: 4 x 4 truth, 3 rows x 4 predicted.
    s = evaluate_instances(pred, truth, slide_mpp=0.5, grid_mpp=1.0)
    assert (s.fg_ref_px, s.fg_pred_px, s.tp) == (16, 12, 1) and s.aji == pytest.approx(0.75)
    mask = np.zeros((6, 10), np.uint16)
    mask[1:5, 1:5], mask[1:5, 6:10] = 3, 9
    tifffile.imwrite(tmp_path / "truth.tif", mask)
    shifted = _geojson(tmp_path / "shifted.geojson", [(2, 1, 6, 5)])
    s = evaluate_instances(shifted, tmp_path / "truth.tif")  # the mask's grid, level-0 pixels
    assert (s.tp, s.fn) == (1, 1) and s.aji == pytest.approx(1 / 3) and s.pq == pytest.approx(0.4)
    pred_mask = np.zeros((6, 10), np.uint8)
    pred_mask[1:5, 2:6] = 1
    tifffile.imwrite(tmp_path / "pred.tif", pred_mask)
    assert evaluate_instances(tmp_path / "pred.tif", tmp_path / "truth.tif").to_dict() == s.to_dict()
    with pytest.raises(InputError, match="--grid-mpp needs the slide's um/px: give --slide or --mpp"):
        evaluate_instances(pred, truth, grid_mpp=1.0)
    result = runner.invoke(app, ["evaluate", str(pred), str(truth), "--instances", "--role", "roi"])
    assert result.exit_code != 0 and "error: --role score class regions, not --instances" in result.output


def test_monuseg_imagescope_xml_is_a_truth(tmp_path: Path) -> None:
    """MoNuSeg's own ImageScope XML outlines score as instances, like their GeoJSON conversion."""
    from tests.conftest import shared_file

    xml = shared_file("monuseg-train", "xml", "TCGA-B0-5698-01Z-00-DX1.xml")
    converted = tmp_path / "truth.geojson"
    result = runner.invoke(app, ["convert", str(xml), "-o", str(converted)])
    assert result.exit_code == 0, result.output
    s = evaluate_instances(converted, xml)
    assert s.n_pred == s.n_ref == s.tp == 357 and s.aji > 0.99  # the GeoJSON rounds coordinates to 0.01 px
    result = runner.invoke(app, ["evaluate", str(converted), str(xml), "--instances", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_ref"] == 357
