"""Benchmark: label mask -> polygons, whole mask vs block by block (with seams merged).

A synthetic ``size x size`` mask of ``classes`` blob-like classes (smoothed noise cut at quantiles, so
thousands of polygons with holes and islands) is vectorized

- whole: ``vectorize_mask`` over the whole mask at once;
- blocks: ``vectorize_blocks`` with ``block_px`` blocks (the block path the predict pipeline uses),
  collecting every polygon;
- stream: the same ``BlockVectorizer`` calls, but polygons are dropped as they come out (as a streaming
  GeoJSON writer would), which shows the memory the merger itself holds,

each in a fresh process so that peak RSS belongs to that path alone. Both results are checked to be the
same polygons. Prints wall time (median of ``--repeat``), MP/s, polygons/s, peak RSS and its rise above
the RSS after loading the mask.

Usage::

    python benchmarks/vectorize.py                   # 4096 x 4096, 4 classes, block 1024
    python benchmarks/vectorize.py --size 2048 --block-px 512 --repeat 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def blob_mask(size_px: int, n_classes: int = 4, sigma_px: float = 12.0, seed: int = 0) -> np.ndarray:
    """``(size_px, size_px)`` uint8 labels 0..n_classes-1: Gaussian-smoothed white noise cut at quantiles.

    Example
    -------
    >>> blob_mask(64, 4, 4.0).shape
    (64, 64)
    """
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((size_px, size_px)).astype(np.float32)
    spectrum = np.fft.rfft2(noise)
    fy = np.fft.fftfreq(size_px)[:, None]
    fx = np.fft.rfftfreq(size_px)[None, :]
    spectrum *= np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(spectrum, s=(size_px, size_px))
    cuts = np.quantile(field[::4, ::4], np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(field, cuts).astype(np.uint8)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``VmHWM``; ``ru_maxrss`` would include the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; macOS: bytes


def _child(mode: str, mask_path: str, block_px: int, repeat: int, out_path: str) -> None:
    """Run one path in this (fresh) process and write its figures and canonical result as JSON."""
    import shapely
    from affine import Affine

    from qpbridge.tiling import BlockGrid
    from qpbridge.vectorize import BlockVectorizer, ClassPolygons, vectorize_blocks, vectorize_mask

    labels = np.load(mask_path)
    base_rss = _peak_rss_mb()
    affine = Affine(4, 0, 1000, 0, 4, 2000)  # mask at 1 um/px over a 0.25 um/px slide, offset
    times = []
    result = None
    n_polygons = max_held = 0
    for _ in range(repeat):
        result = None  # free the previous run's polygons before measuring the next
        t0 = time.perf_counter()
        if mode == "whole":
            result = vectorize_mask(labels, affine, labels_to_vectorize=range(4))
        elif mode == "blocks":
            result = vectorize_blocks(labels, affine, block_px, labels_to_vectorize=range(4))
        else:
            grid = BlockGrid(labels.shape[1], labels.shape[0], block_px)
            vectorizer = BlockVectorizer(grid, affine, labels_to_vectorize=range(4))
            n_polygons = max_held = 0
            for window in grid.windows():
                n_polygons += len(vectorizer.add(window, labels[window.slices]))
                max_held = max(max_held, vectorizer.held_count)
            n_polygons += len(vectorizer.finish())
        times.append(time.perf_counter() - t0)
    peak = _peak_rss_mb()
    if result is None:
        Path(out_path).write_text(
            json.dumps(
                {
                    "mode": mode,
                    "seconds": statistics.median(times),
                    "polygons": n_polygons,
                    "max_held": max_held,
                    "peak_rss_mb": peak,
                    "rss_rise_mb": peak - base_rss,
                }
            )
        )
        return
    assert isinstance(result, ClassPolygons)
    wkb = shapely.to_wkb(shapely.normalize(result.polygons), hex=True)
    canon = sorted(zip(result.labels.tolist(), wkb, strict=True))
    digest = hashlib.sha256(repr(canon).encode()).hexdigest()
    figures = {
        "mode": mode,
        "seconds": statistics.median(times),
        "polygons": len(result),
        "vertices": int(shapely.get_num_coordinates(result.polygons).sum()),
        "valid": bool(shapely.is_valid(result.polygons).all()),
        "peak_rss_mb": peak,
        "rss_rise_mb": peak - base_rss,
        "digest": digest,
    }
    Path(out_path).write_text(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="mask side in pixels (default 4096)")
    parser.add_argument("--classes", type=int, default=4, help="number of classes (default 4)")
    parser.add_argument("--sigma", type=float, default=12.0, help="blob smoothing in px (default 12)")
    parser.add_argument("--block-px", type=int, default=1024, help="block side for the block path (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; the median is printed (default 3)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "MASK", "REPEAT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, mask_path, repeat, out_path = args.child
        _child(mode, mask_path, args.block_px, int(repeat), out_path)
        return

    labels = blob_mask(args.size, args.classes, args.sigma)
    mp = labels.size / 1e6
    print(
        f"mask {args.size} x {args.size} ({mp:.1f} MP), {args.classes} classes, "
        f"pixels per class {np.bincount(labels.ravel()).tolist()}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        mask_path = str(Path(tmp) / "mask.npy")
        np.save(mask_path, labels)
        for mode in ("whole", "blocks", "stream"):
            out_path = str(Path(tmp) / f"{mode}.json")
            cmd = [sys.executable, __file__, "--block-px", str(args.block_px), "--child"]
            subprocess.run([*cmd, mode, mask_path, str(args.repeat), out_path], check=True)
            results[mode] = json.loads(Path(out_path).read_text())
    for mode, r in results.items():
        label = "whole" if mode == "whole" else f"{mode} {args.block_px}"
        extra = (
            f"vertices {r['vertices']}  valid {r['valid']}"
            if "vertices" in r
            else f"at most {r['max_held']} pieces held"
        )
        print(
            f"{label:>12}: {r['seconds']:.3f} s  {mp / r['seconds']:6.1f} MP/s  "
            f"{r['polygons'] / r['seconds']:8.0f} polygons/s  polygons {r['polygons']}  {extra}  "
            f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['rss_rise_mb']:.0f} MB over the loaded mask)"
        )
    same = (
        results["whole"]["digest"] == results["blocks"]["digest"]
        and results["whole"]["polygons"] == results["stream"]["polygons"]
    )
    print(f"block path == whole path (normalized WKB digest): {same}")
    print(f"block / whole time: {results['blocks']['seconds'] / results['whole']['seconds']:.2f}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
