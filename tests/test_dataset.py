"""Tests of qpbridge.tiles (the writer) and ``qpbridge masks`` on a synthetic slide with known truth."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import shape
from typer.testing import CliRunner

from qpbridge.classes import IGNORE_LABEL
from qpbridge.errors import OutputError
from qpbridge.rasterize import ClassMap, LabelRasterizer
from qpbridge.slide import open_slide
from qpbridge.tiles import (
    DATASET_FORMAT,
    MaskConfig,
    build_tile_dataset,
    label_mask_for_window,
    tile_starts,
)

WIDTH_PX, HEIGHT_PX = 4096, 3072  # level 0 at 0.25 um/px -> 1024 x 768 px at 1 um/px
LESIONS = {"Benign": 1, "In situ carcinoma": 2, "Invasive carcinoma": 3}


@pytest.fixture(scope="module")
def synth_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic 4096 x 3072 slide and its truth GeoJSON."""
    try:
        from qpbridge.synth import write_synthetic_slide
    except ImportError as exc:  # pragma: no cover - synth is another module's job
        pytest.skip(f"qpbridge.synth not importable: {exc}")
    path = tmp_path_factory.mktemp("synth") / "synthA.svs"
    result = write_synthetic_slide(path, width_px=WIDTH_PX, height_px=HEIGHT_PX, seed=3)
    return result.slide_path, result.truth_path


def _oracle(truth: Path, mpp: float, slide_mpp: float = 0.25) -> np.ndarray:
    """Labels at ``mpp`` by an independent method: pixel centres tested with shapely.contains_xy.

    Everything is reviewed (no Region objects): background and tissue 0, lesions by label with the higher
    label on top, pen marks 255 on top of all.
    """
    scale = mpp / slide_mpp
    width, height = round(WIDTH_PX / scale), round(HEIGHT_PX / scale)
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = (xx + 0.5) * scale, (yy + 0.5) * scale
    features = json.loads(truth.read_text())["features"]
    by_class: dict[str, list[shapely.Geometry]] = {}
    for f in features:
        by_class.setdefault(f["properties"]["classification"]["name"], []).append(shape(f["geometry"]))
    labels = np.zeros((height, width), dtype=np.uint8)
    for name, label in sorted(LESIONS.items(), key=lambda kv: kv[1]):
        for geom in by_class.get(name, []):
            labels[shapely.contains_xy(geom, cx, cy)] = label
    for geom in by_class.get("Pen mark", []):
        labels[shapely.contains_xy(geom, cx, cy)] = IGNORE_LABEL
    return labels


