"""Benchmark of ``qpbridge predict``'s nuclei stage: throughput, overhead, memory, output size.

Prints, in one run on one machine (asserts nothing about time):

1. nuclei per second through the whole stage (read, network, post-processing, measurements, vectorizing,
   writing: predict's ``nuclei_s``) on a synthetic slide made with ``synth --nuclei``, with the stage's wall
   time and nuclei written; AJI / Dice / PQ / F1 of the prediction against the slide's nuclei truth over a
   crop (``--score-crop-px`` around the slide's centre: the whole slide is too big to rasterize);
2. the stage's wall time / its network's pure batched forward time over the same pixels    (target <= 1.3):
   the same network (batch norm folded, as predict loads it), device, layout and precision, batches of the
   card's tiles totalling ``nuclei_network_mpx``, the median of three rates; also the stage's wall / its own
   forward time inside predict (``nuclei_forward_s``): what the pipeline adds around the network;
3. peak RSS (VmHWM of a child process each) of predict on a small and a large synthetic slide     (target
   <= 1.5 GB, within 25% of each other). Both run in the same mode, ``--rss-mode``: ``roi`` (default) is
   ``predict --nuclei``, the nuclei inside the ROI model's regions (with the ROI and cell stages), since
   ``--nuclei-only`` -- the nuclei model over all tissue at 0.25 um/px -- would take hours on a 80,000 x
   60,000 slide on 2 CPU cores; ``nuclei-only`` measures that instead (on a GPU);
4. GeoJSON bytes per nucleus and vertices per nucleus of (1)'s output, measurements included
   (targets <= 800 bytes, <= 20 vertices);
5. a 10^5-nucleus output: (1)'s nuclei repeated side by side (shifted copies) up to ``--many`` (100,000) and
   written as QuPath detections with their measurements by predict's GeoJSON writer, then checked by
   ``qpbridge validate`` (what QuPath 0.4-0.7 would reject or mangle): seconds, file size, the verdict.

Figures (1), (2) and (4) come from ``predict --nuclei-only`` on the small slide. The nuclei model is
``--model-nuclei`` (default ``monuseg-nuclei`` where the registry finds it; else qpbridge's default nuclei
U-Net, ``default_architecture("nuclei", 3)``, with random weights, built once in ``--workdir``: it measures
cost, not accuracy, and its scores in (1) mean nothing).

Usage::

    python benchmarks/nuclei.py                               # 20,000 x 15,000 and 80,000 x 60,000, CPU
    python benchmarks/nuclei.py --quick                       # smoke run: 3,000 x 2,000 and 6,000 x 4,000
    python benchmarks/nuclei.py --small 8000x6000 --large 40000x30000
    python benchmarks/nuclei.py --device cuda --batch-size 64 --rss-mode nuclei-only
    python benchmarks/nuclei.py --model-nuclei models/monuseg-nuclei --precision bf16

On 2 busy CPU cores the ``--quick`` run takes under a minute (random weights). For the defaults, expect
about 15 min to synthesize the large slide once (cached), a minute or two for the small one with its nuclei
truth, and -- extrapolated from 3,000 x 2,000 px, ~2.4 MP/s of nuclei-network input inside predict -- some
5 min for the small slide's ``--nuclei-only`` and 5-20 min for the large slide's ``--nuclei`` (its ROI share).

Slides are cached in ``--workdir`` (default ``/tmp/qpbridge-bench``, shared with benchmarks/predict.py)
between runs; the large slide has no nuclei truth (millions of nuclei; nothing scores it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# As the qpbridge command does, before torch is imported (children inherit it): passive OpenMP waiting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qpbridge.memory import set_cache_defaults  # noqa: E402

set_cache_defaults()

import torch  # noqa: E402

from qpbridge.instance_metrics import InstanceScores  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import ensure_slide, machine_line, peak_rss_mb, pure_forward_seconds  # noqa: E402

QUICK = ("3000x2000", "6000x4000")


def ensure_nuclei_slide(workdir: Path, width: int, height: int, seed: int) -> tuple[Path, Path]:
    """A synthetic slide with its nuclei truth (``synth --nuclei``), cached in ``workdir``."""
    from qpbridge.synth import write_synthetic_slide

    path = workdir / f"nuclei_{width}x{height}_s{seed}.svs"
    truth = path.with_name(f"{path.stem}.nuclei.geojson")
    if not (path.exists() and truth.exists()):
        start = time.perf_counter()
        result = write_synthetic_slide(path, width_px=width, height_px=height, seed=seed, nuclei=True,
                                       overwrite=True)
        print(f"  synthesized {path.name} with {result.nuclei_count} truth nuclei in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        assert result.nuclei_path is not None
        truth = result.nuclei_path
    return path, truth


def random_nuclei_model(workdir: Path) -> Path:
    """qpbridge's default nuclei U-Net with random weights (seed 0), saved once in ``workdir``."""
    from qpbridge.cards import example_card
    from qpbridge.models import build_network, save_model

    path = workdir / "random-nuclei-unet"
    if not (path / "card.json").exists():
        card = example_card("nuclei", name="random-nuclei-unet")
        torch.manual_seed(0)
        save_model(path, card, build_network(card.architecture).eval())
    return path


