"""Nuclei tiles: instance masks from nucleus objects and instance label images (qpbridge masks --role nuclei)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from affine import Affine
from PIL import Image
from shapely import box
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.tiles import read_tile, read_tile_dataset
from qpbridge.tiles.instances import InstanceRasterizer


def test_touching_nuclei_ignore_and_cell_nucleus() -> None:
    cell = SimpleNamespace(geometry=box(10, 0, 20, 10), nucleus_geometry=box(12, 2, 15, 5), class_name=None,
                           object_type="cell", measurements={})  # fmt: skip
    feats = [(box(0, 0, 4, 4), "Nucleus"), (box(4, 0, 8, 4), None), cell, (box(0, 8, 20, 10), "Ignore*")]
    out = InstanceRasterizer(feats).window((10, 20), Affine.identity())
    assert out.dtype == np.uint16
    assert int((out == 1).sum()) == 16 and int((out == 2).sum()) == 16  # touching squares keep distinct ids
    assert int((out == 3).sum()) == 9 and out[2:5, 12:15].tolist() == [[3] * 3] * 3  # the cell's nucleus only
    assert int((out == 65535).sum()) == 40
    grown = InstanceRasterizer(feats, grow_px=1).window((10, 20), Affine.identity())
    assert int((grown == 3).sum()) == 21 and int((grown == 1).sum()) == 20  # Euclidean 1 px, background only


def test_instance_png_round_trips_through_masks(tmp_path: Path) -> None:
    inst = np.zeros((64, 64), np.uint16)
    inst[4:12, 4:12], inst[4:12, 12:20], inst[40:50, 30:44] = 5, 9, 2
    rgb = np.full((64, 64, 3), 220, np.uint8)
    rgb[inst > 0] = (60, 30, 120)
    Image.fromarray(rgb).save(tmp_path / "img.tif")
    Image.fromarray(inst).save(tmp_path / "img_instances.png")
    result = CliRunner().invoke(app, ["masks", str(tmp_path / "img.tif"), str(tmp_path / "img_instances.png"),
                                      "-o", str(tmp_path / "tiles"), "--role", "nuclei", "--mpp", "0.25",
                                      "--tile-mpp", "0.25", "--tile-px", "32", "--min-tissue-frac", "0"])
    assert result.exit_code == 0, result.output
    ds = read_tile_dataset(tmp_path / "tiles")
    assert ds.role == "nuclei" and ds.ignore_label == 65535 and len(ds.tiles) == 4
    whole = np.zeros((64, 64), np.int64)
    for t in ds.tiles:
        x0, y0 = (int(v) for v in t.image.stem.split("_")[-2:])
        whole[y0:y0 + 32, x0:x0 + 32] = read_tile(t, 32, instances=True)[1]
    assert np.array_equal(whole > 0, inst > 0)
    top = whole[4:12, 4:20]
    assert len(np.unique(top)) == 2 and top[0, 0] != top[0, -1]  # touching nuclei: two ids


def test_only_nuclei_are_painted_from_a_corrected_export() -> None:
    """A corrected export holds predicted nuclei, nuclei the pathologist drew, and the class regions: at 0.5 um/px
    only the nuclei become instances; the regions (large, or qpbridge's predicted ones however small) do not."""
    from qpbridge.qupath import Feature

    nuc = {"Nucleus: Area µm^2": 16.0, "qpbridge prediction": 1.3}
    feats = [
        Feature(box(0, 0, 8, 8), "Invasive carcinoma", object_type="detection", measurements=nuc),  # predicted
        Feature(box(10, 0, 18, 8), "Invasive carcinoma"),                                  # drawn, 16 um^2
        Feature(box(0, 0, 60, 60), "Invasive carcinoma"),                                  # a region, 900 um^2
        Feature(box(30, 30, 36, 36), "Benign", measurements={"qpbridge prediction": 1.1}),  # a tiny predicted region
    ]
    r = InstanceRasterizer(feats, mpp=0.5)
    out = r.window((40, 40), Affine.identity())
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert int((out == 1).sum()) == 64 and int((out == 2).sum()) == 64
    assert r.report.skipped_not_nuclei == 2
    assert any("skipped 2 objects that are no nuclei" in n for n in r.report.notes())