def _iou(a: np.ndarray, b: np.ndarray, value: int) -> float:
    inter = np.logical_and(a == value, b == value).sum()
    union = np.logical_or(a == value, b == value).sum()
    return 1.0 if union == 0 else float(inter / union)


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def full_run(synth_slide: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """Every tile of the slide at 1 um/px (no tissue filter), QA mask at 1 um/px."""
    slide, truth = synth_slide
    out = tmp_path_factory.mktemp("tiles") / "ds"
    config = MaskConfig(mpp=1.0, tile_px=128, qa_mpp=1.0, min_tissue_frac=0.0, min_labelled_frac=0.0, block_px=512)
    summary = build_tile_dataset(slide, truth, out, config)
    return out, summary


# --------------------------------------------------------------------------------------------- truth
def test_qa_mask_reproduces_the_truth(synth_slide: tuple[Path, Path], full_run: tuple[Path, object]) -> None:
    import tifffile

    out, _ = full_run
    oracle = _oracle(synth_slide[1], mpp=1.0)
    assert set(np.unique(oracle).tolist()) == {0, 1, 2, 3, IGNORE_LABEL}
    with tifffile.TiffFile(out / "qa" / "synthA_label_mask.tiff") as tif:
        assert [p.shape for p in tif.pages] == [(768, 1024), (384, 512)]
        assert tif.pages[0].is_tiled and tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        qa = tif.pages[0].asarray()
    for value in (0, 1, 2, 3, IGNORE_LABEL):
        assert _iou(qa, oracle, value) >= 0.999, value


def test_tiles_reassembled_reproduce_the_truth(synth_slide: tuple[Path, Path], full_run: tuple[Path, object]) -> None:
    out, summary = full_run
    oracle = _oracle(synth_slide[1], mpp=1.0)
    rows = _manifest(out)
    assert len(rows) == 8 * 6 == summary.tiles_written  # type: ignore[attr-defined]
    canvas = np.full((768, 1024), 77, dtype=np.uint8)
    for row in rows:
        x, y = int(row["x0_px"]) // 4, int(row["y0_px"]) // 4  # level-0 px -> 1 um/px grid
        canvas[y : y + 128, x : x + 128] = np.asarray(Image.open(out / row["mask"]))
    assert not (canvas == 77).any()
    for value in (0, 1, 2, 3, IGNORE_LABEL):
        assert _iou(canvas, oracle, value) >= 0.999, value


def test_manifest_and_pngs_are_consistent(synth_slide: tuple[Path, Path], full_run: tuple[Path, object]) -> None:
    out, summary = full_run
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["format"] == DATASET_FORMAT and meta["mpp"] == 1.0 and meta["tile_px"] == 128
    assert meta["stride_px"] == 128 and meta["ignore_label"] == 255 and meta["role"] == "cell"
    assert [c["name"] for c in meta["classes"]] == ["Normal", "Benign", "In situ carcinoma", "Invasive carcinoma"]
    assert meta["slides"][0]["slide"] == "synthA" and meta["slides"][0]["slide_mpp"] == 0.25
    assert meta["slides"][0]["label_mask"] == "qa/synthA_label_mask.tiff"
    rows = _manifest(out)
    assert list(rows[0]) == [
        "slide", "image", "mask", "x0_px", "y0_px", "mpp", "tile_px",
        "count_0", "count_1", "count_2", "count_3", "count_ignore",
    ]  # fmt: skip
    totals = np.zeros(256, dtype=np.int64)
    with open_slide(synth_slide[0]) as slide:
        for i, row in enumerate(rows):
            mask = np.asarray(Image.open(out / row["mask"]))
            image = Image.open(out / row["image"])
            assert image.mode == "RGB" and image.size == (128, 128)
            assert mask.shape == (128, 128) and Image.open(out / row["mask"]).mode == "L"
            counts = np.bincount(mask.ravel(), minlength=256)
            totals += counts
            for label in (0, 1, 2, 3):
                assert int(row[f"count_{label}"]) == counts[label]
            assert int(row["count_ignore"]) == counts[IGNORE_LABEL]
            assert row["slide"] == "synthA" and row["mpp"] == "1.0" and row["tile_px"] == "128"
            if i % 7 == 0:  # the image is exactly what the slide reader gives for that window
                x, y = int(row["x0_px"]) // 4, int(row["y0_px"]) // 4
                assert np.array_equal(np.asarray(image), slide.read_region_at(x, y, 128, 128, 1.0))
    # Stride = tile: the tiles tile the grid exactly, so their counts are the slide-wide pixel counts.
    assert {v: int(totals[v]) for v in (0, 1, 2, 3, 255)} == summary.pixels_by_label  # type: ignore[attr-defined]


def test_label_mask_past_the_edge_is_ignore(synth_slide: tuple[Path, Path]) -> None:
    lr = LabelRasterizer([(shapely.box(0, 0, 1e6, 1e6), "Benign")], ClassMap.deepbatch())
    with open_slide(synth_slide[0]) as slide:
        mask = label_mask_for_window(lr, slide, 1000, 700, 50, 100, mpp=1.0)  # grid is 1024 x 768
    assert mask.shape == (100, 50)
    assert (mask[:68, :24] == 1).all()
    assert (mask[68:, :] == IGNORE_LABEL).all() and (mask[:, 24:] == IGNORE_LABEL).all()
    assert tile_starts(768, 256, 256) == [0, 256, 512]
    assert tile_starts(769, 256, 256) == [0, 256, 512, 768]


def test_qupath_bounds_offset_shifts_the_labels(
    synth_slide: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from qpbridge.slide import Slide

    # Where QuPath crops to the scanned area, GeoJSON (0, 0) is level-0 pixel (100, 40) of the slide.
    monkeypatch.setattr(Slide, "qupath_offset_xy_px", property(lambda self: (100, 40)))
    lr = LabelRasterizer([(shapely.box(0, 0, 400, 400), "Benign")], ClassMap.deepbatch())
    with open_slide(synth_slide[0]) as slide:
        mask = label_mask_for_window(lr, slide, 0, 0, 200, 200, mpp=1.0)  # 4 level-0 px per pixel
    expected = np.zeros((200, 200), dtype=np.uint8)
    expected[10:110, 25:125] = 1
    assert np.array_equal(mask, expected)


def test_overlapping_strides_count_each_pixel_once(synth_slide: tuple[Path, Path], tmp_path: Path) -> None:
    slide, truth = synth_slide
    common = {"mpp": 1.0, "tile_px": 128, "dry_run": True, "block_px": 300}
    plain = build_tile_dataset(slide, truth, tmp_path / "x", MaskConfig(**common))
    strided = build_tile_dataset(slide, truth, tmp_path / "x", MaskConfig(**common, stride_px=48))
    assert strided.pixels_by_label == plain.pixels_by_label
    assert sum(plain.pixels_by_label.values()) == 1024 * 768
    assert strided.tiles_total == len(tile_starts(1024, 128, 48)) * len(tile_starts(768, 128, 48)) == 20 * 15


# --------------------------------------------------------------------------------------------- filters, sampling
def test_tissue_filter_and_seeded_sampling(synth_slide: tuple[Path, Path], tmp_path: Path) -> None:
    slide, truth = synth_slide
    base = MaskConfig(mpp=1.0, tile_px=128, qa_mpp=None)
    dry = build_tile_dataset(slide, truth, tmp_path / "dry", MaskConfig(**{**base.__dict__, "dry_run": True}))
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing
    assert dry.tiles_total == 48 and 0 < dry.tiles_kept < 48  # glass tiles are dropped
    assert dry.tiles_written == 0 and dry.tiles_selected == dry.tiles_kept
    assert dry.kept_by_class[1] >= 1 and dry.kept_by_class[3] >= 1
    capped = MaskConfig(**{**base.__dict__, "max_per_class": 2, "seed": 5})
    s1 = build_tile_dataset(slide, truth, tmp_path / "a", capped)
    s2 = build_tile_dataset(slide, truth, tmp_path / "b", capped)
    assert all(n <= 2 for n in s1.written_by_class.values())
    assert s1.written_by_class == {k: min(2, v) for k, v in dry.kept_by_class.items()}
    rows1, rows2 = _manifest(tmp_path / "a"), _manifest(tmp_path / "b")
    assert [r["image"] for r in rows1] == [r["image"] for r in rows2]  # same seed, same tiles
    assert s2.written_by_class == s1.written_by_class
    other_seed = build_tile_dataset(slide, truth, tmp_path / "c", MaskConfig(**{**capped.__dict__, "seed": 6}))
    assert other_seed.written_by_class == s1.written_by_class
    assert [r["image"] for r in _manifest(tmp_path / "c")] != [r["image"] for r in rows1]
    assert len(rows1) == s1.tiles_written == sum(s1.written_by_class.values())
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == sorted(Path(r["image"]).name for r in rows1)
    # A tile counts for its majority non-background class (0 when it has none): recount from the manifest.
    per_class = {0: 0, 1: 0, 2: 0, 3: 0}
    for row in rows1:
        counts = [int(row[f"count_{k}"]) for k in (1, 2, 3)]
        per_class[0 if max(counts) == 0 else 1 + int(np.argmax(counts))] += 1
    assert per_class == s1.written_by_class


def test_append_second_slide_and_overwrite(synth_slide: tuple[Path, Path], tmp_path: Path) -> None:
    slide, truth = synth_slide
    other = tmp_path / "synthB.svs"
    shutil.copy(slide, other)
    out = tmp_path / "ds"
    config = MaskConfig(mpp=1.0, tile_px=128, qa_mpp=8.0)
    a = build_tile_dataset(slide, truth, out, config)
    b = build_tile_dataset(other, truth, out, config)
    meta = json.loads((out / "dataset.json").read_text())
    assert [s["slide"] for s in meta["slides"]] == ["synthA", "synthB"]
    rows = _manifest(out)
    assert len(rows) == a.tiles_written + b.tiles_written
    assert {r["slide"] for r in rows} == {"synthA", "synthB"}
    # The same slide again: refused, nothing changed.
    before = (out / "manifest.csv").read_text()
    with pytest.raises(OutputError, match="slide 'synthA' is already in .*give --overwrite"):
        build_tile_dataset(slide, truth, out, config)
    assert (out / "manifest.csv").read_text() == before
    # Other settings: refused.
    with pytest.raises(OutputError, match=r"holds a dataset of 1.0 um/px, 128 px tiles.*this run makes 0.5 um/px"):
        build_tile_dataset(other, truth, out, MaskConfig(mpp=0.5, tile_px=128))
    # --overwrite with a cap: the slide's rows are replaced, stale tiles removed, the other slide kept.
    c = build_tile_dataset(slide, truth, out, MaskConfig(**{**config.__dict__, "overwrite": True, "max_per_class": 1}))
    rows = _manifest(out)
    assert sum(r["slide"] == "synthA" for r in rows) == c.tiles_written < a.tiles_written
    assert sum(r["slide"] == "synthB" for r in rows) == b.tiles_written
    on_disk = {p.name for p in (out / "images").iterdir()}
    assert on_disk == {Path(r["image"]).name for r in rows}


def test_output_dir_checks(synth_slide: tuple[Path, Path], tmp_path: Path) -> None:
    slide, truth = synth_slide
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="is not empty and holds no tile dataset"):
        build_tile_dataset(slide, truth, foreign, MaskConfig(mpp=4.0, tile_px=64))
    # Leftovers of an interrupted run (tiles, no dataset.json) are fine: the run starts over.
    leftover = tmp_path / "leftover"
    (leftover / "images").mkdir(parents=True)
    (leftover / "images" / "old.png").write_bytes(b"x")
    summary = build_tile_dataset(slide, truth, leftover, MaskConfig(mpp=4.0, tile_px=64, qa_mpp=None))
    assert summary.tiles_written > 0 and (leftover / "dataset.json").exists()
    assert not list(leftover.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------- CLI
def _geojson(path: Path, features: list[tuple[list[list[float]], str | None]]) -> Path:
    out = []
    for ring, name in features:
        props: dict[str, object] = {"objectType": "annotation"}
        if name is not None:
            props["classification"] = {"name": name, "color": [1, 2, 3]}
        out.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    return path


def _square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner: CliRunner, *args: str) -> tuple[int, str]:
    from qpbridge.cli import app

    result = runner.invoke(app, ["masks", *args])
    return result.exit_code, result.output


def test_cli_writes_and_dry_runs(synth_slide: tuple[Path, Path], tmp_path: Path, runner: CliRunner) -> None:
    slide, _ = synth_slide
    gj = _geojson(
        tmp_path / "t.geojson",
        [(_square(0, 0, 4096), "Region*"), (_square(800, 800, 800), "Tumor: Positive"), (_square(0, 0, 400), "Benign")],
    )
    code, text = _invoke(
        runner, str(slide), str(gj), "--dry-run", "--tile-mpp", "4", "--tile-px", "64", "--class", "Tumor=3"
    )
    assert code == 0, text
    assert "dry run:" in text and "nothing written" in text
    assert "reviewed area: region" in text
    assert "Invasive carcinoma" in text and " 2,500 " in text  # 800 x 800 level-0 px = 50 x 50 px at 4 um/px
    class_map = tmp_path / "map.json"
    class_map.write_text('{"Tumor": "In situ carcinoma"}')
    code, text = _invoke(
        runner, str(slide), str(gj), "--dry-run", "--tile-mpp", "4", "--tile-px", "64", "--class-map", str(class_map),
        "--reviewed", "annotated", "--json",
    )  # fmt: skip
    assert code == 0, text
    report = json.loads(text[text.index("{") :])
    assert report["pixels_by_label"] == {"0": 0, "1": 625, "2": 2500, "3": 0, "255": 256 * 192 - 625 - 2500}
    out = tmp_path / "ds"
    code, text = _invoke(
        runner, str(slide), str(gj), "-o", str(out), "--tile-mpp", "4", "--tile-px", "64", "--class", "Tumor=3",
        "--min-tissue-frac", "0",
    )  # fmt: skip
    assert code == 0, text
    assert "wrote 12 tiles" in text  # 256 x 192 grid -> 4 x 3 tiles of 64 px, all inside the region
    assert (out / "manifest.csv").exists() and (out / "qa" / "synthA_label_mask.tiff").exists()


def test_cli_errors(synth_slide: tuple[Path, Path], tmp_path: Path, runner: CliRunner) -> None:
    slide, truth = synth_slide
    code, text = _invoke(runner, str(tmp_path / "nope.svs"), str(truth), "-o", str(tmp_path / "o"))
    assert code == 2 and "error: slide not found:" in text
    code, text = _invoke(runner, str(slide), str(tmp_path / "nope.geojson"), "-o", str(tmp_path / "o"))
    assert code == 2 and "error: GeoJSON not found:" in text
    code, text = _invoke(runner, str(slide), str(truth))
    assert code == 2 and "error: give the dataset folder with -o DIR" in text

    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    code, text = _invoke(runner, str(slide), str(empty), "--dry-run")
    assert code == 1 and "error: no features in" in text

    elsewhere = _geojson(tmp_path / "far.geojson", [(_square(50_000, 60_000, 500), "Benign")] * 3)
    code, text = _invoke(runner, str(slide), str(elsewhere), "--dry-run")
    assert code == 1
    assert "none of the 3 objects in" in text and "(4096 x 3072 px at level 0)" in text
    assert "span x 50000 to 50500, y 60000 to 60500 px" in text and "another slide" in text

    unknown = _geojson(
        tmp_path / "u.geojson",
        [(_square(0, 0, 100), "Stroma"), (_square(0, 0, 50), "Stroma"), (_square(0, 0, 9), "Fat")],
    )
    code, text = _invoke(runner, str(slide), str(unknown), "--dry-run")
    assert code == 2
    assert "unknown QuPath classes in" in text and "'Stroma' (2 objects), 'Fat' (1 object)" in text
    assert '--class "Fat=LABEL"' in text
    code, text = _invoke(runner, str(slide), str(unknown), "--dry-run", "--class", "Stroma=0", "--ignore-unknown")
    assert code == 0, text
    assert "skipped objects of unknown classes (--ignore-unknown): 'Fat' (1)" in text

    code, text = _invoke(runner, str(slide), str(truth), "--dry-run", "--class", "Tumor=9")
    assert code == 2 and "label 9 is not a class here (0 Normal, 1 Benign" in text
    code, text = _invoke(runner, str(slide), str(truth), "--dry-run", "--stride-px", "999")
    assert code == 2 and "--stride-px must be 1 to --tile-px (256), got 999" in text
    code, text = _invoke(runner, str(slide), str(truth), "--dry-run", "--overlap", "first")
    assert code == 2 and "--overlap must be one of priority, later-wins" in text


def test_cli_model_card_gives_classes_mpp_and_tile(
    synth_slide: tuple[Path, Path], tmp_path: Path, runner: CliRunner
) -> None:
    models = pytest.importorskip("qpbridge.models")
    card_dir = tmp_path / "roi-model"
    card_dir.mkdir()
    (card_dir / "card.json").write_text(models.example_card("roi").to_json())  # ROI at 4 um/px, 256 px tiles
    slide, truth = synth_slide
    out = tmp_path / "roi"
    code, text = _invoke(
        runner, str(slide), str(truth), "-o", str(out), "--model", str(card_dir), "--tile-px", "64",
        "--min-tissue-frac", "0", "--min-labelled-frac", "0",
    )  # fmt: skip
    assert code == 0, text
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["role"] == "roi" and meta["mpp"] == 4.0 and meta["tile_px"] == 64
    assert [(c["label"], c["name"]) for c in meta["classes"]] == [(0, "Background"), (1, "ROI")]
    rows = _manifest(out)
    assert list(rows[0])[7:] == ["count_0", "count_1", "count_ignore"]
    # The three lesion classes (aliases of ROI) are label 1, pen marks 255, the rest 0 (Tissue, glass).
    oracle = _oracle(truth, mpp=4.0)
    assert len(rows) == 4 * 3
    assert sum(int(r["count_1"]) for r in rows) == pytest.approx(int(np.isin(oracle, (1, 2, 3)).sum()), rel=1e-3)
    assert sum(int(r["count_ignore"]) for r in rows) == pytest.approx(int((oracle == 255).sum()), rel=1e-3)



NO_TORCH_CHECK = """
import sys
from typer.testing import CliRunner
from qpbridge.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
loaded = sorted(m for m in ("torch", "monai") if m in sys.modules)
assert not loaded, f"imported {loaded}"
print(result.output)
"""


def _run_python(*args: str) -> str:
    """``python ARGS...`` in a fresh interpreter that imports this checkout's qpbridge; its stdout."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_card_and_tile_modules_import_no_torch() -> None:
    # Reading cards and tiles (masks --model, models list/show) must not pay torch's start-up.
    _run_python(
        "-c",
        "import qpbridge.cards, qpbridge.tiles, qpbridge.tiles.read, qpbridge.tiles.write, qpbridge.commands.masks, "
        "qpbridge.commands.models, qpbridge.cli; import sys; "
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'torch imported'",
    )


def test_masks_with_a_model_card_imports_no_torch(synth_slide: tuple[Path, Path], tmp_path: Path) -> None:
    from qpbridge.cards import example_card

    card_dir = tmp_path / "roi-model"
    card_dir.mkdir()
    (card_dir / "card.json").write_text(example_card("roi").to_json())
    slide, truth = synth_slide
    output = _run_python("-c", NO_TORCH_CHECK, "masks", str(slide), str(truth), "--model", str(card_dir), "--dry-run",
                         "--min-tissue-frac", "0")  # fmt: skip
    assert "dry run: " in output and "1  ROI" in output
    shown = _run_python("-c", NO_TORCH_CHECK, "models", "show", "deepbatch-synth-cell")
    assert shown.startswith("name:          deepbatch-synth-cell\n")