def choose_model(args: argparse.Namespace) -> tuple[str, str]:
    """The nuclei model to run and a line saying what it is."""
    from qpbridge.cards import resolve_model_path
    from qpbridge.errors import ModelError
    from qpbridge.predict.config import DEFAULT_NUCLEI_MODEL

    if args.model_nuclei:
        try:
            return args.model_nuclei, f"nuclei model {resolve_model_path(args.model_nuclei)}"
        except ModelError as exc:
            raise SystemExit(f"error: {exc}") from None
    try:
        return DEFAULT_NUCLEI_MODEL, f"nuclei model {resolve_model_path(DEFAULT_NUCLEI_MODEL)} (the registry's)"
    except ModelError:
        path = random_nuclei_model(args.workdir)
        return str(path), (f"nuclei model {path}: {DEFAULT_NUCLEI_MODEL!r} is not installed, so qpbridge's default "
                           "nuclei U-Net with RANDOM weights -- the figures measure cost, not accuracy")


def child_predict(args: argparse.Namespace) -> None:
    """Run predict once in this process and print its summary and peak RSS as JSON (for the parent)."""
    from qpbridge.predict import PredictConfig, predict_slide

    config = PredictConfig(device=args.device, batch_size=args.batch_size, precision=args.precision,
                           model_nuclei=args.model_nuclei, nuclei_only=args.mode == "nuclei-only",
                           nuclei=args.mode == "roi")
    start = time.perf_counter()
    s = predict_slide(args.child, args.out, config)
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": wall, "rss_mb": peak_rss_mb(), "stage_s": s.timings_s.get("nuclei_s", 0.0),
                      "timings": s.timings_s, "nuclei": s.nuclei_written, "by_class": s.nuclei_by_class,
                      "windows": s.nuclei_windows_run, "forward_s": s.nuclei_forward_s,
                      "mpx": s.nuclei_network_mpx, "layout": s.layouts.get("nuclei", "nchw")}))


def run_child(slide: Path, out: Path, mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(slide), "--out", str(out), "--device", args.device,
           "--model-nuclei", args.model_nuclei, "--precision", args.precision, "--mode", mode]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"predict failed on {slide}:\n{result.stderr[-3000:]}")
    run = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"    predict --{'nuclei-only' if mode == 'nuclei-only' else 'nuclei'} {slide.name}: "
          f"{run['wall_s']:.1f} s wall (process {time.perf_counter() - start:.1f} s), nuclei stage "
          f"{run['stage_s']:.1f} s, {run['nuclei']} nuclei, {run['windows']} windows ({run['mpx']:.1f} MP), "
          f"peak RSS {run['rss_mb']:.0f} MB", flush=True)
    return run


