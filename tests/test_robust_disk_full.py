"""A full disk (ENOSPC) or quota (EDQUOT) while `masks`, `synth` or `predict` write: one error line, exit 1, no
traceback, and the output folder left exactly as it was (no new files, no temporaries, no 0-byte tiles).

The disk is filled by monkeypatching the writes (PIL's save, tifffile's file handle, os.fsync, the GeoJSON
writer's file) to raise ``OSError(ENOSPC)`` part-way, as a full file system does."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner, Result

import qpbridge.qupath.write as geojson_write
from qpbridge.cli import app

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[1] / "models"


def full_disk(path: Path | str, what: str = "no space left on the device") -> str:
    return (f"error: {what} writing {path}: free some space or choose another output; "
            "nothing half-written was left")


def enospc(*_: Any) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def snapshot(folder: Path) -> dict[str, str] | None:
    """Every entry under ``folder`` (hidden ones too) with a digest of each file: what "as it was" means."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def assert_one_error_line(result: Result, line: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not a crash
    assert "Traceback" not in result.output
    errors = [text for text in result.output.splitlines() if text.startswith("error:")]
    assert errors == [line], result.output


def fail_after(n: int, real: Callable[..., Any], before: Callable[..., None] | None = None) -> Callable[..., Any]:
    """``real``, except that calls after the first ``n`` raise ENOSPC (thread-safe: tiles save on a pool)."""
    count = itertools.count()
    lock = threading.Lock()

    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            i = next(count)
        if i >= n:
            if before is not None:
                before(*args, **kwargs)
            raise enospc()
        return real(*args, **kwargs)

    return call


# ------------------------------------------------------------------------------------------------ masks
def _masks_inputs(tmp_path: Path) -> tuple[Path, Path]:
    from tests.conftest import gradient_rgb, write_pyramid_tiff

    slide = tmp_path / "grad.tiff"
    write_pyramid_tiff(slide, gradient_rgb(768, 1024), mpp=0.5)
    geojson = tmp_path / "grad.geojson"
    square = [[0, 0], [600, 0], [600, 500], [0, 500], [0, 0]]
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
        "properties": {"objectType": "annotation", "classification": {"name": "Benign", "color": [1, 2, 3]}}}]}))
    return slide, geojson


def _masks(slide: Path, geojson: Path, out: Path, *more: str) -> Result:
    return runner.invoke(app, ["masks", str(slide), str(geojson), "-o", str(out), "--tile-mpp", "2", "--tile-px",
                               "64", "--min-tissue-frac", "0", "--min-labelled-frac", "0", *more])


def _zero_byte(path: Any, *_: Any, **__: Any) -> None:
    """What a full disk leaves: the file opened, nothing in it."""
    if isinstance(path, (str, os.PathLike)):
        Path(path).write_bytes(b"")


@pytest.fixture(scope="module")
def masks_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _masks_inputs(tmp_path_factory.mktemp("masks-inputs"))


def test_masks_full_disk_midway_leaves_no_tile(masks_inputs: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    slide, geojson = masks_inputs
    out = tmp_path / "tiles"
    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save",
                        fail_after(7, real_save, lambda self, fp, *a, **k: _zero_byte(fp)))
    result = _masks(slide, geojson, out)
    assert_one_error_line(result, full_disk(out))
    assert not out.exists()  # the folder it created is gone with the tiles in it


def test_masks_full_disk_keeps_an_existing_dataset_whole(masks_inputs: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    slide, geojson = masks_inputs
    out = tmp_path / "tiles"
    assert _masks(slide, geojson, out).exit_code == 0
    before = snapshot(out)
    assert before is not None and len([k for k in before if k.startswith("images/")]) == 12
    # --overwrite of the same slide: the new tiles replace the old only once everything is written.
    real_save = Image.Image.save
    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", fail_after(9, real_save, lambda self, fp, *a, **k: _zero_byte(fp)))
        result = _masks(slide, geojson, out, "--overwrite")
    assert_one_error_line(result, full_disk(out))
    assert snapshot(out) == before
    # A full disk at the manifest (flushed before any rename) and at the QA mask leave it whole as well.
    for patched in ("fsync", "tiff"):
        with monkeypatch.context() as patch:
            if patched == "fsync":
                patch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(enospc()))
            else:
                patch.setattr(tifffile.TiffWriter, "write", lambda *a, **k: (_ for _ in ()).throw(enospc()))
            result = _masks(slide, geojson, out, "--overwrite", *(["--qa-mpp", "0"] if patched == "fsync" else []))
        assert_one_error_line(result, full_disk(out))
        assert snapshot(out) == before, patched
    # ... and after all that, the same run goes through.
    assert _masks(slide, geojson, out, "--overwrite").exit_code == 0
    assert snapshot(out) == before  # the same tiles, byte for byte


