"""Training: tile datasets, split, losses that honour the ignore label, the loop, resume and fine-tuning."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError, ModelError, OutputError
from qpbridge.models import load_card, load_model
from qpbridge.tiles import TileRecord, read_tile_dataset, split_tiles
from qpbridge.training import (
    MaskedBCELoss,
    MaskedDiceCELoss,
    TileTorchDataset,
    TrainConfig,
    TrainResult,
    build_augmentation,
    train_model,
)

PALETTE = {0: (235, 215, 230), 1: (150, 80, 190), 2: (200, 70, 110), 3: (70, 30, 100)}
CELL_NAMES = ["Normal", "Benign", "In situ carcinoma", "Invasive carcinoma"]
TINY = (4, 8)


def write_dataset(
    root: Path, *, role: str = "cell", slides: Sequence[str] = ("s1", "s2"), tiles_per_slide: int = 8,
    tile_px: int = 32, mpp: float = 0.5, seed: int = 0, names: Sequence[str] | None = None,
) -> Path:
    """A tile dataset following DATASET_FORMAT.md where each class has its own colour (so it is learnable)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    labels = [0, 1, 2, 3] if role == "cell" else [0, 1]
    names = list(names or (CELL_NAMES if role == "cell" else ["Background", "ROI"]))
    rows = []
    for slide in slides:
        for t in range(tiles_per_slide):
            mask = np.zeros((tile_px, tile_px), np.uint8)
            for _ in range(4):
                r0, c0 = rng.integers(0, tile_px - 8, 2)
                h, w = rng.integers(6, tile_px // 2, 2)
                mask[r0:r0 + h, c0:c0 + w] = rng.choice(labels)
            image = np.zeros((tile_px, tile_px, 3), np.int16)
            for label in labels:
                image[mask == label] = PALETTE[label]
            image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
            x0 = t * tile_px
            name = f"{slide}_{x0}_0.png"
            Image.fromarray(image).save(root / "images" / name)
            Image.fromarray(mask, mode="L").save(root / "masks" / name)
            rows.append({"slide": slide, "image": f"images/{name}", "mask": f"masks/{name}", "x0_px": x0, "y0_px": 0,
                         "mpp": mpp, "tile_px": tile_px,
                         **{f"count_{v}": int((mask == v).sum()) for v in labels},
                         "count_ignore": int((mask == 255).sum())})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "format": "qpbridge-tiles/1", "mpp": mpp, "tile_px": tile_px, "stride_px": tile_px, "ignore_label": 255,
        "role": role,
        "classes": [{"label": v, "name": n, "color": list(PALETTE[v])} for v, n in zip(labels, names, strict=True)],
        "slides": [{"slide": s, "path": f"{s}.tiff", "geojson": f"{s}.geojson", "slide_mpp": mpp} for s in slides],
        "qpbridge_version": "test",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def cell_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiles") / "cell")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cell_tiles: Path) -> tuple[Path, TrainResult]:
    out = tmp_path_factory.mktemp("models") / "tiny-cell"
    config = TrainConfig(threads=1, role="cell", steps=16, batch_size=4, lr=0.02, channels=TINY, seed=3)
    return out, train_model([cell_tiles], out, config)


# --------------------------------------------------------------------------------------------- datasets
def test_read_tile_dataset(cell_tiles: Path) -> None:
    ds = read_tile_dataset(cell_tiles)
    assert (ds.role, ds.mpp, ds.tile_px, len(ds.tiles), ds.slides) == ("cell", 0.5, 32, 16, ["s1", "s2"])
    assert [c.name for c in ds.classes] == CELL_NAMES


def test_read_tile_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no dataset.json: give a folder written by qpbridge masks"):
        read_tile_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "other/2"}))
    with pytest.raises(InputError, match="format is 'other/2', expected 'qpbridge-tiles/1'"):
        read_tile_dataset(tmp_path)


