"""predict: the gated sliding window, the cascade end to end, its outputs, and its bad-input behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import ModelError, OutputError
from qpbridge.models import build_network, example_card, save_model
from qpbridge.predict import PredictConfig, is_finished, predict_slide
from qpbridge.predict.segmenter import BlockSegmenter
from qpbridge.qupath import meta_path as meta_path_for
from qpbridge.qupath import read_geojson, validate_geojson
from tests.conftest import shared_file

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def random_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    paths = []
    for role in ("roi", "cell"):
        card = example_card(role, channels=(4, 8))
        save_model(root / role, card, build_network(card.architecture))
        paths.append(root / role)
    return paths[0], paths[1]


def _shipped(name: str) -> Path:
    path = MODELS / name
    if not (path / "card.json").exists():
        pytest.skip(f"shipped model {name} absent")
    return path


def test_predict_shipped_models_on_held_out_slide(tmp_path: Path) -> None:
    """A small held-out synthetic slide: outputs valid for QuPath and close to the truth."""
    from qpbridge.metrics import evaluate_geojson
    from qpbridge.synth import write_synthetic_slide

    roi, cell = _shipped("deepbatch-synth-roi"), _shipped("deepbatch-synth-cell")
    slide = tmp_path / "heldout.svs"
    write_synthetic_slide(slide, width_px=4096, height_px=3072, seed=9001)
    out = tmp_path / "heldout.geojson"
    overlay = tmp_path / "overlay.png"
    summary = predict_slide(slide, out, PredictConfig(model_roi=str(roi), model_cell=str(cell), overlay=overlay))
    assert is_finished(out) and overlay.stat().st_size > 1000
    report = validate_geojson(out)
    assert report.ok and not report.issues, report.lines(10)
    features = read_geojson(out).features
    assert {f.object_type for f in features} == {"annotation"}  # class regions are annotations by default
    assert all("qpbridge prediction" in f.measurements for f in features)
    assert all(0 < f.measurements.get("Mean probability", 0.5) <= 1 for f in features)
    assert summary.windows_run > 0 and summary.high_mag_saved_frac is not None and summary.high_mag_saved_frac > 0.3
    meta = json.loads(meta_path_for(out).read_text())
    assert meta["finished"] and set(meta["models"]) == {"roi", "cell"}
    assert {"tissue_s", "roi_s", "cells_s"} <= set(meta["summary"]["timings_s"])

    truth = slide.with_suffix(".truth.geojson")
    scores = evaluate_geojson(out, truth, slide=slide, grid_mpp=1.0).to_dict()
    per_class = {c["name"]: c for c in scores["classes"]}
    assert per_class["Invasive carcinoma"]["iou"] > 0.6
    assert per_class["In situ carcinoma"]["iou"] > 0.6

    # The work the sidecar says --no-roi would do is what a --no-roi run does; the ROI saved the rest.
    no_roi = predict_slide(slide, tmp_path / "noroi.geojson",
                           PredictConfig(model_roi=str(roi), model_cell=str(cell), use_roi=False))
    assert no_roi.network_mpx == pytest.approx(summary.tissue_network_mpx, rel=1e-9)
    assert summary.high_mag_saved_frac == pytest.approx(1 - summary.network_mpx / no_roi.network_mpx)
    assert summary.read_mpx < no_roi.read_mpx
    assert summary.layouts["cell"] in ("nchw", "channels_last") and set(summary.layouts) == {"roi", "cell"}


def test_no_tissue_gives_empty_collection_and_warning(tmp_path: Path, random_models: tuple[Path, Path]) -> None:
    import tifffile

    blank = tmp_path / "blank.tiff"
    tifffile.imwrite(blank, np.full((1024, 1024, 3), 245, np.uint8), tile=(256, 256), photometric="rgb",
                     resolution=(40000.0, 40000.0), resolutionunit="CENTIMETER")
    out = tmp_path / "blank.geojson"
    warnings: list[str] = []
    summary = predict_slide(blank, out, PredictConfig(model_roi=str(random_models[0]),
                                                      model_cell=str(random_models[1])), warn=warnings.append)
    assert summary.features_written == 0
    assert warnings == [f"no tissue found in {blank}: the output is an empty FeatureCollection"]
    assert json.loads(out.read_text()) == {"type": "FeatureCollection", "features": []}


def test_wrong_role_and_bad_output(
    tmp_path: Path, synth_slide: Path, random_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qpbridge.predict.pipeline as pipeline

    roi, cell = random_models
    with pytest.raises(ModelError, match="is a cell model but a roi model is needed"):
        predict_slide(synth_slide, tmp_path / "x.geojson", PredictConfig(model_roi=str(cell), model_cell=str(cell)))
    with pytest.raises(OutputError, match="does not exist: create it first"):
        predict_slide(synth_slide, tmp_path / "missing" / "x.geojson", PredictConfig(model_roi=str(roi)))
    read_only = tmp_path / "ro"
    read_only.mkdir()
    # Tests run as root in CI, who can write anywhere: make the folder read-only as the check sees it.
    monkeypatch.setattr(pipeline.os, "access", lambda path, mode: Path(path) != read_only)
    with pytest.raises(OutputError, match=f"output folder {read_only} is not writable: choose another -o"):
        predict_slide(synth_slide, read_only / "x.geojson", PredictConfig(model_roi=str(roi)))
    assert list(tmp_path.glob("**/*.geojson")) == []


def test_interrupted_run_leaves_nothing_finished(
    tmp_path: Path, synth_slide: Path, random_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qpbridge.predict.pipeline as pipeline

    out = tmp_path / "x.geojson"

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "segment_cells", boom)
    with pytest.raises(KeyboardInterrupt):
        predict_slide(synth_slide, out, PredictConfig(model_roi=str(random_models[0]),
                                                      model_cell=str(random_models[1])))
    assert not out.exists() and not meta_path_for(out).exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    monkeypatch.undo()
    predict_slide(synth_slide, out, PredictConfig(model_roi=str(random_models[0]), roi_only=True))
    assert is_finished(out)


def test_cli_several_slides_one_unreadable(tmp_path: Path, synth_slide: Path, random_models: tuple[Path, Path]) -> None:
    bad = shared_file("wsi", "unreadable.svs")
    folder = tmp_path / "out"
    folder.mkdir()
    args = ["predict", str(synth_slide), str(bad), "-o", str(folder), "--model-roi", str(random_models[0]),
            "--roi-only"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert f"error: {bad}: cannot read pixels of {bad}" in result.stderr
    assert "1 of 2 slides failed" in result.stderr
    assert is_finished(folder / "seed1.geojson") and not (folder / "unreadable.geojson").exists()
    again = runner.invoke(app, args)
    assert f"skip {synth_slide}" in again.stderr  # finished outputs are not redone


def test_cli_no_pixel_size(tmp_path: Path, random_models: tuple[Path, Path]) -> None:
    from PIL import Image

    image = tmp_path / "plain.png"
    Image.fromarray(np.full((512, 512, 3), 200, np.uint8)).save(image)
    result = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / "p.geojson"), "--model-roi",
                                 str(random_models[0]), "--roi-only"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {image} has no pixel size in its metadata: give it with --mpp (um/px at full resolution, "
        "e.g. --mpp 0.25 for a 40x scan)"
    )
    assert not (tmp_path / "p.geojson").exists()


def test_cli_finished_output_needs_overwrite(
    tmp_path: Path, synth_slide: Path, random_models: tuple[Path, Path]
) -> None:
    out = tmp_path / "x.geojson"
    args = ["predict", str(synth_slide), "-o", str(out), "--model-roi", str(random_models[0]), "--roi-only"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "regions (ROI" in first.stdout or "0 regions" in first.stdout
    second = runner.invoke(app, args)
    assert second.exit_code == 1
    assert second.stderr.strip() == f"error: {out} exists and is finished: use --overwrite to replace it"
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_progress_reports_each_stage_from_its_start(tmp_path: Path, synth_slide: Path) -> None:
    roi, cell = _shipped("deepbatch-synth-roi"), _shipped("deepbatch-synth-cell")
    calls: list[tuple[str, int, int, int]] = []
    config = PredictConfig(model_roi=str(roi), model_cell=str(cell))
    summary = predict_slide(synth_slide, tmp_path / "x.geojson", config, progress=lambda *args: calls.append(args))
    stages = [c[0] for c in calls]
    assert stages == sorted(stages, key=["roi", "cells"].index)  # the ROI stage, then the cells
    for stage, windows in (("roi", summary.roi_windows_run), ("cells", summary.windows_run)):
        done = [c for c in calls if c[0] == stage]
        total = done[0][2]
        assert done[0] == (stage, 0, total, 0)  # announced before its first block
        assert [c[1] for c in done] == list(range(total + 1)) and {c[2] for c in done} == {total}
        assert done[-1][3] == windows > 0
    assert summary.blocks_read == len([c for c in calls if c[0] == "cells"]) - 1


def test_precision_option(
    tmp_path: Path, synth_slide: Path, random_models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qpbridge.predict.pipeline as pipeline

    out = tmp_path / "x.geojson"
    bad = runner.invoke(app, ["predict", str(synth_slide), "-o", str(out), "--precision", "fp16"])
    assert bad.exit_code == 2  # bad input, as for other options
    assert bad.stderr.strip() == "error: --precision must be one of auto, fp32, bf16, got 'fp16'"
    assert not out.exists()

    monkeypatch.setattr(pipeline, "native_bf16", lambda: False)  # as on a CPU without AVX512-BF16 or AMX
    warnings: list[str] = []
    summary = predict_slide(synth_slide, out, PredictConfig(model_roi=str(random_models[0]), roi_only=True,
                                                            precision="bf16"), warn=warnings.append)
    assert warnings == ["--precision bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so it runs slower "
                        "than fp32; leave --precision out for fp32"]
    assert summary.warnings == warnings and summary.roi_windows_run > 0
    assert json.loads(meta_path_for(out).read_text())["config"]["precision"] == "bf16"


def test_mean_probability_of_polygons_across_block_seams() -> None:
    """The ledger's mean class probability per polygon equals the mean over the polygon's pixels in the whole
    image, also for polygons merged from pieces of several blocks."""
    import rasterio.features

    from qpbridge.predict.cells import ProbabilityLedger
    from qpbridge.tiling import BlockGrid
    from qpbridge.vectorize import BlockVectorizer

    rng = np.random.default_rng(3)
    labels = np.zeros((96, 96), dtype=np.uint8)
    labels[5:60, 20:40] = 1  # crosses the row seam at 32
    labels[28:36, 50:90] = 2  # crosses two column seams and a row seam
    labels[70:80, 70:80] = 1  # inside one block
    labels[40:45, 5:12] = 2
    probs = rng.random((3, 96, 96)).astype(np.float32)
    affine = Affine.scale(2.0)
    grid = BlockGrid(96, 96, 32)
    vectorizer = BlockVectorizer(grid, affine, labels_to_vectorize=(1, 2))
    ledger = ProbabilityLedger()
    found = []
    for window in grid.windows():
        block_affine = affine * Affine.translation(window.x_px, window.y_px)
        ledger.add_block(labels[window.slices], probs[(slice(None), *window.slices)], block_affine, (1, 2))
        done = vectorizer.add(window, labels[window.slices])
        found += list(zip(done.labels, done.polygons, ledger.settle(done), strict=True))
    rest = vectorizer.finish()
    found += list(zip(rest.labels, rest.polygons, ledger.settle(rest, last=True), strict=True))

    assert sorted(int(label) for label, _, _ in found) == [1, 1, 2, 2]
    for label, polygon, mean in found:
        inside = rasterio.features.rasterize([(polygon, 1)], out_shape=labels.shape, transform=affine).astype(bool)
        assert (labels[inside] == label).all()
        assert mean == pytest.approx(float(probs[label][inside].mean()), rel=1e-6)


def test_reading_only_region_boxes_changes_nothing(
    tmp_path: Path, synth_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks whose ROI pieces are scattered read only the pieces' boxes: the same output as reading the
    whole box around them (forced here both ways)."""
    import qpbridge.predict.cells as cells

    roi, cell = _shipped("deepbatch-synth-roi"), _shipped("deepbatch-synth-cell")
    config = PredictConfig(model_roi=str(roi), model_cell=str(cell))
    monkeypatch.setattr(cells, "READ_BOXES_BELOW", 100.0)  # always the boxes
    boxes = predict_slide(synth_slide, tmp_path / "boxes.geojson", config)
    monkeypatch.setattr(cells, "READ_BOXES_BELOW", 0.0)  # always the whole crop
    whole = predict_slide(synth_slide, tmp_path / "whole.geojson", config)
    assert boxes.read_mpx != whole.read_mpx
    assert boxes.network_mpx == whole.network_mpx
    a, b = read_geojson(tmp_path / "boxes.geojson").features, read_geojson(tmp_path / "whole.geojson").features
    assert len(a) == len(b) > 3
    for fa, fb in zip(a, b, strict=True):
        assert fa.class_name == fb.class_name and fa.geometry.equals(fb.geometry)
        assert fa.measurements.get("Mean probability") == pytest.approx(fb.measurements.get("Mean probability"))


