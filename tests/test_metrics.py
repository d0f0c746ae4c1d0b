"""Metrics against hand-computed values; block accumulation; AUC against MONAI; qpbridge evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError
from qpbridge.metrics import ConfusionAccumulator, evaluate_masks, read_label_image
from qpbridge.rasterize import parse_class_map

# Truth: left half background, right half ROI; prediction: one more column of ROI.
TRUTH = np.array([[0, 0, 1, 1]] * 4)
PRED = np.array([[0, 1, 1, 1]] * 4)


def test_hand_computed_binary() -> None:
    acc = ConfusionAccumulator([0, 1], ["Background", "ROI"])
    acc.update(PRED, TRUTH)
    m = acc.result()
    roi, background = m.by_name("ROI"), m.by_name("Background")
    assert (roi.tp, roi.fp, roi.tn, roi.fn) == (8, 4, 4, 0)
    assert roi.iou == pytest.approx(2 / 3, abs=1e-12)
    assert roi.dice == pytest.approx(0.8) and roi.f1 == roi.dice
    assert (roi.sensitivity, roi.specificity) == (1.0, 0.5)
    assert roi.precision == pytest.approx(2 / 3)
    assert (background.iou, background.dice) == (0.5, pytest.approx(2 / 3))
    assert (background.sensitivity, background.specificity) == (0.5, 1.0)
    assert m.pixel_accuracy == 0.75 and m.n_pixels == 16 and m.n_ignored == 0
    assert m.mean_iou == pytest.approx((2 / 3 + 0.5) / 2)
    assert m.mean_dice_foreground == pytest.approx(0.8)
    assert m.mean_auc is None and roi.auc is None
    as_dict = m.to_dict()
    assert as_dict["mean_auc"] is None and as_dict["classes"][1]["auc"] is None
    assert as_dict["classes"][1]["iou"] == pytest.approx(2 / 3)


def test_ignore_label_is_left_out() -> None:
    truth = TRUTH.copy()
    truth[:, 1] = 255  # the column where the prediction was wrong
    acc = ConfusionAccumulator([0, 1])
    acc.update(PRED, truth)
    m = acc.result()
    assert (m.n_pixels, m.n_ignored, m.pixel_accuracy) == (12, 4, 1.0)
    assert m.by_name("class 1").iou == 1.0


def test_blocks_add_up_to_the_whole() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (64, 48))
    truth[rng.random(truth.shape) < 0.1] = 255
    pred = rng.integers(0, 4, (64, 48))
    whole = ConfusionAccumulator(range(4))
    whole.update(pred, truth)
    blocks = ConfusionAccumulator(range(4), block_px=100)
    for top in range(0, 64, 16):
        blocks.update(torch.from_numpy(pred[top:top + 16]), torch.from_numpy(truth[top:top + 16]))
    assert np.array_equal(whole.counts, blocks.counts)
    # Each class's counts agree with numpy on the valid pixels.
    valid = truth != 255
    for c in range(4):
        tp = np.sum((pred == c) & (truth == c) & valid)
        fp = np.sum((pred == c) & (truth != c) & valid)
        assert (whole.counts[c, 0], whole.counts[c, 1]) == (tp, fp)
    m = whole.result()
    assert m.n_pixels == int(valid.sum())
    assert m.pixel_accuracy == pytest.approx(float(np.mean(pred[valid] == truth[valid])))


def test_absent_class_is_nan_not_zero() -> None:
    acc = ConfusionAccumulator([0, 1, 2])
    acc.update(PRED, TRUTH)
    m = acc.result()
    assert math.isnan(m.by_name("class 2").iou)
    assert m.to_dict()["classes"][2]["iou"] is None
    assert m.mean_iou == pytest.approx((2 / 3 + 0.5) / 2)  # the absent class does not drag the mean down


def test_unknown_labels_are_reported() -> None:
    acc = ConfusionAccumulator([0, 1])
    with pytest.raises(InputError, match=r"the prediction has label\(s\) \[7\] that are not among the classes"):
        acc.update(np.array([[0, 7]]), np.array([[0, 1]]))
    with pytest.raises(InputError, match="only the truth may use 255"):
        acc.update(np.array([[0, 255]]), np.array([[0, 1]]))


def test_auc_matches_monai() -> None:
    from monai.metrics import compute_roc_auc

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, (16, 16))
    logits = rng.normal(size=(3, 16, 16)) + 1.5 * np.eye(3)[truth].transpose(2, 0, 1)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    probs = np.round(probs * 64) / 64  # on the histogram grid: ties are ties in both
    pred = probs.argmax(0)
    acc = ConfusionAccumulator([0, 1, 2], auc_bins=4096)
    acc.update(pred[:8], truth[:8], probs[:, :8])
    acc.update(pred[8:], truth[8:], probs[:, 8:])
    m = acc.result()
    y = torch.nn.functional.one_hot(torch.from_numpy(truth.reshape(-1)), 3)
    scores = torch.from_numpy(probs.reshape(3, -1).T)
    expected = compute_roc_auc(scores, y, average="none")
    for c in range(3):
        assert m.classes[c].auc == pytest.approx(float(expected[c]), abs=1e-12)
    assert m.mean_auc == pytest.approx(float(np.mean(expected)), abs=1e-12)
    assert 0.7 < m.mean_auc < 1.0


def test_binary_auc_from_one_channel() -> None:
    prob_roi = np.where(TRUTH == 1, 0.9, 0.2)
    prob_roi[0, 1] = 0.95  # one negative above every positive
    acc = ConfusionAccumulator([0, 1])
    acc.update(PRED, TRUTH, prob_roi)
    m = acc.result()
    # 8 positives x 8 negatives; one negative outranks all 8 positives: AUC = 1 - 8/64.
    assert m.by_name("class 1").auc == pytest.approx(1 - 8 / 64)
    assert m.mean_auc == pytest.approx(1 - 8 / 64)
    with pytest.raises(InputError, match="give class probabilities for every block or for none"):
        acc.update(PRED, TRUTH)


# --------------------------------------------------------------------------------------------- evaluate
def write_mask(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)
    return path


def test_evaluate_masks_png_and_tiff(tmp_path: Path) -> None:
    import tifffile

    pred = write_mask(tmp_path / "pred.png", PRED)
    tifffile.imwrite(tmp_path / "truth.tif", TRUTH.astype(np.uint16))
    m = evaluate_masks(pred, tmp_path / "truth.tif", class_map={"Background": 0, "ROI": 1})
    assert m.by_name("ROI").iou == pytest.approx(2 / 3)
    assert m.to_dict()["size_px"] == [4, 4]
    m3 = evaluate_masks(pred, tmp_path / "truth.tif", class_map={"Normal": 0, "Benign": 1, "Invasive carcinoma": 3})
    assert [c.name for c in m3.classes] == ["Normal", "Benign", "Invasive carcinoma"]


def test_evaluate_masks_errors(tmp_path: Path) -> None:
    pred = write_mask(tmp_path / "pred.png", PRED)
    small = write_mask(tmp_path / "small.png", TRUTH[:2])
    with pytest.raises(InputError, match=r"is 4 x 4 px but truth .* is 4 x 2 px: masks must have the same size"):
        evaluate_masks(pred, small)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="is a RGB image, not a label mask"):
        read_label_image(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="mask not found"):
        read_label_image(tmp_path / "absent.png")


def test_parse_class_map(tmp_path: Path) -> None:
    assert parse_class_map("Background=0,ROI=1") == {"Background": 0, "ROI": 1}
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": [{"label": 0, "name": "Normal"},
                                                                   {"label": 1, "name": "Benign"}]}))
    assert parse_class_map(str(tmp_path / "dataset.json")) == {"Normal": 0, "Benign": 1}
    with pytest.raises(InputError, match="entry 'Benign' is not NAME=LABEL"):
        parse_class_map("Normal=0,Benign")


def test_cli_evaluate(tmp_path: Path) -> None:
    pred = write_mask(tmp_path / "pred.png", PRED)
    truth = write_mask(tmp_path / "truth.png", TRUTH)
    np.save(tmp_path / "probs.npy", np.stack([np.where(TRUTH == 0, 0.8, 0.1), np.where(TRUTH == 1, 0.9, 0.2)]))
    runner = CliRunner()
    table = runner.invoke(app, ["evaluate", str(pred), str(truth), "--class-map", "Background=0,ROI=1"])
    assert table.exit_code == 0, table.output
    assert "ROI" in table.output and "0.6667" in table.output and "pixels compared: 16 (0 ignored)" in table.output
    as_json = runner.invoke(app, ["evaluate", str(pred), str(truth), "--json", "--probs", str(tmp_path / "probs.npy")])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["classes"][1]["iou"] == pytest.approx(2 / 3) and data["pixel_accuracy"] == 0.75
    assert data["classes"][1]["auc"] == 1.0
    mixed = runner.invoke(app, ["evaluate", str(pred), str(tmp_path / "truth.geojson")])
    assert mixed.exit_code == 2 and "are not both GeoJSON or both masks" in mixed.output
    small = write_mask(tmp_path / "small.png", TRUTH[:2])
    bad = runner.invoke(app, ["evaluate", str(pred), str(small)])
    assert bad.exit_code == 2 and "masks must have the same size" in bad.output


def test_cli_evaluate_geojson(tmp_path: Path) -> None:
    pytest.importorskip("qpbridge.rasterize")

    def collection(boxes: list[tuple[float, float, float, float, str]]) -> dict[str, object]:
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
                [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
             "properties": {"objectType": "annotation", "classification": {"name": name}}}
            for x0, y0, x1, y1, name in boxes]}

    # Truth: Benign 10x10 at the origin, Normal beside it; prediction: Benign shifted by 5 px (IoU 1/3).
    truth = collection([(0, 0, 10, 10, "Benign"), (10, 0, 20, 10, "Normal")])
    pred = collection([(5, 0, 15, 10, "Benign")])
    (tmp_path / "truth.geojson").write_text(json.dumps(truth))
    (tmp_path / "pred.geojson").write_text(json.dumps(pred))
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "pred.geojson"), str(tmp_path / "truth.geojson"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    benign = [c for c in data["classes"] if c["name"] == "Benign"][0]
    assert (benign["tp"], benign["fp"], benign["fn"]) == (50, 50, 50)
    assert benign["iou"] == pytest.approx(1 / 3)
    assert data["size_px"] == [20, 10]