def test_fully_ignored_tiles_are_left_out(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", tiles_per_slide=2)
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["count_ignore"] = str(32 * 32)
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ds = read_tile_dataset(root)
    assert (len(ds.tiles), ds.n_fully_ignored) == (3, 1)


def test_split_by_slide_and_single_slide_fallback() -> None:
    tiles = [TileRecord(Path(f"{s}{i}"), Path("m"), s) for s in ("a", "b", "c", "d", "e") for i in range(3)]
    split, notes = split_tiles(tiles, 0.4, seed=1)
    assert split.by == "slide" and len(split.val_slides) == 2 and not notes
    assert not set(split.val_slides) & set(split.train_slides)
    assert {tiles[i].slide for i in split.val} == set(split.val_slides)
    assert sorted(split.train + split.val) == list(range(15))
    assert split_tiles(tiles, 0.4, seed=1)[0] == split  # seeded

    one = [TileRecord(Path(str(i)), Path("m"), "only") for i in range(10)]
    split1, notes1 = split_tiles(one, 0.2, seed=0)
    assert (split1.by, len(split1.val), len(split1.train)) == ("tile", 2, 8)
    assert "all tiles come from one slide (only)" in notes1[0]


def test_augmentation_moves_image_and_label_together(cell_tiles: Path) -> None:
    ds = read_tile_dataset(cell_tiles)
    torch_ds = TileTorchDataset(ds.tiles, 32, augmentation=build_augmentation(), cache=False)
    palette = torch.tensor([PALETTE[v] for v in range(4)], dtype=torch.float32) / 255
    changed = 0
    for seed in range(8):
        image, label = torch_ds[(0, seed)]
        plain_image, plain_label = torch_ds.load(0)
        changed += int(not torch.equal(label, torch.from_numpy(plain_label.astype(np.int64))))
        # Each pixel's nearest palette colour is still its label: the label followed the image.
        distance = ((image.permute(1, 2, 0)[..., None, :] - palette) ** 2).sum(-1)
        assert (distance.argmin(-1) == label).float().mean() > 0.97
        assert image.shape == (3, 32, 32) and label.dtype == torch.int64
    assert changed >= 4  # flips/rotations happened
    image_a, _ = torch_ds[(0, 5)]
    image_b, _ = torch_ds[(0, 5)]
    assert torch.equal(image_a, image_b)  # the seed decides


# --------------------------------------------------------------------------------------------- losses
def test_dice_ce_ignores_label_255_exactly() -> None:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    loss_fn = MaskedDiceCELoss(4)
    # With nothing ignored it is MONAI's DiceCELoss(softmax, to_onehot_y, 0.5/0.5).
    monai_loss = DiceCELoss(softmax=True, to_onehot_y=True, lambda_ce=0.5, lambda_dice=0.5)
    assert torch.allclose(loss_fn(logits, target), monai_loss(logits, target[:, None]), atol=1e-6)
    # Ignoring the right half equals the loss of the left half alone...
    ignored = target.clone()
    ignored[:, :, 4:] = 255
    left = loss_fn(logits[:, :, :, :4], target[:, :, :4])
    loss = loss_fn(logits, ignored)
    assert torch.allclose(loss, left, atol=1e-6)
    # ...whatever the logits there are, and no gradient reaches them.
    other = logits.detach().clone()
    other[:, :, :, 4:] = torch.randn(2, 4, 8, 4) * 10
    assert torch.allclose(loss_fn(other, ignored), loss, atol=1e-6)
    loss.backward()
    assert logits.grad is not None
    assert float(logits.grad[:, :, :, 4:].abs().max()) == 0.0
    assert float(logits.grad[:, :, :, :4].abs().max()) > 0.0


def test_bce_ignores_label_255_exactly() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 6, 6, requires_grad=True)
    target = torch.randint(0, 2, (2, 6, 6))
    loss_fn = MaskedBCELoss()
    plain = torch.nn.BCEWithLogitsLoss()(logits[:, 0], target.float())
    assert torch.allclose(loss_fn(logits, target), plain, atol=1e-6)
    ignored = target.clone()
    ignored[:, 3:] = 255
    loss = loss_fn(logits, ignored)
    top = torch.nn.BCEWithLogitsLoss()(logits[:, 0, :3], target[:, :3].float())
    assert torch.allclose(loss, top, atol=1e-6)
    loss.backward()
    assert logits.grad is not None and float(logits.grad[:, :, 3:].abs().max()) == 0.0