def test_blocks_read_with_a_halo_leave_fewer_seams(
    tmp_path: Path, synth_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small blocks (many seams) against one big block: with the halo, the windows at block edges see the
    neighbouring tissue and the class maps agree better than without it."""
    import rasterio.features
    from affine import Affine

    roi, cell = _shipped("deepbatch-synth-roi"), _shipped("deepbatch-synth-cell")

    def class_map(block_px: int, name: str) -> np.ndarray:
        out = tmp_path / f"{name}_{block_px}.geojson"
        predict_slide(synth_slide, out, PredictConfig(model_roi=str(roi), model_cell=str(cell), block_px=block_px))
        features = [f for f in read_geojson(out).features if f.class_name != "ROI"]
        names = sorted({f.class_name or "" for f in features})
        image = np.zeros((1125, 1500), dtype=np.uint8)  # 4 level-0 px per pixel
        for label, class_name in enumerate(names, start=1):
            shapes = [(f.geometry, 1) for f in features if f.class_name == class_name]
            image[rasterio.features.rasterize(shapes, out_shape=image.shape, transform=Affine.scale(4)) > 0] = label
        return image

    def agreement(name: str) -> float:
        small, big = class_map(320, name), class_map(4096, name)
        foreground = (small > 0) | (big > 0)
        assert foreground.sum() > 20_000
        return float((small[foreground] == big[foreground]).mean())

    with_halo = agreement("halo")
    monkeypatch.setattr(BlockSegmenter, "halo_px", property(lambda self: 0))
    without = agreement("nohalo")
    assert with_halo > 0.965 and with_halo > without + 0.005, (with_halo, without)


def test_heatmap_tiles_are_whole_aligned_and_disjoint(tmp_path: Path, synth_slide: Path) -> None:
    """Heat map tiles lie on one grid over the slide, whole (blocks are a whole number of tiles), never
    overlapping, each carrying class probabilities that sum to 1."""
    import shapely

    roi, cell = _shipped("deepbatch-synth-roi"), _shipped("deepbatch-synth-cell")
    out = tmp_path / "heat.geojson"
    config = PredictConfig(model_roi=str(roi), model_cell=str(cell), heatmap=True, block_px=700)
    predict_slide(synth_slide, out, config)
    tiles = [f for f in read_geojson(out).features if f.object_type == "tile"]
    assert len(tiles) > 10
    side = config.heatmap_um / 0.25  # the synthetic slide is 0.25 um/px at level 0
    bounds = shapely.bounds(np.array([t.geometry for t in tiles]))
    assert np.allclose(bounds[:, 2] - bounds[:, 0], side) and np.allclose(bounds[:, 3] - bounds[:, 1], side)
    assert np.allclose(bounds[:, :2] % side, 0)
    assert len({(round(x), round(y)) for x, y in bounds[:, :2]}) == len(tiles)
    for tile in tiles:
        probs = [v for k, v in tile.measurements.items() if k.startswith("Probability ")]
        assert len(probs) == 4 and sum(probs) == pytest.approx(1.0, abs=1e-4)


def test_a_context_wider_than_half_a_block_still_runs(tmp_path: Path, synth_slide: Path) -> None:
    """Blocks shrink by the context on both sides, but never below a tile (a 600 um context at 1 um/px would
    leave none of a 1024 px block)."""
    roi, cell = _shipped("deepbatch-synth-roi"), _shipped("deepbatch-synth-cell")
    out = tmp_path / "wide.geojson"
    summary = predict_slide(synth_slide, out, PredictConfig(model_roi=str(roi), model_cell=str(cell), context_um=600))
    assert summary.features_by_class.get("Invasive carcinoma", 0) >= 1 and summary.windows_run > 0
    report = validate_geojson(out)
    assert report.ok and not report.issues


def test_predict_slide_is_its_stages_composed(tmp_path: Path) -> None:
    """predict_slide writes exactly what the stages give when composed by hand (tissue -> ROI -> gate -> cells,
    marked with the run id): the same GeoJSON bytes, overlay PNG and counters. Both sides run the same code on
    the same CPU, so this holds on any CPU (a pinned hash of the bytes would not: kernels round differently)."""
    from qpbridge.models import inference_network, load_model
    from qpbridge.predict.cells import CellOptions, segment_cells
    from qpbridge.predict.overlay import Overlay
    from qpbridge.predict.pipeline import run_id
    from qpbridge.predict.roi import RoiGate, detect_roi
    from qpbridge.predict.segmenter import SegmenterSettings
    from qpbridge.qupath import GeoJSONWriter, prediction_properties
    from qpbridge.slide import open_slide
    from qpbridge.synth import write_synthetic_slide
    from qpbridge.tissue import detect_tissue

    roi_path, cell_path = _shipped("deepbatch-synth-roi"), _shipped("deepbatch-synth-cell")
    slide_path = tmp_path / "small.svs"
    write_synthetic_slide(slide_path, width_px=2048, height_px=1536, seed=2)
    config = PredictConfig(model_roi=str(roi_path), model_cell=str(cell_path), layout="nchw", heatmap=True,
                           overlay=tmp_path / "composed.png")
    summary = predict_slide(slide_path, tmp_path / "composed.geojson", config)

    models = [load_model(path, role=role) for path, role in ((roi_path, "roi"), (cell_path, "cell"))]
    for model in models:
        model.network = inference_network(model.card, model.network)
    roi_model, cell_model = models
    settings = SegmenterSettings(torch.device("cpu"), layout="nchw")
    features = []
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide, mpp=config.tissue_mpp)
        overlay = Overlay(slide, config.overlay_max_px)
        roi = detect_roi(slide, roi_model, tissue, settings, min_area_um2=config.roi_min_area_um2)
        features += roi.features
        overlay.roi = RoiGate(roi.polygons).mask(overlay.affine, overlay.shape)
        gate = RoiGate(roi.polygons, margin_px=config.roi_margin_um / slide.mpp,
                       tolerance_px=0.5 * roi_model.card.mpp / slide.mpp)
        cells = segment_cells(slide, cell_model, tissue, gate, settings, CellOptions(heatmap_um=config.heatmap_um),
                              emit=features.extend, paint=overlay.paint)
    overlay.save(tmp_path / "staged.png", {c.label: c.color for c in cell_model.card.classes if c.emit},
                 roi_model.card.classes[-1].color)
    marker = prediction_properties(run_id(slide_path, config, models))
    for feature in features:
        feature.measurements.update(marker["measurements"])
        if feature.object_type == "annotation":  # never on detections and tiles (QuPath 0.5 logs each)
            feature.metadata.update(marker["metadata"])
    colors = {c.name: c.color for model in models for c in model.card.classes}
    with GeoJSONWriter(tmp_path / "staged.geojson", default_color=colors) as writer:
        writer.write_many(features)

    assert (tmp_path / "composed.geojson").read_bytes() == (tmp_path / "staged.geojson").read_bytes()
    assert (tmp_path / "composed.png").read_bytes() == (tmp_path / "staged.png").read_bytes()
    by_class: dict[str, int] = {}
    for feature in features:
        key = "heatmap tiles" if feature.object_type == "tile" else feature.class_name or ""
        by_class[key] = by_class.get(key, 0) + 1
    assert summary.features_by_class == by_class and summary.features_written == len(features)
    assert set(by_class) == {"ROI", "Benign", "In situ carcinoma", "Invasive carcinoma", "heatmap tiles"}
    assert (summary.roi_windows_run, summary.roi_network_mpx) == (roi.windows_run, roi.pixels_run / 1e6)
    assert (summary.blocks_total, summary.blocks_read, summary.windows_run, summary.windows_skipped) == (
        cells.blocks_total, cells.blocks_read, cells.windows_run, cells.windows_skipped)
    assert (summary.network_mpx, summary.tissue_network_mpx, summary.read_mpx) == (
        cells.pixels_run / 1e6, cells.tissue_px / 1e6, cells.read_px / 1e6)
    assert summary.high_mag_saved_frac == 1 - cells.pixels_run / cells.tissue_px
    assert summary.layouts == {"roi": "nchw", "cell": "nchw"} and cells.windows_run > 0


def test_predict_slides_batch(tmp_path: Path, synth_slide: Path, random_models: tuple[Path, Path]) -> None:
    """The batch: a folder expands to its slides, outputs are named for them, a slide that fails is reported and
    counted while the others go on, finished outputs are skipped (unless overwrite)."""
    from qpbridge.errors import InputError, SlideError
    from qpbridge.predict import predict_slides
    from qpbridge.predict.pipeline import plan_batch

    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "a.svs").symlink_to(synth_slide)
    (slides / "b.svs").write_bytes(b"not a slide")
    (slides / "notes.txt").write_text("not a slide either")
    out = tmp_path / "out"
    out.mkdir()
    config = PredictConfig(model_roi=str(random_models[0]), roi_only=True)
    seen: list[tuple[str, str]] = []
    batch = predict_slides([slides], out, config, report=lambda o: seen.append((o.job.slide.name, o.status)))
    assert seen == [("a.svs", "done"), ("b.svs", "failed")]
    assert [o.job.output for o in batch.outcomes] == [out / "a.geojson", out / "b.geojson"]
    assert (batch.count("done"), batch.count("failed"), batch.count("skipped")) == (1, 1, 0)
    failed = batch.outcomes[1]
    assert isinstance(failed.error, SlideError) and str(slides / "b.svs") in str(failed.error)
    assert is_finished(out / "a.geojson") and not (out / "b.geojson").exists()

    again_batch = predict_slides([slides], out, config)
    assert [o.status for o in again_batch.outcomes] == ["skipped", "failed"]
    redone = predict_slides([slides / "a.svs"], out / "a.geojson", config, overwrite=True)
    assert [o.status for o in redone.outcomes] == ["done"]
    with pytest.raises(OutputError, match="exists and is finished: use --overwrite to replace it"):
        predict_slides([slides / "a.svs"], out / "a.geojson", config)  # one slide: raised, not reported
    with pytest.raises(SlideError):
        predict_slides([slides / "b.svs"], out / "b.geojson", config)

    with pytest.raises(OutputError, match="looks like a file but several slides were given: give a folder"):
        plan_batch([slides], out / "all.geojson")
    with pytest.raises(OutputError, match=f"output folder {tmp_path / 'none'} does not exist: create it first"):
        plan_batch([slides], tmp_path / "none")
    with pytest.raises(InputError, match="--overlay takes one slide; several were given"):
        plan_batch([slides], out, overlay=True)
    with pytest.raises(InputError, match=f"no slides .* in folder {out}"):
        plan_batch([out], tmp_path)
    assert [j.output for j in plan_batch([slides / "a.svs"], out).jobs] == [out / "a.geojson"]


def test_cli_batch_reports_each_slide(tmp_path: Path, synth_slide: Path, random_models: tuple[Path, Path]) -> None:
    """Several slides: one line per slide written (stdout), one error line per slide that failed and the count
    (stderr, exit 1); run again, the finished slide is skipped."""
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide")
    folder = tmp_path / "out"
    folder.mkdir()
    args = ["predict", str(synth_slide), str(bad), "-o", str(folder), "--model-roi", str(random_models[0]),
            "--roi-only"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{synth_slide} -> {folder / 'seed1.geojson'}: ")
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith(f"error: {bad}: ") and errors[-1] == "1 of 2 slides failed"
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and again.stdout == ""
    unwrapped = " ".join(again.stderr.split())  # the console wraps long lines
    assert unwrapped.startswith(f"skip {synth_slide}: {folder / 'seed1.geojson'} is finished (use --overwrite")
