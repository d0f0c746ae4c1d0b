"""Benchmark the QuPath GeoJSON writer: 100k small polygons (detections) to .geojson and .geojson.gz.

Prints features/s, file size and peak RSS for each output, and the read-back speed of the tolerant reader.
Each output is written in a fresh subprocess so that its peak RSS is its own.

    python benchmarks/geojson_write.py [--count 100000] [--vertices 12] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _features(count: int, vertices: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Nuclei-like polygons (radius 3-8 px, 12 vertices) scattered over a 100k x 80k px slide."""
    import numpy as np
    import shapely

    from qpbridge.qupath import Feature

    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    unit = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    classes = ["Normal", "Benign", "In situ carcinoma", "Invasive carcinoma"]
    chunk = 10_000
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        centres = rng.uniform((0, 0), (100_000, 80_000), size=(n, 2))
        radii = rng.uniform(3, 8, size=(n, 1, 1)) * rng.uniform(0.8, 1.2, size=(n, vertices, 1))
        polys = shapely.polygons(centres[:, None, :] + unit[None] * radii)
        labels = rng.integers(0, len(classes), size=n)
        probs = rng.uniform(0.5, 1.0, size=n)
        areas = shapely.area(polys) * 0.25 * 0.25
        for poly, label, prob, area in zip(polys, labels, probs, areas, strict=True):
            yield Feature(
                poly,
                classes[label],
                object_type="detection",
                measurements={"Area um^2": float(area), "Class probability": float(prob)},
            )


def _child(path: str, count: int, vertices: int) -> None:
    from qpbridge.qupath import GeoJSONWriter

    feats = list(_features(count, vertices))  # generated up front: time only the writer
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with GeoJSONWriter(path) as writer:
        writer.write_many(feats)
    seconds = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "written": writer.summary.written,
                "repaired": writer.summary.repaired,
                "peak_rss_mb": rss_kb / 1024,
                "rss_before_write_mb": rss_before_kb / 1024,
            }
        )
    )


def _stream_child(path: str, count: int, vertices: int) -> None:
    """Generator in, file out: the memory a pipeline sees (features never all in memory)."""
    from qpbridge.qupath import GeoJSONWriter

    start = time.perf_counter()
    with GeoJSONWriter(path) as writer:
        writer.write_many(_features(count, vertices))
    seconds = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "written": writer.summary.written, "peak_rss_mb": rss_kb / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--vertices", type=int, default=12)
    parser.add_argument("--keep", type=Path, default=None, help="write the outputs here instead of a temp dir")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (_stream_child if args.stream else _child)(args.child, args.count, args.vertices)
        return

    folder = args.keep or Path(tempfile.mkdtemp(prefix="qpbridge-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{args.count} detections, {args.vertices} vertices each; python {sys.version.split()[0]}")
    for name, stream in (("detections.geojson", False), ("detections.geojson.gz", False), ("streamed.geojson", True)):
        out = folder / name
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(out),
            "--count",
            str(args.count),
            "--vertices",
            str(args.vertices),
        ] + (["--stream"] if stream else [])
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        size_mb = out.stat().st_size / 1e6
        rate = result["written"] / result["seconds"]
        what = "generator -> writer (generation included)" if stream else "writer only"
        print(
            f"{name:24s} {rate:9,.0f} features/s  {result['seconds']:6.2f} s  {size_mb:7.1f} MB  "
            f"peak RSS {result['peak_rss_mb']:6.0f} MB  ({what})"
        )

    from qpbridge.qupath import read_geojson

    for name in ("detections.geojson", "detections.geojson.gz"):
        start = time.perf_counter()
        result = read_geojson(folder / name)
        seconds = time.perf_counter() - start
        print(f"read {name:19s} {len(result.features) / seconds:9,.0f} features/s  {seconds:6.2f} s")
    if args.keep is None:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
