"""Model cards (validation, one clear line per problem), the registry, weights, BatchNorm folding, preprocessing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import ModelError
from qpbridge.models import (
    build_network,
    default_architecture,
    example_card,
    fold_batch_norm,
    inference_network,
    list_models,
    load_card,
    load_model,
    parse_color,
    resolve_model_path,
    save_model,
)
from qpbridge.preprocess import channel_statistics, convert_color, to_network_input

TINY = (4, 8)


def test_card_checks_the_unet_arguments_monai_takes() -> None:
    # cards.py lists UNet's keywords itself so that reading a card imports no torch; they must stay MONAI's.
    import inspect

    from monai.networks.nets import UNet

    from qpbridge.cards import UNET_ARGUMENTS

    assert list(UNET_ARGUMENTS) == [p for p in inspect.signature(UNet.__init__).parameters if p != "self"]


@pytest.fixture(autouse=True)
def isolated_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No model from the user's own directory leaks into these tests."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("QPBRIDGE_MODELS", raising=False)


def saved(directory: Path, role: str = "cell", name: str | None = None) -> Path:
    card = example_card(role, channels=TINY, name=name or directory.name)
    torch.manual_seed(0)
    save_model(directory, card, build_network(card.architecture))
    return directory


def edit_card(directory: Path, change: Any) -> Path:
    path = directory / "card.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    return path


def error_of(directory: Path) -> str:
    with pytest.raises(ModelError) as info:
        load_model(directory)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------- cards
def test_card_round_trip(tmp_path: Path) -> None:
    directory = saved(tmp_path / "m")
    card = load_card(directory)
    assert card.to_dict() == json.loads((directory / "card.json").read_text())
    assert '"color": [96, 168, 96]' in (directory / "card.json").read_text()  # compact number lists
    assert card.intended_use == "synthetic data, demonstration and testing, not for diagnosis"
    assert card.class_map()["Benign"] == 1 and card.classes[0].emit is False
    assert len(card.weights_sha256) == 64


def test_missing_field(tmp_path: Path) -> None:
    path = edit_card(saved(tmp_path / "m"), lambda raw: raw.pop("mpp"))
    assert error_of(tmp_path / "m") == (
        f"model card {path}: missing field 'mpp' (the input um/px, a number > 0)")


def test_wrong_type(tmp_path: Path) -> None:
    path = edit_card(saved(tmp_path / "m"), lambda raw: raw.update(tile_px="256"))
    assert error_of(tmp_path / "m") == f"model card {path}: field 'tile_px' is \"256\"; expected an integer >= 8"
    edit_card(tmp_path / "m", lambda raw: raw.update(tile_px=256, mpp=-0.5))
    assert "field 'mpp' is -0.5; expected the input um/px, a number > 0" in error_of(tmp_path / "m")
    edit_card(tmp_path / "m", lambda raw: raw.update(mpp=0.5, color_space="CMYK"))
    assert "field 'color_space' is \"CMYK\"; expected one of 'RGB', 'HSV', 'YCrCb', 'LAB'" in error_of(tmp_path / "m")


def test_unknown_field_suggests_the_right_one(tmp_path: Path) -> None:
    edit_card(saved(tmp_path / "m", "roi"), lambda raw: raw.update(treshold=raw.pop("threshold")))
    assert "field 'treshold' is 0.5; expected no such field (did you mean 'threshold'?)" in error_of(tmp_path / "m")


def test_unknown_colour_format(tmp_path: Path) -> None:
    path = edit_card(saved(tmp_path / "m"), lambda raw: raw["classes"][1].update(color="blue"))
    assert error_of(tmp_path / "m") == (
        f"model card {path}: field 'classes[1].color' is \"blue\"; expected a class colour as [r, g, b] with "
        "integers 0-255 or '#rrggbb' (unknown class colour format)")
    edit_card(tmp_path / "m", lambda raw: raw["classes"][1].update(color=[300, 0, 0]))
    assert "unknown class colour format" in error_of(tmp_path / "m")
    edit_card(tmp_path / "m", lambda raw: raw["classes"][1].update(color="#40A0E6"))
    assert load_card(tmp_path / "m").classes[1].color == (64, 160, 230)
    assert parse_color([1, 2, 3]) == (1, 2, 3)


def test_consistency_checks(tmp_path: Path) -> None:
    edit_card(saved(tmp_path / "m"), lambda raw: raw["architecture"]["args"].update(out_channels=3))
    assert "field 'architecture.args.out_channels' is 3; expected 4, the number of classes" in error_of(tmp_path / "m")
    edit_card(saved(tmp_path / "r", "roi"), lambda raw: raw.pop("threshold"))
    assert "missing field 'threshold' (a roi model's probability threshold" in error_of(tmp_path / "r")
    edit_card(tmp_path / "m", lambda raw: raw["architecture"]["args"].update(out_channels=4, chanels=[4, 8]))
    assert "'architecture.args.chanels'" in error_of(tmp_path / "m")
    assert "(did you mean 'channels'?)" in error_of(tmp_path / "m")


def test_sha256_mismatch(tmp_path: Path) -> None:
    directory = saved(tmp_path / "m")
    card = load_card(directory)
    weights = directory / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    message = error_of(directory)
    assert message.startswith(f"weights file {weights} has sha256 ")
    assert f"but {directory / 'card.json'} says {card.weights_sha256}: the file is damaged" in message
    import hashlib

    assert hashlib.sha256(bytes(data)).hexdigest() in message


def test_pickled_checkpoints_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelError, match="pickled checkpoints are not loaded .*; convert to safetensors"):
        load_model(pickled)
    with pytest.raises(ModelError, match="pickled checkpoints are not loaded"):
        load_model(tmp_path / "missing.ckpt")
    edit_card(saved(tmp_path / "m"), lambda raw: raw["weights"].update(file="weights.pth"))
    assert "field 'weights.file' is 'weights.pth': pickled checkpoints are not loaded; convert to safetensors" in (
        error_of(tmp_path / "m"))


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path) -> None:
    directory = saved(tmp_path / "m")
    small = example_card("cell", channels=(4, 8, 16))
    save_model(tmp_path / "other", small, build_network(small.architecture))
    (directory / "weights.safetensors").write_bytes((tmp_path / "other" / "weights.safetensors").read_bytes())
    sha = load_card(tmp_path / "other").weights_sha256
    edit_card(directory, lambda raw: raw["weights"].update(sha256=sha))
    assert "does not fit the architecture in" in error_of(directory)


# --------------------------------------------------------------------------------------------- registry
def test_registry_by_name_and_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    saved(first / "cellnet")
    saved(second / "cellnet", name="shadowed-one")
    saved(second / "roinet", "roi")
    monkeypatch.setenv("QPBRIDGE_MODELS", f"{first}{os.pathsep}{second}")
    model = load_model("cellnet", role="cell")
    assert model.path == first / "cellnet" and model.card.name == "cellnet"
    assert not model.network.training
    assert load_model("roinet").card.role == "roi"
    assert load_model(str(second / "cellnet" / "card.json")).card.name == "shadowed-one"
    assert load_model(second / "cellnet").path == second / "cellnet"
    entries = {(e.name, e.shadowed) for e in list_models()}
    assert {("cellnet", False), ("cellnet", True), ("roinet", False)} <= entries
    with pytest.raises(ModelError, match=r"no model named 'nope': known models: .*cellnet, .*roinet"):
        load_model("nope")
    with pytest.raises(ModelError, match=r"model 'roinet' \(.*\) is a roi model but a cell model is needed here"):
        load_model("roinet", role="cell")
    with pytest.raises(ModelError, match="no model at .*: the path does not exist"):
        resolve_model_path(str(tmp_path / "absent" / "card.json"))


def test_registry_user_directory(tmp_path: Path) -> None:
    saved(tmp_path / "xdg" / "qpbridge" / "models" / "mine")
    assert load_model("mine").path == tmp_path / "xdg" / "qpbridge" / "models" / "mine"


def test_cli_models_list_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved(tmp_path / "reg" / "roinet", "roi")
    monkeypatch.setenv("QPBRIDGE_MODELS", str(tmp_path / "reg"))
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [r for r in json.loads(listed.output) if r["name"] == "roinet"]
    assert rows[0]["role"] == "roi" and rows[0]["classes"] == ["Background", "ROI"] and rows[0]["tile_px"] == 256
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0 and "roinet" in table.output and "Background, ROI" in table.output
    shown = runner.invoke(app, ["models", "show", "roinet"])
    assert shown.exit_code == 0, shown.output
    assert "role:          roi (threshold 0.5)" in shown.output
    assert "1  ROI  rgb(255, 215, 0); also Benign, In situ carcinoma, Invasive carcinoma" in shown.output
    as_json = runner.invoke(app, ["models", "show", "roinet", "--json"])
    assert json.loads(as_json.output)["name"] == "roinet"
    missing = runner.invoke(app, ["models", "show", "nope"])
    assert missing.exit_code == 1 and "error: no model named 'nope'" in missing.output


# --------------------------------------------------------------------------------------------- networks
def test_default_architecture() -> None:
    roi, cell = default_architecture("roi", 2), default_architecture("cell", 4)
    assert roi.args["out_channels"] == 1 and cell.args["out_channels"] == 4
    assert cell.args["channels"] == [16, 32, 64, 128] and cell.args["strides"] == [2, 2, 2]
    assert (cell.args["num_res_units"], cell.args["norm"]) == (1, "batch")
    n_params = sum(p.numel() for p in build_network(cell).parameters())
    assert n_params * 4 < 2_000_000  # well under a few MB of float32 weights


def test_fold_batch_norm_keeps_the_output() -> None:
    torch.manual_seed(0)
    network = build_network(default_architecture("cell", 4)).eval()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1, 1)
    folded, count = fold_batch_norm(network)
    assert count == 9
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(folded(x).numpy(), network(x).numpy(), atol=1e-4)
    fast = inference_network(example_card("cell"), network)
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())  # the original is untouched


# --------------------------------------------------------------------------------------------- preprocessing
def test_rgb_identity_and_normalisation() -> None:
    card = example_card("cell")
    tiles = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    x = to_network_input(tiles, card)
    assert x.shape == (2, 3, 5, 6) and x.dtype == torch.float32
    expected = (tiles.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    assert torch.equal(to_network_input(torch.from_numpy(tiles), card), x)


def test_colour_spaces_match_skimage() -> None:
    from skimage.color import rgb2hsv, rgb2lab

    rgb = np.random.default_rng(1).random((7, 9, 3))
    rgb[0, :4] = [[1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.2], [0.2, 0.5, 0.5]]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    np.testing.assert_allclose(convert_color(x, "HSV")[0].permute(1, 2, 0).numpy(), rgb2hsv(rgb), atol=1e-9)
    np.testing.assert_allclose(convert_color(x, "LAB")[0].permute(1, 2, 0).numpy(), rgb2lab(rgb), atol=1e-6)
    white = convert_color(torch.ones(1, 3, 1, 1), "LAB").flatten()
    np.testing.assert_allclose(white.numpy(), [100.0, 0.0, 0.0], atol=0.01)
    red = convert_color(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), "YCrCb").flatten()
    np.testing.assert_allclose(red.numpy(), [0.299, 0.5 + 0.701 * 0.713, 0.5 - 0.299 * 0.564], atol=1e-6)


def test_channel_statistics() -> None:
    batches = [torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)]
    assert channel_statistics(batches, "RGB") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    constant = channel_statistics([torch.full((1, 3, 2, 2), 0.3)], "RGB")
    assert constant[1] == (1.0, 1.0, 1.0)  # no spread: no division by zero
