"""Benchmark of ``qpbridge predict``: conv peak, model efficiency inside predict, overheads, ROI savings, memory.

Prints, in one run on one machine (asserts nothing about time):

1. a reference conv throughput of this machine (GFLOP/s of a large 3x3 convolution, batched);
2. the cell model's achieved GFLOP/s inside predict and its ratio to (1)            (target >= 0.8);
3. predict's wall time / the pure forward time of the same tiles                    (target <= 1.15);
4. high-magnification work with the ROI gate / work with ``--no-roi``                 (target <= 0.15);
5. peak RSS of predict on a small and a large synthetic slide (each in its own process) (target <= 2 GB,
   within 10% of each other).

With ``--seed-sized``, (2) and (3) are also measured with a cell U-Net of the seed's size at its 40x
(MONAI UNet 16-256 channels, 2 residual units, 0.25 um/px; random weights biased to "background", so it
measures the network and the pipeline around it, not accuracy, and writes no class regions).

Usage::

    python benchmarks/predict.py                         # 20,000 x 15,000 and 40,000 x 30,000 slides, CPU
    python benchmarks/predict.py --large 80000x60000     # the issue's large slide (synth takes ~15 min)
    python benchmarks/predict.py --device cuda --batch-size 64
    python benchmarks/predict.py --seed-sized              # add the seed-sized 40x cell model's figures
    python benchmarks/predict.py --precision bf16          # predict and the pure forward in bfloat16

Slides are cached in ``--workdir`` (default ``/tmp/qpbridge-bench``) between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# As the qpbridge command does, before torch is imported (children inherit it): passive OpenMP waiting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qpbridge.memory import set_cache_defaults  # noqa: E402

set_cache_defaults()

import torch  # noqa: E402


def conv_reference_gflops(
    device: torch.device, layout: str, seconds: float = 3.0, dtype: torch.dtype | None = None
) -> float:
    """GFLOP/s of a 64->64 channel 3x3 convolution over a batch of 8 x 256 x 256 in a layout (float32, or
    autocast to ``dtype``)."""
    from qpbridge.predict.segmenter import LAYOUTS

    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).eval().to(memory_format=LAYOUTS[layout])
    x = torch.randn(8, 64, 256, 256, device=device).contiguous(memory_format=LAYOUTS[layout])
    flops = 2 * 8 * 64 * 64 * 9 * 256 * 256
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(2):
            conv(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            conv(x)
            runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return flops * runs / elapsed / 1e9


def model_flops_per_window(model: object, device: torch.device) -> float:
    """FLOPs of one forward of one tile (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    card = model.card  # type: ignore[attr-defined]
    x = torch.randn(1, 3, card.tile_px, card.tile_px, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.network(x)  # type: ignore[attr-defined]
    return float(counter.get_total_flops())


def pure_forward_seconds(
    model: object, device: torch.device, mpx: float, batch: int, layout: str, precision: str, min_seconds: float = 3.0
) -> float:
    """Seconds to run ``mpx`` megapixels through the network as batches of tiles (nothing else), in ``layout``
    and ``precision`` (as predict runs it): the median of three rates measured over at least ``min_seconds``."""
    from qpbridge.predict.segmenter import LAYOUTS, autocast_dtype

    card = model.card  # type: ignore[attr-defined]
    network = model.network.to(memory_format=LAYOUTS[layout])  # type: ignore[attr-defined]
    x = torch.randn(batch, 3, card.tile_px, card.tile_px, device=device).contiguous(memory_format=LAYOUTS[layout])
    pixels = mpx * 1e6
    dtype = autocast_dtype(device, precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(2):  # warm-up: kernels prepared, memory allocated
            network(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates = []
        for _ in range(3):  # the median of three rates, each over >= min_seconds / 3 (this machine's noise)
            start, done = time.perf_counter(), 0
            while done < pixels / 3 or time.perf_counter() - start < min_seconds / 3:
                network(x)
                done += x.numel() // 3
                if device.type == "cuda":
                    torch.cuda.synchronize()
            rates.append(done / (time.perf_counter() - start))
    return pixels / sorted(rates)[1]


def ensure_slide(workdir: Path, width: int, height: int, seed: int) -> Path:
    path = workdir / f"bench_{width}x{height}_s{seed}.svs"
    if not path.exists():
        from qpbridge.synth import write_synthetic_slide

        start = time.perf_counter()
        write_synthetic_slide(path, width_px=width, height_px=height, seed=seed)
        print(f"  synthesized {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def machine_line(device: torch.device, threads: int | None) -> str:
    """The line that says where the figures come from: CPU, cores, torch, device, threads, OpenMP waiting."""
    cpu = platform.processor() or platform.machine()
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    omp = f", {threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}" if threads else ""
    return f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}{gpu}{omp}"


def peak_rss_mb() -> float:
    """This process's peak RSS. On Linux VmHWM: ``ru_maxrss`` would also count the parent's memory, which
    a child started with fork/vfork + exec carries over in its rusage."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_predict(args: argparse.Namespace) -> None:
    """Run predict once in this process and print its summary and peak RSS as JSON (for the parent)."""
    from qpbridge.predict import PredictConfig, predict_slide

    config = PredictConfig(device=args.device, batch_size=args.batch_size, use_roi=not args.no_roi,
                           model_roi=args.model_roi, model_cell=args.model_cell, precision=args.precision)
    start = time.perf_counter()
    summary = predict_slide(args.child, args.out, config)
    wall = time.perf_counter() - start
    rss_mb = peak_rss_mb()
    print(json.dumps({"wall_s": wall, "rss_mb": rss_mb, "windows_run": summary.windows_run,
                      "mpx": summary.network_mpx, "roi_mpx": summary.roi_network_mpx, "layouts": summary.layouts,
                      "tissue_mpx": summary.tissue_network_mpx,
                      "forward_s": summary.forward_s, "timings": summary.timings_s,
                      "roi_windows_run": summary.roi_windows_run, "roi_forward_s": summary.roi_forward_s,
                      "features": summary.features_written, "saved": summary.high_mag_saved_frac,
                      "roi_fraction": summary.roi_fraction_of_tissue}))


def run_child(slide: Path, out: Path, args: argparse.Namespace, no_roi: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(slide), "--out", str(out), "--device", args.device,
           "--model-roi", args.model_roi, "--model-cell", args.model_cell, "--precision", args.precision]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if no_roi:
        cmd.append("--no-roi")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"predict failed on {slide}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def seed_sized_cell_model(workdir: Path) -> Path:
    """A cell model of the seed's size at 40x with random weights (for cost only), saved once in ``workdir``."""
    from dataclasses import replace

    from qpbridge.models import Architecture, build_network, example_card, save_model

    path = workdir / "seed-sized-cell-40x"
    if not (path / "card.json").exists():
        card = example_card("cell", channels=(16, 32, 64, 128, 256), name="seed-sized-cell-40x")
        args = dict(card.architecture.args, num_res_units=2)
        card = replace(card, mpp=0.25, architecture=Architecture(card.architecture.network, args))
        torch.manual_seed(0)
        network = build_network(card.architecture).eval()
        # Random weights label noise, and tracing millions of one-pixel polygons is not what a trained model
        # costs: bias the last layer to "background" so that the figures are the network and the pipeline's.
        last = [m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
        with torch.no_grad():
            last.bias[0] += 1e3
        save_model(path, card, network)
    return path


def report_model(label: str, args: argparse.Namespace, slide: Path, device: torch.device, ref: float) -> dict:
    """Run predict with ``args.model_cell`` and print figures (2) and (3) for it; return the child's record."""
    from qpbridge.models import inference_network, load_model

    cell = load_model(args.model_cell, role="cell", device=device)
    cell.network = inference_network(cell.card, cell.network)
    flops = model_flops_per_window(cell, device)
    flops_per_px = flops / cell.card.tile_px**2
    print(f"    {label}: {flops / 1e9:.2f} GFLOP per {cell.card.tile_px}px window "
          f"({flops_per_px / 1e3:.1f} GFLOP/MP) at {cell.card.mpp} um/px")
    run = run_child(slide, args.workdir / f"small_{label.split()[0]}.geojson", args)
    from qpbridge.predict.segmenter import default_batch_size

    batch = args.batch_size or default_batch_size(device)
    roi = load_model(args.model_roi, role="roi", device=device)
    roi.network = inference_network(roi.card, roi.network)
    layouts = run["layouts"]
    pure_cell = pure_forward_seconds(cell, device, run["mpx"], batch, layouts.get("cell", "nchw"), args.precision)
    pure = pure_cell + pure_forward_seconds(roi, device, run["roi_mpx"], batch, layouts.get("roi", "nchw"),
                                            args.precision)
    work = flops_per_px * run["mpx"] * 1e6
    in_forward = work / max(run["forward_s"], 1e-9) / 1e9
    achieved = work / max(run["timings"].get("cells_s", 0), 1e-9) / 1e9
    pure_rate = work / max(pure_cell, 1e-9) / 1e9
    stages = json.dumps({k: round(v, 2) for k, v in run["timings"].items()})
    print(f"    predict {slide.name}: {run['wall_s']:.2f} s wall, {run['windows_run']} cell windows "
          f"({run['mpx']:.2f} MP), {run['roi_windows_run']} ROI windows ({run['roi_mpx']:.2f} MP), "
          f"{run['features']} features, layouts {layouts}; stages {stages}; forward: cell {run['forward_s']:.2f} s, "
          f"ROI {run['roi_forward_s']:.2f} s")
    print(f"(2) {label} inside predict: {in_forward:.1f} GFLOP/s in its forward passes "
          f"(ratio {in_forward / ref:.2f}); {achieved:.1f} GFLOP/s over the whole cell stage "
          f"(ratio {achieved / ref:.2f}); pure batched forward {pure_rate:.1f} GFLOP/s (ratio {pure_rate / ref:.2f})")
    print(f"(3) {label}: predict wall / pure forward of the same work ({run['mpx']:.2f} MP cell + "
          f"{run['roi_mpx']:.2f} MP ROI): {run['wall_s']:.2f} / {pure:.2f} s = "
          f"{run['wall_s'] / max(pure, 1e-9):.2f}; the cell stage alone: "
          f"{run['timings'].get('cells_s', 0):.2f} / {pure_cell:.2f} s = "
          f"{run['timings'].get('cells_s', 0) / max(pure_cell, 1e-9):.2f}")
    in_predict = run["forward_s"] + run["roi_forward_s"]
    print(f"    wall / the forward passes' own time inside predict (what the pipeline adds around the networks): "
          f"{run['wall_s']:.2f} / {in_predict:.2f} s = {run['wall_s'] / max(in_predict, 1e-9):.2f}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", default="20000x15000")
    parser.add_argument("--large", default="40000x30000")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precision", default="auto", help="predict's --precision (auto, fp32, bf16)")
    parser.add_argument("--model-roi", default="deepbatch-synth-roi")
    parser.add_argument("--model-cell", default="deepbatch-synth-cell")
    parser.add_argument("--seed-sized", action="store_true", help="also measure a seed-sized 40x cell model")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qpbridge-bench"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-roi", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_predict(args)
        return

    from qpbridge.device import configure_threads

    device = torch.device(args.device)
    threads = configure_threads(None) if device.type == "cpu" else None
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine_line(device, threads))

    refs = {layout: conv_reference_gflops(device, layout) for layout in ("nchw", "channels_last")}
    ref = max(refs.values())
    print(f"(1) reference 3x3 conv (8x64x256x256, 64->64): {ref:.1f} GFLOP/s (the faster layout; "
          + ", ".join(f"{k} {v:.0f}" for k, v in refs.items()) + ")")
    from qpbridge.predict.segmenter import autocast_dtype, native_bf16

    dtype = autocast_dtype(device, args.precision)
    if dtype is not None:  # the ratios below are to the float32 reference; this one is in predict's precision
        low = max(conv_reference_gflops(device, layout, dtype=dtype) for layout in ("nchw", "channels_last"))
        print(f"    the same conv in {dtype} autocast (predict's --precision {args.precision}): {low:.1f} GFLOP/s"
              + (f" (native bfloat16: {native_bf16()})" if device.type == "cpu" else ""))

    w, h = (int(v) for v in args.small.split("x"))
    small = ensure_slide(args.workdir, w, h, args.seed)
    with_roi = report_model("shipped cell model", args, small, device, ref)
    if args.seed_sized:
        seed_args = argparse.Namespace(**{**vars(args), "model_cell": str(seed_sized_cell_model(args.workdir))})
        report_model("seed-sized 40x cell model", seed_args, small, device, ref)

    no_roi = run_child(small, args.workdir / "small_noroi.geojson", args, no_roi=True)
    work_ratio = with_roi["mpx"] / max(no_roi["mpx"], 1e-9)
    print(f"(4) ROI is {with_roi['roi_fraction']:.1%} of tissue; high-mag work (cell-model input MP) with ROI / "
          f"--no-roi: {with_roi['mpx']:.2f} / {no_roi['mpx']:.2f} = {work_ratio:.3f} (windows "
          f"{with_roi['windows_run']} / {no_roi['windows_run']}); wall {with_roi['wall_s']:.2f} / "
          f"{no_roi['wall_s']:.2f} s = {with_roi['wall_s'] / no_roi['wall_s']:.3f}")

    w, h = (int(v) for v in args.large.split("x"))
    large = ensure_slide(args.workdir, w, h, args.seed)
    big = run_child(large, args.workdir / "large.geojson", args)
    print(f"(5) peak RSS: {small.name} {with_roi['rss_mb']:.0f} MB, {large.name} {big['rss_mb']:.0f} MB "
          f"(ratio {big['rss_mb'] / with_roi['rss_mb']:.2f}); large slide: {big['wall_s']:.0f} s wall, "
          f"{big['windows_run']} windows")


if __name__ == "__main__":
    main()
