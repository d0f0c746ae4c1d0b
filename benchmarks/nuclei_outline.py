"""Benchmark: what simplifying nucleus outlines costs in accuracy and buys in GeoJSON size.

For real nuclei (MoNuSeg training instance masks, ``/work/shared/data/monuseg-train/instances/*.png``,
1000 x 1000 px at ~0.25 um/px), as a nuclei model would hand them over at 0.25 um/px (the masks as they
are) and at 0.5 um/px (every second pixel, RGB averaged over 2 x 2), for each outline setting --
corner-cutting passes (``smooth_passes`` 0, 1, 2) x Douglas-Peucker tolerance (0 / 0.25 / 0.5 / 0.75 /
1.0 model px), and the default (2 passes, a tolerance per nucleus proportional to its size, marked ``*``)
-- this prints

- vertices per nucleus (exterior ring, closing vertex not counted): over all tiles, over the six breast
  tiles (larger nuclei), and the mean of the worst tile,
- bytes per feature of the GeoJSON that ``qpbridge.qupath.GeoJSONWriter`` writes: detection, class and
  colour, the nine QuPath-named measurements of ``qpbridge.nuclei.measure_nuclei`` rounded to 4
  significant digits (the realistic payload of a nucleus), coordinates in level-0 pixels of a 0.25 um/px
  slide,
- pixel Dice (foreground) between the outlines rasterized back on the model's grid and the instance
  mask, and its change from the exact pixel outline (which differs from 1 only by what
  ``clean_instances`` changes: stray pieces dropped, holes filled),
- AJI of the rasterized outlines against the instance mask, the geometries the writer had to repair,
  and the time per tile (tracing + simplifying).

Targets (issue 14): <= 20 vertices and <= 800 bytes per nucleus on average, Dice change <= 0.005.
Nothing is asserted: the figures are for choosing the defaults of ``qpbridge.nuclei.instances``.
Prints a line and exits 0 when the data is absent.

Usage::

    python benchmarks/nuclei_outline.py                     # all 30 tiles (a few minutes)
    python benchmarks/nuclei_outline.py --limit 6 --tolerances 0,0.5 --passes 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from PIL import Image

from qpbridge.instance_metrics import InstanceScores, instance_scores, rasterize_instances
from qpbridge.nuclei import (
    DEFAULT_SIMPLIFY_RADIUS_FRAC,
    DEFAULT_SMOOTH_PASSES,
    SIMPLIFY_PX_RANGE,
    clean_instances,
    measure_nuclei,
    nuclei_from_labels,
    simplify_outlines,
)
from qpbridge.qupath import Feature, GeoJSONWriter
from qpbridge.tiling import apply_affine_xy

DATA = Path("/work/shared/data/monuseg-train")
SLIDE_MPP = 0.25  # level 0 of the simulated slide (MoNuSeg tiles are ~0.25 um/px)
BREAST = ("TCGA-A7-", "TCGA-AR-", "TCGA-E2-")  # the six breast tiles


def load_tiles(data: Path, limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, instances uint16, rgb uint8)`` of every tile with both an instance mask and an image."""
    tiles = []
    for mask_path in sorted((data / "instances").glob("*_instances.png")):
        name = mask_path.name.removesuffix("_instances.png")
        image_path = data / "images" / f"{name}.tif"
        if not image_path.exists():
            continue
        labels = np.asarray(Image.open(mask_path)).astype(np.int32)
        rgb = np.asarray(Image.open(image_path).convert("RGB"))
        tiles.append((name, labels, rgb))
        if limit is not None and len(tiles) >= limit:
            break
    return tiles


