"""evaluate refuses a comparison grid finer than the slide and reports its progress; diff's per-class changed
share counts what a class gained as well as what it lost; heat-map tiles change no score and no label."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from shapely import box
from typer.testing import CliRunner, Result

import qpbridge.commands.evaluate as evaluate_command
from qpbridge.cli import app
from qpbridge.diff import diff_geojson
from qpbridge.metrics import evaluate_geojson
from qpbridge.qupath import Feature, write_geojson

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[1] / "models"
BENIGN, INVASIVE = "Benign", "Invasive carcinoma"


def errors(result: Result) -> list[str]:
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    pred = tmp_path / "pred.geojson"
    truth = tmp_path / "truth.geojson"
    write_geojson(pred, [Feature(box(0, 0, 400, 300), BENIGN)])
    write_geojson(truth, [Feature(box(100, 0, 500, 300), BENIGN)])
    return pred, truth


# ---------------------------------------------------------------------------------------------- evaluate
def test_a_grid_finer_than_the_slide_is_refused(pair: tuple[Path, Path], pyramid_tiff: Path) -> None:
    pred, truth = pair
    result = runner.invoke(app, ["evaluate", str(pred), str(truth), "--slide", str(pyramid_tiff), "--grid-mpp", "0.1"])
    assert result.exit_code == 2
    assert errors(result) == [
        "error: --grid-mpp 0.1 is finer than the slide's pixels (0.5 um/px): it multiplies the work (25x here) and "
        "finds nothing more; give --grid-mpp 0.5 or coarser (2 is plenty for regions), or leave it out for full "
        "resolution"
    ]
    result = runner.invoke(app, ["evaluate", str(pred), str(truth), "--mpp", "0.25", "--grid-mpp", "0.001"])
    assert result.exit_code == 2
    assert errors(result) == [
        "error: --grid-mpp 0.001 is finer than the slide's pixels (--mpp 0.25): it multiplies the work (62,500x "
        "here) and finds nothing more; give --grid-mpp 0.25 or coarser (2 is plenty for regions), or leave it out "
        "for full resolution"
    ]
    # The slide's own pixel size is fine: that is full resolution.
    result = runner.invoke(app, ["evaluate", str(pred), str(truth), "--slide", str(pyramid_tiff), "--grid-mpp", "0.5",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["level0_px_per_px"] == 1.0


def test_coordinates_no_slide_has_are_refused_without_a_slide(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    pred, _ = pair
    huge = tmp_path / "huge.geojson"
    write_geojson(huge, [Feature(box(0, 0, 1e300, 10), BENIGN)])
    result = runner.invoke(app, ["evaluate", str(pred), str(huge)])
    assert result.exit_code == 2
    assert errors(result) == [
        f"error: objects in {pred} or {huge} reach 1e+300 px, which no slide has: give --slide SLIDE to compare over "
        "the slide only (qpbridge validate lists such objects)"
    ]


def test_long_comparisons_report_their_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pred, truth = tmp_path / "p.geojson", tmp_path / "t.geojson"
    write_geojson(pred, [Feature(box(0, 0, 9000, 100), BENIGN)])
    write_geojson(truth, [Feature(box(0, 0, 9000, 100), BENIGN)])
    calls: list[tuple[int, int]] = []
    result = evaluate_geojson(pred, truth, block_px=4096, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)] and result.by_name(BENIGN).iou == 1.0
    # On a terminal the CLI shows it on stderr (a transient rich bar); stdout keeps the table.
    screen = io.StringIO()
    monkeypatch.setattr(evaluate_command, "err_console", Console(file=screen, force_terminal=True, width=100))
    result_cli = runner.invoke(app, ["evaluate", str(pred), str(truth)])
    assert result_cli.exit_code == 0, result_cli.output
    assert "comparing" in screen.getvalue() and "3/3" in screen.getvalue()
    assert "comparing" not in result_cli.stdout


# -------------------------------------------------------------------------------------------------- diff
def test_a_class_that_only_gains_area_has_changed(tmp_path: Path) -> None:
    predicted = [Feature(box(0, 0, 100, 100), BENIGN, measurements={})]
    corrected = [Feature(box(0, 0, 150, 100), BENIGN), Feature(box(300, 0, 340, 50), INVASIVE)]
    d = diff_geojson(predicted, corrected, mpp=None)
    benign, invasive = d.per_class[BENIGN], d.per_class[INVASIVE]
    assert (benign.added_px2, benign.removed_px2, benign.changed_px2) == (5000.0, 0.0, 5000.0)
    assert benign.changed_share == 0.5  # it gained half its predicted area: not 0.0
    assert (invasive.predicted_px2, invasive.added_px2, invasive.changed_px2) == (0.0, 2000.0, 2000.0)
    assert invasive.changed_share is None  # nothing was predicted of it: no share, the area is reported
    data = d.to_dict()["per_class"]
    assert data[BENIGN]["changed_px2"] == 5000.0 and data[BENIGN]["changed_share"] == 0.5
    assert data[INVASIVE]["changed_px2"] == 2000.0 and data[INVASIVE]["changed_share"] is None
    assert data[INVASIVE]["added_px2"] == 2000.0
    # The class's share now adds up with the slide's: every changed area is counted in one class's gain or loss
    # (a relabelled area twice, as out of one class and into another).
    relabel = diff_geojson([Feature(box(0, 0, 100, 100), BENIGN)], [Feature(box(0, 0, 100, 100), INVASIVE)], mpp=None)
    assert relabel.per_class[BENIGN].changed_share == 1.0 and relabel.per_class[INVASIVE].changed_px2 == 10000.0
    # The table shows the same numbers as the JSON.
    pred_path, corr_path = tmp_path / "p.geojson", tmp_path / "c.geojson"
    write_geojson(pred_path, predicted)
    write_geojson(corr_path, corrected)
    result = runner.invoke(app, ["diff", str(pred_path), str(corr_path)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith(("Benign", "Inv"))}
    assert rows["Benign"][-1] == "50.0%"
    assert rows["Invasive"][-1] == "new" and rows["Invasive"][3] == "2,000"  # the added area, in its column
    data = json.loads(runner.invoke(app, ["diff", str(pred_path), str(corr_path), "--json"]).stdout)
    assert data["per_class"][BENIGN]["changed_share"] == 0.5


# ---------------------------------------------------------------------------------------------- heat map
@pytest.fixture(scope="module")
def heat_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """A small synthetic slide, its truth, and predict's output with and without --heatmap."""
    from qpbridge.predict import PredictConfig, predict_slide
    from qpbridge.synth import write_synthetic_slide

    if not all((MODELS / m / "card.json").exists() for m in ("deepbatch-synth-roi", "deepbatch-synth-cell")):
        pytest.skip("shipped models absent")
    folder = tmp_path_factory.mktemp("heat")
    synth = write_synthetic_slide(folder / "slide.svs", width_px=2048, height_px=1536, seed=2)
    config = PredictConfig(model_roi=str(MODELS / "deepbatch-synth-roi"),
                           model_cell=str(MODELS / "deepbatch-synth-cell"), layout="nchw")
    plain, heat = folder / "plain.geojson", folder / "heat.geojson"
    predict_slide(synth.slide_path, plain, config)
    predict_slide(synth.slide_path, heat, replace(config, heatmap=True))
    return synth.slide_path, synth.truth_path, plain, heat


