"""A plain (non-editable) ``pip install .`` ships the default models, and qpbridge finds them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_model_is_installed_as_data() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    listed = dict(re.findall(r'^"share/qpbridge/models/([^"]+)" = \["models/([^"/]+)/\*"\]$', pyproject, re.M))
    shipped = {p.parent.name for p in (REPO / "models").glob("*/card.json")}
    assert listed == {name: name for name in shipped}


def test_a_plain_install_finds_the_shipped_models(tmp_path: Path) -> None:
    if not (REPO / "models" / "deepbatch-synth-cell" / "card.json").exists():
        pytest.skip("shipped models absent")
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip first uninstalls the qpbridge of the running environment (the editable
    # install the rest of the suite and its worker processes import).
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "--no-warn-script-location", "--prefix", str(prefix), str(REPO)], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert build.returncode == 0, build.stderr
    purelib = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    code = ("import qpbridge.cards as c, pathlib; m = {e.name: e.path for e in c.list_models()}; "
            "print(pathlib.Path(c.__file__).parent); print(m['deepbatch-synth-cell']); print(m['deepbatch-synth-roi'])")
    env = {k: v for k, v in os.environ.items() if k != "QPBRIDGE_MODELS"}
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                           env={**env, "PYTHONPATH": purelib, "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert found.returncode == 0, found.stderr
    package, cell, roi = found.stdout.split()
    assert Path(package).is_relative_to(prefix)  # the installed copy ran, not the source tree
    share = prefix / "share" / "qpbridge" / "models"
    assert Path(cell) == share / "deepbatch-synth-cell" and Path(roi) == share / "deepbatch-synth-roi"
    assert (share / "deepbatch-synth-cell" / "weights.safetensors").stat().st_size > 100_000
