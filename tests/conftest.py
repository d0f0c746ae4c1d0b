"""Shared fixtures: small slides generated on the fly, and the path of the shared real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test (with the reason) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data absent: {path}")
    return path


def nuclei_model_installed(name: str = "monuseg-nuclei") -> bool:
    """Whether the registry finds the nuclei model ``name`` (the shipped one, or one in ``$QPBRIDGE_MODELS``)."""
    from qpbridge.cards import resolve_model_path
    from qpbridge.errors import QpbridgeError

    try:
        return (resolve_model_path(name) / "card.json").is_file()
    except QpbridgeError:
        return False


def gradient_rgb(height: int, width: int) -> np.ndarray:
    """A smooth RGB test pattern: R follows x, G follows y, B a diagonal wave (so resampling errors show)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * xx / max(width - 1, 1)
    green = 255 * yy / max(height - 1, 1)
    blue = 127.5 + 127.5 * np.sin((xx + yy) / 37.0)
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def write_pyramid_tiff(path: Path, rgb: np.ndarray, mpp: float | None, levels: int = 3, tile_px: int = 64) -> None:
    """A tiled generic TIFF pyramid (downsample 2 per level) that OpenSlide opens as vendor generic-tiff."""
    import tifffile
    from PIL import Image

    image = Image.fromarray(rgb)
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            scale = 2**level
            level_img = image.resize((rgb.shape[1] // scale, rgb.shape[0] // scale), Image.Resampling.BOX)
            kwargs: dict = {}
            if mpp is not None:
                per_cm = 10_000.0 / (mpp * scale)
                kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(
                np.asarray(level_img), tile=(tile_px, tile_px), photometric="rgb", compression="zlib",
                subfiletype=0 if level == 0 else 1, **kwargs,
            )


@pytest.fixture(scope="session")
def pyramid_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024 x 768 gradient pyramid at 0.5 um/px with levels at 1 and 2 um/px."""
    path = tmp_path_factory.mktemp("pyramid") / "gradient.tiff"
    write_pyramid_tiff(path, gradient_rgb(768, 1024), mpp=0.5)
    return path


@pytest.fixture(scope="session")
def synth_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6000 x 4500 synthetic slide (seed 1: tissue, lesions of every class, black, blue and green pen)."""
    from qpbridge.synth import write_synthetic_slide

    path = tmp_path_factory.mktemp("synth") / "seed1.svs"
    write_synthetic_slide(path, width_px=6000, height_px=4500, seed=1)
    return path


def truth_geometries(slide_path: Path, class_name: str) -> list:
    """Shapely geometries of one class in the truth GeoJSON beside a synthetic slide."""
    import json

    from shapely.geometry import shape

    truth = slide_path.with_suffix(".truth.geojson")
    features = json.loads(truth.read_text())["features"]
    return [shape(f["geometry"]) for f in features if f["properties"]["classification"]["name"] == class_name]
