"""Slides: opening, pixel size, level choice, reading at a target um/px, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError, SlideError
from qpbridge.slide import open_slide
from tests.conftest import gradient_rgb, shared_file, write_pyramid_tiff

runner = CliRunner()


def test_pyramid_metadata(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        info = slide.info()
    assert info.reader == "openslide"
    assert info.vendor == "generic-tiff"
    assert (info.width_px, info.height_px) == (1024, 768)
    assert info.level_downsamples == [1.0, 2.0, 4.0]
    assert info.mpp == pytest.approx(0.5)
    assert info.magnification == pytest.approx(20.0)


@pytest.mark.parametrize(("mpp", "level"), [(0.5, 0), (0.75, 0), (1.0, 1), (1.5, 1), (2.0, 2), (8.0, 2)])
def test_level_choice_is_coarsest_adequate(pyramid_tiff: Path, mpp: float, level: int) -> None:
    with open_slide(pyramid_tiff) as slide:
        assert slide.level_for_mpp(mpp) == level


@pytest.mark.parametrize("mpp", [1.0, 2.0, 4.0])
def test_read_at_mpp_matches_downsampled_level0(pyramid_tiff: Path, mpp: float) -> None:
    with open_slide(pyramid_tiff) as slide:
        factor = int(mpp / slide.mpp)
        x, y, w, h = 8, 4, 64, 48  # target-grid window
        region = slide.read_region_at(x, y, w, h, mpp)
        level0 = slide.read_region_at(x * factor, y * factor, w * factor, h * factor, slide.mpp)
    assert region.shape == (h, w, 3) and region.dtype == np.uint8
    reference = np.asarray(Image.fromarray(level0).resize((w, h), Image.Resampling.BOX))
    assert np.abs(reference.astype(int) - region.astype(int)).mean() < 2.0


def test_read_at_an_integer_factor_of_a_level_is_the_rounded_box_mean(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        level = slide.read_region_at(6, 10, 80, 60, 2.0)  # level 2 itself (2 um/px)
        half = slide.read_region_at(3, 5, 40, 30, 4.0)  # 2 x 2 boxes of it
    sums = level.reshape(30, 2, 40, 2, 3).astype(np.int64).sum(axis=(1, 3))
    assert np.array_equal(half, (sums + 2) // 4)


def test_read_uses_the_coarse_level_not_level0(pyramid_tiff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(pyramid_tiff) as slide:
        levels: list[int] = []
        original = slide._read_level

        def spy(level: int, *args: int) -> Image.Image:
            levels.append(level)
            return original(level, *args)

        monkeypatch.setattr(slide, "_read_level", spy)
        slide.read_region_at(0, 0, 32, 32, 2.0)
        slide.read_region_at(0, 0, 32, 32, 1.2)
    assert levels == [2, 1]


def test_affine_maps_target_pixels_to_level0(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        assert slide.affine_at(2.0) @ (10, 3) == pytest.approx((40.0, 12.0))
        assert slide.affine_at(2.0, 5, 6) @ (0, 0) == pytest.approx((20.0, 24.0))
        assert slide.size_at_mpp(3.0) == (171, 128)  # 1024 / 6 -> 170.67 -> 171 px


def test_region_outside_slide_is_white(pyramid_tiff: Path) -> None:
    with open_slide(pyramid_tiff) as slide:
        region = slide.read_region_at(1000, 760, 40, 20, slide.mpp)
    assert (region[10:, 30:] == 255).all()


def test_real_svs_reads_at_target_mpp() -> None:
    path = shared_file("wsi", "cmu-1-small-region.svs")
    with open_slide(path) as slide:
        assert slide.info().vendor == "aperio"
        assert slide.mpp == pytest.approx(0.499)
        region = slide.read_region_at(10, 20, 100, 150, 4 * slide.mpp)
        level0 = slide.read_region_at(40, 80, 400, 600, slide.mpp)
    reference = np.asarray(Image.fromarray(level0).resize((100, 150), Image.Resampling.BOX))
    assert np.abs(reference.astype(int) - region.astype(int)).mean() < 1.0


def test_plain_png_with_and_without_pixel_size(tmp_path: Path) -> None:
    rgb = gradient_rgb(120, 160)
    no_mpp = tmp_path / "plain.png"
    Image.fromarray(rgb).save(no_mpp)
    with open_slide(no_mpp) as slide:
        assert slide.info().reader == "pillow" and not slide.has_mpp
        with pytest.raises(SlideError, match=r"has no pixel size in its metadata: give it with --mpp"):
            _ = slide.mpp
    with open_slide(no_mpp, mpp=2.0) as slide:
        assert slide.mpp == 2.0
        assert slide.read_region_at(0, 0, 80, 60, 4.0).shape == (60, 80, 3)
    with_dpi = tmp_path / "dpi.tif"
    Image.fromarray(rgb).save(with_dpi, dpi=(25400 / 0.5, 25400 / 0.5))
    with open_slide(with_dpi) as slide:
        assert slide.mpp == pytest.approx(0.5, rel=1e-3)


def test_missing_file() -> None:
    with pytest.raises(InputError, match=r"slide not found: /no/such/slide.svs: check the path"):
        open_slide("/no/such/slide.svs")


def test_text_file_renamed_svs(tmp_path: Path) -> None:
    fake = tmp_path / "notes.svs"
    fake.write_text("this is not a slide\n")
    with pytest.raises(SlideError, match=r"cannot open .*notes.svs: OpenSlide cannot read it .*damaged or incomplete"):
        open_slide(fake)


def test_unopenable_tiff() -> None:
    path = shared_file("wsi", "unopenable.tiff")
    with pytest.raises(SlideError, match=r"unopenable.tiff: not a slide .*Unsupported TIFF compression"):
        open_slide(path)


def test_unreadable_pixels() -> None:
    path = shared_file("wsi", "unreadable.svs")
    with pytest.raises(SlideError, match=r"cannot read pixels of .*unreadable.svs"):
        open_slide(path)


@pytest.mark.parametrize("bad", [0.0, -0.25, float("nan")])
def test_non_positive_mpp(pyramid_tiff: Path, bad: float) -> None:
    with pytest.raises(InputError, match=r"--mpp must be a positive number of um/px"):
        open_slide(pyramid_tiff, mpp=bad)


def test_bounds_and_qupath_offset(pyramid_tiff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(pyramid_tiff) as slide:
        assert slide.bounds_xy_px == (0, 0) and slide.qupath_offset_xy_px == (0, 0)
        props = {"openslide.bounds-x": "100", "openslide.bounds-y": "50",
                 "openslide.bounds-width": "800", "openslide.bounds-height": "600"}
        monkeypatch.setattr(type(slide), "properties", property(lambda self: props))
        assert slide.bounds_xy_px == (100, 50)
        assert slide.qupath_offset_xy_px == (100, 50) and slide.qupath_size_px == (800, 600)
        # QuPath's OpenSlide server reads every tile at (x + bounds-x, y + bounds-y) and shows bounds-width x
        # bounds-height whenever the four are integers; its isCropped flag (both sides differ) only changes the
        # resolution levels. It used to be read as "no crop unless both sides differ".
        props.update({"openslide.bounds-x": "0", "openslide.bounds-width": "1024"})
        assert slide.qupath_offset_xy_px == (0, 50) and slide.qupath_size_px == (1024, 600)
        props.update({"openslide.bounds-y": "0", "openslide.bounds-width": "800"})  # a crop at the origin
        assert slide.qupath_offset_xy_px == (0, 0) and slide.qupath_size_px == (800, 600)  # diff took 1024 x 768
        props["openslide.bounds-height"] = "600.0"  # not an integer: QuPath does not crop
        assert slide.qupath_offset_xy_px == (0, 0) and slide.qupath_size_px == (1024, 768)
        del props["openslide.bounds-height"]
        assert slide.qupath_offset_xy_px == (0, 0) and slide.qupath_size_px == (1024, 768)


# -- CLI ----------------------------------------------------------------------------------------------

def test_cli_info_json(pyramid_tiff: Path) -> None:
    result = runner.invoke(app, ["info", str(pyramid_tiff), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["level_count"] == 3 and data["mpp"] == pytest.approx(0.5)
    assert data["level_dimensions_px"][2] == [256, 192]


def test_cli_info_table(pyramid_tiff: Path) -> None:
    result = runner.invoke(app, ["info", str(pyramid_tiff)])
    assert result.exit_code == 0
    assert "dimensions:     1024 x 768 px" in result.stdout
    assert "level 2:      256 x 192 px, downsample 4, 2 um/px" in result.stdout


def test_cli_errors_are_one_line(tmp_path: Path, pyramid_tiff: Path) -> None:
    missing = runner.invoke(app, ["info", str(tmp_path / "gone.svs")])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == f"error: slide not found: {tmp_path / 'gone.svs'}: check the path"
    bad_mpp = runner.invoke(app, ["info", str(pyramid_tiff), "--mpp", "0"])
    assert bad_mpp.exit_code == 2
    assert bad_mpp.stderr.count("\n") == 1 and "Traceback" not in bad_mpp.output
    fake = tmp_path / "fake.svs"
    fake.write_text("nope")
    not_slide = runner.invoke(app, ["info", str(fake)])
    assert not_slide.exit_code == 1 and not_slide.stderr.startswith(f"error: cannot open {fake}")


def test_cli_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("qpbridge ")


def test_unknown_tiff_without_resolution_needs_mpp(tmp_path: Path) -> None:
    path = tmp_path / "nores.tiff"
    write_pyramid_tiff(path, gradient_rgb(256, 256), mpp=None, levels=2)
    with open_slide(path) as slide:
        assert not slide.has_mpp
        with pytest.raises(SlideError, match="--mpp"):
            slide.read_region_at(0, 0, 8, 8, 1.0)
