"""Pixel sizes no slide has are never trusted: a default resolution tag, an impossible value, ``--mpp 1000``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError, SlideError
from qpbridge.slide import SLIDE_MPP_RANGE, check_slide_mpp, open_slide

RGB = np.full((300, 400, 3), 200, np.uint8)


def test_plain_tiff_at_72_dpi_has_no_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "scan.tif"
    Image.fromarray(RGB).save(path, dpi=(72, 72))
    with open_slide(path) as slide:
        assert not slide.has_mpp
        with pytest.raises(SlideError) as caught:
            _ = slide.mpp
    assert str(caught.value) == (
        f"{path} has no usable pixel size (its resolution tag is 72 dpi, an image writer's default): give it "
        "with --mpp (um/px at full resolution, e.g. --mpp 0.25 for a 40x scan)"
    )
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5


def test_tiled_tiff_with_an_impossible_pixel_size_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "tiled.tif"  # OpenSlide reads it, and derives 25,400 / 72 = 352.8 um/px
    tifffile.imwrite(path, RGB, tile=(256, 256), resolution=(72, 72), resolutionunit="INCH")
    with open_slide(path) as slide:
        assert not slide.has_mpp
        assert slide.mpp_rejected is not None and "352.8 um/px" in slide.mpp_rejected
        with pytest.raises(SlideError, match=r"outside the 0.05-50 um/px any slide or image has\): give it with"):
            _ = slide.mpp


def test_real_resolution_in_cm_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "tile.tif"
    tifffile.imwrite(path, RGB, resolution=(40_000, 40_000), resolutionunit="CENTIMETER")  # 0.25 um/px
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [1000.0, 0.01, 50.5])
def test_mpp_outside_the_range_is_refused(bad: float) -> None:
    with pytest.raises(InputError, match=rf"--mpp {bad:g} um/px is outside the 0.05-50 um/px"):
        check_slide_mpp(bad)
    assert check_slide_mpp(SLIDE_MPP_RANGE[1]) == 50.0


def test_cli_refuses_mpp_1000(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    Image.fromarray(RGB).save(path)
    result = CliRunner().invoke(app, ["info", str(path), "--mpp", "1000"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: --mpp 1000 um/px is outside the 0.05-50 um/px any slide or image has: give the level-0 pixel size, "
        "e.g. 0.25 for a 40x scan, 0.5 for 20x"
    )
