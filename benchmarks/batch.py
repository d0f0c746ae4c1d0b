"""Benchmark of ``qpbridge predict`` over many slides: serial vs Dask workers on equal cores (asserts nothing).

Prints, in one run on one machine:

1. the Dask path's overhead on tiny slides (1024 x 768, ROI stage only): (1-worker wall - serial wall) at two
   batch sizes; the slope between them is the marginal overhead of a slide, the rest the fixed cost of a run
   (cluster start, the worker's imports, the close);
2. slides/min over ``--slides`` synthetic slides (made with ``qpbridge synth``, default 4 x 6000 x 4500) for
   three ways of using the same cores: serial (one process, all cores as torch threads), 1 Dask worker x all
   cores, N Dask workers x 1 thread. Each run is a fresh process, timed from its start to its exit (imports,
   cluster start and close included: what a user waits for). The cell model is one of the seed's size at 40x
   (MONAI UNet 16-256 channels, 2 residual units, 0.25 um/px, random weights biased to background, as in
   ``benchmarks/predict.py --seed-sized``) run over all tissue (``--no-roi``), so that a slide costs what a real
   one does per megapixel; ``--shipped`` uses the shipped models (a slide then takes ~1-2 s: the fixed cost of
   a Dask run is all one sees). Target: the Dask path costs <= 3% over serial on equal resources;
3. the load average around each run (the machine is shared: only same-run ratios mean much).

Usage::

    python benchmarks/batch.py                          # tiny slides, then 4 x 6000x4500; ~15-25 min on 2 cores
    python benchmarks/batch.py --slides 8 --size 8000x6000 --workers 4
    python benchmarks/batch.py --skip-large             # the overhead figures only
    python benchmarks/batch.py --shipped                # the shipped (small, 10x) models in (2)

Needs ``pip install 'qpbridge[distributed]'``. Slides are cached in ``--workdir`` (default
``/tmp/qpbridge-bench-batch``) between runs.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # a child's clock starts before its imports

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

QPBRIDGE = [sys.executable, "-m", "qpbridge.cli"]  # the ``qpbridge`` command of this interpreter


def child(args: argparse.Namespace) -> None:
    """One batch in this process: serial (``--engine serial``) or on a local Dask cluster of ``--workers``
    (``--engine dask``; 1 worker too, which ``qpbridge predict --workers 1`` would run serially). Prints JSON."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the qpbridge command does, before torch
    from qpbridge.memory import set_cache_defaults

    set_cache_defaults()
    from qpbridge.predict import PredictConfig, predict_slides
    from qpbridge.predict.pipeline import plan_batch

    imported = time.perf_counter()
    config = PredictConfig(threads=args.threads, roi_only=args.roi_only, use_roi=not args.no_roi,
                           **({"model_cell": args.model_cell} if args.model_cell else {}))
    if args.engine == "serial":
        batch = predict_slides([args.slides], args.out, config)
    else:
        from qpbridge.predict.distributed import predict_batch

        batch = predict_batch(plan_batch([args.slides], args.out), config, workers=args.workers)
    done = time.perf_counter()
    assert batch.count("done") == len(batch.outcomes), [str(o.error) for o in batch.outcomes]
    seconds = [o.seconds or 0.0 for o in batch.outcomes]
    print(json.dumps({"import_s": imported - STARTED, "batch_s": done - imported, "slide_s": seconds}))


def run(slides: Path, out: Path, engine: str, workers: int, threads: int, extra: list[str]) -> dict:
    """A batch in a fresh process; its wall time from start to exit, and the load average before and after."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", "--engine", engine, "--workers", str(workers), "--threads",
           str(threads), "--slides-dir", str(slides), "--out", str(out), *extra]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{engine} x{workers} failed:\n{result.stderr[-3000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record.update(wall_s=wall, load=(load_before, os.getloadavg()[0]))
    return record


def make_slides(folder: Path, count: int, width: int, height: int, first_seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + count):
        path = folder / f"s{seed}.svs"
        if not path.exists():
            subprocess.run([*QPBRIDGE, "synth", str(path), "--width", str(width), "--height", str(height),
                            "--seed", str(seed)], check=True, capture_output=True)
    return folder


def seed_sized_cell_model(workdir: Path) -> Path:
    """``benchmarks/predict.py``'s seed-sized 40x cell model (saved once in ``workdir``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_predict", Path(__file__).with_name("predict.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.seed_sized_cell_model(workdir))


