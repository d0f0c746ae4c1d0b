"""``qpbridge diff``: what the pathologist changed, with exact areas on constructed cases."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import typer
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely import box
from shapely.testing import assert_geometries_equal
from typer.testing import CliRunner

from qpbridge.commands import diff as diff_command
from qpbridge.diff import (
    DEFAULT_CLASS_ORDER,
    changed_only_features,
    diff_files,
    diff_geojson,
    diff_pairs,
    match_pairs,
)
from qpbridge.errors import InputError
from qpbridge.qupath import PREDICTION_MEASUREMENT, Feature, read_geojson, write_geojson
from qpbridge.rasterize import ClassMap, LabelRasterizer

BENIGN, IN_SITU, INVASIVE = "Benign", "In situ carcinoma", "Invasive carcinoma"
COLORS = {"Benign": [64, 128, 230], "In situ carcinoma": [250, 160, 20], "Invasive carcinoma": [215, 25, 35]}
MARK = {PREDICTION_MEASUREMENT: 1.0, "Area um^2": 10.0}


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app with the diff command only."""

    diff_command.register(app)
    return app


APP = _app()
runner = CliRunner()


def pred(geom: shapely.Geometry, klass: str, object_type: str = "annotation") -> Feature:
    """A feature as ``qpbridge predict`` writes it (with the prediction marker)."""
    return Feature(geom, klass, object_type=object_type, measurements=dict(MARK))


def qupath_feature(
    geom: shapely.Geometry, klass: str | None, object_type: str = "annotation", marked: bool = False
) -> dict[str, Any]:
    """A feature as QuPath 0.5 exports it: UUID id, classification {name, color}, measurements object."""
    props: dict[str, Any] = {"objectType": object_type}
    if klass is not None:
        props["classification"] = {"name": klass, "color": COLORS.get(klass, [10, 20, 30])}
    props["measurements"] = {PREDICTION_MEASUREMENT: 1.4242, "Area px": geom.area} if marked else {}
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": json.loads(shapely.to_geojson(geom)),
        "properties": props,
    }


def write_qupath(path: Path, features: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=2))
    return path


# --------------------------------------------------------------------------------------------- areas
def test_identical_inputs_give_zero_changes(tmp_path: Path) -> None:
    features = [
        pred(box(0, 0, 1000, 800), "ROI", "annotation"),
        pred(box(0, 0, 100, 100), BENIGN),
        pred(box(200, 0, 300, 150), INVASIVE),
    ]
    write_geojson(tmp_path / "p.geojson", features)
    # QuPath's export of the untouched objects: vertices reversed, detections now annotations, new ids
    exported = [
        qupath_feature(shapely.reverse(f.geometry), f.class_name, "annotation", marked=True) for f in features
    ]
    write_qupath(tmp_path / "c.geojson", exported)
    d = diff_files(tmp_path / "p.geojson", tmp_path / "c.geojson", mpp=0.25)
    assert d.identical
    assert (d.changed_px2, d.added_px2, d.removed_px2, d.relabelled_total_px2) == (0, 0, 0, 0)
    assert d.unchanged_px2 == d.predicted_px2 == 100 * 100 + 100 * 150
    assert d.relabelled_px2 == {}
    assert d.roi is not None and (d.roi.added_px2, d.roi.removed_px2) == (0, 0)
    assert d.to_dict()["totals"]["changed_share"] == 0.0
    assert d.objects["corrected_unchanged_predictions"] == 3


def test_relabelled_square_is_exactly_2500_um2() -> None:
    d = diff_geojson([pred(box(0, 0, 100, 100), BENIGN)], [Feature(box(0, 0, 100, 100), INVASIVE)], mpp=0.5)
    data = d.to_dict()
    assert data["relabelled_um2"] == {BENIGN: {INVASIVE: 2500.0}}
    assert data["totals"]["changed_um2"] == 2500.0
    assert data["totals"]["added_um2"] == data["totals"]["removed_um2"] == 0.0
    assert data["per_class"][BENIGN]["relabelled_out_um2"] == 2500.0
    assert data["per_class"][BENIGN]["changed_share"] == 1.0
    assert data["per_class"][INVASIVE]["relabelled_in_um2"] == 2500.0
    assert data["per_class"][INVASIVE]["changed_share"] is None  # nothing predicted as invasive
    assert data["area_unit"] == "um^2"


