"""predict --labels / --probabilities: the block-wise pyramidal OME-TIFF writer and its place in the cascade."""

from __future__ import annotations

import json
import re
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qpbridge.classes import DEEPBATCH_CLASSES
from qpbridge.cli import app
from qpbridge.errors import FormatError, InputError, OutputError
from qpbridge.predict import PredictConfig, is_finished, predict_slide
from qpbridge.predict.rasters import (
    CLASSES_NAMESPACE,
    COLORS_NAMESPACE,
    RasterWriter,
    check_raster_targets,
    mean_reduce,
    mode_reduce,
    ome_color,
    pyramid_sizes,
    read_raster_info,
)
from qpbridge.qupath import meta_path as meta_path_for
from qpbridge.tiling import BlockGrid, Window

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[1] / "models"
OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def _shipped() -> tuple[str, str]:
    paths = (MODELS / "deepbatch-synth-roi", MODELS / "deepbatch-synth-cell")
    if not all((p / "card.json").exists() for p in paths):
        pytest.skip("shipped models absent")
    return str(paths[0]), str(paths[1])


# ------------------------------------------------------------------------------------------ reductions
def _mode_oracle(labels: np.ndarray) -> np.ndarray:
    """Per 2 x 2 block (odd edge repeated): the most frequent value, ties to the block's first pixel in reading
    order -- written the slow, obvious way."""
    padded = np.pad(labels, ((0, labels.shape[0] % 2), (0, labels.shape[1] % 2)), mode="edge")
    out = np.empty((padded.shape[0] // 2, padded.shape[1] // 2), labels.dtype)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            values = list(padded[2 * r:2 * r + 2, 2 * c:2 * c + 2].ravel())
            counts = [values.count(v) for v in values]
            out[r, c] = values[counts.index(max(counts))]
    return out


def test_mode_and_mean_reduce_match_their_oracles() -> None:
    rng = np.random.default_rng(4)
    for shape in ((7, 9), (8, 6), (1, 1), (3, 2)):
        labels = rng.integers(0, 4, shape).astype(np.uint8)
        assert np.array_equal(mode_reduce(labels), _mode_oracle(labels)), shape
        values = rng.integers(0, 256, shape).astype(np.uint8)
        padded = np.pad(values, ((0, shape[0] % 2), (0, shape[1] % 2)), mode="edge").astype(np.float64)
        means = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))
        assert np.array_equal(mean_reduce(values), np.floor(means + 0.5).astype(np.uint8)), shape
    # A 2 + 2 tie and four different labels both go to the top-left pixel; 3 + 1 to the majority.
    assert mode_reduce(np.array([[1, 2], [2, 1]], np.uint8)).tolist() == [[1]]
    assert mode_reduce(np.array([[0, 1], [2, 3]], np.uint8)).tolist() == [[0]]
    assert mode_reduce(np.array([[0, 3], [3, 3]], np.uint8)).tolist() == [[3]]
    # Channels reduce independently.
    stack = rng.integers(0, 256, (3, 6, 5)).astype(np.uint8)
    assert np.array_equal(mean_reduce(stack), np.stack([mean_reduce(p) for p in stack]))


def test_pyramid_sizes_and_ome_color() -> None:
    assert pyramid_sizes(1500, 1125) == [(1500, 1125), (750, 563), (375, 282)]
    assert pyramid_sizes(301, 203, tile_px=32) == [(301, 203), (151, 102), (76, 51), (38, 26), (19, 13)]
    assert pyramid_sizes(512, 100) == [(512, 100)]
    assert ome_color((0, 0, 0)) == 255 and ome_color((255, 0, 0)) == -16776961 and ome_color((255, 255, 255)) == -1