def at_model_mpp(labels: np.ndarray, rgb: np.ndarray, model_mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """The tile as a model at ``model_mpp`` would see and label it (nearest for labels, box mean for RGB)."""
    step = round(model_mpp / SLIDE_MPP)
    if step == 1:
        return labels, rgb
    h, w = (labels.shape[0] // step) * step, (labels.shape[1] // step) * step
    small_rgb = rgb[:h, :w].reshape(h // step, step, w // step, step, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    return labels[:h:step, :w:step], small_rgb


def feature_bytes(polygons: np.ndarray, records: list[dict[str, float]], folder: Path) -> tuple[float, int]:
    """Mean bytes per written feature (FeatureCollection header and footer excluded), and repairs made."""
    path = folder / "nuclei.geojson"
    with GeoJSONWriter(path) as writer:
        writer.write_many(
            Feature(poly, "Tumor", (200, 0, 0), "detection", measurements=rec)
            for poly, rec in zip(polygons, records, strict=True)
        )
    text = path.read_bytes()
    body = len(text) - len(b'{"type":"FeatureCollection","features":[\n') - len(b"\n]}\n")
    n = writer.summary.written
    return (body - 2 * (n - 1)) / n if n else 0.0, writer.summary.repaired  # minus the ",\n" separators


def foreground_dice(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    """``(2 |P & R|, |P| + |R|)`` of the foreground masks, to pool over tiles."""
    p, r = pred > 0, ref > 0
    return 2 * int((p & r).sum()), int(p.sum() + r.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="MoNuSeg folder with instances/ and images/")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N tiles")
    parser.add_argument("--tolerances", default="0,0.25,0.5,0.75,1.0", help="model px, comma separated")
    parser.add_argument("--passes", default="0,1,2", help="corner-cutting passes, comma separated")
    parser.add_argument("--mpp", default="0.25,0.5", help="model um/px, comma separated (multiples of 0.25)")
    args = parser.parse_args(argv)
    if not (args.data / "instances").is_dir():
        print(f"skipped: no MoNuSeg instance masks under {args.data / 'instances'}")
        return 0
    tiles = load_tiles(args.data, args.limit)
    names = [name for name, _, _ in tiles]
    if not tiles:
        print(f"skipped: no tile of {args.data} has both an instance mask and an image")
        return 0
    tolerances = [float(t) for t in args.tolerances.split(",")]
    all_passes = [int(p) for p in args.passes.split(",")]
    settings: list[tuple[int, float | None]] = [(p, t) for p in all_passes for t in tolerances]
    settings.append((DEFAULT_SMOOTH_PASSES, None))  # the default: a tolerance per nucleus
    model_mpps = [float(m) for m in args.mpp.split(",")]
    n_nuclei = sum(len(np.unique(t[1])) - 1 for t in tiles)
    print(
        f"{len(tiles)} MoNuSeg tiles, {n_nuclei} nuclei at 0.25 um/px; * = the default (smooth_passes="
        f"{DEFAULT_SMOOTH_PASSES}, tolerance {DEFAULT_SIMPLIFY_RADIUS_FRAC} x each nucleus's equivalent radius r, "
        f"clipped to {SIMPLIFY_PX_RANGE[0]}-{SIMPLIFY_PX_RANGE[1]} px)"
    )
    header = (
        f"  {'um/px':>5} {'passes':>6} {'tol px':>7} {'nuclei':>7} {'vertices':>8} {'breast':>6} {'worst':>5} "
        f"{'bytes':>6} {'Dice':>7} {'dDice':>8} {'AJI':>6} {'repaired':>8} {'ms/tile':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for model_mpp in model_mpps:
            print()
            print(header)
            affine = Affine.scale(model_mpp / SLIDE_MPP)
            to_level0 = partial(apply_affine_xy, affine)
            prepared = []
            traced_s = 0.0
            for _, labels, rgb in tiles:
                model_labels, model_rgb = at_model_mpp(labels, rgb, model_mpp)
                cleaned = clean_instances(model_labels)
                records = measure_nuclei(cleaned, model_rgb, model_mpp, clean=False).records(4)
                start = time.perf_counter()
                traced = nuclei_from_labels(cleaned, simplify_px=0, smooth_passes=0, clean=False).polygons
                traced_s += time.perf_counter() - start
                prepared.append((model_labels, traced, records))
            baseline = _dice(prepared, None, affine)
            for passes, tol in settings:
                start = time.perf_counter()
                outlines = [
                    shapely.transform(simplify_outlines(traced, tol, smooth_passes=passes), to_level0)
                    for _, traced, _ in prepared
                ]
                ms = 1000 * ((time.perf_counter() - start) + traced_s) / len(prepared)
                per_tile = [shapely.get_num_coordinates(o) - 1 for o in outlines]  # closing vertex not counted
                n_total = sum(len(v) for v in per_tile)
                vertices = sum(int(v.sum()) for v in per_tile) / n_total
                breast_v = [v for v, name in zip(per_tile, names, strict=True) if name.startswith(BREAST)]
                n_breast = sum(len(v) for v in breast_v)
                breast = f"{sum(int(v.sum()) for v in breast_v) / n_breast:.1f}" if n_breast else "-"
                worst = max(float(v.mean()) for v in per_tile if len(v))
                byte_sum = 0.0
                repaired = 0
                for o, (_, _, records) in zip(outlines, prepared, strict=True):
                    mean_bytes, fixed = feature_bytes(o, records, folder)
                    byte_sum += mean_bytes * len(o)
                    repaired += fixed
                dice, aji = _dice(prepared, outlines, affine), _aji(prepared, outlines, affine)
                star = "*" if tol is None else " "
                tol_text = f"{DEFAULT_SIMPLIFY_RADIUS_FRAC:g}r" if tol is None else f"{tol:.2f}"
                print(
                    f"{star} {model_mpp:>5.2f} {passes:>6d} {tol_text:>7} {n_total:>7d} {vertices:>8.1f} "
                    f"{breast:>6} {worst:>5.1f} {byte_sum / n_total:>6.0f} {dice:>7.4f} {dice - baseline:>+8.4f} "
                    f"{aji:>6.4f} {repaired:>8d} {ms:>7.0f}"
                )
                sys.stdout.flush()
    return 0


def _dice(prepared: list, outlines: list | None, affine: Affine) -> float:
    """Pooled foreground Dice of the outlines (``None``: the exact pixel outlines) against the masks."""
    num = den = 0
    for i, (model_labels, traced, _) in enumerate(prepared):
        polys = traced if outlines is None else outlines[i]
        back = rasterize_instances(polys, model_labels.shape, None if outlines is None else affine)
        a, b = foreground_dice(back, model_labels)
        num, den = num + a, den + b
    return num / den


def _aji(prepared: list, outlines: list, affine: Affine) -> float:
    scores = [
        instance_scores(rasterize_instances(o, model_labels.shape, affine), model_labels)
        for o, (model_labels, _, _) in zip(outlines, prepared, strict=True)
    ]
    return InstanceScores.pooled(scores).aji


if __name__ == "__main__":
    raise SystemExit(main())
