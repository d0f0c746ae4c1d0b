"""The options commands share (``qpbridge/commands/_options.py``): one spelling, one meaning, old spellings warned."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from shapely import box
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.commands._options import MPP_HELP
from qpbridge.qupath import Feature, write_geojson

runner = CliRunner()


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """Corrections for the 1024 x 768 px gradient pyramid: a reviewed region, Benign and a "Tumor" square."""
    path = tmp_path / "gradient.geojson"
    write_geojson(
        path,
        [
            Feature(box(0, 0, 1024, 768), "Region*"),
            Feature(box(0, 0, 256, 256), "Benign"),
            Feature(box(512, 256, 768, 512), "Tumor"),
        ],
    )
    return path


def _summary_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("slide "))


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", result.output)


def test_mpp_means_the_slides_pixel_size_everywhere() -> None:
    help_text = {command: _help(command) for command in ("info", "diff", "masks", "evaluate")}
    for command, text in help_text.items():
        assert f"--mpp <float> {MPP_HELP}" in text, command
    assert "--tile-mpp" in help_text["masks"] and "--grid-mpp" in help_text["evaluate"]
    assert "-o, --output" in help_text["masks"] and "-o, --output" in help_text["diff"]
    # The old spellings are hidden from --help but still accepted (below).
    assert "--out " not in help_text["masks"] and "--slide-mpp" not in help_text["masks"]
    assert "--class-map <str> QuPath class names -> labels" in help_text["masks"]
    assert "--class-map <str> QuPath class names -> labels" in help_text["evaluate"]


def test_masks_old_out_spelling_works_with_one_warning(pyramid_tiff: Path, labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    args = ["masks", str(pyramid_tiff), str(labelled), "--out", str(out), "--tile-mpp", "4", "--tile-px", "64"]
    result = runner.invoke(app, [*args, "--class", "Tumor=3", "--min-tissue-frac", "0"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["warning: --out is deprecated and goes in the next release: use -o/--output"]
    assert (out / "manifest.csv").is_file()
    assert "wrote 4 tiles" in result.stdout  # 1024 x 768 px at 0.5 um/px = 128 x 96 px at 4 um/px: 2 x 2 tiles
    both = runner.invoke(app, [*args, "-o", str(tmp_path / "other"), "--class", "Tumor=3"])
    assert both.exit_code == 2
    assert f"error: --out {out} and -o/--output {tmp_path / 'other'} are the same option" in both.stderr


def test_masks_mpp_is_the_slide_pixel_size_and_slide_mpp_its_old_spelling(pyramid_tiff: Path, labelled: Path) -> None:
    base = ["masks", str(pyramid_tiff), str(labelled), "--dry-run", "--tile-mpp", "4", "--class", "Tumor=3"]
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    assert plain.stderr == ""
    summary = _summary_line(plain.stdout)
    assert summary.startswith("slide gradient: 1024 x 768 px at 0.5 um/px -> 128 x 96 px at 4 um/px")

    new = runner.invoke(app, [*base, "--mpp", "1"])
    assert new.exit_code == 0, new.output
    assert _summary_line(new.stdout).startswith("slide gradient: 1024 x 768 px at 1 um/px -> 256 x 192 px at 4 um/px")
    assert new.stderr == ""  # --tile-mpp given too: the new meaning is known
    alone = runner.invoke(app, [*[a for a in base if a not in ("--tile-mpp", "4")], "--mpp", "1"])
    assert alone.exit_code == 0, alone.output
    assert alone.stderr.splitlines()[0] == (
        "warning: masks --mpp 1 is now the slide's level-0 pixel size (um/px), as in every command; "
        "the tile um/px it used to be is --tile-mpp"
    )
    old = runner.invoke(app, [*base, "--slide-mpp", "1"])
    assert old.exit_code == 0, old.output
    assert _summary_line(old.stdout) == _summary_line(new.stdout)
    assert old.stderr.splitlines() == ["warning: --slide-mpp is deprecated and goes in the next release: use --mpp"]


def test_masks_and_evaluate_read_one_class_map_grammar(pyramid_tiff: Path, labelled: Path, tmp_path: Path) -> None:
    base = ["masks", str(pyramid_tiff), str(labelled), "--dry-run", "--tile-mpp", "4", "--json"]
    inline = runner.invoke(app, [*base, "--class-map", "Tumor=3,Benign=ignore"])
    assert inline.exit_code == 0, inline.output
    pixels = json.loads(inline.stdout)["pixels_by_label"]
    assert (pixels["3"], pixels["255"], pixels["1"]) == (32 * 32, 32 * 32, 0)  # 256 level-0 px = 32 px at 4 um/px
    card_like = tmp_path / "dataset.json"
    card_like.write_text(json.dumps({"classes": [{"label": 0, "name": "Normal"},
                                                 {"label": 3, "name": "Invasive carcinoma", "aliases": ["Tumor"]}]}))
    from_file = runner.invoke(app, [*base, "--class-map", str(card_like)])
    assert from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.stdout)["pixels_by_label"]["3"] == 32 * 32

    # evaluate takes the same values: a JSON object with "ignore" (masks took only that), and NAME=VALUE pairs
    # (evaluate took only numbers).
    plain = tmp_path / "map.json"
    plain.write_text(json.dumps({"Normal": 0, "Benign": 1, "Tumor": 3, "Stroma": "ignore"}))
    pred = tmp_path / "pred.geojson"
    write_geojson(pred, [Feature(box(0, 0, 256, 256), "Benign"), Feature(box(512, 256, 768, 512), "Tumor")])
    for spec in (str(plain), "Normal=0,Benign=1,Tumor=3,Stroma=ignore"):
        result = runner.invoke(app, ["evaluate", str(pred), str(labelled), "--class-map", spec, "--json"])
        assert result.exit_code == 0, result.output
        classes = {c["name"]: c for c in json.loads(result.stdout)["classes"]}
        assert sorted(classes) == ["Benign", "Normal", "Tumor"]
        assert classes["Tumor"]["iou"] == 1.0 and classes["Tumor"]["truth_px"] == 256 * 256
    bad = runner.invoke(app, ["evaluate", str(pred), str(labelled), "--class-map", "Normal=0,Benign"])
    assert bad.exit_code == 2
    assert "error: --class-map entry 'Benign' is not NAME=LABEL" in bad.stderr


def test_evaluate_grid_mpp_and_the_changed_mpp(pyramid_tiff: Path, labelled: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred.geojson"
    write_geojson(pred, [Feature(box(0, 0, 256, 256), "Benign")])
    base = ["evaluate", str(pred), str(labelled), "--class-map", "Normal=0,Benign=1,Tumor=3", "--json"]
    level0 = runner.invoke(app, [*base, "--slide", str(pyramid_tiff)])
    assert level0.exit_code == 0, level0.output
    assert json.loads(level0.stdout)["size_px"] == [1024, 768] and level0.stderr == ""
    grid = runner.invoke(app, [*base, "--slide", str(pyramid_tiff), "--grid-mpp", "2"])
    assert grid.exit_code == 0, grid.output
    assert json.loads(grid.stdout)["size_px"] == [256, 192]  # 0.5 um/px slide at 2 um/px
    # --mpp is the slide's own pixel size now: at 1 um/px, a 2 um/px grid is 512 x 384.
    overridden = runner.invoke(app, [*base, "--slide", str(pyramid_tiff), "--grid-mpp", "2", "--mpp", "1"])
    assert overridden.exit_code == 0, overridden.output
    assert json.loads(overridden.stdout)["size_px"] == [512, 384]
    assert overridden.stderr == ""  # --grid-mpp given too
    alone = runner.invoke(app, [*base, "--slide", str(pyramid_tiff), "--mpp", "1"])
    assert alone.stderr.splitlines() == [
        "warning: evaluate --mpp 1 is now the slide's level-0 pixel size (um/px), as in every command; "
        "the comparison grid's um/px it used to be is --grid-mpp"
    ]
    # Without a slide, --mpp gives the scale of the coordinates.
    no_slide = runner.invoke(app, [*base, "--grid-mpp", "2", "--mpp", "0.5"])
    assert no_slide.exit_code == 0, no_slide.output
    assert json.loads(no_slide.stdout)["size_px"] == [192, 128]  # the labelled extent, 768 x 512 px, at 2 um/px
    missing = runner.invoke(app, [*base, "--grid-mpp", "2"])
    assert missing.exit_code == 2
    assert "error: --grid-mpp needs the slide's pixel size" in missing.stderr


def test_evaluate_geojson_keeps_mpp_as_deprecated_grid_name(pyramid_tiff: Path, labelled: Path) -> None:
    from qpbridge.metrics import evaluate_geojson

    classes = {"Normal": 0, "Benign": 1, "Tumor": 3}
    with pytest.warns(DeprecationWarning, match=r"evaluate_geojson\(mpp=\.\.\.\) is the comparison grid"):
        old = evaluate_geojson(labelled, labelled, slide=pyramid_tiff, mpp=2.0, class_map=classes)
    new = evaluate_geojson(labelled, labelled, slide=pyramid_tiff, grid_mpp=2.0, class_map=classes)
    assert old.to_dict() == new.to_dict() and old.extra["size_px"] == [256, 192]