def test_deleted_false_positive_is_removed_area() -> None:
    predicted = [pred(box(0, 0, 100, 100), BENIGN), pred(box(500, 500, 540, 530), IN_SITU)]
    corrected = [Feature(box(0, 0, 100, 100), BENIGN)]
    d = diff_geojson(predicted, corrected, mpp=0.25)
    assert d.per_class[IN_SITU].removed_px2 == 40 * 30
    assert d.to_dict()["per_class"][IN_SITU]["removed_um2"] == 75.0
    assert d.to_dict()["totals"]["removed_um2"] == 75.0
    assert d.per_class[BENIGN].changed_px2 == 0
    assert d.changed_share == pytest.approx(1200 / 11200)


def test_newly_drawn_region_is_added_area() -> None:
    predicted = [pred(box(0, 0, 100, 100), BENIGN)]
    corrected = [Feature(box(0, 0, 100, 100), BENIGN), Feature(box(300, 300, 360, 320), INVASIVE)]
    d = diff_geojson(predicted, corrected, mpp=0.5)
    assert d.per_class[INVASIVE].added_px2 == 1200
    assert d.to_dict()["per_class"][INVASIVE]["added_um2"] == 300.0
    assert d.removed_px2 == 0 and d.relabelled_total_px2 == 0
    assert d.per_class[BENIGN].added_share == 0.0


def test_shifted_region_gives_exact_slivers() -> None:
    d = diff_geojson([pred(box(0, 0, 100, 100), BENIGN)], [Feature(box(10, 0, 110, 100), BENIGN)], mpp=None)
    c = d.per_class[BENIGN]
    assert (c.unchanged_px2, c.added_px2, c.removed_px2) == (9000.0, 1000.0, 1000.0)
    assert c.changed_share == 0.2 and c.added_share == 0.1  # gained 1000 and lost 1000 of 10000
    pieces = d.pieces()
    assert [k for k, _ in pieces.added] == [BENIGN] and [k for k, _ in pieces.removed] == [BENIGN]
    assert_geometries_equal(pieces.added[0][1], box(100, 0, 110, 100), normalize=True)
    assert_geometries_equal(pieces.removed[0][1], box(0, 0, 10, 100), normalize=True)
    assert pieces.relabelled == []


def test_partial_relabel_with_shift_builds_the_matrix() -> None:
    # predicted benign 0..100; corrected invasive 50..150: 50 relabelled, 50 removed, 50 added (x 100 px)
    d = diff_geojson([pred(box(0, 0, 100, 100), BENIGN)], [Feature(box(50, 0, 150, 100), INVASIVE)], mpp=1.0)
    assert d.relabelled_px2 == {BENIGN: {INVASIVE: 5000.0}}
    assert d.per_class[BENIGN].removed_px2 == 5000.0
    assert d.per_class[INVASIVE].added_px2 == 5000.0
    assert d.changed_px2 == 15000.0


def test_overlapping_classes_in_one_file_resolve_by_priority() -> None:
    # benign 0..100 and invasive 50..150 overlap: invasive wins, as in qpbridge masks
    predicted = [pred(box(50, 0, 150, 100), INVASIVE), pred(box(0, 0, 100, 100), BENIGN)]
    d = diff_geojson(predicted, [Feature(box(0, 0, 150, 100), INVASIVE)], mpp=None)
    assert d.per_class[BENIGN].predicted_px2 == 5000.0
    assert d.per_class[INVASIVE].predicted_px2 == 10000.0
    assert d.relabelled_px2 == {BENIGN: {INVASIVE: 5000.0}}
    # another order (--classes): benign above invasive
    d2 = diff_geojson(
        predicted, [Feature(box(0, 0, 150, 100), INVASIVE)], mpp=None, classes=[INVASIVE, BENIGN]
    )
    assert d2.per_class[BENIGN].predicted_px2 == 10000.0
    assert d2.per_class[INVASIVE].predicted_px2 == 5000.0


def test_overlapping_same_class_objects_are_unioned() -> None:
    predicted = [pred(box(0, 0, 100, 100), BENIGN), pred(box(50, 0, 150, 100), BENIGN)]
    d = diff_geojson(predicted, [Feature(box(0, 0, 150, 100), BENIGN)], mpp=None)
    assert d.per_class[BENIGN].predicted_px2 == 15000.0
    assert d.identical


