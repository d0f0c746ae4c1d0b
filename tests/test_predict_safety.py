"""predict never leaves an output that looks finished when it is not, and refuses inputs that would corrupt it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qpbridge.atomic import OutputLocked, output_lock, temporaries_of, temporary_path
from qpbridge.cli import app
from qpbridge.errors import InputError
from qpbridge.predict import PredictConfig, is_finished, predict_slide
from qpbridge.qupath import meta_path

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PredictConfig]:
    from qpbridge.synth import write_synthetic_slide

    models = [MODELS / "deepbatch-synth-roi", MODELS / "deepbatch-synth-cell"]
    if not all((m / "card.json").exists() for m in models):
        pytest.skip("shipped models absent")
    slide = tmp_path_factory.mktemp("safety") / "slide.svs"
    write_synthetic_slide(slide, width_px=2048, height_px=1536, seed=2)
    return slide, PredictConfig(model_roi=str(models[0]), model_cell=str(models[1]), layout="nchw")


def test_finished_is_one_fact(setup: tuple[Path, PredictConfig], tmp_path: Path) -> None:
    slide, config = setup
    out = tmp_path / "slide.geojson"
    predict_slide(slide, out, config)
    meta = json.loads(meta_path(out).read_text())
    assert meta["finished"] is True and meta["geojson_bytes"] == out.stat().st_size
    assert is_finished(out)
    # A kill between the GeoJSON's rename and the sidecar: a GeoJSON of another run beside this sidecar.
    out.write_bytes(out.read_bytes() + b" ")
    assert not is_finished(out)
    meta_path(out).unlink()
    assert not is_finished(out)


def test_a_rerun_removes_what_a_killed_run_left(setup: tuple[Path, PredictConfig], tmp_path: Path) -> None:
    slide, config = setup
    out = tmp_path / "slide.geojson"
    stale = [temporary_path(out), temporary_path(meta_path(out))]
    for path in stale:
        path.write_bytes(b'{"type":"FeatureCollection","features":[')  # half a file from a killed run
    assert len(temporaries_of(out)) == 1
    predict_slide(slide, out, config)
    assert not any(path.exists() for path in stale)
    assert is_finished(out) and not temporaries_of(out) and not temporaries_of(meta_path(out))
    assert not list(tmp_path.glob(".*.lock"))


def test_a_second_run_on_the_same_output_is_refused(setup: tuple[Path, PredictConfig], tmp_path: Path) -> None:
    slide, config = setup
    out = tmp_path / "slide.geojson"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from qpbridge.atomic import output_lock
            with output_lock({str(out)!r}):
                print("locked", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked) as caught:
            predict_slide(slide, out, config)
        assert str(caught.value) == (
            f"{out} is being written by another qpbridge predict run (pid {holder.pid}): wait for it to finish, "
            "or choose another output")
        assert not out.exists() and not meta_path(out).exists()
        result = runner.invoke(app, ["predict", str(slide), "-o", str(out), "--model-roi", config.model_roi,
                                     "--model-cell", config.model_cell])
        assert result.exit_code == 1
        assert result.output.strip().endswith("wait for it to finish, or choose another output")
    finally:
        holder.kill()
        holder.wait()
    # The lock went with the process that held it.
    with output_lock(out):
        pass


def test_overlay_equal_to_the_output_is_refused(setup: tuple[Path, PredictConfig], tmp_path: Path) -> None:
    slide, config = setup
    out = tmp_path / "slide.geojson"
    for overlay in (out, meta_path(out)):
        with pytest.raises(InputError, match=r"--overlay .* is the output itself: give the overlay its own name, "
                                              r"e.g. slide.overlay.png"):
            predict_slide(slide, out, PredictConfig(**{**config.__dict__, "overlay": overlay}))
    assert not out.exists()


@pytest.mark.parametrize(("option", "message"), [
    ("--batch-size", "error: --batch-size must be >= 1, got 0"),
    ("--threads", "error: --threads must be >= 1, got 0"),
])
def test_zero_batch_or_threads_is_refused(setup: tuple[Path, PredictConfig], tmp_path: Path, option: str,
                                          message: str) -> None:
    slide, _ = setup
    result = runner.invoke(app, ["predict", str(slide), "-o", str(tmp_path / "a.geojson"), option, "0"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == message
    assert not list(tmp_path.iterdir())


def test_class_regions_are_annotations_and_detections_carry_no_metadata(
    setup: tuple[Path, PredictConfig], tmp_path: Path
) -> None:
    from qpbridge.qupath import read_geojson

    slide, config = setup
    default, detections = tmp_path / "default.geojson", tmp_path / "detections.geojson"
    predict_slide(slide, default, config)
    predict_slide(slide, detections, PredictConfig(**{**config.__dict__, "object_type": "detection"}))
    a, b = read_geojson(default).features, read_geojson(detections).features
    assert len(a) == len(b) > 1
    assert {f.object_type for f in a} == {"annotation"}
    assert {f.object_type for f in b if f.class_name != "ROI"} == {"detection"}
    assert all(f.metadata.get("qpbridge_run") for f in a)
    assert all(not f.metadata for f in b if f.object_type == "detection")
    assert all("qpbridge prediction" in f.measurements for f in a + b)


def test_a_demonstration_model_says_so_at_run_time(setup: tuple[Path, PredictConfig], tmp_path: Path) -> None:
    slide, config = setup
    out = tmp_path / "slide.geojson"
    heard: list[str] = []
    summary = predict_slide(slide, out, config, warn=heard.append)
    line = ("deepbatch-synth-roi and deepbatch-synth-cell were trained on synthetic slides (qpbridge synth): a "
            "demonstration, whose output on real H&E is confident nonsense; not for diagnosis or research results")
    assert heard == [line] and summary.warnings == [line]
    meta = json.loads(meta_path(out).read_text())
    assert {role: m["domain"] for role, m in meta["models"].items()} == {"roi": "synthetic", "cell": "synthetic"}
    assert meta["summary"]["warnings"] == [line]
    result = runner.invoke(app, ["predict", str(slide), "-o", str(tmp_path / "cli.geojson"), "--model-roi",
                                 config.model_roi, "--model-cell", config.model_cell])
    assert result.exit_code == 0 and f"warning: {line}" in result.stderr


def test_card_domain_is_checked(tmp_path: Path) -> None:
    from qpbridge.cards import card_from_dict
    from qpbridge.errors import ModelError

    raw = json.loads((MODELS / "deepbatch-synth-cell" / "card.json").read_text())
    assert card_from_dict(raw).domain == "synthetic"
    del raw["domain"]
    assert card_from_dict(raw).domain == "unknown"
    raw["domain"] = "imaginary"
    with pytest.raises(ModelError, match=r"domain"):
        card_from_dict(raw)
