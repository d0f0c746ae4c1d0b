"""``qpbridge validate``: what QuPath 0.4-0.7 would reject or mangle, and ``--fix``."""

from __future__ import annotations

import contextlib
import json
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


@pytest.mark.parametrize("code", sorted(ERROR_CASES))
def test_each_defect_is_an_error(tmp_path: Path, code: str) -> None:
    path = write(tmp_path, collection(feat(), ERROR_CASES[code]))
    assert codes(path) == [(1, "error", code)]
    result = runner.invoke(APP, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"feature 1 (id {ERROR_CASES[code]['id']}")
    assert "2 features (2 annotation); 1 error, 0 warnings: QuPath 0.4-0.7 would reject or mangle it" in result.output


def test_messages_name_the_feature_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, collection(feat(classification={"name": "Tumor"}, fid=UUID), feat(None, fid=None)))
    lines = runner.invoke(APP, ["validate", str(path)]).output.splitlines()
    assert lines[0] == (
        f"feature 0 (id {UUID}, class 'Tumor'): error: classification object without 'color': "
        "QuPath 0.4-0.7 reject the whole file"
    )
    assert lines[1] == "feature 1: error: null geometry: every QuPath version rejects the whole file"
    assert lines[2].endswith("repair it with: qpbridge validate FILE --fix -o FIXED.geojson")


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
    shared = {
        "type": "MultiPolygon",
        "coordinates": [[ring((0, 0), (1, 0), (1, 1), (0, 1))], [ring((1.004, 0), (2, 0), (2, 1), (1.004, 1))]],
    }
    sliver = {"type": "Polygon", "coordinates": [ring((0, 0), (10, 0), (10, 0.001), (0, 0.001))]}
    data = [
        feat(fid="roi-1", measurements=[{"name": "Area", "value": 1.0}]),
        feat(fid=None, measurements={"p": "NaN"}),
        feat(selftouch, fid=None),
        feat(shared, fid=None),
        feat(sliver, fid=None),
        feat(fid=None, objectType="Detection"),
        feat(fid=UUID),
        feat(fid=UUID),
    ]
    path = write(tmp_path, data, name="peer.json")
    assert codes(path) == [
        (None, "warning", "not-feature-collection"),
        (0, "warning", "non-uuid-id"),
        (0, "warning", "measurements-list"),
        (1, "warning", "nonfinite-measurement"),
        (2, "warning", "self-touching-ring"),
        (3, "warning", "touching-parts"),
        (4, "warning", "sliver"),
        (5, "warning", "unknown-object-type"),
        (7, "warning", "duplicate-id"),
    ]
    result = runner.invoke(APP, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        f"{path}: 8 features (8 annotation); 0 errors, 9 warnings: QuPath 0.4-0.7 imports it as intended"
    )


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
    assert (
        result.output == f"{out}: 2 features (1 detection, 1 annotation); 0 errors, 0 warnings: "
        "QuPath 0.4-0.7 imports it as intended\n"
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
    assert result.exit_code == 1 and len(lines) == 52
    assert lines[50] == "... and 20 more (use --json to see them all)"
    assert len(runner.invoke(APP, ["validate", str(path), "--max-lines", "5"]).output.splitlines()) == 7


def test_json_output(tmp_path: Path) -> None:
    path = write(tmp_path, collection(feat(), {**ERROR_CASES["unclosed-ring"], "id": UUID}))
    result = runner.invoke(APP, ["validate", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False and data["features"] == 2 and data["errors"] == 1 and data["warnings"] == 0
    assert data["issues"] == [
        {
            "index": 1,
            "severity": "error",
            "code": "unclosed-ring",
            "feature": f"feature 1 (id {UUID})",
            "message": "unclosed outer ring of a Polygon (first position != last): every QuPath "
            "version rejects the file",
        }
    ]


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
    assert result.output.splitlines()[-1] == (
        f"{out}: 9 features (8 annotation, 1 detection); 0 errors, 0 warnings: QuPath 0.4-0.7 imports it as intended"
    )
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
