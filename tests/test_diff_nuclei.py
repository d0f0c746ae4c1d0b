"""``diff`` of nuclei: matched one by one at IoU > 0.5, per-class counts of what the pathologist did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
from shapely import box
from typer.testing import CliRunner

from qpbridge.diff import diff_geojson, diff_nuclei
from qpbridge.qupath import Feature, write_geojson
from qpbridge.qupath.objects import DRAWN_NUCLEUS_MAX_UM2
from tests.test_diff import APP

runner = CliRunner()
NUC = {"Nucleus: Area µm^2": 25.0, "Detection probability": 0.9}


def nucleus(x: float, y: float, klass: str | None, side: float = 20.0) -> Feature:
    """A predicted nucleus: a detection with QuPath's nucleus measurements (level-0 px)."""
    return Feature(box(x, y, x + side, y + side), klass, object_type="detection", measurements=dict(NUC))


def grid(n: int, klass: str | None, step: float = 40.0) -> list[Feature]:
    return [nucleus(step * (k % 10), step * (k // 10), klass) for k in range(n)]


def test_every_kind_of_change_is_counted_per_class() -> None:
    predicted = grid(20, "Invasive carcinoma")
    corrected = list(predicted[:12])                                    # 12 kept as they are
    corrected[3] = nucleus(40 * 3, 0, "Normal")                         # relabelled (same outline)
    corrected[4] = nucleus(40 * 4, 0, "Normal")                         # relabelled
    corrected[5] = nucleus(40 * 5 + 3, 0, "Invasive carcinoma")         # moved by 3 px: IoU 17/23 < 0.9
    corrected.append(Feature(box(500, 500, 520, 520), "Invasive carcinoma"))     # drawn: an annotation, 100 um^2
    corrected.append(Feature(box(600, 500, 700, 600), "Invasive carcinoma"))     # a region (2,500 um^2), not a nucleus
    d = diff_nuclei(predicted, corrected, mpp=0.5)
    inv, normal = d.per_class["Invasive carcinoma"], d.per_class["Normal"]
    assert (inv.predicted, inv.corrected, inv.unchanged, inv.reshaped) == (20, 11, 10, 1)
    assert (inv.relabelled_out, inv.removed, inv.added) == (2, 8, 1)
    assert (normal.predicted, normal.corrected, normal.relabelled_in, normal.added) == (0, 2, 2, 0)
    assert d.relabelled == {"Invasive carcinoma": {"Normal": 2}}
    assert d.changed == 8 + 1 + 2 + 1
    # the identities hold for every class
    for c in d.per_class.values():
        assert c.predicted == c.unchanged + c.relabelled_out + c.removed
        assert c.corrected == c.unchanged + c.relabelled_in + c.added
    assert round(d.mean_matched_iou, 4) == round((11 + (17 * 20) / (23 * 20)) / 12, 4)


def test_a_moved_nucleus_below_half_overlap_is_removed_and_added() -> None:
    d = diff_nuclei([nucleus(0, 0, None)], [nucleus(12, 0, None)], mpp=0.5)   # IoU 8/32 = 0.25
    c = d.per_class["Unclassified"]
    assert (c.unchanged, c.removed, c.added) == (0, 1, 1)


def test_a_cell_is_compared_by_its_nucleus() -> None:
    cell = Feature(box(-10, -10, 30, 30), "Benign", object_type="cell", nucleus_geometry=box(0, 0, 20, 20))
    d = diff_nuclei([nucleus(0, 0, "Benign")], [cell], mpp=0.5)
    assert d.per_class["Benign"].unchanged == 1 and d.per_class["Benign"].reshaped == 0


def test_drawn_nucleus_needs_a_pixel_size_and_a_small_area() -> None:
    drawn = Feature(box(0, 0, 20, 20), "Benign")                     # an annotation: 400 px^2
    assert diff_nuclei([], [drawn], mpp=None).per_class == {}
    assert diff_nuclei([], [drawn], mpp=0.5).per_class["Benign"].added == 1      # 100 um^2
    side_px = np.sqrt(DRAWN_NUCLEUS_MAX_UM2) / 0.5 + 2
    big = Feature(box(0, 0, side_px, side_px), "Benign")
    assert diff_nuclei([], [big], mpp=0.5).per_class == {}


def test_many_nuclei_match_without_a_python_loop_over_them() -> None:
    rng = np.random.default_rng(0)
    predicted = grid(10_000, "Invasive carcinoma", step=30.0)
    keep = rng.random(10_000) > 0.1
    corrected = [f for f, k in zip(predicted, keep, strict=True) if k]
    d = diff_nuclei(predicted, corrected, mpp=0.25)
    c = d.per_class["Invasive carcinoma"]
    assert (c.unchanged, c.removed, c.added) == (int(keep.sum()), int((~keep).sum()), 0)


def test_diff_geojson_reports_nuclei_beside_the_regions(tmp_path: Path) -> None:
    region = Feature(box(0, 0, 400, 400), "Invasive carcinoma", object_type="annotation")
    predicted = [region, *grid(10, "Invasive carcinoma")]
    corrected = [region, *grid(10, "Invasive carcinoma")[:7], Feature(box(300, 300, 320, 320), "Invasive carcinoma")]
    result = diff_geojson(predicted, corrected, mpp=0.5)
    assert result.nuclei is not None
    totals = result.nuclei.to_dict()["totals"]
    assert (totals["unchanged"], totals["removed"], totals["added"]) == (7, 3, 1)
    assert result.changed_px2 == 0                       # the drawn nucleus is no region area
    assert "nuclei" not in result.excluded
    assert not result.identical
    # a nuclei-only prediction compares without area warnings
    only = diff_geojson(grid(5, None), grid(5, None)[:4], mpp=0.5)
    assert only.identical is False and not any("tissue-class" in w for w in only.warnings)
    # no nuclei anywhere: no nuclei section
    assert diff_geojson([region], [region], mpp=0.5).nuclei is None


def test_diff_cli_prints_the_nuclei_table_and_json(tmp_path: Path) -> None:
    pred_path, corr_path = tmp_path / "pred.geojson", tmp_path / "corr.geojson"
    predicted = grid(6, "Benign")
    corrected = [*predicted[:4], nucleus(40 * 4, 0, "In situ carcinoma")]
    write_geojson(pred_path, predicted)
    write_geojson(corr_path, corrected)
    out = runner.invoke(APP, ["diff", str(pred_path), str(corr_path), "--mpp", "0.5"])
    assert out.exit_code == 0, out.output
    assert "nuclei relabelled: Benign -> In situ carcinoma: 1" in out.output
    assert "nuclei: 6 predicted, 5 corrected; 1 removed, 0 added, 1 relabelled, 0 reshaped" in out.output
    js = runner.invoke(APP, ["diff", str(pred_path), str(corr_path), "--mpp", "0.5", "--json"])
    data = json.loads(js.output)
    assert data["nuclei"]["per_class"]["Benign"] == {
        "predicted": 6, "corrected": 4, "unchanged": 4, "reshaped": 0, "relabelled_out": 1,
        "relabelled_in": 0, "removed": 1, "added": 0,
    }
    assert shapely.area(predicted[0].geometry) == 400.0
