"""Aperio ImageScope XML: region types, holes, classes and colours, and MoNuSeg's real files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from shapely import box

from qpbridge.errors import FormatError
from qpbridge.formats.imagescope import read_imagescope, suggest_object_type
from qpbridge.qupath import Feature
from qpbridge.rasterize import rasterize_shapes
from tests.test_formats_common import shared_data


def region(rid: int, vertices: list[tuple[float, float]], kind: int = 0, negative: int = 0, text: str = "") -> str:
    points = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
    return (f'<Region Id="{rid}" Type="{kind}" Zoom="1" NegativeROA="{negative}" Text="{text}"><Attributes/>'
            f"<Vertices>{points}</Vertices></Region>")


def layer(aid: int, regions: list[str], name: str = "", color: int = 65280,
          attributes: tuple[tuple[str, str], ...] = (("Description", ""),)) -> str:
    attrs = "".join(f'<Attribute Name="{n}" Id="{k}" Value="{v}"/>' for k, (n, v) in enumerate(attributes))
    return (f'<Annotation Id="{aid}" Name="{name}" ReadOnly="0" Type="4" LineColor="{color}" Visible="1">'
            f'<Attributes>{attrs}</Attributes><Regions><RegionAttributeHeaders><AttributeHeader Id="9999" '
            f'Name="Region"/></RegionAttributeHeaders>{"".join(regions)}</Regions><Plots/></Annotation>')


def imagescope_file(path: Path, layers: list[str], mpp: str = "0.252") -> Path:
    path.write_text(f'<Annotations MicronsPerPixel="{mpp}">\n' + "\n".join(layers) + "\n</Annotations>\n")
    return path


def square(x: float, y: float, size: float) -> list[tuple[float, float]]:
    return [(x, y), (x + size, y), (x + size, y + size), (x, y + size)]


def test_region_types_holes_classes_and_colours(tmp_path: Path) -> None:
    path = imagescope_file(tmp_path / "a.xml", [
        layer(1, [
            region(1, square(0, 0, 100), text="big one"),
            region(2, square(20, 20, 30), negative=1),           # a hole in region 1
            region(3, [(200, 0), (260, 40)], kind=1),             # rectangle from two corners
            region(4, square(300, 0, 10), kind=1),                # rectangle from four corners
            region(5, [(400, 0), (440, 20)], kind=2),             # ellipse in that box
            region(6, [(0, 0), (50, 50)], kind=3),                # arrow
            region(7, [(0, 0), (10, 0)], kind=4),                 # ruler
            region(8, [(0, 0), (1, 1)]),                          # a polygon of two vertices
        ], name="Tumor", color=255),
        layer(2, [region(9, square(500, 500, 10))], attributes=(("Description", "Stroma"),), color=16711680),
        layer(3, [region(10, square(600, 600, 10))], attributes=(("Necrosis", ""),), color=0x00A5FF),
        layer(4, [region(11, square(700, 700, 10))]),
    ])
    result = read_imagescope(path)
    got = [(f.source_index, f.class_name, f.color, f.name, f.geometry.geom_type) for f in result.features]
    assert got == [
        (0, "Tumor", (255, 0, 0), "big one", "Polygon"),
        (2, "Tumor", (255, 0, 0), None, "Polygon"),
        (3, "Tumor", (255, 0, 0), None, "Polygon"),
        (4, "Tumor", (255, 0, 0), None, "Polygon"),
        (8, "Stroma", (0, 0, 255), None, "Polygon"),
        (9, "Necrosis", (255, 165, 0), None, "Polygon"),
        (10, None, (0, 255, 0), None, "Polygon"),
    ]
    big = result.features[0].geometry
    assert big.area == 10000 - 900 and len(big.interiors) == 1
    assert result.features[1].geometry.equals(box(200, 0, 260, 40))
    assert result.features[3].geometry.bounds == pytest.approx((400, 0, 440, 20))
    assert result.features[3].geometry.area == pytest.approx(np.pi * 20 * 10, rel=0.002)
    assert result.mpp == 0.252 and result.format_name == "imagescope"
    assert result.summary.total == 11
    assert result.summary.skipped == [
        (5, "arrow (a line, not an area)"), (6, "ruler (a line, not an area)"),
        (7, "polygon with 2 distinct vertices (an area needs 3)"),
    ]
    assert f"{path}: 1 x negative region(s) (NegativeROA=1) cut out of the regions they overlap" in result.warnings
    assert f"{path}: 1 x arrow region(s) skipped (lines, not areas)" in result.warnings
    assert f"{path}: 1 x ruler region(s) skipped (lines, not areas)" in result.warnings
    assert (f"{path}: region 7 (annotation 0, Region Id 8): skipped: polygon with 2 distinct vertices (an area "
            "needs 3)") in result.warnings
    assert {f.object_type for f in result.features} == {"annotation"}
    assert read_imagescope(path, object_type="detection").summary.by_object_type == {"detection": 7}


def test_features_match_a_rasterization_of_the_vertices(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rings = []
    for k in range(30):
        cx, cy = 40 + 60 * (k % 6), 40 + 60 * (k // 6)
        t = np.linspace(0, 2 * np.pi, 25, endpoint=False)
        r = rng.uniform(10, 25, t.size)
        rings.append(np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]).round(6))
    hole = square(30.25, 30.25, 8.5)
    path = imagescope_file(tmp_path / "nuclei.xml", [layer(1, [region(k + 1, ring.tolist()) for k, ring in
                                                               enumerate(rings)] + [region(99, hole, negative=1)])])
    result = read_imagescope(path, object_type="detection")
    assert len(result.features) == 30
    shape = (340, 400)
    for feature, ring in zip(result.features, rings, strict=True):
        oracle = {"type": "Polygon", "coordinates": [ring.tolist()]}
        if feature.source_index == 0:
            oracle["coordinates"].append(hole)
        expected = rasterize_shapes([(oracle, 1)], shape, Affine.identity())
        assert expected.sum() > 100
        np.testing.assert_array_equal(rasterize_shapes([(feature.geometry, 1)], shape, Affine.identity()), expected)
    assert len(result.features[0].geometry.interiors) == 1


def test_bad_files(tmp_path: Path) -> None:
    asap = tmp_path / "asap.xml"
    asap.write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")
    with pytest.raises(FormatError) as err:
        read_imagescope(asap)
    assert str(err.value) == (
        f"{asap}: root element <ASAP_Annotations>, not <Annotations>: not an ImageScope XML file (read ASAP XML, "
        "root <ASAP_Annotations>, with read_asap, or let read_annotations choose)"
    )
    cut = tmp_path / "cut.xml"
    cut.write_text(imagescope_file(tmp_path / "full.xml", [layer(1, [region(1, square(0, 0, 5))])]).read_text()[:300])
    with pytest.raises(FormatError, match=r"cut\.xml: malformed XML at line \d+, column \d+ .*: the file is truncated"):
        read_imagescope(cut)
    bad = imagescope_file(tmp_path / "bad.xml", [layer(1, [region(4, [(0, 0), (1, "1.5.2"), (2, 0)])])])
    with pytest.raises(FormatError) as err:
        read_imagescope(bad)
    assert str(err.value) == (
        f"{bad}: region 0 (annotation 0, Region Id 4): Vertex 1 Y='1.5.2' is not a number: fix or delete that element"
    )
    empty = imagescope_file(tmp_path / "empty.xml", [layer(1, [region(1, []), region(2, square(0, 0, 5))])])
    result = read_imagescope(empty)
    assert len(result.features) == 1 and result.summary.skipped == [(0, "no vertices")]
    assert result.warnings == [f"{empty}: region 0 (annotation 0, Region Id 1): skipped: no vertices"]


def test_negative_region_outside_every_region_is_reported(tmp_path: Path) -> None:
    path = imagescope_file(tmp_path / "neg.xml", [layer(1, [region(1, square(0, 0, 10)),
                                                            region(2, square(50, 50, 5), negative=1)])])
    result = read_imagescope(path)
    assert len(result.features) == 1 and result.features[0].geometry.area == 100
    assert result.summary.skipped == [(1, "negative region (NegativeROA=1) that overlaps no region of its annotation")]


def test_suggest_object_type() -> None:
    nuclei = [Feature(box(i * 20, 0, i * 20 + 12, 12)) for i in range(100)]        # 9 um^2 at 0.25 um/px
    regions = [Feature(box(i * 3000, 0, i * 3000 + 2000, 2000)) for i in range(100)]  # 0.25 mm^2
    assert suggest_object_type(nuclei, mpp=0.25) == "detection"
    assert suggest_object_type(nuclei) == "detection"
    assert suggest_object_type(regions, mpp=0.25) == "annotation"
    assert suggest_object_type(nuclei[:10], mpp=0.25) == "annotation"   # too few to be "many"
    assert suggest_object_type(nuclei[:80] + regions[:20], mpp=0.25) == "annotation"
    assert suggest_object_type([Feature(shapely.Point(0, 0))] * 100) == "annotation"


def _regions_with_three_vertices(path: Path) -> list[np.ndarray]:
    """An independent count: every Region element with 3+ Vertex children, straight from ElementTree."""
    rings = []
    for reg in ET.parse(path).getroot().iter("Region"):
        xy = np.array([(float(v.get("X")), float(v.get("Y"))) for v in reg.iter("Vertex")]).reshape(-1, 2)
        if len(xy) >= 3:
            rings.append(xy)
    return rings


@pytest.mark.parametrize(("name", "nuclei"), [("TCGA-B0-5698-01Z-00-DX1", 357), ("TCGA-B0-5710-01Z-00-DX1", 359)])
def test_monuseg_xml_gives_one_feature_per_region(name: str, nuclei: int) -> None:
    path = shared_data("monuseg-train", "xml", f"{name}.xml")
    rings = _regions_with_three_vertices(path)
    assert len(rings) == nuclei
    result = read_imagescope(path, object_type="detection")
    assert len(result.features) == len(rings) == result.summary.total
    assert result.summary.skipped == [] and result.summary.not_area == []
    assert result.mpp == 0.252
    assert result.summary.by_object_type == {"detection": nuclei}
    assert {f.color for f in result.features} == {(0, 255, 0)}
    assert suggest_object_type(result.features, mpp=result.mpp) == "detection"
    # each feature covers the pixels of its own vertex ring (same rasterizer, pixel centres): identical for
    # valid rings; MoNuSeg's self-touching rings are made valid, which moves a few boundary pixels at most
    differing = covered = 0
    worst = 1.0
    for feature, ring in zip(result.features, rings, strict=True):
        x0, y0 = np.floor(ring.min(axis=0)).astype(int) - 1
        w, h = (np.ceil(ring.max(axis=0)).astype(int) - (x0, y0) + 2).tolist()
        window = Affine.translation(int(x0), int(y0))
        got = rasterize_shapes([(feature.geometry, 1)], (h, w), window)
        want = rasterize_shapes([({"type": "Polygon", "coordinates": [ring.tolist()]}, 1)], (h, w), window)
        if shapely.Polygon(ring).is_valid:
            np.testing.assert_array_equal(got, want)
        differing += int((got != want).sum())
        covered += int(want.sum())
        worst = min(worst, float((got & want).sum() / (got | want).sum()))
    assert covered > 100_000 and differing / covered < 0.001 and worst > 0.97  # measured: 40 and 66 px; 0.98