def test_roi_is_a_section_of_its_own() -> None:
    predicted = [pred(box(0, 0, 1000, 1000), "ROI", "annotation"), pred(box(0, 0, 100, 100), BENIGN)]
    corrected = [Feature(box(0, 0, 800, 1000), "ROI"), Feature(box(900, 0, 1200, 100), "ROI")]
    corrected.append(Feature(box(0, 0, 100, 100), BENIGN))
    d = diff_geojson(predicted, corrected, mpp=0.5)
    assert "ROI" not in d.per_class and d.classes == (BENIGN,)
    roi = d.to_dict()["roi"]
    assert roi["removed_um2"] == (100 * 1000 + 100 * 900) * 0.25  # x 800..900; x 900..1000 below y 100
    assert roi["added_um2"] == 200 * 100 * 0.25  # x 1000..1200
    assert roi["unchanged_um2"] == (800 * 1000 + 100 * 100) * 0.25
    assert d.changed_px2 == 0 and not d.identical


def test_region_and_other_object_types_are_left_out() -> None:
    corrected = [
        Feature(box(0, 0, 100, 100), BENIGN),
        Feature(box(0, 0, 500, 500), "Region*"),
        Feature(box(0, 0, 5, 5), INVASIVE, object_type="cell"),
        Feature(shapely.Point(3, 3), INVASIVE),
    ]
    d = diff_geojson([pred(box(0, 0, 100, 100), BENIGN)], corrected, mpp=None)
    assert d.changed_px2 == 0 and d.roi is None          # the regions are as predicted
    assert d.excluded == {"class Region*": 1, "type cell": 1, "no area": 1}
    # the cell is no region: it is a nucleus, compared one by one (the prediction had none: added)
    assert d.nuclei is not None and d.nuclei.per_class[INVASIVE].added == 1 and not d.identical


def test_class_names_match_as_masks_does() -> None:
    corrected = [qupath_feature(box(0, 0, 100, 100), "invasive carcinoma")]
    corrected.append(qupath_feature(box(100, 0, 200, 100), "Benign: Positive"))
    d = diff_geojson([pred(box(0, 0, 200, 100), BENIGN)], [_feature(f) for f in corrected], mpp=None)
    assert d.relabelled_px2 == {BENIGN: {INVASIVE: 10000.0}}
    assert d.per_class[BENIGN].unchanged_px2 == 10000.0
    assert d.unknown_classes == {}


def _diff_class(name: str | None, class_map: ClassMap) -> str | None:
    """What diff makes of one corrected object of class ``name``: its compared class, or "excluded"."""
    d = diff_geojson([], [Feature(box(0, 0, 10, 10), name)], mpp=None, class_map=class_map)
    if d.excluded:
        return "excluded"
    return next(c for c, cd in d.per_class.items() if cd.corrected_px2 > 0)


def test_diff_and_masks_match_class_names_with_one_rule() -> None:
    # masks (ClassMap.lookup) tried "Tumor" exactly before "tumor: positive" in any case; diff the other way
    # round, and diff knew no aliases ("Tissue", a card's) at all. Both now go through one ClassMatcher.
    cmap = ClassMap.deepbatch().with_overrides({"Tumor": 3, "tumor: positive": 1, "Carcinoma in situ": 2})
    label_of = {c.name: c.label for c in cmap.classes}
    names = ["Tumor: Positive", "TUMOR: Negative", "benign", "Tissue", "Carcinoma in situ", "In Situ Carcinoma: x",
             "Region 1", "pen", "Ignore*: Tumor", "Necrosis", None]
    expected = {"Tumor: Positive": 1, "TUMOR: Negative": 3, "benign": 1, "Tissue": 0, "Carcinoma in situ": 2,
                "In Situ Carcinoma: x": 2, "Region 1": -1, "pen": 255, "Ignore*: Tumor": 255, "Necrosis": None,
                None: None}
    for name in names:
        value = cmap.lookup(name)
        assert value == expected[name], name
        compared = _diff_class(name, cmap)
        if value is None:  # unknown to masks: a class of its own in diff
            assert compared == (name or "Unclassified"), name
        elif value in (-1, 255):  # reviewed area / ignore: left out of diff
            assert compared == "excluded", name
        else:
            assert compared is not None and label_of[compared] == value, name


