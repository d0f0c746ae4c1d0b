"""Time and peak memory of writing synthetic slides: memory must not grow with the slide.

Writes a 20,000 x 15,000 slide (and with ``--big`` also a 40,000 x 30,000 one) into a temporary folder,
each in its own process so that each peak RSS is its own, and prints wall time, CPU time, megapixels per
second and peak RSS.

Usage::

    python benchmarks/synth_memory.py          # 20,000 x 15,000
    python benchmarks/synth_memory.py --big    # and 40,000 x 30,000
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


def _child(width_px: int, height_px: int, folder: str) -> None:
    from qpbridge.synth import write_synthetic_slide

    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall = time.perf_counter()
    cpu = time.process_time()
    result = write_synthetic_slide(Path(folder) / "bench.svs", width_px=width_px, height_px=height_px, seed=1)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    record = {
        "width_px": width_px,
        "height_px": height_px,
        "levels": result.level_count,
        "file_mb": round(result.slide_path.stat().st_size / 1e6, 1),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "mp_per_s_wall": round(width_px * height_px / wall / 1e6, 2),
        "mp_per_s_cpu": round(width_px * height_px / cpu / 1e6, 2),
        "rss_after_import_mb": round(rss_before_kb / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also write a 40,000 x 30,000 slide")
    parser.add_argument("--child", nargs=3, metavar=("W", "H", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(int(args.child[0]), int(args.child[1]), args.child[2])
        return
    sizes = [(20_000, 15_000)] + ([(40_000, 30_000)] if args.big else [])
    print(
        f"{'size':>15} {'levels':>6} {'file MB':>8} {'wall s':>7} {'cpu s':>6} {'MP/s wall':>9} "
        f"{'MP/s cpu':>8} {'peak RSS MB':>11}"
    )
    for width, height in sizes:
        with tempfile.TemporaryDirectory() as folder:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(width), str(height), folder],
                check=True,
                capture_output=True,
                text=True,
            )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{width:>7} x {height:<6} {r['levels']:>6} {r['file_mb']:>8} {r['wall_s']:>7} {r['cpu_s']:>6} "
            f"{r['mp_per_s_wall']:>9} {r['mp_per_s_cpu']:>8} {r['peak_rss_mb']:>11}"
        )


if __name__ == "__main__":
    main()