# ------------------------------------------------------------------------------------------ the writer
def _blocks(width: int, height: int, block_px: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Random blocks over a raster (every third block left out: no work), and the whole arrays they make."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint8)
    probs = np.zeros((4, height, width), np.uint8)
    blocks = []
    for index, window in enumerate(BlockGrid(width, height, block_px).windows()):
        if index % 3 == 1:
            continue
        p = rng.dirichlet(np.ones(4), size=window.shape).transpose(2, 0, 1).astype(np.float32)
        active = rng.random(window.shape) > 0.2
        lab = np.where(active, p.argmax(axis=0), 0).astype(np.uint8)
        blocks.append((window, lab, p, active))
        labels[window.slices] = lab
        probs[(slice(None), *window.slices)] = np.where(active, np.rint(p * 255), 0).astype(np.uint8)
    return labels, probs, blocks


def test_writer_pyramid_equals_the_whole_array_reduced(tmp_path: Path) -> None:
    """Blocks written out of tiles' order and across tiles, odd sizes at every level, tiles of one value and of
    zeros (encoded once): every level equals the whole array
    reduced level by level; OME-XML, SubIFDs and the TIFF resolution say the same."""
    import tifffile

    width, height = 301, 203
    labels, probs, blocks = _blocks(width, height, 70)
    out_labels, out_probs = tmp_path / "x.labels.ome.tif", tmp_path / "x.probs.ome.tif"
    with RasterWriter(out_labels, out_probs, width_px=width, height_px=height, mpp=1.5, classes=DEEPBATCH_CLASSES,
                      slide_mpp=0.25, tile_px=32) as writer:
        for window, lab, p, active in reversed(blocks):
            writer.write_block(window, lab, p, active)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.labels.ome.tif", "x.probs.ome.tif"]
    sizes = pyramid_sizes(width, height, 32)
    assert len(sizes) == 5 and [i.levels for i in writer.infos] == [5, 5]

    expected_labels, expected_probs = [labels], [probs]
    for _ in sizes[1:]:
        expected_labels.append(mode_reduce(expected_labels[-1]))
        expected_probs.append(mean_reduce(expected_probs[-1]))
    for path, expected, axes in ((out_labels, expected_labels, "YX"), (out_probs, expected_probs, "CYX")):
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome
            series = tif.series[0]
            assert series.axes == axes and len(series.levels) == len(sizes)
            for level, want in zip(series.levels, expected, strict=True):
                assert np.array_equal(level.asarray(), want)
            page = tif.pages[0]
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and page.tile == (32, 32)
            assert len(page.subifds) == len(sizes) - 1
            numerator, denominator = page.tags["XResolution"].value
            assert numerator / denominator == pytest.approx(10_000 / 1.5) and page.tags["ResolutionUnit"].value == 3
            root = ET.fromstring(tif.ome_metadata)
        pixels = root.find(f"{OME}Image/{OME}Pixels")
        assert pixels is not None
        assert (pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")) == ("1.5", "1.5")
        assert (pixels.get("PhysicalSizeXUnit"), pixels.get("PhysicalSizeYUnit")) == ("µm", "µm")
        assert (pixels.get("SizeX"), pixels.get("SizeY")) == ("301", "203")
        channels = [(c.get("Name"), c.get("Color")) for c in pixels.iter(f"{OME}Channel")]
        maps = {m.get("Namespace"): {e.get("K"): e.text for e in m.iter(f"{OME}M")}
                for m in root.iter(f"{OME}MapAnnotation")}
        assert maps[CLASSES_NAMESPACE] == {"0": "Normal", "1": "Benign", "2": "In situ carcinoma",
                                           "3": "Invasive carcinoma"}
        assert maps[COLORS_NAMESPACE] == {"0": "#60a860", "1": "#4080e6", "2": "#faa014", "3": "#d71923"}
        if axes == "CYX":
            assert channels == [(c.name, str(ome_color(c.color))) for c in DEEPBATCH_CLASSES]
        else:
            assert channels == [("Class label", "-1")]
        info = read_raster_info(path)
        assert (info.kind, info.mpp, info.width_px, info.height_px, info.levels, info.slide_mpp) == (
            "labels" if axes == "YX" else "probabilities", 1.5, 301, 203, 5, 0.25)
        assert info.classes == DEEPBATCH_CLASSES


def test_openslide_and_qpbridge_label_reader_open_level_zero(tmp_path: Path) -> None:
    """OpenSlide opens the OME-TIFF as generic-tiff: level 0 (it does not follow SubIFDs), its pixel size from
    the TIFF resolution; qpbridge's label-image reader gets the labels and um/px back."""
    openslide = pytest.importorskip("openslide")
    from qpbridge.formats.labels import load_label_image

    labels, probs, blocks = _blocks(700, 530, 128, seed=1)
    out_labels, out_probs = tmp_path / "l.ome.tif", tmp_path / "p.ome.tiff"
    with RasterWriter(out_labels, out_probs, width_px=700, height_px=530, mpp=2.0, classes=DEEPBATCH_CLASSES,
                      tile_px=128) as writer:
        for block in blocks:
            writer.write_block(*block)
    for path, plane in ((out_labels, labels), (out_probs, probs[0])):
        slide = openslide.OpenSlide(str(path))
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_count == 1 and slide.dimensions == (700, 530)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(2.0)
        rgba = np.asarray(slide.read_region((0, 0), 0, (700, 530)))
        assert np.array_equal(rgba[..., 0], plane)  # grey: r = g = b = the value (probabilities: the first class)
        slide.close()
    array, mpp = load_label_image(out_labels)
    assert np.array_equal(array, labels) and mpp == pytest.approx(2.0)


def test_blocks_without_work_cost_no_memory(tmp_path: Path) -> None:
    """A 6000 x 5000 raster with one block of work: the rest is background, and neither writing the block nor
    building both pyramids allocates more than the block itself (a whole level 0 of probabilities is 120 MB)."""
    import tifffile

    writer = RasterWriter(tmp_path / "l.ome.tif", tmp_path / "p.ome.tif", width_px=6000, height_px=5000, mpp=1.0,
                          classes=DEEPBATCH_CLASSES)
    probs = np.zeros((4, 1024, 1024), np.float32)
    probs[2] = 1.0
    labels = np.full((1024, 1024), 2, np.uint8)
    tracemalloc.start()
    try:
        writer.write_block(Window(2048, 1024, 1024, 1024), labels, probs)
        _, block_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        writer.close()
        _, close_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert block_peak < probs.nbytes and close_peak < 16e6, (block_peak, close_peak)  # less than the block's input
    with tifffile.TiffFile(tmp_path / "l.ome.tif") as tif:
        level0 = tif.series[0].levels[0].asarray()
    assert level0.sum() == 2 * 1024 * 1024 and level0[1024:2048, 2048:3072].min() == 2
    with tifffile.TiffFile(tmp_path / "p.ome.tif") as tif:
        channel2 = tif.series[0].levels[0].asarray()[2]
    assert int(channel2.sum()) == 255 * 1024 * 1024
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.ome.tif", "p.ome.tif"]  # raw levels removed


def test_abort_and_failures_leave_nothing(tmp_path: Path) -> None:
    old = tmp_path / "old.ome.tif"
    old.write_bytes(b"previous run")
    with pytest.raises(RuntimeError, match="boom"), RasterWriter(
            old, None, width_px=100, height_px=100, mpp=1.0, classes=DEEPBATCH_CLASSES) as writer:
        writer.write_block(Window(0, 0, 10, 10), np.ones((10, 10), np.uint8))
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["old.ome.tif"] and old.read_bytes() == b"previous run"
    with pytest.raises(ValueError, match="write_block after close or abort"):
        writer.write_block(Window(0, 0, 10, 10), np.ones((10, 10), np.uint8))
    writer = RasterWriter(None, tmp_path / "p.ome.tif", width_px=100, height_px=80, mpp=1.0,
                          classes=DEEPBATCH_CLASSES)
    with pytest.raises(ValueError, match=r"Window\(x_px=95.* is outside the 100 x 80 px raster"):
        writer.write_block(Window(95, 0, 10, 10), np.zeros((10, 10), np.uint8), np.zeros((4, 10, 10)))
    with pytest.raises(ValueError, match=r"probabilities of shape None, expected \(4, 10, 10\)"):
        writer.write_block(Window(0, 0, 10, 10), np.zeros((10, 10), np.uint8))
    writer.abort()
    writer.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["old.ome.tif"]
    with pytest.raises(FormatError, match="no OME-XML: not a qpbridge label or probability raster"):
        import tifffile

        tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint8))
        read_raster_info(tmp_path / "plain.tif")


