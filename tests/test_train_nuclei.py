"""Training a nuclei model: instance tiles -> contour targets, validation by AJI, threshold tuning, fine-tuning."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qpbridge.cards import NUCLEUS_CLASSES
from qpbridge.classes import INSTANCE_IGNORE_LABEL
from qpbridge.cli import app
from qpbridge.errors import InputError
from qpbridge.models import load_card
from qpbridge.nuclei.postprocess import contour_targets
from qpbridge.tiles import read_tile, read_tile_dataset
from qpbridge.training import TileTorchDataset, TrainConfig, train_model
from qpbridge.training.augment import build_nuclei_augmentation, training_targets
from qpbridge.training.config import Recipe, learning_rate
from qpbridge.training.nuclei import NucleiPredictions, tune_thresholds

TINY = (4, 8)
TILE_PX = 64


def blob_instances(rng: np.random.Generator, tile_px: int = TILE_PX, n: int = 6) -> np.ndarray:
    """Round nuclei (radius 4-6 px) at random places, later ones over earlier ones."""
    yy, xx = np.mgrid[:tile_px, :tile_px]
    out = np.zeros((tile_px, tile_px), np.int32)
    for i in range(1, n + 1):
        cy, cx = rng.integers(6, tile_px - 6, 2)
        r = rng.integers(4, 7)
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return out


def write_nuclei_dataset(
    root: Path, slides: Sequence[str] = ("s1", "s2"), tiles_per_slide: int = 2, seed: int = 0, ignore: bool = True
) -> Path:
    """A nuclei tile dataset: dark blobs on pink, 16-bit instance masks, a strip of ignore on the first tile."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    rows = []
    for slide in slides:
        for t in range(tiles_per_slide):
            inst = blob_instances(rng)
            image = np.full((TILE_PX, TILE_PX, 3), (230, 190, 215), np.int16)
            image[inst > 0] = (70, 40, 120)
            image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
            if ignore and t == 0:
                inst[:, -6:] = INSTANCE_IGNORE_LABEL
            name = f"{slide}_{t * TILE_PX}_0.png"
            Image.fromarray(image).save(root / "images" / name)
            Image.fromarray(inst.astype(np.uint16)).save(root / "masks" / name)
            rows.append({"slide": slide, "image": f"images/{name}", "mask": f"masks/{name}", "x0_px": t * TILE_PX,
                         "y0_px": 0, "mpp": 0.25, "tile_px": TILE_PX,
                         "count_ignore": int((inst == INSTANCE_IGNORE_LABEL).sum())})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "format": "qpbridge-tiles/1", "mpp": 0.25, "tile_px": TILE_PX, "stride_px": TILE_PX,
        "ignore_label": INSTANCE_IGNORE_LABEL, "role": "nuclei",
        "classes": [{"label": v, "name": n, "color": list(c)} for v, n, c in NUCLEUS_CLASSES],
        "slides": [{"slide": s, "path": f"{s}.tif", "geojson": f"{s}.png", "slide_mpp": 0.25} for s in slides],
        "qpbridge_version": "test",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def nuclei_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nuclei_dataset(tmp_path_factory.mktemp("nuclei") / "tiles")


@pytest.fixture(scope="module")
def nuclei_model(tmp_path_factory: pytest.TempPathFactory, nuclei_tiles: Path) -> Path:
    out = tmp_path_factory.mktemp("nuclei-model") / "m"
    config = TrainConfig(role="nuclei", steps=4, batch_size=2, channels=TINY, threads=1, val_slides=("s2",),
                         val_every=2, lr=1e-3, lr_schedule="cosine")  # fmt: skip
    train_model([nuclei_tiles], out, config)
    return out


# --------------------------------------------------------------------------------------------- tiles and targets
def test_instance_tiles_read_as_ids(nuclei_tiles: Path) -> None:
    ds = read_tile_dataset(nuclei_tiles)
    assert ds.role == "nuclei" and ds.ignore_label == INSTANCE_IGNORE_LABEL and len(ds.tiles) == 4
    image, mask = read_tile(ds.tiles[0], TILE_PX, instances=True)
    assert image.shape == (TILE_PX, TILE_PX, 3) and mask.dtype == np.int32
    assert int((mask == INSTANCE_IGNORE_LABEL).sum()) == 6 * TILE_PX and 1 <= len(np.unique(mask[:, :-6])) - 1 <= 6
    with pytest.raises(InputError, match=r"is a I;16 image; expected a single-channel label image \(mode L\)"):
        read_tile(ds.tiles[0], TILE_PX)


def test_targets_after_flip_are_exact(nuclei_tiles: Path) -> None:
    """Whatever the augmentation draws, flips/rotations without zoom commute with the contour conversion."""
    ds = read_tile_dataset(nuclei_tiles)
    _, inst = read_tile(ds.tiles[1], TILE_PX, instances=True)
    transform = build_nuclei_augmentation(boundary_px=2)
    transform.transforms = tuple(t for t in transform.transforms if type(t).__name__ != "RandZoomd")
    torch_ds = TileTorchDataset([ds.tiles[1]], TILE_PX, augmentation=transform, instances=True)
    expected_all = [np.rot90(f, k) for f in (inst, inst[::-1], inst[:, ::-1], inst[::-1, ::-1]) for k in range(4)]
    expected_targets = [contour_targets(np.ascontiguousarray(e), 2) for e in expected_all]
    for seed in range(6):
        _, label = torch_ds[(0, seed)]
        got = label.numpy()
        assert got.dtype == np.int64 and set(np.unique(got)) <= {0, 1, 2}
        assert any(np.array_equal(got, e) for e in expected_targets), seed


