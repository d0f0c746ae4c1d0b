"""``qpbridge validate``: what each QuPath version (0.4-0.7) would reject or mangle, its verdicts, and ``--fix``."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely import box
from typer.testing import CliRunner

from qpbridge.commands import validate as validate_command
from qpbridge.errors import GeoJSONError, InputError
from qpbridge.qupath import Feature, fix_geojson, read_geojson, validate_geojson, write_geojson
from qpbridge.qupath.versions import (
    ISSUE_EFFECTS,
    QUPATH_READS_LIKE,
    QUPATH_VERSIONS,
    format_qupath_versions,
    parse_qupath_versions,
)

UUID = "6f1c7a52-0a4e-4c39-a1f0-3b0d4a5e8c11"


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app with the validate command only."""

    validate_command.register(app)
    return app


APP = _app()
runner = CliRunner()


def ring(*xy: tuple[float, float]) -> list[list[float]]:
    return [list(p) for p in (*xy, xy[0])]


SQUARE = {"type": "Polygon", "coordinates": [ring((0, 0), (10, 0), (10, 10), (0, 10))]}


def feat(geometry: Any = SQUARE, fid: str | None = "random", **props: Any) -> dict[str, Any]:
    """A Feature dict; ``fid="random"`` gives it a fresh UUID, ``None`` no id."""
    if fid == "random":
        fid = str(uuid.uuid4())
    props.setdefault("objectType", "annotation")
    out: dict[str, Any] = {"type": "Feature", "geometry": geometry, "properties": props}
    if fid is not None:
        out["id"] = fid
    return out


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def write(tmp_path: Path, data: Any, name: str = "in.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def codes(path: Path) -> list[tuple[int | None, str, str]]:
    return [(i.index, i.severity, i.code) for i in validate_geojson(path).issues]


# --- errors: one per defect ---------------------------------------------------------------------------
ERROR_CASES = {
    "classification-no-color": feat(classification={"name": "Tumor"}),
    "null-geometry": feat(None),
    "unclosed-ring": feat({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10]]]}),
    "short-ring": feat({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [0, 0]]]}),
    "geometry-collection": feat({"type": "GeometryCollection", "geometries": [SQUARE]}),
    "self-intersection": feat({"type": "Polygon", "coordinates": [ring((0, 0), (10, 10), (10, 0), (0, 10))]}),
    "hole-outside-shell": feat(
        {
            "type": "Polygon",
            "coordinates": [ring((0, 0), (10, 0), (10, 10), (0, 10)), ring((20, 20), (30, 20), (30, 30))],
        }
    ),
    "spike": feat(
        {
            "type": "Polygon",
            "coordinates": [ring((0, 0), (10, 0), (10, 5), (20, 5.001), (10, 5.004), (10, 10), (0, 10))],
        }
    ),
    "overlapping-parts": feat(
        {
            "type": "MultiPolygon",
            "coordinates": [[ring((0, 0), (10, 0), (10, 10), (0, 10))], [ring((5, 0), (15, 0), (15, 10), (5, 10))]],
        }
    ),
    "bad-measurement": feat(measurements={"Area": "big"}),
}


#: What QuPath 0.4, 0.5, 0.6 and 0.7 make of a file with each defect.
REJECTED = ("rejects",) * 4
INVALID_ONCE_ROUNDED = ("mangles", "mangles", "rejects", "rejects")
DEFECT_OUTCOMES = {
    "classification-no-color": REJECTED,
    "null-geometry": REJECTED,
    "unclosed-ring": REJECTED,
    "short-ring": REJECTED,
    "geometry-collection": ("as-intended", "as-intended", "rejects", "rejects"),
    "self-intersection": INVALID_ONCE_ROUNDED,
    "hole-outside-shell": INVALID_ONCE_ROUNDED,
    "spike": INVALID_ONCE_ROUNDED,
    "overlapping-parts": INVALID_ONCE_ROUNDED,
    "bad-measurement": REJECTED,
}


