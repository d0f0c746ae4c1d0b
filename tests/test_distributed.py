"""predict on Dask: many slides, one task per slide, on worker processes (loopback LocalCluster of 2 workers).

The Dask tests are marked ``slow`` (deselect with ``-m "not slow"``) and need ``distributed`` (in the ``test``
extra); the planning, the cache, the run summary and the serial path's imports are tested without a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.device import usable_cpu_count
from qpbridge.errors import InputError, ModelError, QpbridgeError
from qpbridge.models import build_network, example_card, save_model
from qpbridge.predict import PredictConfig, is_finished, predict_slides
from qpbridge.predict import distributed as dist
from qpbridge.predict.pipeline import SlideJob, SlideOutcome
from qpbridge.qupath import meta_path

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
N_SLIDES = 4


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    paths = []
    for role in ("roi", "cell"):
        card = example_card(role, channels=(4, 8))
        save_model(root / role, card, build_network(card.architecture))
        paths.append(root / role)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 4 small synthetic slides (1024 x 768, seeds 0-3)."""
    from qpbridge.synth import write_synthetic_slide

    folder = tmp_path_factory.mktemp("slides")
    for seed in range(N_SLIDES):
        write_synthetic_slide(folder / f"case{seed}.svs", width_px=1024, height_px=768, seed=seed)
    return folder


def _roi_config(models: tuple[Path, Path]) -> PredictConfig:
    """ROI stage only: a tenth of a second per slide, enough to test the orchestration."""
    return PredictConfig(model_roi=str(models[0]), roi_only=True, layout="nchw", threads=1)


@pytest.fixture(scope="module")
def roi_reference(tmp_path_factory: pytest.TempPathFactory, slides: Path, tiny_models: tuple[Path, Path]) -> Path:
    """The serial batch's ROI-only outputs (what every distributed run must reproduce byte for byte)."""
    out = tmp_path_factory.mktemp("roi-serial")
    batch = predict_slides([slides], out, _roi_config(tiny_models))
    assert batch.count("done") == N_SLIDES
    return out


def _same_outputs(reference: Path, out: Path) -> None:
    for seed in range(N_SLIDES):
        name = f"case{seed}.geojson"
        assert is_finished(out / name)
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def _run_json(folder: Path) -> dict:
    return json.loads((folder / dist.RUN_SUMMARY_NAME).read_text())


# ------------------------------------------------------------------------------------------- no cluster
def test_plan_workers_cpu_threads_and_environment() -> None:
    plans = dist.plan_workers(2, cores=5, environ={"LRU_CACHE_CAPACITY": "64"})
    assert [(p.name, p.threads, p.resources) for p in plans] == [("cpu0", 2, {}), ("cpu1", 2, {})]
    assert plans[0].env == {
        "OMP_WAIT_POLICY": "PASSIVE", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "64",
        "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
    }
    assert [p.threads for p in dist.plan_workers(4, cores=2)] == [1, 1, 1, 1]  # never 0 threads
    assert [p.threads for p in dist.plan_workers(2, cores=16, threads=3)] == [3, 3]
    with pytest.raises(InputError, match="^--workers must be >= 1, got 0$"):
        dist.plan_workers(0, cores=2)