def line(label: str, record: dict, slides: int) -> str:
    per_slide = sum(record["slide_s"]) / max(1, len(record["slide_s"]))
    return (f"  {label:<22} {slides / record['wall_s'] * 60:6.2f} slides/min   wall {record['wall_s']:6.1f} s "
            f"(imports {record['import_s']:4.1f} s, batch {record['batch_s']:6.1f} s, {per_slide:5.1f} s a slide)"
            f"   load {record['load'][0]:.1f} -> {record['load'][1]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qpbridge-bench-batch"))
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--size", default="6000x4500")
    parser.add_argument("--workers", type=int, default=None, help="the many-workers case (default: cores)")
    parser.add_argument("--tiny", default="4,12", help="tiny-slide batch sizes for the overhead")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--shipped", action="store_true", help="the shipped models in (2), with the ROI gate")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="serial", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--slides-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--roi-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-roi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.slides = args.slides_dir
        child(args)
        return

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    many = args.workers or cores
    print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.1f} at start; python {sys.version.split()[0]}")
    sizes = [int(n) for n in args.tiny.split(",")]
    overheads: list[tuple[int, float]] = []
    print(f"\n1. overhead on tiny slides (1024 x 768, ROI stage only), 1 worker x {cores} vs serial x {cores}")
    folder = make_slides(args.workdir / "tiny", max(sizes), 1024, 768, first_seed=100)
    for n in sizes:
        subset = args.workdir / f"tiny_{n}"
        subset.mkdir(exist_ok=True)
        for path in sorted(folder.glob("*.svs"))[:n]:
            if not (subset / path.name).exists():
                (subset / path.name).symlink_to(path)
        serial = run(subset, args.workdir / "out", "serial", 1, cores, ["--roi-only"])
        one = run(subset, args.workdir / "out", "dask", 1, cores, ["--roi-only"])
        overheads.append((n, one["wall_s"] - serial["wall_s"]))
        print(f"  {n:3d} slides: serial {serial['wall_s']:5.1f} s, 1 worker {one['wall_s']:5.1f} s -> "
              f"{overheads[-1][1] / n:+.2f} s per slide (load {serial['load'][0]:.1f}, {one['load'][1]:.1f})",
              flush=True)
    fixed_cost = overheads[-1][1]
    if len(overheads) >= 2:
        (n0, o0), (n1, o1) = overheads[0], overheads[-1]
        slope = (o1 - o0) / (n1 - n0)
        fixed_cost = o0 - slope * n0
        print(f"  marginal overhead {slope:+.3f} s per slide; fixed cost of a Dask run {fixed_cost:.1f} s "
              "(cluster start, the worker's imports, the close)")

    if not args.skip_large:
        width, height = (int(v) for v in args.size.split("x"))
        if args.shipped:
            extra, what = [], "the shipped models, the ROI gate"
        else:
            extra = ["--no-roi", "--model-cell", str(seed_sized_cell_model(args.workdir))]
            what = "a seed-sized 40x cell model over all tissue"
        print(f"\n2. {args.slides} slides of {width} x {height}, {what}")
        folder = make_slides(args.workdir / f"large_{args.size}", args.slides, width, height, first_seed=1)
        serial = run(folder, args.workdir / "out", "serial", 1, cores, extra)
        print(line(f"serial, {cores} threads", serial, args.slides), flush=True)
        one = run(folder, args.workdir / "out", "dask", 1, cores, extra)
        print(line(f"1 worker x {cores} threads", one, args.slides), flush=True)
        spread = run(folder, args.workdir / "out", "dask", many, max(1, cores // many), extra)
        print(line(f"{many} workers x {max(1, cores // many)} thread", spread, args.slides), flush=True)
        print(f"  wall vs serial: 1 worker {one['wall_s'] / serial['wall_s'] - 1:+.1%}, "
              f"{many} workers {spread['wall_s'] / serial['wall_s'] - 1:+.1%}")
        print(f"  less the {fixed_cost:.1f} s fixed cost of a 1-worker Dask run (1.): 1 worker vs serial "
              f"{(one['wall_s'] - fixed_cost) / serial['wall_s'] - 1:+.1%}; {many} workers "
              f"{args.slides / (spread['wall_s'] - fixed_cost) * 60:.2f} slides/min")


if __name__ == "__main__":
    main()
