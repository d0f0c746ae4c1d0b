"""Benchmarks of GeoJSON -> label masks -> training tiles (``qpbridge.rasterize``, ``qpbridge masks``).

1. ``rasterize``: ~50k polygons (cells of 8-40 px, 17 vertices, plus a few large regions with thousands of
   vertices) into an 8192 x 8192 mask: whole mask at once (``rasterize_shapes``), and block by block through
   :class:`qpbridge.rasterize.LabelRasterizer` (STRtree selection, 2048 px windows), checked identical;
   rasterio straight from shapely objects as the baseline. Figures: polygons/s and MP/s.
2. ``masks``: :func:`qpbridge.tiles.build_tile_dataset` on a 20,000 x 15,000 synthetic slide (generated once
   into ``--workdir``), in a child process: seconds, tiles/s, blocks/s and peak RSS.
3. ``--big``: the same (``--dry-run`` and ``--max-per-class``) on 20k x 15k and 40k x 30k slides, to show that
   peak RSS does not grow with the slide (memory is bounded by the block).

Run::

    python benchmarks/rasterize.py                 # 1 and 2
    python benchmarks/rasterize.py --big           # also 3 (generates a 40k x 30k slide: several minutes)
    python benchmarks/rasterize.py --only rasterize
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _polygons(n: int, size_px: int, seed: int = 0) -> tuple[list, list[int]]:
    import shapely

    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0, size_px, n), rng.uniform(0, size_px, n)
    radius = rng.uniform(4, 20, n)
    cells = shapely.buffer(shapely.points(cx, cy), radius, quad_segs=4)  # 17 vertices each
    labels = rng.integers(1, 4, n).tolist()
    # A few large regions with many vertices (tumour outlines), under the cells (label 1, painted first).
    big = []
    for k in range(8):
        angles = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
        r = size_px / 6 * (1 + 0.2 * np.sin(7 * angles + k))
        ox, oy = rng.uniform(size_px / 5, 4 * size_px / 5, 2)
        big.append(shapely.Polygon(np.c_[ox + r * np.cos(angles), oy + r * np.sin(angles)]))
    return big + list(cells), [1] * len(big) + labels


def bench_rasterize(n: int = 50_000, size_px: int = 8192, block_px: int = 2048) -> dict[str, float]:
    from affine import Affine
    from rasterio.features import rasterize

    from qpbridge.rasterize import ClassMap, LabelRasterizer, rasterize_shapes
    from qpbridge.tiling import compose_affine

    geoms, labels = _polygons(n, size_px)
    count = len(geoms)
    mp = size_px * size_px / 1e6
    results: dict[str, float] = {"polygons": count, "megapixels": mp}

    t = time.perf_counter()
    whole = rasterize_shapes(list(zip(geoms, labels, strict=True)), (size_px, size_px), Affine.identity())
    dt = time.perf_counter() - t
    results["whole_s"] = dt
    print(f"rasterize_shapes, whole {size_px}^2: {dt:.2f} s, {count / dt:,.0f} polygons/s, {mp / dt:.0f} MP/s")

    t = time.perf_counter()
    baseline = rasterize(list(zip(geoms, labels, strict=True)), out_shape=(size_px, size_px), dtype="uint8")
    dt = time.perf_counter() - t
    results["rasterio_shapely_s"] = dt
    print(f"rasterio.rasterize from shapely objects: {dt:.2f} s, {count / dt:,.0f} polygons/s, {mp / dt:.0f} MP/s")
    assert np.array_equal(whole, baseline)

    names = {1: "Benign", 2: "In situ carcinoma", 3: "Invasive carcinoma"}
    t = time.perf_counter()
    lr = LabelRasterizer(
        [(g, names[v]) for g, v in zip(geoms, labels, strict=True)],
        ClassMap.deepbatch(),
        overlap="later-wins",
        reviewed="all",
    )
    prep = time.perf_counter() - t
    t = time.perf_counter()
    tiled = np.empty_like(whole)
    for y in range(0, size_px, block_px):
        for x in range(0, size_px, block_px):
            window = lr.window((block_px, block_px), compose_affine(Affine.identity(), Affine.translation(x, y)))
            tiled[y : y + block_px, x : x + block_px] = window
    dt = time.perf_counter() - t
    results["blocks_s"], results["prepare_s"] = dt, prep
    print(
        f"LabelRasterizer, {block_px} px blocks: prepare {prep:.2f} s, rasterize {dt:.2f} s, "
        f"{count / dt:,.0f} polygons/s, {mp / dt:.0f} MP/s; identical to whole: {np.array_equal(tiled, whole)}"
    )
    assert np.array_equal(tiled, whole)
    return results


def _synth(workdir: Path, width: int, height: int) -> tuple[Path, Path]:
    from qpbridge.synth import write_synthetic_slide

    path = workdir / f"synth_{width}x{height}.svs"
    truth = path.with_name(path.stem + ".truth.geojson")
    if not (path.exists() and truth.exists()):
        t = time.perf_counter()
        result = write_synthetic_slide(path, width_px=width, height_px=height, seed=1, overwrite=True)
        print(f"generated {path.name} in {time.perf_counter() - t:.0f} s")
        truth = result.truth_path
    return path, truth


def _child(args: argparse.Namespace) -> None:
    """Run one build in this (fresh) process and print its figures as JSON."""
    from qpbridge.tiles import MaskConfig, build_tile_dataset

    config = MaskConfig(
        mpp=args.tile_mpp,
        tile_px=args.tile_px,
        dry_run=args.dry_run,
        max_per_class=args.max_per_class,
        qa_mpp=8.0,
    )
    summary = build_tile_dataset(args.slide, args.geojson, args.out, config)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # ru_maxrss survives exec on Linux (the child would report its parent's peak): prefer this process's VmHWM.
    peak_mb = usage.ru_maxrss / 1024
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak_mb = int(line.split()[1]) / 1024
    print(
        json.dumps(
            {
                "seconds": summary.seconds,
                "tiles_total": summary.tiles_total,
                "tiles_kept": summary.tiles_kept,
                "tiles_written": summary.tiles_written,
                "blocks": summary.blocks,
                "peak_rss_mb": peak_mb,
                "cpu_s": usage.ru_utime + usage.ru_stime,
            }
        )
    )


def _run_child(slide: Path, truth: Path, out: Path, *extra: str) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "_child", str(slide), str(truth), str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(name: str, r: dict[str, float]) -> None:
    print(
        f"{name}: {r['seconds']:.1f} s (cpu {r['cpu_s']:.1f} s), {r['blocks']} blocks ({r['blocks'] / r['seconds']:.2f}"
        f" blocks/s), {r['tiles_total']} tiles, {r['tiles_kept']} kept, {r['tiles_written']} written "
        f"({r['tiles_written'] / r['seconds']:.0f} tiles/s), peak RSS {r['peak_rss_mb']:.0f} MB"
    )


def bench_masks(workdir: Path, big: bool) -> None:
    slide, truth = _synth(workdir, 20_000, 15_000)
    out = workdir / "tiles"
    _report("masks 20k x 15k at 0.25 um/px, 256 px tiles", _run_child(slide, truth, out, "--tile-mpp", "0.25"))
    _report("masks 20k x 15k at 0.5 um/px, 256 px tiles", _run_child(slide, truth, out, "--tile-mpp", "0.5"))
    if not big:
        return
    slide40, truth40 = _synth(workdir, 40_000, 30_000)
    for name, (s, g) in (("20k x 15k", (slide, truth)), ("40k x 30k", (slide40, truth40))):
        _report(f"masks {name} --dry-run", _run_child(s, g, out, "--tile-mpp", "0.25", "--dry-run"))
        capped = _run_child(s, g, out, "--tile-mpp", "0.25", "--max-per-class", "100")
        _report(f"masks {name} --max-per-class 100", capped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child = argparse.ArgumentParser()
        child.add_argument("cmd")
        child.add_argument("slide")
        child.add_argument("geojson")
        child.add_argument("out")
        child.add_argument("--tile-mpp", type=float, default=0.25)
        child.add_argument("--tile-px", type=int, default=256)
        child.add_argument("--dry-run", action="store_true")
        child.add_argument("--max-per-class", type=int, default=None)
        _child(child.parse_args())
        return
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qpbridge-bench"))
    parser.add_argument("--big", action="store_true", help="also 20k x 15k vs 40k x 30k peak RSS")
    parser.add_argument("--only", choices=("rasterize", "masks"), default=None)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "rasterize"):
        bench_rasterize()
    if args.only in (None, "masks"):
        bench_masks(args.workdir, args.big)


if __name__ == "__main__":
    main()