def test_plan_workers_one_per_gpu_with_fake_gpus() -> None:
    """4 GPUs, 4 workers: each sees its GPU alone and declares GPU=1 (untested on real GPUs: none here)."""
    gpus = dist.visible_gpus(4, environ={})
    plans = dist.plan_workers(4, cores=32, gpus=gpus, environ={})
    assert [(p.name, p.env["CUDA_VISIBLE_DEVICES"], p.threads, p.resources) for p in plans] == [
        ("gpu0", "0", 8, {"GPU": 1.0}), ("gpu1", "1", 8, {"GPU": 1.0}),
        ("gpu2", "2", 8, {"GPU": 1.0}), ("gpu3", "3", 8, {"GPU": 1.0}),
    ]
    # The machine's own CUDA_VISIBLE_DEVICES is respected (indices or UUIDs), and more workers share GPUs.
    gpus = dist.visible_gpus(2, environ={"CUDA_VISIBLE_DEVICES": "3, GPU-8a1b"})
    assert gpus == ["3", "GPU-8a1b"]
    plans = dist.plan_workers(3, cores=12, gpus=gpus, environ={})
    assert [(p.name, p.env["CUDA_VISIBLE_DEVICES"]) for p in plans] == [
        ("gpu3", "3"), ("gpuGPU-8a1b", "GPU-8a1b"), ("gpu3-1", "3")]
    with pytest.raises(InputError, match="torch sees no GPU here"):
        dist.plan_workers(2, cores=4, gpus=[])
    assert dist.task_resources("cuda:1", [{"GPU": 2.0}]) == {"GPU": 1.0}
    assert dist.task_resources("auto", [{}, {"GPU": 1.0}]) == {"GPU": 1.0}
    assert dist.task_resources("cuda", [{}, {}]) is None
    assert dist.task_resources("cpu", [{"GPU": 1.0}]) is None


def test_options_that_need_dask_fail_clearly_without_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import and find_spec both see it missing
    with pytest.raises(InputError) as info:
        dist.require_distributed(4)
    assert str(info.value) == ("--workers 4 runs slides on Dask, which is not installed: "
                               "pip install 'qpbridge[distributed]'")
    with pytest.raises(InputError, match=r"^--scheduler runs slides on Dask, which is not installed: pip install "):
        dist.require_distributed(1, "tcp://head:8786")
    dist.require_distributed(1, None)  # today's path needs nothing
    result = runner.invoke(app, ["predict", str(tmp_path), "-o", str(tmp_path), "--workers", "2"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --workers 2 runs slides on Dask, which is not installed: "
                                     "pip install 'qpbridge[distributed]'")
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"^--workers 2 starts a cluster on this machine and --scheduler tcp://h:1 "
                                         r"uses a running one \(\$QPBRIDGE_SCHEDULER sets --scheduler\)"):
        dist.require_distributed(2, "tcp://h:1")


