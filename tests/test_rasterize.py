"""Tests of qpbridge.rasterize: exact round trips, overlap and reviewed-area rules, class maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely import box
from shapely.geometry import shape

from qpbridge.classes import IGNORE_LABEL, PEN_CLASS
from qpbridge.errors import InputError
from qpbridge.qupath import DEFAULT_IGNORE_PATTERNS, ClassMatcher, matches_pattern
from qpbridge.rasterize import (
    REGION,
    SKIP,
    ClassMap,
    LabelRasterizer,
    parse_class_map,
    parse_class_option,
    polygon_dicts,
    rasterize_features,
    rasterize_shapes,
)
from qpbridge.tiling import compose_affine


def _random_labels(seed: int, height: int = 96, width: int = 128, n_classes: int = 4) -> np.ndarray:
    """Blobby random label mask (smoothed noise, quantised), with holes and touching regions."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(height, width)), sigma=3.0)
    edges = np.quantile(noise, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(noise, edges).astype(np.uint8)


def _vectorize(mask: np.ndarray, affine: Affine) -> list[tuple[shapely.Geometry, int]]:
    """Independent vectorizer: rasterio.features.shapes with the same Affine."""
    return [(shape(geom), int(value)) for geom, value in shapes(mask, transform=affine)]


# --------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "affine", [Affine.identity(), Affine(4.0, 0.0, 1000.0, 0.0, 4.0, 2000.0), Affine(2.5, 0, -37.5, 0, 2.5, 12.0)]
)
def test_mask_polygons_mask_round_trip_is_exact(seed: int, affine: Affine) -> None:
    mask = _random_labels(seed)
    pairs = _vectorize(mask, affine)
    assert len(pairs) > 20
    back = rasterize_shapes(pairs, mask.shape, affine, fill=99)
    assert np.array_equal(back, mask)
    # The same through GeoJSON-like dicts and through the class-name path.
    back_dicts = rasterize_shapes([(g.__geo_interface__, v) for g, v in pairs], mask.shape, affine, fill=99)
    assert np.array_equal(back_dicts, mask)


def test_round_trip_through_qpbridge_vectorize() -> None:
    vectorize = pytest.importorskip("qpbridge.vectorize")
    mask = _random_labels(11)
    affine = Affine(4.0, 0.0, 2000.0, 0.0, 4.0, 1000.0)
    result = vectorize.vectorize_mask(mask, affine)  # labels 1-3; 0 is the background left uncovered
    names = {1: "Benign", 2: "In situ carcinoma", 3: "Invasive carcinoma"}
    feats = [(g, names[int(v)]) for g, v in zip(result.polygons, result.labels, strict=True)]
    assert np.array_equal(rasterize_features(feats, mask.shape, affine), mask)


@pytest.mark.parametrize("affine", [Affine.identity(), Affine(4.0, 0.0, 100.0, 0.0, 4.0, 36.0)])
def test_windows_assembled_equal_the_whole_mask(affine: Affine) -> None:
    """Rasterizing window by window (STRtree selection, clipping of big polygons) equals the whole at once."""
    mask = _random_labels(7, height=200, width=260, n_classes=3)
    names = {0: "Normal", 1: "Benign", 2: "In situ carcinoma"}
    pairs = [(g, names[v]) for g, v in _vectorize(mask, affine)]
    assert max(shapely.get_num_coordinates(g) for g, _ in pairs) > 512  # the clipping path is exercised
    lr = LabelRasterizer(pairs, ClassMap.deepbatch(), reviewed="annotated")
    assert np.array_equal(lr.window(mask.shape, affine), mask)
    assembled = np.full(mask.shape, 77, dtype=np.uint8)
    for y in range(0, 200, 64):
        for x in range(0, 260, 48):
            h, w = min(64, 200 - y), min(48, 260 - x)
            assembled[y : y + h, x : x + w] = lr.window((h, w), compose_affine(affine, Affine.translation(x, y)))
    assert np.array_equal(assembled, mask)