def test_raster_targets_are_checked() -> None:
    out = Path("run/slide.geojson")
    with pytest.raises(InputError, match=r"^--labels and -o are the same file run/slide.geojson: give each output "
                                         r"its own path$"):
        check_raster_targets(out, None, output=out)
    with pytest.raises(InputError, match="^--probabilities and --overlay are the same file x.ome.tif"):
        check_raster_targets(None, Path("x.ome.tif"), output=out, overlay=Path("x.ome.tif"))
    with pytest.raises(InputError, match=r"^--labels x.png must end in .ome.tif or .ome.tiff \(the OME-TIFF QuPath "
                                         r"opens\)$"):
        check_raster_targets(Path("x.png"), None, output=out)
    with pytest.raises(OutputError, match="^--probabilities folder /nonexistent does not exist"):
        check_raster_targets(None, Path("/nonexistent/p.ome.tif"), output=out)
    with pytest.raises(InputError, match="^--labels needs the cell model, which --roi-only does not run: leave out "
                                         "--roi-only$"):
        PredictConfig(roi_only=True, labels=Path("l.ome.tif")).check()
    with pytest.raises(InputError, match="^--labels and --probabilities need the cell model"):
        PredictConfig(roi_only=True, labels=Path("l.ome.tif"), probabilities=Path("p.ome.tif")).check()