@pytest.mark.parametrize("code", sorted(ERROR_CASES))
def test_each_defect_is_an_error(tmp_path: Path, code: str) -> None:
    path = write(tmp_path, collection(feat(), ERROR_CASES[code]))
    assert codes(path) == [(1, "error", code)]
    assert tuple(v.outcome for v in validate_geojson(path).verdicts()) == DEFECT_OUTCOMES[code]
    result = runner.invoke(APP, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"feature 1 (id {ERROR_CASES[code]['id']}")
    lines = result.output.splitlines()
    assert lines[1] == f"{path}: 2 features (2 annotation); 1 error, 0 warnings"
    assert lines[-1] == "repair it with: qpbridge validate FILE --fix -o FIXED.geojson"


def test_messages_name_the_feature_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, collection(feat(classification={"name": "Tumor"}, fid=UUID), feat(None, fid=None)))
    lines = runner.invoke(APP, ["validate", str(path)]).output.splitlines()
    assert lines[0] == (
        f"feature 0 (id {UUID}, class 'Tumor'): error: classification object without 'color': "
        "QuPath 0.4-0.7 reject the whole file"
    )
    assert lines[1] == "feature 1: error: null geometry: every QuPath version rejects the whole file"
    assert lines[2:] == [
        f"{path}: 2 features (2 annotation); 2 errors, 0 warnings",
        f"QuPath 0.4-0.7: rejects the whole file: feature 0 (id {UUID}, class 'Tumor'): a classification object "
        "without 'color' (1 more feature would fail too)",
        "repair it with: qpbridge validate FILE --fix -o FIXED.geojson",
    ]


def test_object_type_outside_properties(tmp_path: Path) -> None:
    tia = feat()
    del tia["properties"]["objectType"]
    tia["objectType"] = "detection"
    ann = feat(fid="6f1c7a52-0a4e-4c39-a1f0-3b0d4a5e8c12")
    del ann["properties"]["objectType"]
    ann["objectType"] = "annotation"
    assert codes(write(tmp_path, collection(tia, ann))) == [
        (0, "error", "object-type-outside-properties"),
        (1, "warning", "object-type-outside-properties"),
    ]


def test_nan_coordinate_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nan.geojson"
    path.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon",'
        ' "coordinates": [[[0, 0], [NaN, 0], [5, 5], [0, 0]]]}, "properties": {}}]}'
    )
    assert codes(path) == [(None, "warning", "nonstandard-numbers"), (0, "error", "nonfinite-coordinate")]


def test_bad_extension_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, collection(feat()), name="objects.txt")
    result = runner.invoke(APP, ["validate", str(path)])
    assert result.exit_code == 1
    assert (
        "file: error: QuPath imports only .geojson, .json" in result.output
        and "objects.txt; rename it" in result.output
    )