def _types(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in json.loads(path.read_text())["features"]:
        kind = f["properties"]["objectType"]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _scores(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "prediction"}


def test_heatmap_tiles_change_no_score(heat_runs: tuple[Path, Path, Path, Path]) -> None:
    slide, truth, plain, heat = heat_runs
    assert _types(heat).get("tile", 0) > 10 and "tile" not in _types(plain)
    assert {k: v for k, v in _types(heat).items() if k != "tile"} == _types(plain)
    for role in ("cell", "roi"):
        with_tiles = evaluate_geojson(heat, truth, slide=slide, grid_mpp=2.0, role=role).to_dict()
        without = evaluate_geojson(plain, truth, slide=slide, grid_mpp=2.0, role=role).to_dict()
        assert _scores(with_tiles) == _scores(without), role
        assert with_tiles["n_pixels"] > 0


def test_masks_paints_no_heatmap_tile(heat_runs: tuple[Path, Path, Path, Path]) -> None:
    slide, _, plain, heat = heat_runs
    summaries = []
    for path in (heat, plain):
        result = runner.invoke(app, ["masks", str(slide), str(path), "--dry-run", "--tile-mpp", "2", "--tile-px", "64",
                                     "--ignore-unknown", "--json"])
        assert result.exit_code == 0, result.output
        summaries.append((json.loads(result.stdout), result.output))
    (with_tiles, heat_out), (without, _) = summaries
    tiles = _types(heat)["tile"]
    assert f"warning: skipped objects that are not class regions: tile ({tiles})" in heat_out.splitlines()
    assert with_tiles["pixels_by_label"] == without["pixels_by_label"]
    assert with_tiles["objects_painted"] == without["objects_painted"]
    assert with_tiles["kept_by_class"] == without["kept_by_class"]
    assert with_tiles["objects_painted"] > 0 and with_tiles["pixels_by_label"]["1"] > 0  # the Benign regions


def test_validate_checks_a_point_with_empty_coordinates(tmp_path: Path) -> None:
    """A Point with "coordinates": [] crashed validate with a ValueError traceback."""
    from typer.testing import CliRunner

    from qpbridge.cli import app

    path = tmp_path / "empty_point.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
                    '{"type": "Point", "coordinates": []}, "properties": {"objectType": "annotation"}}]}')
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exception is None and result.exit_code == 0
    assert result.output.splitlines()[0] == f"{path}: 1 feature (1 annotation); 0 errors, 0 warnings"