def crop_scores(pred: Path, truth: Path, slide: Path, crop_px: int) -> tuple[InstanceScores, tuple[int, int, int, int]]:
    """Instance scores of ``pred``'s nuclei against ``truth``'s over a level-0 crop around the slide's centre."""
    import shapely
    from affine import Affine

    from qpbridge.instance_eval import instance_polygons
    from qpbridge.instance_metrics import instance_scores, rasterize_instances
    from qpbridge.slide import open_slide

    with open_slide(slide) as opened:
        width, height = opened.dimensions
    w, h = min(crop_px, width), min(crop_px, height)
    x0, y0 = (width - w) // 2, (height - h) // 2
    box = shapely.box(x0, y0, x0 + w, y0 + h)
    images = []
    for path in (pred, truth):
        polygons = instance_polygons(path)
        polygons = polygons[shapely.intersects(polygons, box)] if len(polygons) else polygons
        images.append(rasterize_instances(polygons, (h, w), Affine.translation(x0, y0)))
    return instance_scores(images[0], images[1]), (x0, y0, w, h)


def output_size(path: Path, nuclei: int) -> tuple[float, float]:
    """GeoJSON bytes per nucleus and distinct vertices per nucleus (rings' closing points not counted)."""
    import shapely

    from qpbridge.instance_eval import instance_polygons

    polygons = instance_polygons(path)
    rings = shapely.get_num_interior_rings(polygons) + 1
    for_parts = shapely.get_num_geometries(polygons) - 1  # a MultiPolygon's extra exteriors
    vertices = int((shapely.get_num_coordinates(polygons) - rings - for_parts).sum())
    return path.stat().st_size / max(nuclei, 1), vertices / max(len(polygons), 1)


def stage_pure_forward(model_name: str, run: dict, args: argparse.Namespace) -> float:
    """Seconds of the nuclei network's pure batched forward over the stage's ``nuclei_network_mpx``."""
    from qpbridge.models import inference_network, load_model
    from qpbridge.predict.segmenter import default_batch_size

    device = torch.device(args.device)
    model = load_model(model_name, role="nuclei", device=device)
    model.network = inference_network(model.card, model.network)
    batch = args.batch_size or default_batch_size(device)
    return float(pure_forward_seconds(model, device, run["mpx"], batch, run["layout"], args.precision))


def report_stage(model_name: str, slide: Path, truth: Path, args: argparse.Namespace) -> dict:
    """``predict --nuclei-only`` on ``slide``: print figures (1), (2) and (4); return the child's record."""
    out = args.workdir / f"{slide.stem}.pred.geojson"
    run = run_child(slide, out, "nuclei-only", args)
    stage, nuclei = run["stage_s"], run["nuclei"]
    print(f"(1) nuclei stage: {nuclei / max(stage, 1e-9):.0f} nuclei/s ({nuclei} nuclei written in {stage:.2f} s; "
          f"read, network, post-processing, measurements, vectorizing, writing); by class {run['by_class']}")
    stages = json.dumps({k: round(v, 2) for k, v in run["timings"].items()})
    print(f"    predict's stages {stages}, wall {run['wall_s']:.2f} s")
    s, (x0, y0, w, h) = crop_scores(out, truth, slide, args.score_crop_px)
    if s.n_ref == 0:
        print("    the synthetic truth has no nuclei in the scored crop: no scores")
    else:
        print(f"    against the synthetic nuclei truth over the {w} x {h} px crop at ({x0}, {y0}): "
              f"AJI {s.aji:.3f}, Dice {s.dice:.3f}, PQ {s.pq:.3f}, F1 {s.f1:.3f} "
              f"(predicted {s.n_pred}, truth {s.n_ref}, TP {s.tp})")
    pure = stage_pure_forward(model_name, run, args)
    print(f"(2) nuclei stage wall / pure batched forward of the same {run['mpx']:.2f} MP ({run['layout']}, "
          f"precision {args.precision}): {stage:.2f} / {pure:.2f} s = {stage / max(pure, 1e-9):.2f}; "
          f"/ its own forward inside predict: {stage:.2f} / {run['forward_s']:.2f} s = "
          f"{stage / max(run['forward_s'], 1e-9):.2f} (target <= 1.3 for the first)")
    bytes_per, vertices_per = output_size(out, nuclei)
    print(f"(4) output {out.name}: {bytes_per:.0f} GeoJSON bytes per nucleus, {vertices_per:.1f} vertices per "
          f"nucleus (measurements included; targets <= 800 bytes, <= 20 vertices)")
    return run


