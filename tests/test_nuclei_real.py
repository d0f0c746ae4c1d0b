"""The shipped nuclei model on real H&E (MoNuSeg tiles): seams with the real network, and nuclei found where the
reference nuclei are. Skips without the shared data or the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from PIL import Image

from qpbridge.instance_metrics import instance_scores, rasterize_instances
from qpbridge.models import load_model
from qpbridge.predict.nuclei import NucleiOptions, segment_nuclei
from qpbridge.predict.segmenter import SegmenterSettings
from qpbridge.slide import open_slide
from qpbridge.tissue import detect_tissue
from tests.conftest import nuclei_model_installed, shared_file, write_pyramid_tiff

#: Two validation tiles of the shipped model (never trained on), side by side with two more: 2000 x 2000 px.
TILES = ("TCGA-A7-A13E-01Z-00-DX1", "TCGA-E2-A1B5-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1")


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    if not nuclei_model_installed():
        pytest.skip("the shipped nuclei model monuseg-nuclei is absent")
    rgb = np.zeros((2000, 2000, 3), np.uint8)
    ref = np.zeros((2000, 2000), np.int64)
    for k, stem in enumerate(TILES):
        y, x = 1000 * (k // 2), 1000 * (k % 2)
        rgb[y:y + 1000, x:x + 1000] = np.asarray(Image.open(shared_file("monuseg-train", "images", f"{stem}.tif"))
                                                  .convert("RGB"))
        inst = np.asarray(Image.open(shared_file("monuseg-train", "instances", f"{stem}_instances.png"))).astype(int)
        ref[y:y + 1000, x:x + 1000] = np.where(inst > 0, inst + 100_000 * k, 0)
    path = tmp_path_factory.mktemp("monuseg") / "mosaic.tiff"
    write_pyramid_tiff(path, rgb, mpp=0.25, levels=1)
    return path, ref


def _nuclei(path: Path, block_px: int) -> np.ndarray:
    model = load_model("monuseg-nuclei", role="nuclei")
    features: list = []
    with open_slide(path) as slide:
        tissue = detect_tissue(slide)
        tissue.tissue[:] = True  # every pixel of the tiles is tissue
        settings = SegmenterSettings(torch.device("cpu"))
        segment_nuclei(slide, model, tissue, None, settings, NucleiOptions(block_px=block_px), emit=features.extend)
    return np.array([f.geometry for f in features])


def test_real_nuclei_are_the_same_whole_and_in_512_px_blocks(mosaic: tuple[Path, np.ndarray]) -> None:
    path, ref = mosaic
    whole, blocks = _nuclei(path, 2048), _nuclei(path, 512)
    assert abs(len(whole) - len(blocks)) <= 0.01 * len(whole)  # the bound; in fact the same nuclei
    i, j = shapely.STRtree(blocks).query(whole, predicate="intersects")
    iou = shapely.area(shapely.intersection(whole[i], blocks[j])) / shapely.area(shapely.union(whole[i], blocks[j]))
    best = np.zeros(len(whole))
    np.maximum.at(best, i, iou)
    assert best.min() > 0.9  # every nucleus of the whole run has its match in the blocked one
    # and they sit on the reference nuclei
    pred = rasterize_instances(list(whole), (2000, 2000))
    scores = instance_scores(pred, ref)
    assert scores.dice > 0.7 and scores.aji > 0.45, scores