# --------------------------------------------------------------------------------------------- training
def test_train_writes_a_loadable_model(trained: tuple[Path, TrainResult], cell_tiles: Path) -> None:
    out, result = trained
    assert result.steps == 16 and len(result.step_losses) == 16
    assert np.mean(result.step_losses[-3:]) < 0.8 * np.mean(result.step_losses[:3])  # it learned
    for name in ("card.json", "weights.safetensors", "training_log.json", "checkpoint/state.json"):
        assert (out / name).is_file(), name
    model = load_model(out, role="cell")
    card = model.card
    assert (card.name, card.role, card.mpp, card.tile_px, card.color_space) == ("tiny-cell", "cell", 0.5, 32, "RGB")
    assert [c.name for c in card.classes] == CELL_NAMES
    assert [c.emit for c in card.classes] == [False, True, True, True]
    assert card.architecture.args["channels"] == list(TINY)
    assert card.training["split"]["by"] == "slide"
    assert card.training["split"]["train_slides"] != card.training["split"]["val_slides"]
    assert card.training["recipe"]["batch_size"] == 4 and card.training["recipe"]["lr"] == 0.02
    assert card.training["commands"][0].startswith(f"qpbridge train {cell_tiles} -o {out} --role cell --steps 16")
    assert card.training["cpu_time_s"] > 0 and card.training["best_step"] == result.best_step
    assert set(card.metrics) >= {"mean_dice_foreground", "pixel_accuracy", "val_loss", "classes", "mean_auc"}
    assert card.metrics["split"] == "validation"
    log = json.loads((out / "training_log.json").read_text())
    assert len(log["step_losses"]) == 16 and log["epochs"][-1]["step"] == 16
    # The network runs on a tile and gives one channel per class.
    with torch.inference_mode():
        assert model.network(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_resume_continues_the_same_run(tmp_path: Path, cell_tiles: Path) -> None:
    config = TrainConfig(threads=1, role="cell", steps=3, batch_size=4, lr=0.01, channels=TINY)
    first = train_model([cell_tiles], tmp_path / "a", config)
    assert first.steps == 3
    resumed = train_model([cell_tiles], tmp_path / "a", TrainConfig(threads=1, role="cell", steps=6, resume=True))
    straight_config = TrainConfig(threads=1, role="cell", steps=6, batch_size=4, lr=0.01, channels=TINY)
    straight = train_model([cell_tiles], tmp_path / "b", straight_config)
    assert resumed.steps == 6 and len(resumed.step_losses) == 6
    assert resumed.step_losses[:3] == first.step_losses
    np.testing.assert_allclose(resumed.step_losses, straight.step_losses, rtol=1e-4)
    card = load_card(tmp_path / "a")
    assert len(card.training["commands"]) == 2 and card.training["commands"][1].endswith("--resume")
    assert card.training["recipe"]["steps"] == 6


def test_resume_and_overwrite_errors(tmp_path: Path, cell_tiles: Path, trained: tuple[Path, TrainResult]) -> None:
    with pytest.raises(InputError, match="nothing to resume in .*: it has no checkpoint/state.json"):
        train_model([cell_tiles], tmp_path / "new", TrainConfig(threads=1, role="cell", steps=1, resume=True))
    with pytest.raises(OutputError, match="already holds a model or a training checkpoint: pass --resume"):
        train_model([cell_tiles], trained[0], TrainConfig(threads=1, role="cell", steps=1))
    with pytest.raises(InputError, match="give --epochs or --steps, not both"):
        train_model([cell_tiles], tmp_path / "x", TrainConfig(threads=1, role="cell", steps=1, epochs=1))


def test_init_from_fine_tunes_and_checks_the_data(tmp_path: Path, cell_tiles: Path,
                                                  trained: tuple[Path, TrainResult]) -> None:
    parent = trained[0]
    tuned = train_model([cell_tiles], tmp_path / "tuned",
                        TrainConfig(threads=1, role="cell", steps=2, batch_size=4, init_from=str(parent)))
    card = tuned.card
    parent_card = load_card(parent)
    assert (card.name, card.mpp, card.color_space, card.norm_mean) == (
        "tuned", parent_card.mpp, parent_card.color_space, parent_card.norm_mean)
    assert card.training["init_from"]["sha256"] == parent_card.weights_sha256
    coarse = write_dataset(tmp_path / "coarse", mpp=2.0, tiles_per_slide=2)
    with pytest.raises(ModelError, match=r"the tiles are at 2.0 um/px but the model expects 0.5 um/px; "
                                         r"export tiles at --mpp 0.5"):
        train_model([coarse], tmp_path / "t2", TrainConfig(threads=1, role="cell", steps=1, init_from=str(parent)))
    renamed = write_dataset(tmp_path / "renamed", tiles_per_slide=2,
                            names=["Normal", "Benign", "DCIS", "Invasive carcinoma"])
    with pytest.raises(ModelError, match="fine-tuning keeps the model's classes"):
        train_model([renamed], tmp_path / "t3", TrainConfig(threads=1, role="cell", steps=1, init_from=str(parent)))
    with pytest.raises(ModelError, match="is a cell model but a roi model is needed"):
        train_model([write_dataset(tmp_path / "roi", role="roi", tiles_per_slide=2)], tmp_path / "t4",
                    TrainConfig(threads=1, role="roi", steps=1, init_from=str(parent)))


def test_roi_training_in_lab_space(tmp_path: Path) -> None:
    tiles = write_dataset(tmp_path / "roi", role="roi", slides=("a",), tiles_per_slide=6)
    result = train_model([tiles], tmp_path / "m", TrainConfig(threads=1, role="roi", steps=6, batch_size=3, lr=0.02,
                                                              channels=TINY, color_space="lab"))
    card = result.card
    assert (card.role, card.color_space, card.threshold, card.out_channels) == ("roi", "LAB", 0.5, 1)
    assert card.norm_mean[0] > 50  # L* of pale tiles, before normalisation
    assert card.classes[1].aliases == ("Benign", "In situ carcinoma", "Invasive carcinoma")
    assert card.training["split"]["by"] == "tile"
    assert any("all tiles come from one slide (a)" in w for w in result.warnings)
    assert result.step_losses[-1] < result.step_losses[0]


def test_mismatched_datasets_are_refused(tmp_path: Path, cell_tiles: Path) -> None:
    other = write_dataset(tmp_path / "other", tile_px=64, tiles_per_slide=1)
    with pytest.raises(InputError, match="tile datasets disagree on tile size"):
        train_model([cell_tiles, other], tmp_path / "m", TrainConfig(threads=1, role="cell", steps=1))
    with pytest.raises(InputError, match="is a cell dataset but --role is roi"):
        train_model([cell_tiles], tmp_path / "m", TrainConfig(threads=1, role="roi", steps=1))


# --------------------------------------------------------------------------------------------- CLI
def test_cli_train(tmp_path: Path, cell_tiles: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-model"
    args = ["train", str(cell_tiles), "-o", str(out), "--role", "cell", "--steps", "2", "--batch-size", "4",
            "--channels", "4,8", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"model written to {out}: 2 steps, best step" in result.output
    assert load_card(out).training["commands"][0].endswith("--channels 4,8")
    again = runner.invoke(app, args)
    assert again.exit_code == 1
    assert "error:" in again.output and "already holds a model or a training checkpoint" in again.output
    bad = runner.invoke(app, ["train", str(cell_tiles), "-o", str(tmp_path / "z"), "--role", "tissue"])
    assert bad.exit_code == 2 and "--role must be 'roi', 'cell' or 'nuclei', got 'tissue'" in bad.output
    both = runner.invoke(app, ["train", str(cell_tiles), "-o", str(tmp_path / "z"), "--role", "cell", "--steps", "1",
                               "--epochs", "1"])
    assert both.exit_code == 2 and "give --epochs or --steps, not both" in both.output