def test_training_targets_mark_ignore_255() -> None:
    inst = np.zeros((8, 8), np.int32)
    inst[2:6, 2:6] = 4
    inst[:, 7] = INSTANCE_IGNORE_LABEL
    targets = training_targets(inst, 1)
    assert targets[:, 7].tolist() == [255] * 8
    assert int((targets == 2).sum()) == 12 and int((targets == 1).sum()) == 4


def test_cosine_learning_rate() -> None:
    recipe = Recipe("nuclei", 8, 1e-3, 0, 0.2, True, lr_schedule="cosine")
    assert learning_rate(recipe, 0, 10) == pytest.approx(1e-3)
    assert learning_rate(recipe, 10, 10) == pytest.approx(0.0)
    assert learning_rate(Recipe("nuclei", 8, 1e-3, 0, 0.2, True), 7, 10) == 1e-3


def test_tune_thresholds_picks_the_best_pair() -> None:
    ref = np.zeros((32, 32), np.int32)
    ref[4:14, 4:14], ref[4:14, 14:24] = 1, 2  # two touching nuclei
    targets = contour_targets(ref, 2)
    probs = np.stack([targets == c for c in range(3)]).astype(np.float32)
    probs[1] *= 0.55  # interior weak: only a low marker threshold finds the two markers
    probs[0] = 1 - probs[1] - probs[2]
    from qpbridge.cards import NucleiParams

    params, scores = tune_thresholds(NucleiPredictions([probs], [ref], 0.25), NucleiParams(min_area_um2=0))
    assert params.marker_threshold == 0.5 and scores.tp == 2 and scores.aji > 0.6


# --------------------------------------------------------------------------------------------- the run
def test_nuclei_training_writes_a_tuned_card(nuclei_model: Path) -> None:
    card = load_card(nuclei_model)
    assert card.role == "nuclei" and card.nuclei is not None
    assert [(c.label, c.name, c.emit) for c in card.classes] == [
        (0, "Background", False), (1, "Nucleus", True), (2, "Nucleus boundary", False)]  # fmt: skip
    for key in ("aji", "dice", "pq", "f1", "val_aji", "val_loss"):
        assert np.isfinite(card.metrics[key]), key
    assert card.nuclei.foreground_threshold in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
    assert card.nuclei.marker_threshold in (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
    recipe = card.training["recipe"]
    assert recipe["lr_schedule"] == "cosine" and recipe["val_slides"] == ["s2"] and recipe["batch_size"] == 2
    assert card.training["split"]["val_slides"] == ["s2"] and card.training["split"]["n_val_tiles"] == 2
    log = json.loads((nuclei_model / "training_log.json").read_text())
    assert [e["step"] for e in log["epochs"]] == [2, 4]
    assert all(e["val_aji"] is not None and e["val_pq"] is not None for e in log["epochs"])
    assert "--lr-schedule cosine --val-slides s2 --val-every 2" in card.training["commands"][0]


def test_nuclei_fine_tune_from_a_nuclei_model(tmp_path: Path, nuclei_tiles: Path, nuclei_model: Path) -> None:
    result = train_model([nuclei_tiles], tmp_path / "tuned", TrainConfig(
        role="nuclei", steps=1, batch_size=2, threads=1, init_from=str(nuclei_model), val_slides=("s1",)))
    assert result.card.training["init_from"]["path"] == str(nuclei_model)
    assert result.card.architecture.args["channels"] == list(TINY) and np.isfinite(result.card.metrics["aji"])


def test_nuclei_cli_and_messages(tmp_path: Path, nuclei_tiles: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["train", str(nuclei_tiles), "-o", str(out), "--role", "nuclei", "--steps", "1",
                                 "--batch-size", "2", "--channels", "4,8", "--threads", "1", "--val-slides", "s1"])
    assert result.exit_code == 0, result.output
    assert "validation AJI" in result.output and "marker_threshold" in result.output
    wrong = runner.invoke(app, ["train", str(nuclei_tiles), "-o", str(tmp_path / "x"), "--role", "cell"])
    assert wrong.exit_code != 0 and "is a nuclei dataset but --role is cell" in wrong.output
    unknown = runner.invoke(app, ["train", str(nuclei_tiles), "-o", str(tmp_path / "y"), "--role", "nuclei",
                                  "--val-slides", "s9", "--channels", "4,8"])
    assert unknown.exit_code != 0 and "--val-slides names s9, not among the tiles' slides (s1, s2)" in unknown.output
    every = runner.invoke(app, ["train", str(nuclei_tiles), "-o", str(tmp_path / "z"), "--role", "nuclei",
                                "--val-slides", "s1,s2"])
    assert every.exit_code != 0 and "--val-slides names every slide" in every.output
    bad = runner.invoke(app, ["train", str(nuclei_tiles), "-o", str(tmp_path / "w"), "--role", "tissue"])
    assert "--role must be 'roi', 'cell' or 'nuclei', got 'tissue'" in bad.output
    schedule = runner.invoke(app, ["train", str(nuclei_tiles), "-o", str(tmp_path / "v"), "--role", "nuclei",
                                   "--lr-schedule", "step"])
    assert "--lr-schedule must be constant or cosine, got 'step'" in schedule.output
