"""predict's nuclei stage: seams (an oracle network), --nuclei-only, classification by region, cells, options."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from torch import nn
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError, ModelError
from qpbridge.models import LoadedModel, example_card, load_model
from qpbridge.nuclei.measure import MEASUREMENT_NAMES
from qpbridge.predict import PredictConfig, predict_slide
from qpbridge.predict.nuclei import DETECTION_PROBABILITY, NucleiOptions, segment_nuclei
from qpbridge.predict.segmenter import SegmenterSettings
from qpbridge.qupath import meta_path, read_geojson, validate_geojson
from qpbridge.slide import open_slide
from qpbridge.tissue import detect_tissue
from tests.conftest import write_pyramid_tiff

MPP = 0.5
TISSUE_A, TISSUE_B = (230, 150, 200), (230, 150, 100)  # A: the cell oracle's invasive carcinoma, B: normal
INTERIOR, RING = (70, 30, 120), (130, 90, 150)  # the nuclei oracle reads the green channel


class _Oracle(nn.Module):
    """Per-pixel logits from the input's colour: the green channel's nearest of ``levels`` wins (``nuclei``),
    or blue > 160 after a 15 px max filter is class 3, else class 0 (``cell``)."""

    def __init__(self, card: object, kind: str) -> None:
        super().__init__()
        self.mean = torch.tensor(card.norm_mean).view(1, 3, 1, 1)  # type: ignore[attr-defined]
        self.std = torch.tensor(card.norm_std).view(1, 3, 1, 1)  # type: ignore[attr-defined]
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = (x * self.std + self.mean) * 255.0
        if self.kind == "nuclei":
            green = raw[:, 1:2]
            levels = torch.tensor([150.0, 30.0, 90.0]).view(1, 3, 1, 1)  # background, interior, boundary
            return 10.0 * (2 * levels * green - levels**2) / 1000.0
        invasive = nn.functional.max_pool2d((raw[:, 2:3] > 160).float(), 15, stride=1, padding=7)
        zeros = torch.zeros_like(invasive)
        return 20.0 * torch.cat([1 - invasive, zeros, zeros, invasive], dim=1)


def _oracle(role: str) -> LoadedModel:
    card = dataclasses.replace(example_card(role, channels=(4, 8)), mpp=MPP, name=f"oracle-{role}")
    return LoadedModel(card, _Oracle(card, role), Path("."))


def _loader(name: object, *, role: str, device: str | torch.device = "cpu") -> LoadedModel:
    if role in ("nuclei", "cell"):
        return _oracle(role)
    return load_model(str(name), role=role, device=device)  # pragma: no cover


def _draw(rgb: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> None:
    """Nuclei as discs (pixel-corner convention: centre (x, y) in level-0 px) with a 2 px boundary ring."""
    for (x, y), r in zip(centres, radii, strict=True):
        y0, y1, x0, x1 = int(y - r - 1), int(y + r + 2), int(x - r - 1), int(x + r + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        d = np.hypot(xx - x, yy - y)
        patch = rgb[y0:y1, x0:x1]
        patch[d <= r] = RING
        patch[d <= r - 2] = INTERIOR


def _slide(path: Path, size: int = 1024, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Tissue A (left half) and B (right half) with ~1500 nuclei, some touching; one at (256, 256)."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 255, np.uint8)
    rgb[24:-24, 24:size // 2], rgb[24:-24, size // 2:-24] = TISSUE_A, TISSUE_B
    gx, gy = np.meshgrid(np.arange(48, size - 48, 22.0), np.arange(48, size - 48, 22.0))
    centres = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-3, 3, (gx.size, 2))
    centres = centres[np.hypot(centres[:, 0] - 256, centres[:, 1] - 256) > 20]
    centres = centres[np.abs(centres[:, 0] - size / 2) > 16]  # the cell oracle's border between A and B is 7 px wide
    centres = np.vstack([centres, [[256.0, 256.0]]])
    radii = rng.uniform(5, 8, len(centres)).round(1)
    _draw(rgb, centres, radii)
    write_pyramid_tiff(path, rgb, mpp=MPP, levels=2)
    return path, centres


@pytest.fixture(scope="module")
def nuclei_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    return _slide(tmp_path_factory.mktemp("nuclei") / "nuclei.tiff")


def _stage(slide_path: Path, block_px: int) -> list:
    features: list = []
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide)
        settings = SegmenterSettings(torch.device("cpu"), layout="nchw")
        result = segment_nuclei(slide, _oracle("nuclei"), tissue, None, settings, NucleiOptions(block_px=block_px),
                                emit=features.extend)
    assert result.nuclei == len(features) and result.by_class == {"Unclassified": len(features)}
    return features


def test_seams_whole_and_blocks_find_the_same_nuclei(nuclei_slide: tuple[Path, np.ndarray]) -> None:
    path, centres = nuclei_slide
    whole, blocks = _stage(path, 1024), _stage(path, 256)
    assert len(whole) == len(blocks) == len(centres)  # every drawn nucleus once, touching ones split
    a = np.array([f.geometry for f in whole])
    b = np.array([f.geometry for f in blocks])
    tree = shapely.STRtree(b)
    pairs = tree.query(a, predicate="intersects")
    iou = shapely.area(shapely.intersection(a[pairs[0]], b[pairs[1]])) / shapely.area(
        shapely.union(a[pairs[0]], b[pairs[1]]))
    best = np.zeros(len(a))
    np.maximum.at(best, pairs[0], iou)
    assert best.min() > 0.9
    # The nucleus centred on the corner of four blocks is found once, whole.
    corner = [f for f in blocks if f.geometry.contains(shapely.Point(256, 256))]
    assert len(corner) == 1 and corner[0].geometry.area > np.pi * 4.5**2


def test_nuclei_only_writes_measured_detections(tmp_path: Path, nuclei_slide: tuple[Path, np.ndarray]) -> None:
    path, centres = nuclei_slide
    out = tmp_path / "nuclei.geojson"
    summary = predict_slide(path, out, PredictConfig(nuclei_only=True, model_nuclei="oracle"), model_loader=_loader)
    report = validate_geojson(out)
    assert report.ok and not report.issues, report.lines(10)
    features = read_geojson(out).features
    assert len(features) == len(centres) == summary.nuclei_written
    assert {f.object_type for f in features} == {"detection"} and {f.class_name for f in features} == {None}
    values = np.array([[f.measurements[n] for n in (*MEASUREMENT_NAMES, DETECTION_PROBABILITY)] for f in features])
    assert np.isfinite(values).all() and (values[:, -1] > 0.99).all()
    assert summary.nuclei_by_class == {"Unclassified": len(centres)} and summary.features_by_class == {}
    meta = json.loads(meta_path(out).read_text())
    assert set(meta["models"]) == {"nuclei"} and meta["config"]["nuclei_only"] is True
    assert meta["summary"]["nuclei_by_class"] == {"Unclassified": len(centres)}


def test_nuclei_classified_by_region_and_cells(tmp_path: Path, nuclei_slide: tuple[Path, np.ndarray]) -> None:
    path, centres = nuclei_slide
    out = tmp_path / "cells.geojson"
    overlay = tmp_path / "overlay.png"
    config = PredictConfig(nuclei=True, use_roi=False, model_nuclei="oracle", model_cell="oracle",
                           cell_expansion_um=2.0, overlay=overlay)
    summary = predict_slide(path, out, config, model_loader=_loader)
    cells = [f for f in read_geojson(out).features if f.object_type == "cell"]
    left = int((centres[:, 0] < 512).sum())
    assert summary.nuclei_by_class == {"Invasive carcinoma": left, "Normal": len(centres) - left}
    assert all(f.nucleus_geometry is not None for f in cells)
    for f in cells:
        assert f.nucleus_geometry is not None
        x = f.nucleus_geometry.centroid.x
        assert f.class_name == ("Invasive carcinoma" if x < 512 else "Normal")
        assert f.geometry.contains(f.nucleus_geometry.representative_point())
    shapes = np.array([f.geometry for f in cells])
    assert shapely.area(shapely.union_all(shapes)) == pytest.approx(shapely.area(shapes).sum(), rel=1e-3)  # no overlap
    nuclei_area = sum(f.nucleus_geometry.area for f in cells if f.nucleus_geometry is not None)
    assert shapely.area(shapes).sum() > 1.3 * nuclei_area
    assert overlay.stat().st_size > 1000


@pytest.mark.parametrize(("config", "message"), [
    (PredictConfig(nuclei_only=True, roi_only=True),
     "--nuclei-only runs no region model, which --roi-only needs: leave out --nuclei-only or --roi-only"),
    (PredictConfig(nuclei_only=True, heatmap=True, labels=Path("l.ome.tif")),
     "--nuclei-only runs no region model, which --labels and --heatmap need"),
    (PredictConfig(cell_expansion_um=3.0), "--cell-expansion-um grows nuclei into cells: add --nuclei"),
    (PredictConfig(nuclei=True, cell_expansion_um=-1.0), "--cell-expansion-um must be > 0, got -1.0"),
])
def test_option_errors(config: PredictConfig, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        config.check()


def test_missing_default_nuclei_model_says_so(tmp_path: Path, nuclei_slide: tuple[Path, np.ndarray],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QPBRIDGE_MODELS", str(tmp_path))
    import qpbridge.cards as cards

    monkeypatch.setattr(cards, "model_search_dirs", lambda: [tmp_path])
    with pytest.raises(ModelError, match="the default 'monuseg-nuclei' is not installed: give one with --model-nuclei"):
        predict_slide(nuclei_slide[0], tmp_path / "x.geojson", PredictConfig(nuclei_only=True))
    result = CliRunner().invoke(app, ["predict", str(nuclei_slide[0]), "-o", str(tmp_path / "y.geojson"),
                                      "--nuclei-only", "--roi-only"])
    assert result.exit_code != 0 and "error: --nuclei-only runs no region model" in result.output


def test_the_run_line_names_regions_and_nuclei_and_their_windows(tmp_path: Path,
                                                                 nuclei_slide: tuple[Path, np.ndarray]) -> None:
    from qpbridge.commands.predict import _report
    from qpbridge.predict.pipeline import SlideJob, SlideOutcome

    path, centres = nuclei_slide
    out = tmp_path / "n.geojson"
    summary = predict_slide(path, out, PredictConfig(nuclei_only=True, model_nuclei="oracle"), model_loader=_loader)
    lines: list[str] = []
    _report(SlideOutcome(SlideJob(path, out), "done", summary), echo=lambda text, **_: lines.append(text))
    assert len(lines) == 1 and f": {len(centres)} nuclei (Unclassified {len(centres)}); tissue " in lines[0]
    assert "regions" not in lines[0] and "cell windows" not in lines[0]
    assert f"; {summary.nuclei_windows_run} nuclei windows ({summary.nuclei_network_mpx:.1f} MP) in " in lines[0]