def test_scaled_affine_with_offset_paints_pixel_centres() -> None:
    # Mask pixel (c, r) covers level-0 [100 + 4c, 104 + 4c) x [40 + 4r, 44 + 4r); centre at +2.
    affine = Affine(4.0, 0.0, 100.0, 0.0, 4.0, 40.0)
    mask = rasterize_shapes([(box(100, 40, 108, 44), 5)], (3, 4), affine)
    assert mask.tolist() == [[5, 5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # A box reaching just past a pixel centre (102.5 > 102) takes the pixel; one stopping short (101.9) does not.
    assert rasterize_shapes([(box(100, 40, 102.5, 42.5), 1)], (2, 2), affine).tolist() == [[1, 0], [0, 0]]
    assert rasterize_shapes([(box(100, 40, 101.9, 44), 1)], (2, 2), affine).tolist() == [[0, 0], [0, 0]]


def test_holes_and_multipolygons() -> None:
    ring = box(0, 0, 10, 10).difference(box(3, 3, 7, 7))
    multi = shapely.MultiPolygon([box(12, 0, 14, 2), box(16, 0, 18, 2)])
    mask = rasterize_shapes([(ring, 1), (multi, 2)], (10, 20), Affine.identity())
    assert int((mask == 1).sum()) == 100 - 16
    assert int((mask[3:7, 3:7] == 0).sum()) == 16
    assert int((mask == 2).sum()) == 8
    dicts, owner = polygon_dicts([ring, multi, shapely.Point(1, 1), shapely.Polygon()])
    assert [len(d["coordinates"]) for d in dicts] == [2, 1, 1]
    assert owner.tolist() == [0, 1, 1]


def test_points_and_lines_are_not_painted() -> None:
    mask = rasterize_shapes(
        [(shapely.LineString([(0, 0.5), (10, 0.5)]), 3), (shapely.Point(2.5, 2.5), 3)], (4, 10), Affine.identity()
    )
    assert int(mask.sum()) == 0


def test_bad_inputs_raise_input_error() -> None:
    with pytest.raises(InputError, match="labels must be 0-255"):
        rasterize_shapes([(box(0, 0, 1, 1), 300)], (2, 2), Affine.identity())
    with pytest.raises(InputError, match="mask shape"):
        rasterize_shapes([], (0, 5), Affine.identity())


# --------------------------------------------------------------------------------------------- overlaps
# Three 10 x 10 squares: Benign at (0,0), In situ at (5,5), Invasive at (10,0) overlapping In situ's top right.
_SQUARES = [
    (box(0, 0, 10, 10), "Benign"),
    (box(5, 5, 15, 15), "Invasive carcinoma"),
    (box(8, 8, 12, 12), "In situ carcinoma"),
]


def test_priority_higher_label_wins_whatever_the_order() -> None:
    for order in (_SQUARES, _SQUARES[::-1]):
        mask = rasterize_features(order, (20, 20), Affine.identity())
        counts = np.bincount(mask.ravel(), minlength=4)
        # Invasive (3) covers its whole 100 px; Benign keeps 100 - 25 overlap; In situ is hidden.
        assert counts.tolist() == [400 - 175, 75, 0, 100]


def test_later_wins_follows_file_order() -> None:
    mask = rasterize_features(_SQUARES, (20, 20), Affine.identity(), overlap="later-wins")
    counts = np.bincount(mask.ravel(), minlength=4)
    # Order Benign, Invasive, In situ: In situ (16 px) on top, Invasive 100 - 16.
    assert counts[[1, 2, 3]].tolist() == [75, 16, 84]
    mask = rasterize_features(_SQUARES[::-1], (20, 20), Affine.identity(), overlap="later-wins")
    counts = np.bincount(mask.ravel(), minlength=4)
    # Reversed: Benign last, on top of its overlap with Invasive (25 px).
    assert counts[[1, 2, 3]].tolist() == [100, 0, 75]


@pytest.mark.parametrize("overlap", ["priority", "later-wins"])
def test_ignore_classes_always_win(overlap: str) -> None:
    feats = [(box(0, 0, 6, 6), "Pen mark"), (box(0, 0, 10, 10), "Invasive carcinoma"), (box(8, 8, 10, 10), "Ignore me")]
    mask = rasterize_features(feats, (10, 10), Affine.identity(), overlap=overlap)
    assert int((mask == IGNORE_LABEL).sum()) == 36 + 4
    assert int((mask == 3).sum()) == 100 - 40


def test_custom_priority() -> None:
    lr = LabelRasterizer(_SQUARES, ClassMap.deepbatch(), priority=[3, 2, 1], reviewed="all")
    counts = np.bincount(lr.window((20, 20), Affine.identity()).ravel(), minlength=4)
    assert counts[[1, 2, 3]].tolist() == [100, 16 - 4, 100 - 25 - 12]


# --------------------------------------------------------------------------------------------- reviewed area
def test_region_objects_limit_the_reviewed_area() -> None:
    feats = [(box(0, 0, 12, 10), "Region*"), (box(2, 2, 6, 6), "Benign"), (box(10, 0, 20, 10), "Invasive carcinoma")]
    lr = LabelRasterizer(feats, ClassMap.deepbatch())
    assert lr.reviewed_effective == "region"
    mask = lr.window((10, 20), Affine.identity())
    counts = np.bincount(mask.ravel(), minlength=256)
    assert counts[IGNORE_LABEL] == 200 - 120  # outside the 12 x 10 region
    assert counts[1] == 16
    assert counts[3] == 20  # only the part of the invasive square inside the region
    assert counts[0] == 120 - 16 - 20


def test_several_region_classes_and_custom_pattern() -> None:
    feats = [(box(0, 0, 5, 5), "Region 1"), (box(10, 0, 15, 5), "Reviewed"), (box(1, 1, 3, 3), "Benign")]
    lr = LabelRasterizer(feats, ClassMap.deepbatch().with_overrides({"Reviewed": "region"}))
    mask = lr.window((5, 15), Affine.identity())
    assert int((mask != IGNORE_LABEL).sum()) == 50
    lr2 = LabelRasterizer(feats, ClassMap.deepbatch().with_patterns(region=["Rev*"]), ignore_unknown=True)
    mask2 = lr2.window((5, 15), Affine.identity())
    assert int((mask2 != IGNORE_LABEL).sum()) == 25  # "Region 1" no longer matches: unknown, skipped
    assert lr2.report.skipped_unknown == {"Region 1": 1}


def test_without_regions_everything_is_reviewed() -> None:
    lr = LabelRasterizer([(box(0, 0, 2, 2), "Benign")], ClassMap.deepbatch())
    assert lr.reviewed_effective == "all"
    mask = lr.window((4, 4), Affine.identity())
    assert np.bincount(mask.ravel(), minlength=256)[[0, 1, 255]].tolist() == [12, 4, 0]


def test_annotated_mode_ignores_everything_not_drawn() -> None:
    feats = [(box(0, 0, 4, 4), "Tissue"), (box(1, 1, 3, 3), "Benign"), (box(0, 0, 8, 8), "Region*")]
    mask = rasterize_features(feats, (8, 8), Affine.identity(), reviewed="annotated")
    assert np.bincount(mask.ravel(), minlength=256)[[0, 1, 255]].tolist() == [12, 4, 64 - 16]


# --------------------------------------------------------------------------------------------- class map
def test_class_map_lookup_rules() -> None:
    cmap = ClassMap.deepbatch().with_overrides({"Tumor": "3", "Stroma": "ignore", "Necrosis": "skip"})
    assert cmap.lookup("Tumor") == 3
    assert cmap.lookup("Tumor: Positive") == 3  # derived class -> its first part
    assert cmap.lookup("tumor") == 3  # case-insensitive after exact
    assert cmap.lookup("Stroma") == IGNORE_LABEL
    assert cmap.lookup("Necrosis") == SKIP
    assert cmap.lookup("Tissue") == 0 and cmap.lookup("Normal") == 0
    assert cmap.lookup("Region*") == REGION and cmap.lookup("Region 3") == REGION
    assert cmap.lookup("Pen mark") == IGNORE_LABEL and cmap.lookup("Ignore*") == IGNORE_LABEL
    assert cmap.lookup("Lymphocyte") is None and cmap.lookup(None) is None
    # An exact derived name beats its first part.
    derived = cmap.with_overrides({"Tumor: Negative": 1})
    assert derived.lookup("Tumor: Negative") == 1 and derived.lookup("Tumor: Positive") == 3
    # Unclassified objects are mapped by the name "Unclassified".
    assert cmap.with_overrides({"Unclassified": 0}).lookup(None) == 0
    # Class names are accepted as values too.
    assert cmap.with_overrides({"Ca": "Invasive carcinoma"}).lookup("Ca") == 3


def test_one_matching_rule_most_specific_name_first() -> None:
    # The full name in any case beats the first part of a derived class; names beat patterns.
    cmap = ClassMap.deepbatch().with_overrides({"Tumor": 3, "tumor: positive": 1, "Pen": 2})
    assert cmap.lookup("Tumor: Positive") == 1  # was 3: the first part "Tumor" was tried exactly before
    assert cmap.lookup("TUMOR: negative") == 3
    assert cmap.lookup("Pen") == 2 and cmap.lookup("pen mark 3") == IGNORE_LABEL
    assert cmap.lookup("Region*: Positive") == REGION
    assert matches_pattern(PEN_CLASS.name, DEFAULT_IGNORE_PATTERNS)  # the synthetic slides' pen strokes
    matcher = ClassMatcher({"A": 1, "a": 2}, [("b*", 3), ("B", 4)])
    assert [matcher.match(n) for n in ("A", "a", "A: x", "b", "x: b")] == [1, 2, 1, 3, None]


def test_class_map_from_card_uses_aliases() -> None:
    class _C:
        def __init__(self, label: int, name: str, aliases: tuple[str, ...] = ()) -> None:
            self.label, self.name, self.color, self.aliases = label, name, (1, 2, 3), aliases

    class _Card:
        role = "roi"
        classes = (_C(0, "Background"), _C(1, "ROI", ("Benign", "In situ carcinoma", "Invasive carcinoma")))

    cmap = ClassMap.from_card(_Card())
    assert cmap.role == "roi" and cmap.labels == (0, 1)
    assert [cmap.lookup(n) for n in ("ROI", "Benign", "Invasive carcinoma", "Normal", "Tissue")] == [1, 1, 1, 0, 0]


def test_bad_override_values() -> None:
    with pytest.raises(InputError, match=r"label 7 is not a class here \(0 Normal, 1 Benign"):
        ClassMap.deepbatch().with_overrides({"Tumor": 7})
    with pytest.raises(InputError, match="'purple' is not a label"):
        ClassMap.deepbatch().with_overrides({"Tumor": "purple"})
    assert parse_class_option("Tumor: Positive=3") == ("Tumor: Positive", "3")
    with pytest.raises(InputError, match="--class 'Tumor' is not NAME=LABEL"):
        parse_class_option("Tumor")


def test_unknown_classes_error_lists_them_all_with_counts() -> None:
    feats = [
        (box(0, 0, 1, 1), "Stroma"),
        (box(0, 0, 1, 1), "Stroma"),
        (box(0, 0, 1, 1), "Lymphocytes"),
        (box(0, 0, 1, 1), None),
        (box(0, 0, 1, 1), "Benign"),
    ]
    with pytest.raises(InputError) as info:
        LabelRasterizer(feats, ClassMap.deepbatch(), source="x.geojson")
    text = str(info.value)
    assert text.startswith(
        "unknown QuPath classes in x.geojson: 'Stroma' (2 objects), 'Lymphocytes' (1 object), "
        "'Unclassified' (1 object)."
    )
    assert '--class "Lymphocytes=LABEL"' in text
    assert "0 Normal, 1 Benign, 2 In situ carcinoma, 3 Invasive carcinoma" in text
    assert "--class-map FILE.json" in text and "--ignore-unknown" in text


def test_ignore_unknown_skips_and_reports() -> None:
    feats = [(box(0, 0, 4, 4), "Stroma"), (box(0, 0, 2, 2), "Benign"), (shapely.Point(1, 1), "Benign")]
    lr = LabelRasterizer(feats, ClassMap.deepbatch(), ignore_unknown=True)
    assert lr.report.skipped_unknown == {"Stroma": 1}
    assert lr.report.skipped_not_area == 1
    assert lr.report.painted == {"Benign": 1}
    assert any("Stroma" in line for line in lr.report.notes())
    assert int((lr.window((4, 4), Affine.identity()) == 1).sum()) == 4


def test_class_map_file(tmp_path: Path) -> None:
    good = tmp_path / "map.json"
    good.write_text(json.dumps({"Tumor": 3, "Stroma": "ignore"}))
    cmap = ClassMap.deepbatch().with_overrides(parse_class_map(good))
    assert cmap.lookup("Tumor") == 3 and cmap.lookup("Stroma") == IGNORE_LABEL
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="must be an object of QuPath class name"):
        parse_class_map(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="is not valid JSON"):
        parse_class_map(broken)
    with pytest.raises(InputError, match="class map not found"):
        parse_class_map(tmp_path / "missing.json")


def test_features_objects_are_accepted() -> None:
    qupath = pytest.importorskip("qpbridge.qupath")
    feats = [qupath.Feature(box(0, 0, 3, 3), "Benign"), qupath.Feature(box(1, 1, 3, 3), "Tumor: Positive")]
    mask = rasterize_features(
        feats, (3, 3), Affine.identity(), class_map=ClassMap.deepbatch().with_overrides({"Tumor": 2})
    )
    assert mask.tolist() == [[1, 1, 1], [1, 2, 2], [1, 2, 2]]
