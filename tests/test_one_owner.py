"""Rules that used to live in two or three copies that disagreed: each now has one definition."""

from __future__ import annotations

import pytest
import torch

from qpbridge import cards, device, models, slide, tiles, tissue
from qpbridge.errors import InputError
from qpbridge.qupath import project as naming
from qpbridge.tiles import config as tile_config
from qpbridge.training import card as training_card
from qpbridge.training import loop


def test_train_and_predict_parse_device_alike() -> None:
    # ``train --device auto`` failed while predict accepted it: one parser now.
    assert loop.resolve_device is device.resolve_device
    assert device.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown --device 'gpu0': use cpu, cuda, cuda:N or auto"):
        device.resolve_device("gpu0")
    with pytest.raises(InputError, match="unknown --device 'meta'"):
        device.resolve_device("meta")


def test_one_default_tissue_mpp() -> None:
    # 8.0 in tissue.py and 16.0 in dataset.py (now qpbridge.tiles) under one name.
    assert tile_config.DEFAULT_TISSUE_MPP is tissue.DEFAULT_TISSUE_MPP
    assert tiles.MaskConfig().tissue_mpp == tissue.DEFAULT_TISSUE_MPP == 8.0


def test_image_names_strip_every_format_slides_open() -> None:
    # A folder given to predict skipped formats slide.py opens; naming kept a third list.
    assert set(slide.SLIDE_SUFFIXES) <= set(naming.SLIDE_EXTENSIONS)
    for suffix in slide.SLIDE_SUFFIXES:
        assert slide.has_slide_suffix(f"case{suffix.upper()}")
        assert naming.image_basename(f"case{suffix}") == "case"
    assert not slide.has_slide_suffix("case.czi")  # QuPath opens it, qpbridge does not
    assert naming.image_basename("case.czi") == "case"


def test_one_default_intended_use_and_dataset_format() -> None:
    assert training_card.DEFAULT_INTENDED_USE is models.DEFAULT_INTENDED_USE is cards.DEFAULT_INTENDED_USE
    assert "not for diagnosis" in models.DEFAULT_INTENDED_USE
    assert loop.DATASET_FORMAT is tiles.DATASET_FORMAT


def test_the_package_names_its_public_api_without_loading_torch() -> None:
    import subprocess
    import sys

    import qpbridge

    assert set(qpbridge.__all__) == {"QpbridgeError", "__version__", *qpbridge._PUBLIC}
    code = "import sys, qpbridge; qpbridge.read_geojson; qpbridge.PredictConfig; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    for name in qpbridge.__all__:
        assert getattr(qpbridge, name) is not None