def test_diff_uses_a_cards_aliases() -> None:
    predicted = [pred(box(0, 0, 100, 100), IN_SITU)]
    corrected = [Feature(box(0, 0, 100, 100), "Carcinoma in situ")]
    assert diff_geojson(predicted, corrected).relabelled_px2 == {IN_SITU: {"Carcinoma in situ": 10000.0}}
    card = ClassMap.from_classes(ClassMap.deepbatch().classes, {"Carcinoma in situ": 2})
    assert diff_geojson(predicted, corrected, class_map=card).identical


def test_diff_uses_a_cards_aliases_from_the_cli(tmp_path: Path) -> None:
    p = write_qupath(tmp_path / "p.geojson", [qupath_feature(box(0, 0, 100, 100), IN_SITU, marked=True)])
    c = write_qupath(tmp_path / "c.geojson", [qupath_feature(box(0, 0, 100, 100), "Carcinoma in situ")])
    without = json.loads(runner.invoke(APP, ["diff", str(p), str(c), "--json"]).stdout)
    assert without["relabelled_px2"] == {IN_SITU: {"Carcinoma in situ": 10000.0}}
    result = runner.invoke(APP, ["diff", str(p), str(c), "--json", "--class-map", "Carcinoma in situ=2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["relabelled_px2"] == {} and data["per_class"][IN_SITU]["unchanged_px2"] == 10000.0


def _feature(obj: dict[str, Any]) -> Feature:
    geom = shapely.from_geojson(json.dumps(obj["geometry"]))
    return Feature(
        geom, obj["properties"]["classification"]["name"], object_type=obj["properties"]["objectType"]
    )


def test_unknown_classes_warn_and_strict_classes_fail() -> None:
    predicted = [pred(box(0, 0, 100, 100), BENIGN)]
    corrected = [Feature(box(0, 0, 100, 100), BENIGN), Feature(box(200, 0, 250, 100), "Necrosis")]
    corrected.append(Feature(box(300, 0, 350, 100), None))
    d = diff_geojson(predicted, corrected, mpp=None)
    assert d.unknown_classes == {"Necrosis": 1, "Unclassified": 1}
    assert any("'Necrosis' (1 object), 'Unclassified' (1 object)" in w for w in d.warnings)
    assert d.per_class["Necrosis"].added_px2 == 5000.0
    assert d.classes == ("Necrosis", "Unclassified", BENIGN)
    with pytest.raises(
        InputError, match=r"classes not in --classes \(Benign, Invasive carcinoma\): CORRECTED: "
    ):
        diff_geojson(predicted, corrected, mpp=None, classes=[BENIGN, INVASIVE])


def test_empty_corrected_and_other_slide_raise() -> None:
    predicted = [pred(box(0, 0, 100, 100), BENIGN)]
    with pytest.raises(InputError, match="nothing to compare"):
        diff_geojson(predicted, [], mpp=None)
    with pytest.raises(InputError, match="do not overlap at all"):
        diff_geojson(predicted, [Feature(box(5000, 5000, 5100, 5100), BENIGN)], mpp=None)
    with pytest.raises(InputError, match=r"does not fit the slide \(1000 x 800 px\)"):
        diff_geojson(predicted, [Feature(box(0, 0, 3000, 100), BENIGN)], mpp=None, slide_size_px=(1000, 800))
    # a few px past the edge (a brush stroke) is tolerated with a warning
    d = diff_geojson(predicted, [Feature(box(0, 0, 1003, 100), BENIGN)], mpp=None, slide_size_px=(1000, 800))
    assert any("3.0 px beyond the slide" in w for w in d.warnings)


# ------------------------------------------------------------------------------- an exact raster oracle
rects = st.lists(
    st.tuples(
        st.integers(0, 15),
        st.integers(0, 15),
        st.integers(1, 8),
        st.integers(1, 8),
        st.sampled_from([0, 1, 2, 3]),
    ),
    max_size=6,
)


def _paint(objects: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """Label raster (-1 = nothing) with the priority rule: higher class index painted last."""
    grid = np.full((24, 24), -1)
    for x, y, w, h, k in sorted(objects, key=lambda o: o[4]):
        grid[y : y + h, x : x + w] = k
    return grid


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rects, rects)
def test_areas_match_a_pixel_count_oracle(
    predicted: list[tuple[int, int, int, int, int]], corrected: list[tuple[int, int, int, int, int]]
) -> None:
    names = DEFAULT_CLASS_ORDER
    p_feats = [pred(box(x, y, x + w, y + h), names[k]) for x, y, w, h, k in predicted]
    c_feats = [Feature(box(x, y, x + w, y + h), names[k]) for x, y, w, h, k in corrected]
    if not c_feats:
        return
    d = diff_geojson(p_feats, c_feats, mpp=None, slide_size_px=(24, 24), classes=list(names))
    p_grid, c_grid = _paint(predicted), _paint(corrected)
    for k, name in enumerate(names):
        c = d.per_class[name]
        assert c.predicted_px2 == np.sum(p_grid == k)
        assert c.corrected_px2 == np.sum(c_grid == k)
        assert c.unchanged_px2 == np.sum((p_grid == k) & (c_grid == k))
        assert c.removed_px2 == np.sum((p_grid == k) & (c_grid == -1))
        assert c.added_px2 == np.sum((p_grid == -1) & (c_grid == k))
        for j, other in enumerate(names):
            if j != k:
                expected = np.sum((p_grid == k) & (c_grid == j))
                assert d.relabelled_px2.get(name, {}).get(other, 0.0) == expected
    changed = np.sum(p_grid != c_grid)
    assert d.changed_px2 == changed
    pieces = d.pieces().all_geometries()
    assert (float(shapely.area(pieces).sum()) if len(pieces) else 0.0) == pytest.approx(changed)


# ------------------------------------------------------------------------------- changed-only output
def _changed_case() -> tuple[list[Feature], list[Feature]]:
    predicted = [
        pred(box(0, 0, 100, 100), BENIGN),  # relabelled to invasive
        pred(box(200, 0, 300, 100), INVASIVE),  # shifted by 10 px
        pred(box(400, 0, 500, 100), IN_SITU),  # deleted (false positive)
        pred(box(0, 300, 100, 400), BENIGN),  # unchanged
    ]
    corrected = [
        Feature(box(0, 0, 100, 100), INVASIVE),
        Feature(box(210, 0, 310, 100), INVASIVE),
        Feature(box(0, 300, 100, 400), BENIGN),
        Feature(box(600, 200, 700, 300), BENIGN),  # newly drawn
    ]
    return predicted, corrected


def test_changed_only_holds_exactly_the_changed_geometry(tmp_path: Path) -> None:
    predicted, corrected = _changed_case()
    d = diff_geojson(predicted, corrected, mpp=0.5)
    changed_px2 = 10000 + 1000 + 1000 + 10000 + 10000
    assert d.changed_px2 == changed_px2
    out = tmp_path / "changed.geojson"
    from qpbridge.diff import write_changed_only

    assert write_changed_only(out, d) == 5 + 5  # 5 Region* parts; relabel, added sliver, 2 removed, new
    features = read_geojson(out).features
    regions = [f for f in features if f.class_name == "Region*"]
    pieces = [f for f in features if f.class_name != "Region*"]
    assert {f.object_type for f in regions} == {"annotation"} and {f.object_type for f in pieces} == {
        "detection"
    }
    assert sum(f.geometry.area for f in regions) == changed_px2
    assert sum(f.geometry.area for f in pieces) == changed_px2
    by_name = sorted((f.name, f.class_name, f.geometry.area) for f in pieces)
    assert by_name == [
        ("Added", BENIGN, 10000.0),
        ("Added", INVASIVE, 1000.0),
        ("Relabelled from Benign", INVASIVE, 10000.0),
        ("Removed In situ carcinoma", "Normal", 10000.0),
        ("Removed Invasive carcinoma", "Normal", 1000.0),
    ]
    assert pytest.approx(sum(f.measurements["Area um^2"] for f in pieces)) == changed_px2 * 0.25
    union = shapely.union_all([f.geometry for f in regions])
    assert_geometries_equal(
        shapely.normalize(shapely.union_all([f.geometry for f in pieces])), shapely.normalize(union)
    )
    # masks trains only on the changed area, with the corrected labels
    mask = LabelRasterizer(features, ClassMap.deepbatch()).window((400, 720), Affine.identity())
    assert mask[50, 50] == 3 and mask[50, 305] == 3 and mask[50, 205] == 0 and mask[50, 450] == 0
    assert mask[250, 650] == 1
    assert mask[50, 250] == 255 and mask[350, 50] == 255  # unchanged: not trained on
    assert np.sum(mask != 255) == changed_px2


def test_changed_only_margin_covers_neighbours_with_their_corrected_class() -> None:
    d = diff_geojson([pred(box(0, 0, 100, 100), BENIGN)], [Feature(box(10, 0, 110, 100), BENIGN)], mpp=0.5)
    features = changed_only_features(d, margin_px=5, removed_class=None)
    regions = [f for f in features if f.class_name == "Region*"]
    margin = [f for f in features if f.name == "Unchanged (margin)"]
    assert [f.name for f in features if f.class_name != "Region*"] == ["Added"] + ["Unchanged (margin)"] * 2
    # the union of the slivers (0..10 and 100..110, y 0..100) widened by 5 px, clipped at x, y >= 0
    assert len(regions) == 2
    assert sum(f.geometry.area for f in regions) > 2 * 15 * 105
    # corrected benign within 5 px of the changes: x 10..15 and 95..100
    assert sum(f.geometry.area for f in margin) == pytest.approx(2 * 5 * 100)
    assert shapely.total_bounds(np.array([f.geometry for f in regions]))[:2].tolist() == [0.0, 0.0]


def test_changed_only_of_identical_files_is_empty() -> None:
    d = diff_geojson([pred(box(0, 0, 100, 100), BENIGN)], [Feature(box(0, 0, 100, 100), BENIGN)], mpp=None)
    assert changed_only_features(d, margin_px=10) == []


# ----------------------------------------------------------------------------------- files, pairs
def test_px2_fallback_and_sidecar_mpp(tmp_path: Path) -> None:
    write_geojson(tmp_path / "s1.geojson", [pred(box(0, 0, 100, 100), BENIGN)])
    corr_dir = tmp_path / "corrections"
    corr_dir.mkdir()
    write_qupath(corr_dir / "s1.geojson", [qupath_feature(box(0, 0, 100, 100), INVASIVE)])
    d = diff_files(tmp_path / "s1.geojson", corr_dir / "s1.geojson")
    assert d.area_unit == "px^2" and d.mpp is None and d.mpp_source == "none"
    assert d.to_dict()["relabelled_px2"] == {BENIGN: {INVASIVE: 10000.0}}
    assert "no pixel size (give --mpp or --slide): areas are in px^2" in d.warnings[-1]
    sidecar = {"image_name": "s1.svs", "image_paths": [], "width_px": 2000, "height_px": 1000}
    (corr_dir / "s1.json").write_text(json.dumps({**sidecar, "pixel_size_um": 0.25}))
    d = diff_files(tmp_path / "s1.geojson", corr_dir / "s1.geojson")
    assert (d.mpp, d.mpp_source, d.slide_size_px) == (0.25, "corrections sidecar", (2000, 1000))
    assert d.to_dict()["relabelled_um2"] == {BENIGN: {INVASIVE: 625.0}}
    assert diff_files(tmp_path / "s1.geojson", corr_dir / "s1.geojson", mpp=0.5).mpp_source == "--mpp"


def test_match_pairs_by_slide_name(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "c").mkdir()
    for name in ("p/a.geojson", "p/b.svs.geojson", "p/only.geojson.gz", "p/a.geojson.meta.json"):
        (tmp_path / name).write_text("{}")
    for name in ("c/a.geojson", "c/a.json", "c/b.geojson", "c/extra.geojson"):
        (tmp_path / name).write_text("{}")
    m = match_pairs(tmp_path / "p", tmp_path / "c")
    assert [(n, p.name, c.name) for n, p, c in m.pairs] == [
        ("a", "a.geojson", "a.geojson"),
        ("b", "b.svs.geojson", "b.geojson"),
    ]
    assert (m.predicted_only, m.corrected_only) == (["only"], ["extra"])


def _write_pair_dirs(root: Path) -> tuple[Path, Path]:
    pred_dir, corr_dir = root / "pred", root / "corr"
    pred_dir.mkdir()
    corr_dir.mkdir()
    # slide -> corrected width of the 100 x 100 benign prediction: share changed = 1 - width / 100
    for name, width in (("s-low", 90), ("s-high", 50), ("s-none", 100)):
        write_geojson(pred_dir / f"{name}.geojson", [pred(box(0, 0, 100, 100), BENIGN)])
        write_qupath(corr_dir / f"{name}.geojson", [qupath_feature(box(0, 0, width, 100), BENIGN)])
    return pred_dir, corr_dir


def test_pairs_are_ranked_by_changed_share(tmp_path: Path) -> None:
    pred_dir, corr_dir = _write_pair_dirs(tmp_path)
    batch = diff_pairs([(pred_dir, corr_dir)], mpp=0.5)
    assert [r.name for r in batch.results] == ["s-high", "s-low", "s-none"]
    assert [r.changed_share for r in batch.results] == [0.5, 0.1, 0.0]
    result = runner.invoke(APP, ["diff", "--pairs", str(pred_dir), str(corr_dir), "--mpp", "0.5"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert lines[0][:3] == ["rank", "slide", "unit"]
    assert [row[:2] for row in lines[1:4]] == [["1", "s-high"], ["2", "s-low"], ["3", "s-none"]]
    assert lines[1][6] == "50.0%" and lines[1][5] == "1,250"
    data = json.loads(runner.invoke(APP, ["diff", str(pred_dir), str(corr_dir), "--json"]).stdout)
    assert [s["name"] for s in data["slides"]] == ["s-high", "s-low", "s-none"]
    assert data["slides"][0]["totals"]["removed_px2"] == 5000.0


def test_pairs_report_failures_and_go_on(tmp_path: Path) -> None:
    pred_dir, corr_dir = _write_pair_dirs(tmp_path)
    write_geojson(pred_dir / "s-empty.geojson", [pred(box(0, 0, 100, 100), BENIGN)])
    write_qupath(corr_dir / "s-empty.geojson", [])
    result = runner.invoke(APP, ["diff", "--pairs", str(pred_dir), str(corr_dir), "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert [s["name"] for s in data["slides"]] == ["s-high", "s-low", "s-none"]
    assert data["failures"][0]["name"] == "s-empty" and "nothing to compare" in data["failures"][0]["error"]
    assert "error: s-empty: " in result.stderr


def test_pairs_changed_only_writes_one_file_per_slide(tmp_path: Path) -> None:
    pred_dir, corr_dir = _write_pair_dirs(tmp_path)
    out = tmp_path / "changed"
    args = [str(pred_dir), str(corr_dir), "--mpp", "0.5", "--changed-only", "-o", str(out)]
    result = runner.invoke(APP, ["diff", *args])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.geojson")) == [
        "s-high.geojson",
        "s-low.geojson",
        "s-none.geojson",
    ]
    regions = [f for f in read_geojson(out / "s-high.geojson").features if f.class_name == "Region*"]
    assert [f.geometry.area for f in regions] == [5000.0]
    assert read_geojson(out / "s-none.geojson").features == []
    again = runner.invoke(APP, ["diff", *args])
    assert again.exit_code == 1 and "exist: add --overwrite" in again.stderr


# ---------------------------------------------------------------------------------------------- CLI
def _pair(tmp_path: Path, corrected: list[dict[str, Any]]) -> tuple[str, str]:
    write_geojson(tmp_path / "slide.geojson", [pred(box(0, 0, 100, 100), BENIGN)])
    write_qupath(tmp_path / "corrected.geojson", corrected)
    return str(tmp_path / "slide.geojson"), str(tmp_path / "corrected.geojson")


def test_cli_table_and_json(tmp_path: Path) -> None:
    p, c = _pair(tmp_path, [qupath_feature(box(0, 0, 100, 100), INVASIVE)])
    result = runner.invoke(APP, ["diff", p, c, "--mpp", "0.5"])
    assert result.exit_code == 0, result.output
    assert "areas in um^2, 0.5 um/px from --mpp" in result.output
    assert "relabelled: Benign -> Invasive carcinoma: 2,500 um^2" in result.output
    assert "changed 2,500 um^2 (100.0% of the predicted area)" in result.output
    benign_row = next(line for line in result.output.splitlines() if line.startswith("Benign"))
    assert benign_row.split()[1:] == ["2,500", "0", "0", "0", "0", "2,500", "0", "100.0%"]
    data = json.loads(runner.invoke(APP, ["diff", p, c, "--mpp", "0.5", "--json"]).stdout)
    assert data["relabelled_um2"] == {BENIGN: {INVASIVE: 2500.0}}


def test_cli_px2_fallback_says_so(tmp_path: Path) -> None:
    p, c = _pair(tmp_path, [qupath_feature(box(0, 0, 50, 100), BENIGN)])
    result = runner.invoke(APP, ["diff", p, c])
    assert result.exit_code == 0, result.output
    assert "areas in px^2, no pixel size" in result.stdout
    assert "removed 5,000" in result.stdout
    assert "warning: no pixel size (give --mpp or --slide): areas are in px^2" in result.stderr


def test_cli_empty_corrected_file(tmp_path: Path) -> None:
    p, c = _pair(tmp_path, [])
    result = runner.invoke(APP, ["diff", p, c])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {c} holds no objects: nothing to compare")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_different_slide(tmp_path: Path, pyramid_tiff: Path) -> None:
    p, c = _pair(tmp_path, [qupath_feature(box(20000, 20000, 20100, 20100), BENIGN)])
    result = runner.invoke(APP, ["diff", p, c])
    assert result.exit_code == 2
    assert "do not overlap at all" in result.stderr and "different slides" in result.stderr
    # with --slide (1024 x 768 px at 0.5 um/px): coordinates outside the slide
    result = runner.invoke(APP, ["diff", p, c, "--slide", str(pyramid_tiff)])
    assert result.exit_code == 2
    assert f"error: {c} does not fit the slide (1024 x 768 px)" in result.stderr
    assert "x 20000..20100" in result.stderr


def test_cli_slide_gives_the_pixel_size(tmp_path: Path, pyramid_tiff: Path) -> None:
    p, c = _pair(tmp_path, [qupath_feature(box(0, 0, 100, 100), INVASIVE)])
    result = runner.invoke(APP, ["diff", p, c, "--slide", str(pyramid_tiff), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["mpp"], data["mpp_source"], data["slide_size_px"]) == (
        0.5,
        "slide gradient.tiff",
        [1024, 768],
    )
    assert data["relabelled_um2"] == {BENIGN: {INVASIVE: 2500.0}}
    assert data["name"] == "gradient"


def test_cli_strict_classes_and_warnings(tmp_path: Path) -> None:
    p, c = _pair(tmp_path, [qupath_feature(box(0, 0, 100, 100), "Necrosis")])
    result = runner.invoke(APP, ["diff", p, c])
    assert result.exit_code == 0
    assert (
        "warning: classes in the corrected file" in result.stderr and "'Necrosis' (1 object)" in result.stderr
    )
    result = runner.invoke(
        APP, ["diff", p, c, "--classes", "Normal,Benign", "--classes", "Invasive carcinoma"]
    )
    assert result.exit_code == 2
    assert "classes not in --classes (Normal, Benign, Invasive carcinoma): " in result.stderr
    assert "'Necrosis' (1)" in result.stderr


def test_cli_changed_only_output_and_overwrite(tmp_path: Path) -> None:
    p, c = _pair(tmp_path, [qupath_feature(box(10, 0, 110, 100), BENIGN)])
    out = tmp_path / "changed.geojson"
    result = runner.invoke(
        APP, ["diff", p, c, "--mpp", "0.5", "--changed-only", "-o", str(out), "--margin-um", "2.5"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 6 features" in result.stdout  # 2 Region*, added, removed, 2 margin neighbours
    names = sorted(f.name or "" for f in read_geojson(out).features)
    region = "Changed area + 2.5 um margin"
    assert names == ["Added", region, region, "Removed Benign", "Unchanged (margin)", "Unchanged (margin)"]
    again = runner.invoke(APP, ["diff", p, c, "--changed-only", "-o", str(out)])
    assert again.exit_code == 1
    assert again.stderr == f"error: {out} exists: add --overwrite to replace it, or choose another output\n"
    assert runner.invoke(APP, ["diff", p, c, "--changed-only", "-o", str(out), "--overwrite"]).exit_code == 0
    assert runner.invoke(APP, ["diff", p, c, "-o", str(out)]).exit_code == 2
    result = runner.invoke(
        APP, ["diff", p, c, "--changed-only", "-o", str(out), "--overwrite", "--margin-um", "3"]
    )
    assert result.exit_code == 2 and "--margin-um needs the pixel size" in result.stderr


def test_cli_argument_errors(tmp_path: Path) -> None:
    p, _ = _pair(tmp_path, [])
    result = runner.invoke(APP, ["diff", p])
    assert result.exit_code == 2 and "give PREDICTED and CORRECTED (2 paths, got 1)" in result.stderr
    result = runner.invoke(APP, ["diff", p, str(tmp_path / "missing.geojson")])
    assert result.exit_code == 2 and "corrected file" in result.stderr and "not found" in result.stderr
    result = runner.invoke(APP, ["diff", "--pairs", p, p, p])
    assert result.exit_code == 2 and "--pairs needs pairs PRED CORR: got 3 path(s)" in result.stderr