def test_cli_refuses_rasters_without_the_cell_model_or_for_several_slides(tmp_path: Path, synth_slide: Path) -> None:
    result = runner.invoke(app, ["predict", str(synth_slide), "-o", str(tmp_path / "x.geojson"), "--roi-only",
                                 "--probabilities", str(tmp_path / "p.ome.tif")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --probabilities needs the cell model, which --roi-only does not run: leave out --roi-only"]
    result = runner.invoke(app, ["predict", str(synth_slide), "-o", str(tmp_path / "x.geojson"),
                                 "--labels", str(tmp_path / "x.geojson")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: --labels and -o are the same file {tmp_path / 'x.geojson'}: give each output its own path"]
    result = runner.invoke(app, ["predict", str(synth_slide), str(synth_slide), "-o", str(tmp_path),
                                 "--labels", str(tmp_path / "l.ome.tif")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --labels and --probabilities take one slide; several were given"]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ in the cascade
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def test_predict_labels_equal_the_geojson_rasterized(tmp_path: Path, synth_slide: Path) -> None:
    """The label raster of a run is its GeoJSON rasterized at the cell model's um/px (per class IoU >= 0.99);
    the probabilities' argmax is the label wherever the network ran (ties allowed), 0 elsewhere; the sidecar
    lists both outputs."""
    import tifffile

    from qpbridge.qupath import read_geojson
    from qpbridge.rasterize import rasterize_shapes
    from qpbridge.slide import open_slide

    roi, cell = _shipped()
    out, labels_path, probs_path = tmp_path / "s.geojson", tmp_path / "s.labels.ome.tif", tmp_path / "s.probs.ome.tif"
    config = PredictConfig(model_roi=roi, model_cell=cell, min_area_um2=0.0, labels=labels_path,
                           probabilities=probs_path)
    summary = predict_slide(synth_slide, out, config)
    assert is_finished(out)
    with tifffile.TiffFile(labels_path) as tif:
        labels = tif.series[0].levels[0].asarray()
        assert len(tif.series[0].levels) == 3
    with tifffile.TiffFile(probs_path) as tif:
        probs = tif.series[0].levels[0].asarray()
    with open_slide(synth_slide) as slide:
        assert labels.shape == (1125, 1500) == slide.size_at_mpp(1.0)[::-1]
        affine = slide.affine_at(1.0)
    assert probs.shape == (4, 1125, 1500)

    detections = [f for f in read_geojson(out).features if f.class_name != "ROI"]  # the class regions
    names = {c.name: c.label for c in DEEPBATCH_CLASSES}
    painted = rasterize_shapes([(f.geometry, names[f.class_name or ""]) for f in detections], labels.shape, affine)
    for label in (1, 2, 3):
        assert (labels == label).sum() > 500, label
        assert _iou(labels == label, painted == label) >= 0.99, label

    ran = probs.sum(axis=0) > 0
    assert 0.02 < ran.mean() < 0.5  # the ROI gate: the network ran on part of the tissue
    best = probs.max(axis=0)
    picked = np.take_along_axis(probs, labels[None].astype(np.int64), axis=0)[0]
    assert np.array_equal(picked[ran], best[ran])  # argmax == label (a tie counts)
    assert not labels[~ran].any()

    meta = json.loads(meta_path_for(out).read_text())
    listed = meta["summary"]["rasters"]
    assert [(r["kind"], r["path"], r["mpp"], r["levels"]) for r in listed] == [
        ("labels", str(labels_path), 1.0, 3), ("probabilities", str(probs_path), 1.0, 3)]
    assert [c["name"] for c in listed[1]["classes"]] == [c.name for c in DEEPBATCH_CLASSES]
    assert summary.timings_s["rasters_s"] > 0
    assert read_raster_info(labels_path).to_json() == listed[0]


def test_no_roi_labels_the_whole_tissue(tmp_path: Path, synth_slide: Path) -> None:
    import tifffile

    from qpbridge.predict.sampling import block_mask
    from qpbridge.slide import open_slide
    from qpbridge.tissue import detect_tissue

    roi, cell = _shipped()
    probs_path = tmp_path / "p.ome.tif"
    predict_slide(synth_slide, tmp_path / "s.geojson",
                  PredictConfig(model_roi=roi, model_cell=cell, use_roi=False, probabilities=probs_path))
    with tifffile.TiffFile(probs_path) as tif:
        ran = tif.series[0].levels[0].asarray().sum(axis=0) > 0
    with open_slide(synth_slide) as slide:
        tissue = detect_tissue(slide, mpp=PredictConfig().tissue_mpp)
        whole = Window(0, 0, *slide.size_at_mpp(1.0))
        expected = block_mask(tissue.tissue, tissue.affine, slide.affine_at(1.0), whole, whole)
    assert expected.mean() > 0.3 and np.array_equal(ran, expected)


def test_failed_run_leaves_no_raster(tmp_path: Path, synth_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails after blocks were written leaves neither GeoJSON nor rasters, nor their raw files."""
    import qpbridge.predict.pipeline as pipeline

    roi, cell = _shipped()
    real = pipeline.segment_cells

    def failing(*args: object, **kwargs: object) -> None:
        write_block = kwargs["write_block"]
        assert callable(write_block)
        kwargs["write_block"] = None
        real(*args, **kwargs)  # type: ignore[arg-type]
        write_block(Window(0, 0, 8, 8), np.ones((8, 8), np.uint8), np.full((4, 8, 8), 0.25), np.ones((8, 8), bool))
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "segment_cells", failing)
    config = PredictConfig(model_roi=roi, model_cell=cell, labels=tmp_path / "l.ome.tif",
                           probabilities=tmp_path / "p.ome.tif")
    with pytest.raises(KeyboardInterrupt):
        predict_slide(synth_slide, tmp_path / "s.geojson", config)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_an_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = RasterWriter(tmp_path / "l.ome.tif", None, width_px=64, height_px=64, mpp=1.0, classes=DEEPBATCH_CLASSES)
    monkeypatch.setattr("qpbridge.predict.rasters._TileStore.paste", full)
    message = f"cannot write the rasters' temporary files in {tmp_path}: No space left on device; free disk space or "
    with pytest.raises(OutputError, match="^" + re.escape(message + "choose another folder") + "$"):
        writer.write_block(Window(0, 0, 8, 8), np.ones((8, 8), np.uint8))
    monkeypatch.undo()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