def test_model_cache_loads_once_and_again_when_the_weights_change(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    cache = dist.ModelCache(max_models=2)
    first = cache(str(tiny_models[0]), role="roi", device="cpu")
    second = cache(tiny_models[0], role="roi", device=torch.device("cpu"))  # same model, other spelling
    assert (cache.loads, cache.hits) == (1, 1)
    assert first is not second and first.network is second.network  # copies of one loaded network
    second.network = torch.nn.Identity()  # what the pipeline does to its copy never reaches the cache
    assert isinstance(cache(tiny_models[0], role="roi").network, type(first.network))
    with pytest.raises(ModelError, match="is a roi model but a cell model is needed"):
        cache(tiny_models[0], role="cell")
    # Retrained in place: the card's sha256 changes, the cache loads the new weights.
    card = example_card("roi", channels=(4, 8))
    torch.manual_seed(1)
    save_model(tmp_path / "roi", card, build_network(card.architecture))
    before = cache(tmp_path / "roi", role="roi")
    save_model(tmp_path / "roi", card, build_network(card.architecture))
    after = cache(tmp_path / "roi", role="roi")
    assert before.card.weights_sha256 != after.card.weights_sha256 and cache.loads == 3
    cache(tiny_models[0], role="roi")  # the oldest of 3 was dropped (2 kept): loaded again
    assert cache.loads == 4


def test_run_slide_in_process_writes_outputs_and_removes_a_lost_writers_temporary(
    tmp_path: Path, slides: Path, tiny_models: tuple[Path, Path], roi_reference: Path
) -> None:
    output = tmp_path / "case0.geojson"
    lost = tmp_path / ".case0.geojson.99999-0badf00d.tmp"  # a killed worker's half-written GeoJSON
    lost.write_bytes(b'{"type":"FeatureCollection","features":[\n{"type":"Fea')
    lost_meta = tmp_path / ".case0.geojson.meta.json.99999-0badf00d.tmp"
    lost_meta.write_text("{")
    outcome = dist.run_slide(SlideJob(slides / "case0.svs", output), _roi_config(tiny_models))
    assert (outcome.status, outcome.worker, outcome.error) == ("done", None, None)
    assert outcome.seconds is not None and outcome.seconds > 0
    assert output.read_bytes() == (roi_reference / "case0.geojson").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case0.geojson", "case0.geojson.meta.json"]
    again = dist.run_slide(SlideJob(slides / "case0.svs", output), _roi_config(tiny_models))
    assert again.status == "skipped"  # a rerun of a slide another worker finished
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide")
    failed = dist.run_slide(SlideJob(bad, tmp_path / "bad.geojson"), _roi_config(tiny_models))
    assert failed.status == "failed" and isinstance(failed.error, QpbridgeError)
    assert str(bad) in str(failed.error) and not (tmp_path / "bad.geojson").exists()


def test_run_summary_of_a_serial_batch(tmp_path: Path, slides: Path, tiny_models: tuple[Path, Path]) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide")
    out = tmp_path / "out"
    out.mkdir()
    batch = predict_slides([slides / "case1.svs", bad], out, _roi_config(tiny_models))
    run = _run_json(out)
    assert (run["engine"], run["workers"], run["scheduler"], run["complete"]) == ("serial", None, None, True)
    assert run["counts"] == {"done": 1, "skipped": 0, "failed": 1}
    done, failed = run["slides"]
    assert (done["slide"], done["output"], done["status"], done["worker"], done["attempts"]) == (
        str(slides / "case1.svs"), str(out / "case1.geojson"), "done", None, 1)
    assert done["features_by_class"] == batch.outcomes[0].summary.features_by_class  # type: ignore[union-attr]
    assert done["features_written"] == sum(done["features_by_class"].values()) and done["error"] is None
    assert (failed["status"], failed["features_by_class"]) == ("failed", None)
    assert failed["error"] == str(batch.outcomes[1].error) and str(bad) in failed["error"]
    assert done["seconds"] > 0 and run["wall_s"] >= done["seconds"]


def test_serial_paths_import_nothing_of_dask(tmp_path: Path, slides: Path, tiny_models: tuple[Path, Path]) -> None:
    """Two slides with workers=1, and one slide with workers=2: today's path, and Dask is never imported (where
    it is not installed, workers=2 is an error: see test_options_that_need_dask_fail_clearly_without_it)."""
    import importlib.util

    workers = 2 if importlib.util.find_spec("distributed") is not None else 1
    script = f"""
import sys
from qpbridge.predict import PredictConfig, predict_slides
config = PredictConfig(model_roi={str(tiny_models[0])!r}, roi_only=True, layout="nchw", threads=1)
slides = [{str(slides / "case0.svs")!r}, {str(slides / "case1.svs")!r}]
a = predict_slides(slides, {str(tmp_path)!r}, config)
b = predict_slides(slides[:1], {str(tmp_path / "one.geojson")!r}, config, workers={workers})
print([o.status for o in a.outcomes + b.outcomes], "distributed" in sys.modules, "dask" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['done', 'done', 'done'] False False"
    assert _run_json(tmp_path)["engine"] == "serial"


# ------------------------------------------------------------------------------------------- on a cluster
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A loopback cluster of 2 worker processes (1 thread each) started as ``--workers 2`` starts one, with the
    test hook armed by creating the returned marker file; its workers declare ``GPU=1`` as GPU workers of a
    running cluster would (they have none: ``--device auto`` runs on their CPU)."""
    pytest.importorskip("distributed")
    marker = tmp_path_factory.mktemp("hook") / "die-once"
    plans = [replace(plan, resources={"GPU": 1.0}) for plan in dist.plan_workers(2, cores=2, threads=1)]
    for plan in plans:
        plan.env[dist.DIE_ONCE_ENV] = str(marker)
    local = dist.start_local_cluster(plans)
    try:
        yield local.scheduler_address, marker
    finally:
        local.close()


@pytest.mark.slow
def test_cli_workers_2_gives_the_serial_outputs(
    tmp_path: Path, slides: Path, tiny_models: tuple[Path, Path]
) -> None:
    """The whole cascade, 4 slides: ``--workers 2`` writes byte for byte what the serial run writes."""
    pytest.importorskip("distributed")
    args = ["--model-roi", str(tiny_models[0]), "--model-cell", str(tiny_models[1]), "--layout", "nchw",
            "--threads", "1"]
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    serial.mkdir()
    parallel.mkdir()
    first = runner.invoke(app, ["predict", str(slides), "-o", str(serial), *args])
    assert first.exit_code == 0, first.output
    result = runner.invoke(app, ["predict", str(slides), "-o", str(parallel), "--workers", "2", *args])
    assert result.exit_code == 0, result.output
    _same_outputs(serial, parallel)
    lines = sorted(result.stdout.strip().splitlines())
    assert [line.split(" -> ")[0] for line in lines] == [str(slides / f"case{i}.svs") for i in range(N_SLIDES)]
    run = _run_json(parallel)
    assert (run["engine"], run["workers"], run["counts"]) == (
        "distributed", 2, {"done": N_SLIDES, "skipped": 0, "failed": 0})
    assert len({s["worker"] for s in run["slides"]}) == 2  # both workers took slides
    by_class = [json.loads(meta_path(serial / f"case{i}.geojson").read_text())["summary"]["features_by_class"]
                for i in range(N_SLIDES)]
    assert [dict(sorted(c.items())) for c in by_class] == [s["features_by_class"] for s in run["slides"]]
    assert all(s["worker"].startswith("tcp://127.0.0.1:") and s["attempts"] == 1 for s in run["slides"])


@pytest.mark.slow
def test_worker_killed_mid_slide_the_slide_is_rerun(
    tmp_path: Path, slides: Path, tiny_models: tuple[Path, Path], roi_reference: Path, cluster: tuple[str, Path]
) -> None:
    address, marker = cluster
    marker.write_text("armed")
    batch = predict_slides([slides], tmp_path, _roi_config(tiny_models), scheduler=address)
    died = Path(f"{marker}.died")
    assert not marker.exists() and died.exists()  # a worker process did die, in the middle of this slide:
    killed = Path(died.read_text())
    assert killed in [slides / f"case{i}.svs" for i in range(N_SLIDES)]
    assert [o.status for o in batch.outcomes] == ["done"] * N_SLIDES
    _same_outputs(roi_reference, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # its temporary is gone
    run = _run_json(tmp_path)
    assert run["counts"] == {"done": N_SLIDES, "skipped": 0, "failed": 0} and run["scheduler"] == address


@pytest.mark.slow
def test_unreadable_slide_fails_alone_and_a_rerun_skips_the_finished(
    tmp_path: Path, slides: Path, tiny_models: tuple[Path, Path], roi_reference: Path, cluster: tuple[str, Path]
) -> None:
    address, _ = cluster
    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(N_SLIDES):
        (folder / f"case{i}.svs").symlink_to(slides / f"case{i}.svs")
    bad = folder / "damaged.svs"
    bad.write_bytes(b"not a slide")
    out = tmp_path / "out"
    out.mkdir()
    args = ["predict", str(folder), "-o", str(out), "--model-roi", str(tiny_models[0]), "--roi-only",
            "--layout", "nchw", "--threads", "1", "--scheduler", address]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    errors = " ".join(result.stderr.split())
    assert f"warning: {bad}: attempt 1 failed (cannot " in errors  # retried once ...
    assert f"error: {bad}: cannot " in errors and errors.endswith("1 of 5 slides failed")  # ... then reported
    _same_outputs(roi_reference, out)
    run = _run_json(out)
    assert run["counts"] == {"done": N_SLIDES, "skipped": 0, "failed": 1}
    failed = next(s for s in run["slides"] if s["status"] == "failed")
    assert (failed["slide"], failed["attempts"], failed["features_by_class"]) == (str(bad), 2, None)
    assert failed["error"].startswith("cannot ") and str(bad) in failed["error"]
    assert failed["worker"].startswith("tcp://127.0.0.1:")
    assert f"error: {bad}: {failed['error']}" in errors
    assert not (out / "damaged.geojson").exists()

    # The rerun: the finished slides are skipped before anything is submitted (no worker saw them).
    before = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out) if name.endswith(".geojson")}
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and again.stdout == ""
    run = _run_json(out)
    assert run["counts"] == {"done": 0, "skipped": N_SLIDES, "failed": 1}
    skipped = [s for s in run["slides"] if s["status"] == "skipped"]
    assert {(s["worker"], s["seconds"], s["attempts"]) for s in skipped} == {(None, None, 0)}
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    assert " ".join(again.stderr.split()).count("is finished (use --overwrite to redo it)") == N_SLIDES


