"""Synthetic slides: Aperio pyramid that OpenSlide reads, determinism, seamless tiles, truth that matches pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import rasterio.features
import shapely
from shapely.geometry import shape
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError, OutputError
from qpbridge.synth import SynthResult, level_dimensions_for, synth_paths, write_synthetic_slide
from qpbridge.synth.layout import make_layout
from qpbridge.synth.render import Renderer

LESIONS = ("Benign", "In situ carcinoma", "Invasive carcinoma")
CODES = {"Tissue": 1, "Benign": 2, "In situ carcinoma": 3, "Invasive carcinoma": 4, "Pen mark": 5}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """A 2048 x 1536 slide (seed 3), with nuclei."""
    path = tmp_path_factory.mktemp("small") / "small.svs"
    return write_synthetic_slide(path, width_px=2048, height_px=1536, seed=3, nuclei=True)


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """A 4000 x 3000 slide (seed 5): regions big enough for colour statistics."""
    path = tmp_path_factory.mktemp("medium") / "medium.svs"
    return write_synthetic_slide(path, width_px=4000, height_px=3000, seed=5)


@pytest.fixture(scope="module")
def medium_rgb(medium: SynthResult) -> np.ndarray:
    return read_rgb(medium.slide_path)


def read_rgb(path: Path, level: int = 0, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        x, y, w, h = region if region is not None else (0, 0, *slide.level_dimensions[level])
        return np.asarray(slide.read_region((x, y), level, (w, h)).convert("RGB"))


def truth_features(result: SynthResult) -> list[dict]:
    return json.loads(result.truth_path.read_text())["features"]


def by_class(result: SynthResult) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in truth_features(result):
        out.setdefault(f["properties"]["classification"]["name"], []).append(shape(f["geometry"]))
    return out


def label_map(result: SynthResult) -> np.ndarray:
    """The truth rasterized at level 0 (0 glass, 1 normal tissue, 2-4 lesions, 5 pen on top)."""
    shapes = sorted(
        ((f["geometry"], CODES[f["properties"]["classification"]["name"]]) for f in truth_features(result)),
        key=lambda item: item[1],
    )
    return rasterio.features.rasterize(shapes, out_shape=(result.height_px, result.width_px), dtype="uint8")


# ------------------------------------------------------------------------------------------ the slide file
def test_opens_as_aperio_with_pyramid(small: SynthResult) -> None:
    with openslide.OpenSlide(str(small.slide_path)) as slide:
        props = slide.properties
        assert props["openslide.vendor"] == "aperio"
        assert props["openslide.mpp-x"] == "0.25"
        assert props["openslide.mpp-y"] == "0.25"
        assert props["openslide.objective-power"] == "40"
        assert "|MPP = 0.25|AppMag = 40|" in props["tiff.ImageDescription"]
        assert props["tiff.ImageDescription"].startswith("Aperio Image Library")
        assert slide.level_count == 3 == small.level_count
        assert slide.level_dimensions == ((2048, 1536), (512, 384), (128, 96))
        assert slide.level_downsamples == (1.0, 4.0, 16.0)
        assert props["openslide.level[0].tile-width"] == "256"
        assert "thumbnail" in slide.associated_images


def test_level_dimensions_rule() -> None:
    assert level_dimensions_for(512, 512) == ((512, 512), (128, 128), (32, 32))
    assert level_dimensions_for(12000, 9000) == ((12000, 9000), (3000, 2250), (750, 562))
    dims = level_dimensions_for(100_000, 80_000)
    assert dims == ((100_000, 80_000), (25_000, 20_000), (6250, 5000), (1562, 1250))
    assert synth_paths("a/b/slide.svs") == (
        Path("a/b/slide.truth.geojson"),
        Path("a/b/slide.truth.meta.json"),
        Path("a/b/slide.nuclei.geojson"),
    )


def test_colours_survive_jpeg(small: SynthResult) -> None:
    """What OpenSlide reads equals what was rendered (an RGB/YCbCr mix-up would swap hues)."""
    layout = make_layout(2048, 1536, 3, 0.10)
    renderer = Renderer.create(layout, 3, "standard")
    x, y, w, h = 512, 512, 768, 512
    expected = renderer.render(x, y, w, h).astype(np.float64)
    got = read_rgb(small.slide_path, 0, (x, y, w, h)).astype(np.float64)
    assert np.abs(got - expected).mean() < 3.0
    assert np.abs(got.mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 1.0
    # Glass in the top-left corner: near-white, very slightly tinted, with a little noise.
    corner = read_rgb(small.slide_path, 0, (0, 0, 96, 96)).reshape(-1, 3).astype(np.float64)
    assert np.all(corner.mean(axis=0) > 225)
    assert np.all(corner.std(axis=0) < 4)


def test_lower_levels_are_box_downsampled_level0(small: SynthResult) -> None:
    level0 = read_rgb(small.slide_path, 0).astype(np.float64)
    for level, factor in ((1, 4), (2, 16)):
        got = read_rgb(small.slide_path, level).astype(np.float64)
        h, w = got.shape[:2]
        boxed = level0[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
        assert np.abs(got - boxed).mean() < 3.0, level


def test_deterministic_per_seed(tmp_path: Path, small: SynthResult) -> None:
    again = write_synthetic_slide(tmp_path / "again.svs", width_px=2048, height_px=1536, seed=3)
    other = write_synthetic_slide(tmp_path / "other.svs", width_px=2048, height_px=1536, seed=4)
    region = (256, 256, 1024, 768)
    first = read_rgb(small.slide_path, 0, region)
    assert np.array_equal(first, read_rgb(again.slide_path, 0, region))
    assert again.truth_path.read_bytes() == small.truth_path.read_bytes()
    assert np.abs(first.astype(int) - read_rgb(other.slide_path, 0, region)).mean() > 10
    assert other.truth_path.read_bytes() != small.truth_path.read_bytes()


def test_windows_join_without_seams() -> None:
    """Nuclei, fibres and noise depend on absolute position: two halves equal the whole window."""
    layout = make_layout(2048, 1536, 3, 0.10)
    renderer = Renderer.create(layout, 3, "standard")
    lesion = layout.lesions[0][1].centroid
    x, y = int(lesion.x) - 200, int(lesion.y) - 100
    whole = renderer.render(x, y, 400, 200).astype(int)
    left = renderer.render(x, y, 200, 200).astype(int)
    right = renderer.render(x + 200, y, 200, 200).astype(int)
    halves = np.concatenate([left, right], axis=1)
    assert np.abs(whole - halves).max() <= 1
    assert (whole != halves).mean() < 1e-3


# ------------------------------------------------------------------------------------------------ truth
def test_truth_file_is_qupath_geojson(small: SynthResult) -> None:
    doc = json.loads(small.truth_path.read_text())
    assert doc["type"] == "FeatureCollection"
    names = [f["properties"]["classification"]["name"] for f in doc["features"]]
    assert {"Tissue", *LESIONS} <= set(names)
    assert 1 <= names.count("Pen mark") <= 3
    for f in doc["features"]:
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert len(props["classification"]["color"]) == 3
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        geom = shape(f["geometry"])
        assert geom.is_valid and not geom.is_empty
        coords = shapely.get_coordinates(geom)
        assert np.allclose(coords, np.round(coords, 2))
        rings = f["geometry"]["coordinates"] if f["geometry"]["type"] == "Polygon" else f["geometry"]["coordinates"][0]
        assert all(ring[0] == ring[-1] for ring in rings)
    colors = {
        f["properties"]["classification"]["name"]: f["properties"]["classification"]["color"] for f in doc["features"]
    }
    assert colors["Invasive carcinoma"] == [215, 25, 35]


def test_truth_file_holds_the_rendered_geometry(small: SynthResult) -> None:
    """The renderer rasterizes exactly the geometries written (same 0.01 px grid, nothing repaired)."""
    layout = make_layout(2048, 1536, 3, 0.10)
    written = [shape(f["geometry"]) for f in truth_features(small)]
    drawn = [g for g in layout.tissue] + [g for _, g in layout.lesions] + [g for _, g in layout.pens]
    assert len(written) == len(drawn)
    for a, b in zip(written, drawn, strict=True):
        assert shapely.equals_exact(shapely.normalize(a), shapely.normalize(b), tolerance=1e-9)


def test_truth_layout_is_sane(medium: SynthResult) -> None:
    classes = by_class(medium)
    tissue = shapely.union_all(classes["Tissue"])
    slide_area = medium.width_px * medium.height_px
    assert 0.38 < tissue.area / slide_area < 0.62
    lesions = [g for name in LESIONS for g in classes[name]]
    lesion_area = sum(g.area for g in lesions)
    assert 0.08 < lesion_area / tissue.area < 0.12
    assert medium.lesion_fraction == pytest.approx(lesion_area / tissue.area, rel=1e-3)
    assert all(tissue.buffer(1).contains(g) for g in lesions)
    assert not shapely.union_all(lesions).intersects(shapely.union_all(classes["Pen mark"]))
    meta = json.loads(medium.meta_path.read_text())["synth"]
    assert meta["seed"] == 5 and meta["stain"] == "standard" and meta["mpp"] == 0.25
    assert meta["class_areas_um2"]["Invasive carcinoma"] == pytest.approx(
        sum(g.area for g in classes["Invasive carcinoma"]) * 0.0625, rel=1e-6
    )
    assert sum(meta["class_areas_um2"].values()) == pytest.approx(tissue.area * 0.0625, rel=1e-6)


def test_pixels_agree_with_truth(medium: SynthResult, medium_rgb: np.ndarray) -> None:
    labels = label_map(medium).ravel()
    rgb = medium_rgb.reshape(-1, 3)
    counts = np.bincount(labels, minlength=6)
    mean = np.stack([np.bincount(labels, weights=rgb[:, c], minlength=6) for c in range(3)], axis=1)
    mean /= counts[:, None]
    glass, normal, benign, in_situ, invasive = mean[:5]
    assert np.all(glass > 230)
    assert normal[0] - normal[1] > 50  # pink: eosin takes green
    for lesion in (in_situ, invasive):
        assert normal[1] - lesion[1] > 15  # more nuclei / denser stroma
    white = np.bincount(labels, weights=rgb.min(axis=1) > 225, minlength=6) / counts
    assert white[2] > 0.05  # gland lumens
    assert white[1] < 0.02
    # Tissue outline: just inside is stained, just outside is glass (pen strokes aside).
    pen = labels == 5
    tissue = shapely.union_all(by_class(medium)["Tissue"])
    shape_px = (medium.height_px, medium.width_px)
    inside = rasterio.features.rasterize([tissue.buffer(-3)], out_shape=shape_px).ravel().astype(bool) & ~pen
    outside = ~rasterio.features.rasterize([tissue.buffer(3)], out_shape=shape_px).ravel().astype(bool) & ~pen
    darkest = rgb.min(axis=1)
    assert (darkest[inside] < 225).mean() > 0.99
    assert (darkest[outside] > 225).mean() > 0.999


def test_pen_strokes_have_ink_colours(medium: SynthResult, medium_rgb: np.ndarray) -> None:
    rgb = medium_rgb
    tissue = shapely.union_all(by_class(medium)["Tissue"])
    checked = 0
    for f in truth_features(medium):
        name = f["properties"]["name"]
        if not name.startswith("Pen mark"):
            continue
        over_glass = shape(f["geometry"]).buffer(-4).difference(tissue.buffer(4))
        if over_glass.area < 500:
            continue
        mask = rasterio.features.rasterize([over_glass], out_shape=rgb.shape[:2]).astype(bool)
        r, g, b = rgb[mask].mean(axis=0, dtype=np.float64)
        checked += 1
        if "(black)" in name:
            assert max(r, g, b) < 140
        elif "(blue)" in name:
            assert b - r > 60 and b > g
        else:
            assert g - r > 40 and g - b > 30
    assert checked >= 1


def test_stains_differ(tmp_path: Path, small: SynthResult) -> None:
    faded = write_synthetic_slide(tmp_path / "faded.svs", width_px=2048, height_px=1536, seed=3, stain="faded")
    labels = label_map(small)
    assert np.array_equal(labels, label_map(faded))  # same layout, only the look changes
    tissue = labels == 1
    standard_px = read_rgb(small.slide_path).astype(np.float64)[tissue].mean(axis=0)
    faded_px = read_rgb(faded.slide_path).astype(np.float64)[tissue].mean(axis=0)
    assert faded_px[1] - standard_px[1] > 30  # much paler eosin


def test_nuclei_detections(small: SynthResult) -> None:
    assert small.nuclei_path is not None and small.nuclei_count
    doc = json.loads(small.nuclei_path.read_text())
    assert len(doc["features"]) == small.nuclei_count
    classes = by_class(small)
    in_situ = shapely.union_all(classes["In situ carcinoma"])
    counted = 0
    for f in doc["features"]:
        assert f["properties"]["objectType"] == "detection"
        geom = shape(f["geometry"])
        assert geom.is_valid
        if f["properties"]["classification"]["name"] == "In situ carcinoma":
            assert in_situ.contains(geom.centroid)
            counted += 1
    assert counted >= 5
    centres = {
        (round(f["geometry"]["coordinates"][0][0][0], 2), round(f["geometry"]["coordinates"][0][0][1], 2))
        for f in doc["features"]
    }
    assert len(centres) == len(doc["features"])  # each nucleus written once, whatever block it crosses


# ------------------------------------------------------------------------------------------- arguments
def test_rejects_bad_arguments(tmp_path: Path, small: SynthResult) -> None:
    with pytest.raises(InputError, match=r"--width must be an integer >= 512 px, got 100"):
        write_synthetic_slide(tmp_path / "x.svs", width_px=100, height_px=1000)
    with pytest.raises(InputError, match=r"unknown --stain 'blue': choose one of standard, faded, dark"):
        write_synthetic_slide(tmp_path / "x.svs", width_px=1000, height_px=1000, stain="blue")
    with pytest.raises(OutputError, match=r"exists: choose another path or pass --overwrite"):
        write_synthetic_slide(small.slide_path, width_px=1000, height_px=1000)
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match=r"afile is a file, not a folder: choose another output path"):
        write_synthetic_slide(tmp_path / "afile" / "x.svs", width_px=1000, height_px=1000)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]
    made = write_synthetic_slide(tmp_path / "new" / "folder" / "x.svs", width_px=1000, height_px=1000)
    assert made.slide_path.exists() and made.truth_path.parent == tmp_path / "new" / "folder"


# ------------------------------------------------------------------------------------------------- cli
def test_cli_writes_and_summarises(tmp_path: Path) -> None:
    out = tmp_path / "cli.svs"
    result = CliRunner().invoke(app, ["synth", str(out), "--width", "1024", "--height", "768", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert f"slide:    {out} (1024 x 768 px, 0.25 um/px, 40x, 3 levels: 1024x768, 256x192, 64x48)" in result.output
    assert f"truth:    {tmp_path / 'cli.truth.geojson'}" in result.output
    assert "Invasive carcinoma:" in result.output
    assert out.exists() and (tmp_path / "cli.truth.meta.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.svs", "cli.truth.geojson", "cli.truth.meta.json"]

    again = CliRunner().invoke(app, ["synth", str(out), "--width", "1024", "--height", "768"])
    assert again.exit_code == 1
    assert again.output.strip() == f"error: {out} exists: choose another path or pass --overwrite"

    forced = CliRunner().invoke(app, ["synth", str(out), "--width", "1024", "--height", "768", "--overwrite"])
    assert forced.exit_code == 0, forced.output


def test_cli_rejects_bad_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "x.svs"), "--width", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --width must be an integer >= 512 px, got 0"
    assert not list(tmp_path.iterdir())