# --- warnings only: exit 0 ----------------------------------------------------------------------------
def test_warnings_do_not_fail(tmp_path: Path) -> None:
    selftouch = {"type": "Polygon", "coordinates": [ring((0, 0), (10, 0), (5, 5), (10, 10), (0, 10), (5, 5))]}
    old_key = feat(fid=None, object_type="detection")
    del old_key["properties"]["objectType"]
    data = [
        feat(fid="roi-1", measurements=[{"name": "Area", "value": 1.0}]),
        feat(selftouch, fid=None),
        feat(fid=None, objectType="Annotation"),  # QuPath makes an annotation, as meant
        old_key,
        feat(fid=UUID),
        feat(fid=UUID),
    ]
    path = write(tmp_path, data, name="peer.json")
    assert codes(path) == [
        (None, "warning", "not-feature-collection"),
        (0, "warning", "non-uuid-id"),
        (0, "warning", "measurements-list"),
        (1, "warning", "self-touching-ring"),
        (2, "warning", "unknown-object-type"),
        (3, "warning", "object-type-old-key"),
        (5, "warning", "duplicate-id"),
    ]
    result = runner.invoke(APP, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == [
        f"{path}: 6 features (5 annotation, 1 detection); 0 errors, 7 warnings",
        "QuPath 0.4-0.7: imports it as intended",
    ]


def test_qupath_written_file_is_clean(tmp_path: Path) -> None:
    out = tmp_path / "pred.geojson.gz"
    write_geojson(
        out,
        [
            Feature(box(0, 0, 5.555, 5), "Tumor", object_type="detection", measurements={"a": 1.0}),
            Feature(box(0, 0, 50, 50), "ROI"),
        ],
    )
    report = validate_geojson(out)
    assert report.issues == [] and report.ok and report.by_object_type == {"detection": 1, "annotation": 1}
    result = runner.invoke(APP, ["validate", str(out)])
    assert result.exit_code == 0
    assert result.output == (
        f"{out}: 2 features (1 detection, 1 annotation); 0 errors, 0 warnings\nQuPath 0.4-0.7: imports it as intended\n"
    )


def test_empty_file_warns(tmp_path: Path) -> None:
    assert codes(write(tmp_path, collection())) == [(None, "warning", "empty")]


def test_unreadable_file_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    result = runner.invoke(APP, ["validate", str(bad)])
    assert result.exit_code == 1 and "error: " in result.output and "malformed JSON at line 1" in result.output
    result = runner.invoke(APP, ["validate", str(tmp_path / "none.geojson")])
    assert result.exit_code == 1 and "none.geojson: no such file" in result.output
    with pytest.raises(GeoJSONError, match="not GeoJSON"):
        validate_geojson(write(tmp_path, {"foo": 1}, name="foo.json"))


def test_output_is_capped(tmp_path: Path) -> None:
    path = write(tmp_path, collection(*[feat(None, fid=None) for _ in range(70)]))
    result = runner.invoke(APP, ["validate", str(path)])
    lines = result.output.splitlines()
    assert result.exit_code == 1 and len(lines) == 54  # 50 issues, "... and 20 more", summary, verdict, hint
    assert lines[50] == "... and 20 more (use --json to see them all)"
    assert len(runner.invoke(APP, ["validate", str(path), "--max-lines", "5"]).output.splitlines()) == 9


def test_json_output(tmp_path: Path) -> None:
    path = write(tmp_path, collection(feat(), {**ERROR_CASES["unclosed-ring"], "id": UUID}))
    result = runner.invoke(APP, ["validate", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False and data["features"] == 2 and data["errors"] == 1 and data["warnings"] == 0
    assert data["qupath"] == ["0.4", "0.5", "0.6", "0.7"] and data["notes"] == []
    assert data["issues"] == [
        {
            "index": 1,
            "severity": "error",
            "code": "unclosed-ring",
            "feature": f"feature 1 (id {UUID})",
            "message": "unclosed outer ring of a Polygon (first position != last): every QuPath "
            "version rejects the file",
            "effects": {"0.4": "reject", "0.5": "reject", "0.6": "reject", "0.7": "reject"},
        }
    ]
    rejected = {
        "outcome": "rejects",
        "text": f"rejects the whole file: feature 1 (id {UUID}): an unclosed ring",
        "mangled": 0,
        "first": {"index": 1, "code": "unclosed-ring", "feature": f"feature 1 (id {UUID})"},
    }
    assert data["verdicts"] == {v: rejected for v in ("0.4", "0.5", "0.6", "0.7")}


# --- --fix --------------------------------------------------------------------------------------------
def test_fix_repairs_every_defect(tmp_path: Path) -> None:
    tia = feat(fid="tile-3", classification={"name": "Tumor"})
    del tia["properties"]["objectType"]
    tia["objectType"] = "detection"
    defects = [ERROR_CASES[c] for c in sorted(ERROR_CASES) if c != "bad-measurement"]
    path = write(tmp_path, [tia, *defects, feat(measurements={"ok": 2.0, "bad": "NaN"})], name="peer.json")
    out = tmp_path / "fixed.geojson"
    result = runner.invoke(APP, ["validate", str(path), "--fix", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == [
        f"{out}: 9 features (8 annotation, 1 detection); 0 errors, 0 warnings",
        "QuPath 0.4-0.7: imports it as intended",
    ]
    assert validate_geojson(out).issues == []
    back = read_geojson(out)
    assert back.features[0].object_type == "detection" and back.features[0].class_name == "Tumor"
    assert back.features[0].color is not None
    assert back.features[-1].measurements == {"ok": 2.0}
    assert "fixed: wrote" in result.output and "2 skipped on reading" in result.output  # null geometry, 3-position ring


def test_fix_refuses_the_input_and_needs_output(tmp_path: Path) -> None:
    path = write(tmp_path, collection(feat()))
    before = path.read_text()
    result = runner.invoke(APP, ["validate", str(path), "--fix", "-o", str(path)])
    assert result.exit_code == 2 and "--fix would overwrite the input" in result.output
    assert path.read_text() == before
    result = runner.invoke(APP, ["validate", str(path), "--fix"])
    assert result.exit_code == 2 and "--fix needs an output file: add -o FIXED.geojson" in result.output
    result = runner.invoke(APP, ["validate", str(path), "-o", str(tmp_path / "x.geojson")])
    assert result.exit_code == 2 and "only used with --fix" in result.output
    with pytest.raises(InputError):
        fix_geojson(path, tmp_path / "." / "in.geojson")


def test_fix_json_output(tmp_path: Path) -> None:
    path = write(tmp_path, collection(ERROR_CASES["classification-no-color"]))
    out = tmp_path / "fixed.geojson.gz"
    result = runner.invoke(APP, ["validate", str(path), "--fix", "-o", str(out), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["ok"] is False and data["fixed"]["report"]["ok"] is True
    assert data["fixed"]["written"]["written"] == 1 and data["fixed"]["output"] == str(out)


# --- one verdict per QuPath version -------------------------------------------------------------------
def det(geometry: Any = SQUARE, **props: Any) -> dict[str, Any]:
    """A detection without id (so that messages name it ``feature N``)."""
    return feat(geometry, fid=None, **{"objectType": "detection", **props})


SHARED_EDGE = {
    "type": "MultiPolygon",
    "coordinates": [[ring((0, 0), (1, 0), (1, 1), (0, 1))], [ring((1.004, 0), (2, 0), (2, 1), (1.004, 1))]],
}
SLIVER = {"type": "Polygon", "coordinates": [ring((0, 0), (10, 0), (10, 0.001), (0, 0.001))]}
NAN_STRINGS = 'a measurement written as the string "NaN" or "Infinity" (ClassCastException)'
REDUCTION = '("Reduction failed, possible invalid input")'
UNCLOSED_AND_2 = "feature 0: an unclosed ring (2 more features would fail too)"
POINT = {"type": "Point", "coordinates": [1, 2]}
LENIENT = """{'type': 'FeatureCollection', // exported by hand
  features: [{type: 'Feature', geometry: {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
              properties = {objectType: detection; measurements: {"Area px": 40.5}}}]}
(end of export)
"""
BARE_NAN = (
    '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", '
    '"coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}, "properties": {"objectType": "detection", '
    '"measurements": {"Circularity": NaN, "Solidity": Infinity}}}]}'
)

#: name -> (file content, {--qupath value (None: default) -> (exit code, verdict lines)}).
VERDICT_CASES: dict[str, tuple[Any, dict[str | None, tuple[int, list[str]]]]] = {
    # what QuPath 0.5+ itself exports: only 0.4 fails on it, and the verdicts say so
    "nan-strings": (
        collection(det(measurements={"Area px": 12.5, "Circularity": "NaN"}), det(measurements={"S": "Infinity"})),
        {
            None: (
                1,
                [
                    f"QuPath 0.4: rejects the whole file: feature 0: {NAN_STRINGS} (1 more feature would fail too)",
                    "QuPath 0.5-0.7: imports it as intended",
                ],
            ),
            "0.4": (
                1, [f"QuPath 0.4: rejects the whole file: feature 0: {NAN_STRINGS} (1 more feature would fail too)"]
            ),
            "0.5+": (0, ["QuPath 0.5-0.7: imports it as intended"]),
            "0.6": (0, ["QuPath 0.6: imports it as intended"]),
        },
    ),
    "bare-nan-tokens": (
        BARE_NAN,
        {None: (0, ["QuPath 0.4-0.7: imports it as intended"]), "0.4": (0, ["QuPath 0.4: imports it as intended"])},
    ),
    "shared-edge": (
        collection(det(SHARED_EDGE), det(SHARED_EDGE), det(SHARED_EDGE), det()),
        {
            None: (
                1,
                [
                    "QuPath 0.4-0.5: imports it but mangles 3 objects: 3 MultiPolygons whose parts share an edge "
                    "stay one invalid ROI",
                    "QuPath 0.6-0.7: imports it as intended",
                ],
            ),
            "0.5": (
                1,
                ["QuPath 0.5: imports it but mangles 3 objects: 3 MultiPolygons whose parts share an edge stay one "
                 "invalid ROI"],
            ),
            "0.6+": (0, ["QuPath 0.6-0.7: imports it as intended"]),
        },
    ),
    "sliver": (
        collection(det(SLIVER), det()),
        {
            None: (
                1,
                [
                    "QuPath 0.4-0.5: imports it as intended",
                    "QuPath 0.6-0.7: imports it but mangles 1 object: 1 sliver thinner than 0.01 px becomes an "
                    "empty object",
                ],
            ),
            "0.4-0.5": (0, ["QuPath 0.4-0.5: imports it as intended"]),
            "0.7": (
                1,
                ["QuPath 0.7: imports it but mangles 1 object: 1 sliver thinner than 0.01 px becomes an empty object"],
            ),
        },
    ),
    "invalid-once-rounded": (
        collection(
            det(ERROR_CASES["self-intersection"]["geometry"]),
            det(ERROR_CASES["hole-outside-shell"]["geometry"]),
            det(ERROR_CASES["spike"]["geometry"]),
            det(ERROR_CASES["overlapping-parts"]["geometry"]),
            det(ERROR_CASES["self-intersection"]["geometry"]),
        ),
        {
            None: (
                1,
                [
                    "QuPath 0.4-0.5: imports it but mangles 5 objects: 2 self-intersecting (bow-tie) polygons stay "
                    "invalid; 1 polygon with a hole outside the shell stays invalid; 1 polygon with a zero-width "
                    "spike stays invalid; 1 MultiPolygon with overlapping parts stays invalid",
                    "QuPath 0.6-0.7: rejects the whole file: feature 0: a self-intersecting ring (bow-tie) once "
                    f"rounded to 0.01 px {REDUCTION} (4 more features would fail too)",
                ],
            ),
            "0.6": (
                1,
                [
                    "QuPath 0.6: rejects the whole file: feature 0: a self-intersecting ring (bow-tie) once rounded "
                    f"to 0.01 px {REDUCTION} (4 more features would fail too)"
                ],
            ),
        },
    ),
    "geometry-collection": (
        collection(det({"type": "GeometryCollection", "geometries": [SQUARE]})),
        {
            None: (
                1,
                [
                    "QuPath 0.4-0.5: imports it as intended",
                    "QuPath 0.6-0.7: rejects the whole file: feature 0: a GeometryCollection",
                ],
            ),
            "0.4-0.5": (0, ["QuPath 0.4-0.5: imports it as intended"]),
        },
    ),
    "mixed-geometry-collection": (
        collection(det({"type": "GeometryCollection", "geometries": [SQUARE, POINT]})),
        {
            None: (
                1,
                [
                    "QuPath 0.4-0.5: imports it but mangles 1 object: 1 GeometryCollection mixing areas, lines or "
                    "points loses all but the largest kind",
                    "QuPath 0.6-0.7: rejects the whole file: feature 0: a GeometryCollection",
                ],
            ),
        },
    ),
    "rejected-by-all": (
        collection(
            det(ERROR_CASES["unclosed-ring"]["geometry"]),
            det(None),
            det(classification={"name": "Tumor"}),
        ),
        {
            None: (1, [f"QuPath 0.4-0.7: rejects the whole file: {UNCLOSED_AND_2}"]),
            "0.6": (1, [f"QuPath 0.6: rejects the whole file: {UNCLOSED_AND_2}"]),
        },
    ),
    "lenient-json": (
        LENIENT,
        {None: (0, ["QuPath 0.4-0.7: imports it as intended"]), "0.4": (0, ["QuPath 0.4: imports it as intended"])},
    ),
    "metadata": (
        collection(
            det(metadata={"model": "v2"}),
            feat(fid=None, metadata={"reviewer": "AB"}),
            feat(fid=None, objectType="tmaCore", metadata={"core": "A-1"}),
        ),
        {
            None: (
                1,
                [
                    "QuPath 0.4: imports it as intended; note: 2 objects with metadata lose it (QuPath 0.4 keeps "
                    "metadata only on TMA cores)",
                    "QuPath 0.5: imports it but mangles 1 object: 1 detection with metadata logs a stack trace and "
                    "loses it",
                    "QuPath 0.6-0.7: imports it as intended",
                ],
            ),
            "0.4": (
                0,
                ["QuPath 0.4: imports it as intended; note: 2 objects with metadata lose it (QuPath 0.4 keeps metadata "
                 "only on TMA cores)"],
            ),
            "0.6+": (0, ["QuPath 0.6-0.7: imports it as intended"]),
        },
    ),
    "misspelt-object-type": (
        collection(det(objectType="Detection")),
        {
            None: (
                1,
                ["QuPath 0.4-0.7: imports it but mangles 1 object: 1 feature of an object type QuPath does not know "
                 "becomes an annotation"],
            ),
        },
    ),
}


@pytest.mark.parametrize(
    ("case", "qupath"), [(case, q) for case, (_, runs) in VERDICT_CASES.items() for q in runs], ids=str
)
def test_verdict_per_version(tmp_path: Path, case: str, qupath: str | None) -> None:
    content, runs = VERDICT_CASES[case]
    path = tmp_path / "in.geojson"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = runner.invoke(APP, ["validate", str(path), *([] if qupath is None else ["--qupath", qupath])])
    exit_code, verdicts = runs[qupath]
    lines = result.output.splitlines()
    assert [line for line in lines if line.startswith("QuPath ")] == verdicts, result.output
    assert result.exit_code == exit_code
    fails = [v for v in verdicts if "rejects" in v or "mangles" in v]
    assert bool(fails) == (exit_code == 1)
    assert (lines[-1].startswith("repair it with: qpbridge validate FILE")) == bool(fails)


def test_the_summary_no_longer_contradicts_the_warnings(tmp_path: Path) -> None:
    """A QuPath 0.6 export with "NaN" measurements: the issue says 0.4 rejects it, and so does the verdict."""
    path = write(tmp_path, collection(det(measurements={"Circularity": "NaN"})))
    result = runner.invoke(APP, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        'feature 0: error: NaN or infinite measurement(s) Circularity written as strings (as QuPath 0.5+ writes '
        "them): QuPath 0.4 rejects the whole file (ClassCastException), 0.5+ read them",
        f"{path}: 1 feature (1 detection); 1 error, 0 warnings",
        f"QuPath 0.4: rejects the whole file: feature 0: {NAN_STRINGS}",
        "QuPath 0.5-0.7: imports it as intended",
        "repair it with: qpbridge validate FILE --fix -o FIXED.geojson",
    ]
    assert "0.4-0.7 imports it as intended" not in result.output
    result = runner.invoke(APP, ["validate", str(path), "--qupath", "0.5+"])
    assert result.exit_code == 0 and result.output.splitlines()[0].startswith("feature 0: warning: NaN")


def test_lenient_json_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "hand.geojson"
    path.write_text(LENIENT)
    report = validate_geojson(path)
    assert report.ok and [(i.index, i.severity, i.code) for i in report.issues] == [(None, "warning", "lenient-json")]
    assert report.issues[0].message == (
        f"{path} is not strict JSON: single-quoted strings (line 1), comments (line 1), unquoted names (line 2), "
        "'=' after names (line 3), unquoted values (line 3), ';' between values (line 3), text after the JSON "
        "(line 4): QuPath reads it (its Gson parser is lenient), strict JSON parsers and qpbridge's other commands "
        "refuse it; --fix writes strict JSON"
    )
    assert report.by_object_type == {"detection": 1}
    out = tmp_path / "strict.geojson"
    result = runner.invoke(APP, ["validate", str(path), "--fix", "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())  # strict JSON now
    assert [f["properties"]["measurements"] for f in written["features"]] == [{"Area px": 40.5}]
    # what not even a lenient parser reads is still the reader's error
    path.write_text("{'type': 'FeatureCollection', features: [")
    result = runner.invoke(APP, ["validate", str(path)])
    assert result.exit_code == 1 and "malformed JSON at line 1" in result.output


def test_lenient_array_values_and_separators(tmp_path: Path) -> None:
    """Gson reads an omitted array value as null: a ring with one is no [x, y] list."""
    path = tmp_path / "a.geojson"
    path.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"objectType": "detection"},'
        ' "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0],, [0, 0]]]}}]}'
    )
    report = validate_geojson(path)
    assert [(i.index, i.code) for i in report.issues] == [(None, "lenient-json"), (0, "bad-coordinates")]
    assert "omitted array values (line 1)" in report.issues[0].message


def test_qpbridge_predictions_pass_every_version(tmp_path: Path) -> None:
    """What predict writes (metadata on annotations only): no issue, and 0.4's verdict notes the metadata."""
    out = tmp_path / "pred.geojson"
    marker = {"qpbridge": "0.1", "qpbridge_run": "run-1"}
    write_geojson(
        out,
        [
            Feature(box(0, 0, 50, 50), "Tumor", metadata=marker, measurements={"qpbridge prediction": 1.0}),
            Feature(box(0, 0, 5, 5), "Tumor", object_type="tile", measurements={"qpbridge prediction": 1.0}),
        ],
    )
    report = validate_geojson(out)
    assert report.ok and report.issues == [] and [(n.index, n.code) for n in report.notes] == [(0, "metadata")]
    assert report.verdict_lines() == [
        "QuPath 0.4: imports it as intended; note: 1 object with metadata loses it (QuPath 0.4 keeps metadata only "
        "on TMA cores)",
        "QuPath 0.5-0.7: imports it as intended",
    ]
    assert validate_geojson(out, ("0.5", "0.6", "0.7")).notes == []


def test_qupath_option_values(tmp_path: Path) -> None:
    assert parse_qupath_versions(None) == QUPATH_VERSIONS == ("0.4", "0.5", "0.6", "0.7")
    assert parse_qupath_versions("0.6") == ("0.6",)
    assert parse_qupath_versions("0.5+") == ("0.5", "0.6", "0.7")
    assert parse_qupath_versions("0.4-0.5") == ("0.4", "0.5")
    assert parse_qupath_versions(" v0.6.2 ") == ("0.6",)
    assert parse_qupath_versions("0.4-0.7") == QUPATH_VERSIONS
    assert QUPATH_READS_LIKE["0.7"] == QUPATH_READS_LIKE["0.6"] == "0.6"  # 0.6 and 0.7 read alike
    assert [format_qupath_versions(v) for v in (("0.4",), ("0.5", "0.6", "0.7"), ("0.4", "0.6"))] == [
        "0.4", "0.5-0.7", "0.4, 0.6",
    ]
    path = write(tmp_path, collection(feat()))
    result = runner.invoke(APP, ["validate", str(path), "--qupath", "0.3"])
    assert result.exit_code == 2
    assert result.output == (
        "error: --qupath '0.3': qpbridge knows QuPath 0.4, 0.5, 0.6, 0.7: give one of them (0.6), a range "
        "(0.5+, 0.4-0.5), or leave it out for all\n"
    )
    result = runner.invoke(APP, ["validate", str(path), "--qupath", "0.7-0.5"])
    assert result.exit_code == 2 and "the range runs backwards: write 0.5-0.7" in result.output
    with pytest.raises(InputError, match="qpbridge knows 0.4, 0.5, 0.6, 0.7"):
        validate_geojson(path, ("0.8",))


def test_json_verdicts_for_the_versions_asked(tmp_path: Path) -> None:
    path = write(tmp_path, collection(det(measurements={"Circularity": "NaN"}), det(SHARED_EDGE)))
    result = runner.invoke(APP, ["validate", str(path), "--json", "--qupath", "0.4-0.5"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["qupath"] == ["0.4", "0.5"] and data["ok"] is False and data["errors"] == 2
    assert data["verdicts"] == {
        "0.4": {
            "outcome": "rejects",
            "text": f"rejects the whole file: feature 0: {NAN_STRINGS}",
            "mangled": 0,
            "first": {"index": 0, "code": "nonfinite-measurement", "feature": "feature 0"},
        },
        "0.5": {
            "outcome": "mangles",
            "text": "imports it but mangles 1 object: 1 MultiPolygon whose parts share an edge stays one invalid ROI",
            "mangled": 1,
            "first": None,
        },
    }
    assert [i["effects"] for i in data["issues"]] == [
        {"0.4": "reject", "0.5": "ok", "0.6": "ok", "0.7": "ok"},
        {"0.4": "mangle", "0.5": "mangle", "0.6": "ok", "0.7": "ok"},
    ]


def test_fix_repairs_for_the_versions_asked(tmp_path: Path) -> None:
    path = write(tmp_path, collection(det(metadata={"model": "v2"}, measurements={"Area": 2.0, "Circ": "NaN"})))
    out = tmp_path / "for-all.geojson"
    result = runner.invoke(APP, ["validate", str(path), "--fix", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        "1 non-finite measurements left out, metadata left out of 1 detection (QuPath 0.5 logs a stack trace for "
        "each))" in result.output
    )
    assert result.output.splitlines()[-1] == "QuPath 0.4-0.7: imports it as intended"
    back = read_geojson(out).features
    assert back[0].metadata == {} and back[0].measurements == {"Area": 2.0}
    # for QuPath 0.6+ only, the metadata stays (0.6 keeps it)
    out = tmp_path / "for-06.geojson"
    result = runner.invoke(APP, ["validate", str(path), "--qupath", "0.6+", "--fix", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["fixed"]["metadata_dropped"] == 0 and data["fixed"]["report"]["qupath"] == ["0.6", "0.7"]
    assert read_geojson(out).features[0].metadata == {"model": "v2"}
    assert fix_geojson(path, tmp_path / "lib.geojson", ("0.5",)).metadata_dropped == 1


def test_docs_table_is_the_code_table() -> None:
    """docs/qupath-geojson.md, "What each version does", shows ISSUE_EFFECTS: every rule with an effect."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "qupath-geojson.md").read_text()
    section = doc.split("### What each version does", 1)[1].split("\n### ", 1)[0]
    shown: dict[str, tuple[str, ...]] = {}
    for row in re.findall(r"^\| (.+) \| (\w+) \| (\w+) \| (\w+) \|$", section, flags=re.M):
        for rule in re.findall(r"(?:\(|, )`([^`]+)`", row[0]):
            if rule in ISSUE_EFFECTS:
                shown[rule] = row[1:]
    table = {
        rule: tuple(effects[v].kind for v in ("0.4", "0.5", "0.6"))
        for rule, effects in ISSUE_EFFECTS.items()
        if any(e.kind != "ok" for e in effects.values())
    }
    assert shown == table

# --- robustness: any JSON gives a report or one GeoJSONError, never a traceback -----------------------
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 30),
    st.floats(-1, 30, allow_nan=False),
    st.sampled_from(["NaN", "Polygon", "detection", "PathCellObject", "x"]),
)
_ring = st.lists(st.lists(_scalar, max_size=3), max_size=6)
_geom = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "Polygon",
                "MultiPolygon",
                "Point",
                "MultiPoint",
                "LineString",
                "MultiLineString",
                "GeometryCollection",
                "Circle",
            ]
        )
    },
    optional={
        "coordinates": st.one_of(
            _scalar, _ring, st.lists(_ring, max_size=3), st.lists(st.lists(_ring, max_size=2), max_size=2)
        ),
        "geometries": st.lists(
            st.fixed_dictionaries({"type": st.just("Polygon"), "coordinates": st.lists(_ring, max_size=2)}), max_size=2
        ),
    },
)
_key = st.sampled_from(
    [
        "objectType",
        "object_type",
        "type",
        "classification",
        "measurements",
        "metadata",
        "name",
        "names",
        "color",
        "colorRGB",
        "childObjects",
        "id",
        "value",
    ]
)
_value = st.recursive(
    _scalar | _geom, lambda c: st.lists(c, max_size=3) | st.dictionaries(_key, c, max_size=3), max_leaves=8
)
_feature = st.fixed_dictionaries(
    {"type": st.just("Feature")},
    optional={
        "geometry": st.one_of(_geom, _scalar),
        "properties": st.one_of(st.dictionaries(_key, _value, max_size=5), _scalar),
        "id": _value,
        "objectType": _value,
        "nucleusGeometry": _geom,
    },
)
_document = st.one_of(
    st.fixed_dictionaries({"type": st.just("FeatureCollection"), "features": st.lists(_feature | _value, max_size=4)}),
    st.lists(_feature, max_size=3),
    _feature,
    _value,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_document)
def test_any_json_gives_a_report_or_a_geojson_error(tmp_path: Path, data: Any) -> None:
    path = write(tmp_path, data)
    fixed = tmp_path / "fixed.geojson"
    fixed.unlink(missing_ok=True)
    for call in (
        lambda: read_geojson(path, slide_size_px=(20, 20)),
        lambda: validate_geojson(path),
        lambda: fix_geojson(path, fixed),
    ):
        with contextlib.suppress(GeoJSONError):
            call()
    if fixed.exists():
        assert validate_geojson(fixed).ok