@pytest.mark.slow
def test_models_load_once_per_worker_and_workers_wait_passively(
    tmp_path: Path, slides: Path, tiny_models: tuple[Path, Path], cluster: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also: ``--device auto`` on a cluster whose workers declare GPUs asks each slide for ``GPU=1``."""
    import distributed

    address, _ = cluster
    config = PredictConfig(model_roi=str(tiny_models[0]), model_cell=str(tiny_models[1]), roi_only=True,
                           layout="nchw", device="auto")  # threads left to the workers
    asked: list[object] = []
    submit = distributed.Client.submit

    def recording_submit(self: distributed.Client, *args: object, **kwargs: object) -> object:
        asked.append(kwargs.get("resources"))
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(distributed.Client, "submit", recording_submit)
    with distributed.Client(address) as client:
        client.run(lambda: dist.model_cache().clear())
        batch = predict_slides([slides], tmp_path, config, scheduler=address)
        assert batch.count("done") == N_SLIDES
        counts = client.run(lambda: (dist.model_cache().loads, dist.model_cache().hits))
        settings = client.run(lambda: (os.environ["OMP_WAIT_POLICY"], torch.get_num_threads()))
    used = {s["worker"] for s in _run_json(tmp_path)["slides"]}
    assert {address: counts[address][0] for address in used} == dict.fromkeys(used, 1)  # one ROI model load each
    assert sum(loads + hits for loads, hits in counts.values()) == N_SLIDES
    # OpenMP waits passively; on a running cluster torch takes the worker's cores (here: all, 1 Dask thread).
    assert {settings[address] for address in used} == {("PASSIVE", usable_cpu_count())}
    assert {os_policy for os_policy, _ in settings.values()} == {"PASSIVE"}
    assert asked == [{"GPU": 1.0}] * N_SLIDES


@pytest.mark.slow
def test_unreachable_scheduler(tmp_path: Path, slides: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(InputError, match=r"(?s)^cannot reach the Dask scheduler at tcp://127.0.0.1:9 \(.*\): start it, "
                                         r"or check --scheduler / \$QPBRIDGE_SCHEDULER$"):
        predict_slides([slides], tmp_path, PredictConfig(roi_only=True), scheduler="tcp://127.0.0.1:9")


def test_outcome_fields_default_for_callers_that_build_them() -> None:
    outcome = SlideOutcome(SlideJob(Path("a.svs"), Path("a.geojson")), "skipped")
    assert (outcome.seconds, outcome.worker, outcome.attempts) == (None, None, 0)


def test_docstring_examples_run() -> None:
    import doctest

    assert doctest.testmod(dist, optionflags=doctest.ELLIPSIS).failed == 0
