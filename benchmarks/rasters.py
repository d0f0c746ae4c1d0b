"""Benchmark of ``qpbridge predict --labels --probabilities``: peak RSS and time against the same run without
the rasters, on synthetic slides (each run in its own process, so each peak RSS is its own).

Prints, per slide: wall time, peak RSS (VmHWM) without and with the rasters, the rasters' own time (storing the
blocks, timed around ``RasterWriter.write_block``, and building the pyramids, ``rasters_s``), the file sizes and
level counts. The target (the predict benchmark's bound): peak RSS
<= 2 GB on the 80,000 x 60,000 slide, with the rasters too.

Usage::

    python benchmarks/rasters.py                              # 20,000 x 15,000 and 80,000 x 60,000
    python benchmarks/rasters.py --slides 20000x15000         # the small one only
    python benchmarks/rasters.py --no-roi                     # the cell model over all tissue

Slides are cached in ``--workdir`` (default ``/tmp/qpbridge-bench``, shared with ``benchmarks/predict.py``);
the 80,000 x 60,000 synth takes ~15 minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the qpbridge command does (children inherit it)


def peak_rss_mb() -> float:
    """This process's peak RSS (Linux VmHWM; ``ru_maxrss`` would count a forked parent's too)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc/self/status: this benchmark measures memory on Linux")


def ensure_slide(workdir: Path, width: int, height: int, seed: int) -> Path:
    """The synthetic slide of that size and seed in ``workdir`` (the name ``benchmarks/predict.py`` uses)."""
    path = workdir / f"bench_{width}x{height}_s{seed}.svs"
    if not path.exists():
        from qpbridge.synth import write_synthetic_slide

        start = time.perf_counter()
        write_synthetic_slide(path, width_px=width, height_px=height, seed=seed)
        print(f"  synthesized {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def child(args: argparse.Namespace) -> None:
    """One predict run in this process; its figures as one JSON line."""
    from qpbridge.memory import set_cache_defaults

    set_cache_defaults()
    from qpbridge.predict import PredictConfig, predict_slide
    from qpbridge.predict.rasters import RasterWriter

    spent = {"write_s": 0.0}  # seconds in RasterWriter.write_block (inside the cell stage's time)
    write_block = RasterWriter.write_block

    def timed(self: RasterWriter, *a: object, **kw: object) -> None:
        clock = time.perf_counter()
        write_block(self, *a, **kw)  # type: ignore[arg-type]
        spent["write_s"] += time.perf_counter() - clock

    RasterWriter.write_block = timed  # type: ignore[method-assign]
    out = Path(args.out)
    rasters = {"labels": out.with_suffix(".labels.ome.tif"), "probabilities": out.with_suffix(".probs.ome.tif")}
    config = PredictConfig(device=args.device, use_roi=not args.no_roi,
                           labels=rasters["labels"] if args.rasters else None,
                           probabilities=rasters["probabilities"] if args.rasters else None)
    start = time.perf_counter()
    summary = predict_slide(args.child, out, config)
    record = {"wall_s": time.perf_counter() - start, "rss_mb": peak_rss_mb(), "windows_run": summary.windows_run,
              "features": summary.features_written, "timings": summary.timings_s, "rasters": summary.rasters,
              "write_s": spent["write_s"], "forward_s": summary.forward_s,
              "sizes_mb": {kind: path.stat().st_size / 1e6 for kind, path in rasters.items() if path.exists()}}
    print(json.dumps(record))


def run(slide: Path, out: Path, args: argparse.Namespace, rasters: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(slide), "--out", str(out), "--device", args.device]
    cmd += ["--rasters"] if rasters else []
    cmd += ["--no-roi"] if args.no_roi else []
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"predict failed on {slide}:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", nargs="+", default=["20000x15000", "80000x60000"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-roi", action="store_true", help="run the cell model over all tissue")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qpbridge-bench"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rasters", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, device {args.device}, {'--no-roi' if args.no_roi else 'ROI gate'}", flush=True)
    for size in args.slides:
        width, height = (int(v) for v in size.split("x"))
        slide = ensure_slide(args.workdir, width, height, args.seed)
        stem = args.workdir / f"rasters_{size}"
        plain = run(slide, stem.with_name(stem.name + "_plain.geojson"), args, rasters=False)
        with_rasters = run(slide, stem.with_name(stem.name + "_rasters.geojson"), args, rasters=True)
        infos = {r["kind"]: r for r in with_rasters["rasters"]}
        labels = infos["labels"]
        print(f"{slide.name}: {plain['windows_run']} cell windows, {plain['features']} features; rasters "
              f"{labels['width_px']} x {labels['height_px']} px at {labels['mpp']} um/px, {labels['levels']} levels")
        print(f"  peak RSS: {plain['rss_mb']:.0f} MB without the rasters, {with_rasters['rss_mb']:.0f} MB with them "
              f"(+{with_rasters['rss_mb'] - plain['rss_mb']:.0f} MB); bound 2048 MB")
        raster_s = with_rasters["write_s"] + with_rasters["timings"].get("rasters_s", 0)
        print(f"  wall: {plain['wall_s']:.1f} s without, {with_rasters['wall_s']:.1f} s with (cell-model forward "
              f"{plain['forward_s']:.1f} / {with_rasters['forward_s']:.1f} s: the machine's noise); the rasters' own "
              f"time: storing blocks {with_rasters['write_s']:.1f} s + building the pyramids "
              f"{with_rasters['timings'].get('rasters_s', 0):.1f} s = {raster_s:.1f} s "
              f"({raster_s / max(with_rasters['wall_s'], 1e-9):.0%} of the run)")
        print("  files: " + ", ".join(f"{k} {v:.1f} MB" for k, v in with_rasters["sizes_mb"].items()), flush=True)


if __name__ == "__main__":
    main()