def test_masks_full_disk_on_a_second_slide_keeps_the_first(masks_inputs: tuple[Path, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    slide, geojson = masks_inputs
    out = tmp_path / "tiles"
    assert _masks(slide, geojson, out).exit_code == 0
    before = snapshot(out)
    other = tmp_path / "other.tiff"
    other.write_bytes(slide.read_bytes())
    monkeypatch.setattr(Image.Image, "save", fail_after(3, Image.Image.save))
    result = _masks(other, geojson, out)
    assert_one_error_line(result, full_disk(out))
    assert snapshot(out) == before


# ------------------------------------------------------------------------------------------------ synth
def _synth(out: Path, *more: str) -> Result:
    return runner.invoke(app, ["synth", str(out), "--width", "1024", "--height", "768", *more])


def test_synth_full_disk_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo" / "slide.svs"
    monkeypatch.setattr(tifffile.FileHandle, "write", fail_after(20, tifffile.FileHandle.write))
    result = _synth(out)
    assert_one_error_line(result, full_disk(out))
    assert not (tmp_path / "demo").exists()  # the folder it made is gone too
    assert snapshot(tmp_path) == {}


def test_synth_full_disk_at_the_truth_keeps_the_previous_slide(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "slide.svs"
    assert _synth(out).exit_code == 0
    before = snapshot(tmp_path)
    assert before is not None and sorted(before) == ["slide.svs", "slide.truth.geojson", "slide.truth.meta.json"]
    # Another seed over it: the slide and the truth are written, the meta's flush to disk fails; nothing is
    # replaced (the truth of seed 5 beside the slide of seed 0 would be wrong ground truth).
    monkeypatch.setattr(os, "fsync", fail_after(1, os.fsync))
    result = _synth(out, "--seed", "5", "--overwrite")
    assert_one_error_line(result, full_disk(out))
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def predict_slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qpbridge.synth import write_synthetic_slide

    if not all((MODELS / m / "card.json").exists() for m in ("deepbatch-synth-roi", "deepbatch-synth-cell")):
        pytest.skip("shipped models absent")
    slide = tmp_path_factory.mktemp("predict-full") / "slide.svs"
    write_synthetic_slide(slide, width_px=2048, height_px=1536, seed=2)
    return slide


class _FillingFile:
    """A file that takes ``budget`` bytes, then fails as a full disk does."""

    def __init__(self, fh: Any, budget: int) -> None:
        self._fh, self._budget = fh, budget

    def write(self, data: bytes) -> int:
        if len(data) > self._budget:
            self._fh.write(data[: self._budget])
            self._budget = 0
            raise enospc()
        self._budget -= len(data)
        return int(self._fh.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _predict(slide: Path, out: Path, *more: str) -> Result:
    return runner.invoke(app, ["predict", str(slide), "-o", str(out), "--model-roi",
                               str(MODELS / "deepbatch-synth-roi"), "--model-cell",
                               str(MODELS / "deepbatch-synth-cell"), "--layout", "nchw", *more])


def test_predict_full_disk_midway_leaves_nothing(predict_slide_path: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / "predictions"
    out_dir.mkdir()
    out = out_dir / "slide.geojson"
    real_open = open
    monkeypatch.setattr(geojson_write, "open",
                        lambda path, mode="r", *a, **k: _FillingFile(real_open(path, mode, *a, **k), 100),
                        raising=False)
    result = _predict(predict_slide_path, out, "--overlay", str(out_dir / "slide.png"))
    assert_one_error_line(result, full_disk(out))
    assert snapshot(out_dir) == {}


def test_predict_full_disk_at_the_flush_keeps_the_previous_output(predict_slide_path: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "slide.geojson"
    out.write_text('{"type": "FeatureCollection", "features": []}\n')  # an earlier output, kept
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(enospc()))
    result = _predict(predict_slide_path, out, "--overwrite")
    assert_one_error_line(result, full_disk(out))
    assert snapshot(tmp_path) == before
