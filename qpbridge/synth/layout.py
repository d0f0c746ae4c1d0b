"""The layout of a synthetic slide, drawn once with shapely in level-0 pixels: tissue, lesions, glands, ducts, pen."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry.base import BaseGeometry

from qpbridge.synth.common import BENIGN, INKS, INSITU, INVASIVE, MPP, S_BAND, S_CORE, S_GLAND, S_LUMEN, S_NECROSIS

__all__ = ["Layout", "make_layout"]


# ----------------------------------------------------------------------------------------------- layout
@dataclass
class _Gland:
    """A benign gland: an ellipse of epithelium around an elliptic lumen."""

    cx: float
    cy: float
    a_px: float  # outer semi-axes
    b_px: float
    angle: float
    wall_px: float  # epithelium thickness
    nucleus_px: float  # nucleus radius
    index: int


@dataclass
class Layout:
    """Everything drawn in level-0 pixels, rounded to 0.01 px."""

    width_px: int
    height_px: int
    tissue: list[BaseGeometry]
    lesions: list[tuple[int, BaseGeometry]]  # (region label, polygon)
    pens: list[tuple[int, BaseGeometry]]  # (ink index, polygon)
    glands: list[_Gland]
    structures: list[tuple[int, BaseGeometry]]  # (structure label, polygon), burn order
    fibre_angle: float


def _rounded(geom: BaseGeometry) -> BaseGeometry:
    """Valid geometry on a 0.01 px grid (what the truth file stores and the renderer rasterizes)."""
    geom = shapely.make_valid(geom) if not geom.is_valid else geom
    geom = shapely.set_precision(geom, 0.01)
    if not geom.is_valid:
        geom = shapely.set_precision(shapely.make_valid(geom), 0.01)
    polys = [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon" and not g.is_empty]
    if not polys:
        return shapely.Polygon()
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def _largest_polygon(geom: BaseGeometry) -> BaseGeometry:
    parts = [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon" and not g.is_empty]
    if not parts:
        return shapely.Polygon()
    return max(parts, key=lambda g: g.area)


def _radial_shape(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    harmonics: Sequence[tuple[int, float]],
    n_vertices: int = 256,
    max_rotation: float = np.pi,
) -> BaseGeometry:
    """A closed blob r(phi) = 1 + sum a_k cos(k phi + p_k) scaled by (rx, ry), turned by up to ``max_rotation``."""
    phi = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    radius = np.ones_like(phi)
    for k, amp in harmonics:
        radius += amp * rng.uniform(0.5, 1.0) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    radius = np.maximum(radius, 0.25)
    rot = rng.uniform(-max_rotation, max_rotation)
    ex, ey = rx * radius * np.cos(phi), ry * radius * np.sin(phi)
    xs = cx + ex * np.cos(rot) - ey * np.sin(rot)
    ys = cy + ex * np.sin(rot) + ey * np.cos(rot)
    poly = shapely.Polygon(np.column_stack([xs, ys]))
    return poly if poly.is_valid else shapely.make_valid(poly)


def _scaled_to_area(geom: BaseGeometry, area: float) -> BaseGeometry:
    c = geom.centroid
    factor = math.sqrt(area / max(geom.area, 1e-9))
    return shapely.affinity.scale(geom, factor, factor, origin=c)


def _tissue(rng: np.random.Generator, width: int, height: int) -> list[BaseGeometry]:
    """1-3 irregular tissue pieces along the long side, covering ~45-55% of the slide."""
    n_pieces = int(rng.integers(1, 4)) if min(width, height) >= 3000 else int(rng.integers(1, 3))
    landscape = width >= height
    long_side, short_side = (width, height) if landscape else (height, width)
    seg = long_side / n_pieces
    target = rng.uniform(0.45, 0.55) * width * height
    margin = 0.03 * min(width, height)
    frame = shapely.box(margin, margin, width - margin, height - margin)
    pieces = []
    for i in range(n_pieces):
        along = seg * (i + 0.5) + rng.uniform(-0.08, 0.08) * seg
        across = short_side / 2 + rng.uniform(-0.06, 0.06) * short_side
        cx, cy = (along, across) if landscape else (across, along)
        r_along, r_across = 0.5 * seg * rng.uniform(0.8, 1.0), 0.5 * short_side * rng.uniform(0.75, 0.95)
        rx, ry = (r_along, r_across) if landscape else (r_across, r_along)
        harmonics = [(2, 0.10), (3, 0.08), (4, 0.05), (5, 0.04), (7, 0.025), (11, 0.012), (17, 0.008), (29, 0.004)]
        pieces.append(_radial_shape(rng, cx, cy, rx, ry, harmonics, n_vertices=720, max_rotation=0.25))
    for _ in range(10):
        pieces = [_fit_into(p, frame) for p in pieces]
        area = shapely.union_all(pieces).area
        factor = math.sqrt(target / max(area, 1.0))
        if abs(factor - 1.0) < 0.01:
            break
        pieces = [shapely.affinity.scale(p, factor, factor, origin=p.centroid) for p in pieces]
    union = shapely.union_all([_fit_into(p, frame) for p in pieces])
    return [g for g in (_rounded(p) for p in shapely.get_parts(union)) if not g.is_empty and g.area > 1000]


def _fit_into(geom: BaseGeometry, frame: BaseGeometry) -> BaseGeometry:
    """Shrink ``geom`` about its centroid, separately in x and y, until it lies inside ``frame``."""
    c = geom.centroid
    x0, y0, x1, y1 = geom.bounds
    f0, g0, f1, g1 = frame.bounds
    sx = min(1.0, (f1 - c.x) / max(x1 - c.x, 1e-9), (c.x - f0) / max(c.x - x0, 1e-9))
    sy = min(1.0, (g1 - c.y) / max(y1 - c.y, 1e-9), (c.y - g0) / max(c.y - y0, 1e-9))
    if sx >= 1.0 and sy >= 1.0:
        return geom
    return shapely.affinity.scale(geom, 0.999 * sx, 0.999 * sy, origin=c)


# Region size (typical diameter in um) per lesion class, and its share of the lesion area.
_LESION_SPEC: dict[int, tuple[float, float]] = {
    BENIGN: (220.0, 0.30),
    INSITU: (170.0, 0.30),
    INVASIVE: (300.0, 0.40),
}


def _lesion_shape(rng: np.random.Generator, label: int, cx: float, cy: float, area: float) -> BaseGeometry:
    r = math.sqrt(area / math.pi)
    if label == BENIGN:  # lobulated, smooth
        shape = _radial_shape(rng, cx, cy, r, r * rng.uniform(0.75, 1.0), [(2, 0.12), (3, 0.1), (4, 0.06), (5, 0.04)])
    elif label == INSITU:  # one duct or a few merged ducts
        n_ducts = int(rng.integers(1, 4))
        ducts = []
        for i in range(n_ducts):
            rr = r * (rng.uniform(0.7, 1.0) if i == 0 else rng.uniform(0.45, 0.8))
            ang = rng.uniform(0, 2 * np.pi)
            dist = 0.0 if i == 0 else 0.75 * (r + rr)
            ducts.append(
                _radial_shape(
                    rng,
                    cx + dist * math.cos(ang),
                    cy + dist * math.sin(ang),
                    rr,
                    rr * rng.uniform(0.8, 1.0),
                    [(2, 0.05), (3, 0.03), (5, 0.015)],
                    n_vertices=128,
                )
            )
        shape = shapely.union_all(ducts)
    else:  # infiltrative: a core with irregular lobes reaching out, and a ragged edge
        ragged = [(2, 0.12), (3, 0.1), (5, 0.07), (7, 0.05), (11, 0.03), (17, 0.025), (29, 0.015), (43, 0.01)]
        parts = [_radial_shape(rng, cx, cy, 0.7 * r, 0.7 * r * rng.uniform(0.7, 1.0), ragged, n_vertices=384)]
        for _ in range(int(rng.integers(3, 7))):
            ang, dist, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 0.85) * r, rng.uniform(0.22, 0.45) * r
            parts.append(
                _radial_shape(
                    rng,
                    cx + dist * math.cos(ang),
                    cy + dist * math.sin(ang),
                    rr,
                    rr * rng.uniform(0.5, 1.0),
                    ragged,
                    n_vertices=192,
                )
            )
        shape = shapely.union_all(parts)
    shape = _largest_polygon(shape.buffer(0))
    return _scaled_to_area(shape, area)


def _place_lesions(
    rng: np.random.Generator, tissue: BaseGeometry, lesion_fraction: float
) -> list[tuple[int, BaseGeometry]]:
    """Lesion regions covering about ``lesion_fraction`` of the tissue, in several regions per class."""
    total = lesion_fraction * tissue.area
    if total <= 0:
        return []
    shares = {lab: spec[1] * rng.uniform(0.85, 1.15) for lab, spec in _LESION_SPEC.items()}
    share_sum = sum(shares.values())
    inner = tissue.buffer(-40.0)
    placed: list[tuple[int, BaseGeometry]] = []
    todo: list[tuple[int, float]] = []
    for label, (diameter_um, _) in _LESION_SPEC.items():
        class_area = total * shares[label] / share_sum
        typical = math.pi / 4 * (diameter_um / MPP) ** 2
        count = max(1, round(class_area / typical))
        weights = rng.lognormal(0.0, 0.35, count)
        todo += [(label, class_area * wt / weights.sum()) for wt in weights]
    todo.sort(key=lambda t: -t[1])
    minx, miny, maxx, maxy = tissue.bounds
    occupied: list[BaseGeometry] = []
    for label, area in todo:
        for attempt in range(100):
            a = area * (0.8 ** (attempt // 10))  # shrink a region that finds no room
            r = math.sqrt(a / math.pi)
            core = inner.buffer(-1.3 * r)
            if core.is_empty:
                continue
            cx, cy = _random_point_in(rng, core)
            shape = _lesion_shape(rng, label, cx, cy, a)
            gap = shape.buffer(max(60.0, 0.25 * r))
            if any(gap.intersects(o) for o in occupied):
                continue
            shape = _rounded(_largest_polygon(shape.intersection(inner)))
            if shape.is_empty:
                continue
            occupied.append(shape)
            placed.append((label, shape))
            break
    return placed


def _random_point_in(rng: np.random.Generator, geom: BaseGeometry) -> tuple[float, float]:
    minx, miny, maxx, maxy = geom.bounds
    shapely.prepare(geom)
    for _ in range(200):
        xs = rng.uniform(minx, maxx, 64)
        ys = rng.uniform(miny, maxy, 64)
        inside = np.flatnonzero(shapely.contains_xy(geom, xs, ys))
        if inside.size:
            return float(xs[inside[0]]), float(ys[inside[0]])
    c = geom.representative_point()
    return float(c.x), float(c.y)


_GLAND_MIN_PX = 46.0  # smallest gland radius: a wall of ~35 px around a visible lumen


def _glands(rng: np.random.Generator, region: BaseGeometry, first_index: int) -> list[_Gland]:
    """Regular round glands packed inside a benign region (dart throwing)."""
    shapely.prepare(region)
    boundary = region.boundary
    minx, miny, maxx, maxy = region.bounds
    glands: list[_Gland] = []
    centres = np.empty((0, 2))
    radii = np.empty(0)
    tries = int(region.area / (math.pi * 70**2) * 60) + 200
    xs = rng.uniform(minx, maxx, tries)
    ys = rng.uniform(miny, maxy, tries)
    outer = rng.uniform(55.0, 115.0, tries)
    gaps = rng.uniform(10.0, 24.0, tries)
    room = shapely.distance(shapely.points(xs, ys), boundary)
    inside = shapely.contains_xy(region, xs, ys)
    for i in range(tries):
        if not inside[i]:
            continue
        r = min(outer[i], room[i] - 8.0)  # shrink a gland to the room it has
        if len(radii):
            d = np.hypot(centres[:, 0] - xs[i], centres[:, 1] - ys[i])
            r = min(r, float(np.min(d - radii)) - gaps[i])
        if r < _GLAND_MIN_PX:
            continue
        nucleus = rng.uniform(10.0, 11.5)
        minor = r * rng.uniform(0.8, 1.0)
        glands.append(
            _Gland(
                float(xs[i]),
                float(ys[i]),
                float(r),
                float(minor),
                float(rng.uniform(0, np.pi)),
                wall_px=float(min(2.5 * nucleus + 8, 0.68 * minor)),
                nucleus_px=float(nucleus),
                index=first_index + len(glands),
            )
        )
        centres = np.vstack([centres, [xs[i], ys[i]]])
        radii = np.append(radii, r)
    return glands


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float, n: int = 48) -> BaseGeometry:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ex, ey = a * np.cos(t), b * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return shapely.Polygon(np.column_stack([cx + ex * ca - ey * sa, cy + ex * sa + ey * ca]))


def _pen_strokes(
    rng: np.random.Generator, width: int, height: int, tissue: BaseGeometry, lesions: BaseGeometry
) -> list[tuple[int, BaseGeometry]]:
    """1-3 wandering ink strokes that follow the tissue edge (at most 60% over tissue), never touching a lesion."""
    n = int(rng.integers(1, 4))
    frame = shapely.box(0, 0, width, height)
    keep_out = lesions.buffer(min(100.0, 0.04 * min(width, height))) if not lesions.is_empty else shapely.Polygon()
    edge = tissue.boundary
    strokes: list[tuple[int, BaseGeometry]] = []
    for _ in range(n):
        for _attempt in range(40):
            w_px = min(rng.uniform(40.0, 150.0) / MPP, min(width, height) / 12)
            at = rng.uniform(0, edge.length)
            start, ahead = edge.interpolate(at), edge.interpolate(min(at + 20.0, edge.length))
            length = rng.uniform(0.15, 0.35) * max(width, height)
            steps = 40
            tangent = math.atan2(ahead.y - start.y, ahead.x - start.x)
            heading = tangent + rng.uniform(-0.5, 0.5) + (np.pi if rng.uniform() < 0.5 else 0.0)
            turn = np.cumsum(rng.normal(0.0, 0.12, steps))
            xs = start.x + np.concatenate([[0], np.cumsum(length / steps * np.cos(heading + turn))])
            ys = start.y + np.concatenate([[0], np.cumsum(length / steps * np.sin(heading + turn))])
            line = shapely.LineString(np.column_stack([xs, ys]))
            stroke = line.buffer(w_px / 2, quad_segs=6).simplify(1.0).intersection(frame)
            stroke = _largest_polygon(stroke)
            if stroke.is_empty or stroke.area < 0.3 * w_px * length or stroke.intersects(keep_out):
                continue
            if stroke.intersection(tissue).area > 0.6 * stroke.area:
                continue
            strokes.append((int(rng.integers(0, len(INKS))), _rounded(stroke)))
            break
    return strokes


def make_layout(width: int, height: int, seed: int, lesion_fraction: float) -> Layout:
    """The seeded layout of a ``width`` x ``height`` px slide: tissue pieces, lesions covering about
    ``lesion_fraction`` of the tissue, their glands and ducts, and pen strokes."""
    rng = np.random.default_rng([seed, 0x5EED])
    tissue = _tissue(rng, width, height)
    tissue_union = shapely.union_all(tissue)
    lesions = _place_lesions(rng, tissue_union, lesion_fraction)
    glands: list[_Gland] = []
    structures: list[tuple[int, BaseGeometry]] = []
    duct_parts: list[tuple[int, BaseGeometry]] = []
    for label, region in lesions:
        if label == BENIGN:
            glands += _glands(rng, region.buffer(-8.0), len(glands))
        elif label == INSITU:
            cleft = rng.uniform(4.0, 7.0)
            band = cleft + rng.uniform(14.0, 20.0)
            duct_parts.append((S_BAND, region.buffer(-cleft)))
            core = region.buffer(-band)
            duct_parts.append((S_CORE, core))
            inradius = _inradius(region)
            if inradius > 260 and rng.uniform() < 0.6:
                duct_parts.append((S_NECROSIS, region.buffer(-rng.uniform(0.5, 0.7) * inradius)))
    for g in glands:
        structures.append((S_GLAND, _ellipse(g.cx, g.cy, g.a_px, g.b_px, g.angle)))
    for g in glands:
        structures.append((S_LUMEN, _ellipse(g.cx, g.cy, g.a_px - g.wall_px, g.b_px - g.wall_px, g.angle)))
    structures += duct_parts
    structures = [(lab, _rounded(geom)) for lab, geom in structures]
    structures = [(lab, geom) for lab, geom in structures if not geom.is_empty]
    lesion_union = shapely.union_all([g for _, g in lesions]) if lesions else shapely.Polygon()
    pens = _pen_strokes(rng, width, height, tissue_union, lesion_union)
    return Layout(width, height, tissue, lesions, pens, glands, structures, float(rng.uniform(0, np.pi)))


def _inradius(poly: BaseGeometry) -> float:
    """Radius of the largest inscribed circle (approximate, 2 px tolerance)."""
    circle = shapely.maximum_inscribed_circle(poly, 2.0)
    return float(circle.length)