def report_memory(small: Path, args: argparse.Namespace) -> None:
    """Figure (3): peak RSS of predict in ``--rss-mode`` on the small and the large slide, one process each."""
    w, h = (int(v) for v in args.large.split("x"))
    large = ensure_slide(args.workdir, w, h, args.seed)
    runs = [run_child(path, args.workdir / f"{path.stem}.rss.geojson", args.rss_mode, args)
            for path in (small, large)]
    flag = "--nuclei-only" if args.rss_mode == "nuclei-only" else "--nuclei (inside the ROI)"
    ratio = runs[1]["rss_mb"] / max(runs[0]["rss_mb"], 1e-9)
    print(f"(3) peak RSS of predict {flag}: {small.name} {runs[0]['rss_mb']:.0f} MB, {large.name} "
          f"{runs[1]['rss_mb']:.0f} MB (ratio {ratio:.2f}; targets <= 1536 MB, within 25%); large slide: "
          f"{runs[1]['wall_s']:.0f} s wall, {runs[1]['nuclei']} nuclei, {runs[1]['windows']} nuclei windows")


def report_many(pred: Path, many: int, workdir: Path) -> None:
    """Figure (5): ``many`` nuclei (shifted copies of ``pred``'s) written as detections, then validated."""
    import shapely

    from qpbridge.qupath import GeoJSONWriter, read_geojson, validate_geojson

    nuclei = read_geojson(pred).features
    if not nuclei:
        print("(5) skipped: (1) wrote no nuclei")
        return
    x0, _, x1, _ = shapely.total_bounds([f.geometry for f in nuclei])
    out = workdir / "many_nuclei.geojson"
    start, written, copy = time.perf_counter(), 0, 0
    with GeoJSONWriter(out) as writer:
        while written < many:
            batch = nuclei[: many - written]
            shift = copy * (x1 - x0 + 100)
            writer.write_many([dataclasses.replace(f, geometry=shapely.transform(f.geometry, lambda xy, s=shift:
                                                                                   xy + [s, 0]), id=None)
                               for f in batch])
            written, copy = written + len(batch), copy + 1
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    report = validate_geojson(out)
    validate_s = time.perf_counter() - start
    verdict = "no errors, no warnings" if report.ok and not report.issues else "; ".join(report.lines(3))
    print(f"(5) {written:,} nuclei as detections with {len(nuclei[0].measurements)} measurements each: written in "
          f"{write_s:.1f} s ({out.stat().st_size / 1e6:.0f} MB, {out.stat().st_size / written:.0f} bytes per "
          f"nucleus); qpbridge validate in {validate_s:.1f} s: {verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", default="20000x15000")
    parser.add_argument("--large", default="80000x60000")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: --small {QUICK[0]} --large {QUICK[1]}")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precision", default="auto", help="predict's --precision (auto, fp32, bf16)")
    parser.add_argument("--model-nuclei", default=None,
                        help="NAME|DIR (default: monuseg-nuclei if installed, else a random-weight U-Net)")
    parser.add_argument("--rss-mode", choices=("roi", "nuclei-only"), default="roi",
                        help="predict mode of the peak-RSS runs (3): --nuclei inside the ROI, or --nuclei-only")
    parser.add_argument("--many", type=int, default=100_000, help="nuclei of the output written in (5)")
    parser.add_argument("--score-crop-px", type=int, default=4096, help="side of the level-0 crop scored in (1)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qpbridge-bench"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="nuclei-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.small, args.large = QUICK
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child_predict(args)
        return
    from qpbridge.device import configure_threads

    device = torch.device(args.device)
    threads = configure_threads(None) if device.type == "cpu" else None
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine_line(device, threads))
    args.model_nuclei, line = choose_model(args)
    print(line, flush=True)
    w, h = (int(v) for v in args.small.split("x"))
    small, truth = ensure_nuclei_slide(args.workdir, w, h, args.seed)
    report_stage(args.model_nuclei, small, truth, args)
    report_many(args.workdir / f"{small.stem}.pred.geojson", args.many, args.workdir)
    report_memory(small, args)


if __name__ == "__main__":
    main()
