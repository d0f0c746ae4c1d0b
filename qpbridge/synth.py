"""Synthetic H&E-like whole-slide images with known ground truth.

:func:`write_synthetic_slide` writes a pyramidal, JPEG-tiled TIFF that OpenSlide opens as an Aperio
slide (0.25 um/px, 40x), plus its ground truth beside it:

- ``<stem>.truth.geojson``: QuPath annotations in level-0 pixels: "Tissue" outlines, "Pen mark" strokes
  and one annotation per lesion region ("Benign", "In situ carcinoma", "Invasive carcinoma"). "Normal" has
  no feature of its own: it is tissue minus lesions.
- ``<stem>.truth.meta.json``: a ``synth`` record (seed, stain, size, um/px, class areas in um^2, measured
  lesion fraction).
- ``<stem>.nuclei.geojson`` (``nuclei=True`` only): every nucleus whose centre lies in the slide, as a
  "detection" ellipse classified by the region it lies in.

How it works
------------
The layout (tissue pieces, lesion regions, glands, ducts, pen strokes) is drawn once with shapely, in
level-0 pixels, and rounded to 0.01 px: the geometries written to the truth file are the ones the
renderer rasterizes (``rasterio.features.rasterize``, pixel-corner convention, ``all_touched=False``),
so truth and pixels agree exactly. Level 0 is rendered block by block (one tile row high, a few tiles
wide) from optical densities of hematoxylin and eosin (Beer-Lambert), with textures that depend on the
absolute pixel position only (hashed value noise; nuclei generated per fixed grid cell from
``(seed, kind, cell_x, cell_y)``), so tiles join without seams and a seed always gives the same slide.
Each rendered block is box-averaged into the next pyramid level on the fly; lower levels are kept in
temporary raw files (plain reads and writes, no memory map) and written after level 0. Memory is bounded
by a block and a tile row, not by the slide.

Example
-------
>>> from qpbridge.synth import write_synthetic_slide
>>> result = write_synthetic_slide("/tmp/demo.svs", width_px=4096, height_px=3072, seed=1,
...                                overwrite=True)  # doctest: +SKIP
>>> result.level_count, result.truth_path.name  # doctest: +SKIP
(3, 'demo.truth.geojson')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from qpbridge.atomic import atomic_write_bytes, commit, temporary_path
from qpbridge.classes import DEEPBATCH_CLASSES, PEN_CLASS, TISSUE_CLASS
from qpbridge.errors import InputError, OutputError

__all__ = [
    "MPP",
    "OBJECTIVE_POWER",
    "STAIN_NAMES",
    "SynthResult",
    "level_dimensions_for",
    "synth_paths",
    "write_synthetic_slide",
]

#: Pixel size of level 0 of every synthetic slide, in um/px.
MPP = 0.25
#: Objective magnification written to the slide (``AppMag``).
OBJECTIVE_POWER = 40
#: Minimum width and height of a synthetic slide, in pixels.
MIN_SIDE_PX = 512

_F32 = NDArray[np.float32]
_U8 = NDArray[np.uint8]

_BLOCK_TILES = 8  # level-0 blocks are one tile row high and this many tiles wide
_MARGIN_PX = 64  # label rasters extend this far around a block: nuclei centred there reach into it
_STOP_SIDE_PX = 2000  # add pyramid levels until the smallest side is below this
_APERIO_HEADER = "Aperio Image Library v12.0.15"
# Reduced levels are small (1/16 of level 0 and less) and every pixel is busy: keep their chroma whole and
# their quality high, so that they stay within a few grey levels of a box-downsampled level-0 read.
_LOWER_LEVEL_MIN_QUALITY = 92

# Region labels in the label raster (not the DeepBatch label indices).
_BG, _NORMAL, _BENIGN, _INSITU, _INVASIVE = 0, 1, 2, 3, 4
_LESION_NAMES = {_BENIGN: "Benign", _INSITU: "In situ carcinoma", _INVASIVE: "Invasive carcinoma"}
_CLASS_COLOR = {c.name: c.color for c in DEEPBATCH_CLASSES}

# Structure labels (inside lesions).
_S_NONE, _S_GLAND, _S_LUMEN, _S_BAND, _S_CORE, _S_NECROSIS = 0, 1, 2, 3, 4, 5


# ----------------------------------------------------------------------------------------------- stains
@dataclass(frozen=True)
class _Stain:
    """Optical density (natural log) per unit of stain, per R, G, B channel, and stain strengths."""

    hema_od: tuple[float, float, float]
    eosin_od: tuple[float, float, float]
    hema_scale: float
    eosin_scale: float
    glass_od: tuple[float, float, float]


_STAINS: dict[str, _Stain] = {
    # Pink stroma, blue-purple nuclei: a typical, well-balanced H&E.
    "standard": _Stain((0.90, 1.05, 0.52), (0.06, 0.62, 0.27), 1.0, 1.0, (0.045, 0.052, 0.040)),
    # Old or under-stained section: weak, greyish hematoxylin and pale orange-pink eosin.
    "faded": _Stain((0.62, 0.66, 0.48), (0.04, 0.38, 0.34), 0.6, 0.6, (0.06, 0.055, 0.07)),
    # Over-stained section: dense purple hematoxylin and deep magenta eosin.
    "dark": _Stain((1.00, 1.25, 0.60), (0.16, 0.80, 0.30), 1.35, 1.3, (0.05, 0.06, 0.05)),
}

#: Stain names accepted by :func:`write_synthetic_slide`.
STAIN_NAMES: tuple[str, ...] = tuple(_STAINS)

# Pen inks: optical density per R, G, B (black, blue, green).
_INKS: dict[str, tuple[float, float, float]] = {
    "black": (1.55, 1.50, 1.40),
    "blue": (1.70, 0.95, 0.22),
    "green": (1.30, 0.30, 1.05),
}
_INK_NAMES = tuple(_INKS)


# ------------------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class SynthResult:
    """What :func:`write_synthetic_slide` wrote.

    Areas are in um^2 at :data:`MPP`; ``class_areas_um2`` has one entry per DeepBatch class
    ("Normal" = tissue minus lesions).
    """

    slide_path: Path
    truth_path: Path
    meta_path: Path
    nuclei_path: Path | None
    width_px: int
    height_px: int
    mpp: float
    seed: int
    stain: str
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    tissue_area_um2: float
    class_areas_um2: dict[str, float]
    lesion_fraction: float
    lesion_counts: dict[str, int] = field(default_factory=dict)
    pen_strokes: int = 0
    nuclei_count: int | None = None


def synth_paths(slide_path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The truth, truth-meta and nuclei paths that go with a synthetic slide.

    Examples
    --------
    >>> [p.name for p in synth_paths("data/slide.svs")]
    ['slide.truth.geojson', 'slide.truth.meta.json', 'slide.nuclei.geojson']
    """
    path = Path(slide_path)
    stem = path.with_suffix("")
    return (
        stem.with_name(stem.name + ".truth.geojson"),
        stem.with_name(stem.name + ".truth.meta.json"),
        stem.with_name(stem.name + ".nuclei.geojson"),
    )


def level_dimensions_for(width_px: int, height_px: int) -> tuple[tuple[int, int], ...]:
    """Pyramid level sizes: downsample 4 per level (floor), until the smallest side is below 2000 px.

    There are always at least 3 levels.

    Examples
    --------
    >>> level_dimensions_for(12000, 9000)
    ((12000, 9000), (3000, 2250), (750, 562))
    >>> level_dimensions_for(100000, 80000)[-1]
    (1562, 1250)
    """
    dims = [(width_px, height_px)]
    while len(dims) < 3 or min(dims[-1]) >= _STOP_SIDE_PX:
        w, h = dims[-1]
        if min(w, h) < 4:
            break
        dims.append((w // 4, h // 4))
    return tuple(dims)


# ---------------------------------------------------------------------------------------------- hashing
_M64 = (1 << 64) - 1


def _key(seed: int, *parts: int | str) -> int:
    """A 63-bit key derived from the seed and a field name: stable across runs and platforms."""
    text = ":".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _mix(h: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Finalizer of MurmurHash3 (64-bit): spreads every input bit over the output."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _hash2(key: int, ix: NDArray[Any], iy: NDArray[Any]) -> NDArray[np.uint64]:
    """A 64-bit hash of integer lattice coordinates (broadcast)."""
    with np.errstate(over="ignore"):
        hx = np.asarray(ix).astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        hy = np.asarray(iy).astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        return _mix(hx ^ hy ^ np.uint64(key))


def _unit(h: NDArray[np.uint64], salt: int = 0) -> _F32:
    """Uniform floats in [0, 1) from hashes; ``salt`` gives independent draws from the same hash."""
    with np.errstate(over="ignore"):
        if salt:
            h = _mix(h + np.uint64((salt * 0x632BE59BD9B4E019) & _M64))
        return ((h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))).astype(np.float32)


def _smooth(t: NDArray[Any]) -> NDArray[Any]:
    return t * t * (3.0 - 2.0 * t)


def _noise_grid(key: int, x0: int, y0: int, h: int, w: int, scale: float) -> _F32:
    """Value noise in [0, 1] over the pixels [x0, x0+w) x [y0, y0+h), feature size ``scale`` px.

    The noise is a function of the absolute pixel position only, so any window of it matches
    :func:`_noise_points` and every other window.
    """
    xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) / scale
    ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) / scale
    ix = np.floor(xs).astype(np.int64)
    iy = np.floor(ys).astype(np.int64)
    tx = _smooth(xs - ix).astype(np.float32)
    ty = _smooth(ys - iy).astype(np.float32)
    gx = np.arange(ix[0], ix[-1] + 2)
    gy = np.arange(iy[0], iy[-1] + 2)
    lattice = _unit(_hash2(key, gx[None, :], gy[:, None]))
    ry = iy - gy[0]
    top = lattice[ry]
    rows = top + (lattice[ry + 1] - top) * ty[:, None]
    rx = ix - gx[0]
    left = rows[:, rx]
    out: _F32 = left + (rows[:, rx + 1] - left) * tx[None, :]
    return out


def _noise_points(key: int, x: NDArray[Any], y: NDArray[Any], scale: float) -> _F32:
    """The value noise of :func:`_noise_grid` at arbitrary positions (level-0 pixel coordinates)."""
    xs = np.asarray(x, dtype=np.float64) / scale
    ys = np.asarray(y, dtype=np.float64) / scale
    ix = np.floor(xs).astype(np.int64)
    iy = np.floor(ys).astype(np.int64)
    tx = _smooth(xs - ix).astype(np.float32)
    ty = _smooth(ys - iy).astype(np.float32)
    v00 = _unit(_hash2(key, ix, iy))
    v10 = _unit(_hash2(key, ix + 1, iy))
    v01 = _unit(_hash2(key, ix, iy + 1))
    v11 = _unit(_hash2(key, ix + 1, iy + 1))
    top = v00 + (v10 - v00) * tx
    bottom = v01 + (v11 - v01) * tx
    out: _F32 = (top + (bottom - top) * ty).astype(np.float32)
    return out


def _fbm_grid(key: int, x0: int, y0: int, h: int, w: int, scales: Sequence[float]) -> _F32:
    """Sum of value-noise octaves (weights halving), normalised to [0, 1]."""
    total = np.zeros((h, w), np.float32)
    weight_sum = 0.0
    for i, scale in enumerate(scales):
        weight = 0.5**i
        total += np.float32(weight) * _noise_grid(key + i, x0, y0, h, w, scale)
        weight_sum += weight
    total *= np.float32(1.0 / weight_sum)
    return total


def _fbm_points(key: int, x: NDArray[Any], y: NDArray[Any], scales: Sequence[float]) -> _F32:
    total = np.zeros(np.shape(x), np.float32)
    weight_sum = 0.0
    for i, scale in enumerate(scales):
        weight = 0.5**i
        total += np.float32(weight) * _noise_points(key + i, x, y, scale)
        weight_sum += weight
    return (total * np.float32(1.0 / weight_sum)).astype(np.float32)


def _blur3(a: NDArray[np.float32]) -> NDArray[np.float32]:
    """3x3 binomial blur of the first two axes, dropping the one-pixel border."""
    rows = a[:-2] + a[2:]
    rows *= np.float32(0.25)
    rows += np.float32(0.5) * a[1:-1]
    out = rows[:, :-2] + rows[:, 2:]
    out *= np.float32(0.25)
    out += np.float32(0.5) * rows[:, 1:-1]
    return out


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
class _Layout:
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
    _BENIGN: (220.0, 0.30),
    _INSITU: (170.0, 0.30),
    _INVASIVE: (300.0, 0.40),
}


def _lesion_shape(rng: np.random.Generator, label: int, cx: float, cy: float, area: float) -> BaseGeometry:
    r = math.sqrt(area / math.pi)
    if label == _BENIGN:  # lobulated, smooth
        shape = _radial_shape(rng, cx, cy, r, r * rng.uniform(0.75, 1.0), [(2, 0.12), (3, 0.1), (4, 0.06), (5, 0.04)])
    elif label == _INSITU:  # one duct or a few merged ducts
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
            strokes.append((int(rng.integers(0, len(_INKS))), _rounded(stroke)))
            break
    return strokes


def _make_layout(width: int, height: int, seed: int, lesion_fraction: float) -> _Layout:
    rng = np.random.default_rng([seed, 0x5EED])
    tissue = _tissue(rng, width, height)
    tissue_union = shapely.union_all(tissue)
    lesions = _place_lesions(rng, tissue_union, lesion_fraction)
    glands: list[_Gland] = []
    structures: list[tuple[int, BaseGeometry]] = []
    duct_parts: list[tuple[int, BaseGeometry]] = []
    for label, region in lesions:
        if label == _BENIGN:
            glands += _glands(rng, region.buffer(-8.0), len(glands))
        elif label == _INSITU:
            cleft = rng.uniform(4.0, 7.0)
            band = cleft + rng.uniform(14.0, 20.0)
            duct_parts.append((_S_BAND, region.buffer(-cleft)))
            core = region.buffer(-band)
            duct_parts.append((_S_CORE, core))
            inradius = _inradius(region)
            if inradius > 260 and rng.uniform() < 0.6:
                duct_parts.append((_S_NECROSIS, region.buffer(-rng.uniform(0.5, 0.7) * inradius)))
    for g in glands:
        structures.append((_S_GLAND, _ellipse(g.cx, g.cy, g.a_px, g.b_px, g.angle)))
    for g in glands:
        structures.append((_S_LUMEN, _ellipse(g.cx, g.cy, g.a_px - g.wall_px, g.b_px - g.wall_px, g.angle)))
    structures += duct_parts
    structures = [(lab, _rounded(geom)) for lab, geom in structures]
    structures = [(lab, geom) for lab, geom in structures if not geom.is_empty]
    lesion_union = shapely.union_all([g for _, g in lesions]) if lesions else shapely.Polygon()
    pens = _pen_strokes(rng, width, height, tissue_union, lesion_union)
    return _Layout(width, height, tissue, lesions, pens, glands, structures, float(rng.uniform(0, np.pi)))


def _inradius(poly: BaseGeometry) -> float:
    """Radius of the largest inscribed circle (approximate, 2 px tolerance)."""
    circle = shapely.maximum_inscribed_circle(poly, 2.0)
    return float(circle.length)


# -------------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class _NucleusKind:
    """How one kind of nucleus looks; sizes are semi-axes in level-0 px."""

    name: str
    spacing_px: float  # one candidate per grid cell of this size
    radius_px: tuple[float, float]  # log-normal: median, sigma
    aspect: tuple[float, float]  # minor/major axis ratio range
    intensity: tuple[float, float]
    vesicular: float  # paler centre, darker rim
    nucleolus: float  # probability of a visible nucleolus
    irregular: float  # contour irregularity
    half_px: int  # splat half-size


_KINDS: dict[str, _NucleusKind] = {
    "fibro": _NucleusKind("fibro", 64.0, (21.0, 0.18), (0.17, 0.3), (1.05, 1.45), 0.0, 0.0, 0.05, 34),
    "lympho": _NucleusKind("lympho", 64.0, (9.0, 0.08), (0.85, 1.0), (1.55, 1.95), 0.0, 0.0, 0.05, 13),
    "dcis": _NucleusKind("dcis", 44.0, (17.5, 0.16), (0.65, 0.95), (0.95, 1.45), 0.45, 0.6, 0.09, 36),
    "tumour": _NucleusKind("tumour", 42.0, (16.5, 0.2), (0.55, 0.95), (1.0, 1.6), 0.35, 0.5, 0.14, 38),
    "epi": _NucleusKind("epi", 0.0, (10.7, 0.04), (0.72, 0.86), (1.05, 1.25), 0.12, 0.0, 0.03, 16),
    "myo": _NucleusKind("myo", 0.0, (11.0, 0.1), (0.3, 0.45), (1.1, 1.4), 0.0, 0.0, 0.03, 16),
}

# Base concentrations of eosin and hematoxylin, and how much fibre texture shows, per (region, structure).
_LUT_SIZE = 8
_NEST_LEVEL = 0.56  # invasive tumour cells where the nest noise exceeds this
_FIBRE_PERIOD_PX = 34.0  # mean width of a collagen bundle
_FIBRE_WARP = 4.5  # bundles the local warp noise bends the fibres by
_SWIRL = 40.0  # bundles the slow swirl noise bends the fibres by (turns them across the slide)
_SWIRL_PX = 2400.0
_BASE_E = np.zeros(5 * _LUT_SIZE, np.float32)
_BASE_H = np.zeros(5 * _LUT_SIZE, np.float32)
_FIBRE = np.zeros(5 * _LUT_SIZE, np.float32)


def _set_lut(region: int, struct: int, eosin: float, hema: float, fibre: float) -> None:
    i = region * _LUT_SIZE + struct
    _BASE_E[i], _BASE_H[i], _FIBRE[i] = eosin, hema, fibre


_set_lut(_NORMAL, _S_NONE, 0.85, 0.03, 0.75)
_set_lut(_BENIGN, _S_NONE, 0.66, 0.05, 0.55)
_set_lut(_BENIGN, _S_GLAND, 0.72, 0.13, 0.0)
_set_lut(_BENIGN, _S_LUMEN, 0.03, 0.0, 0.0)
_set_lut(_INSITU, _S_NONE, 0.07, 0.01, 0.0)  # retraction cleft around the duct
_set_lut(_INSITU, _S_BAND, 1.05, 0.08, 0.15)  # basement membrane / myoepithelial rim
_set_lut(_INSITU, _S_CORE, 0.58, 0.2, 0.0)
_set_lut(_INSITU, _S_NECROSIS, 0.95, 0.2, 0.0)
_set_lut(_INVASIVE, _S_NONE, 1.45, 0.07, 0.5)


@dataclass
class _Renderer:
    """Renders level-0 blocks of one slide from its layout."""

    layout: _Layout
    seed: int
    stain: _Stain
    hema_od: _F32
    eosin_od: _F32
    glass_od: _F32
    tree: Any
    geoms: list[dict[str, Any]]
    geom_kind: NDArray[np.int8]  # 0 region, 1 structure, 2 pen
    geom_value: NDArray[np.int16]
    grain: _F32  # 512 x 512 x 3 sensor noise, tiled by absolute position
    gland_boxes: NDArray[np.float64]  # (n, 4) x0, y0, x1, y1 of every gland, with room for its nuclei
    collect_nuclei: bool = False
    nuclei_out: list[NDArray[np.float32]] = field(default_factory=list)

    @classmethod
    def create(cls, layout: _Layout, seed: int, stain_name: str, collect_nuclei: bool = False) -> _Renderer:
        stain = _STAINS[stain_name]
        rng = np.random.default_rng([seed, 0x57A1])
        hema = np.asarray(stain.hema_od, np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
        eosin = np.asarray(stain.eosin_od, np.float32) * rng.uniform(0.88, 1.12, 3).astype(np.float32)
        hema *= np.float32(stain.hema_scale * rng.uniform(0.9, 1.1))
        eosin *= np.float32(stain.eosin_scale * rng.uniform(0.9, 1.1))
        glass = np.asarray(stain.glass_od, np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
        items: list[tuple[int, int, BaseGeometry]] = [(0, _NORMAL, g) for g in layout.tissue]
        items += [(0, lab, g) for lab, g in layout.lesions]
        items += [(1, lab, g) for lab, g in layout.structures]
        items += [(2, ink + 1, g) for ink, g in layout.pens]
        shapes = [g for _, _, g in items]
        grain = rng.normal(0.0, 1.6, (512, 512, 1)).astype(np.float32) + rng.normal(0.0, 0.6, (512, 512, 3)).astype(
            np.float32
        )
        return cls(
            layout=layout,
            seed=seed,
            stain=stain,
            hema_od=hema,
            eosin_od=eosin,
            glass_od=glass,
            tree=shapely.STRtree(shapes) if shapes else None,
            geoms=[mapping(g) for g in shapes],
            geom_kind=np.array([k for k, _, _ in items], np.int8),
            geom_value=np.array([v for _, v, _ in items], np.int16),
            grain=grain,
            gland_boxes=np.array(
                [
                    (g.cx - g.a_px - 20, g.cy - g.a_px - 20, g.cx + g.a_px + 20, g.cy + g.a_px + 20)
                    for g in layout.glands
                ],
                np.float64,
            ).reshape(-1, 4),
            collect_nuclei=collect_nuclei,
        )

    # -- rasters ---------------------------------------------------------------------------------
    def _rasters(self, x0: int, y0: int, w: int, h: int) -> tuple[_U8, _U8, _U8]:
        """Region, structure and pen labels for the window [x0, x0+w) x [y0, y0+h)."""
        region = np.zeros((h, w), np.uint8)
        struct = np.zeros((h, w), np.uint8)
        pen = np.zeros((h, w), np.uint8)
        if self.tree is None:
            return region, struct, pen
        idx = np.sort(self.tree.query(shapely.box(x0, y0, x0 + w, y0 + h)))
        transform = Affine(1.0, 0.0, float(x0), 0.0, 1.0, float(y0))
        for kind, out in ((0, region), (1, struct), (2, pen)):
            sel = idx[self.geom_kind[idx] == kind]
            if sel.size:
                rasterize(
                    [(self.geoms[i], int(self.geom_value[i])) for i in sel],
                    out=out,
                    transform=transform,
                    all_touched=False,
                )
        return region, struct, pen

    # -- fields ----------------------------------------------------------------------------------
    def _warp_grid(self, x0: int, y0: int, h: int, w: int) -> _F32:
        """How far (in bundles) the fibres are pushed: slow swirls plus local waviness."""
        swirl = _noise_grid(_key(self.seed, "swirl"), x0, y0, h, w, _SWIRL_PX)
        wave = _fbm_grid(_key(self.seed, "warp"), x0, y0, h, w, (420.0, 160.0, 60.0))
        return np.float32(_SWIRL) * swirl + np.float32(_FIBRE_WARP) * wave

    def _warp_points(self, x: NDArray[Any], y: NDArray[Any]) -> _F32:
        swirl = _noise_points(_key(self.seed, "swirl"), x, y, _SWIRL_PX)
        wave = _fbm_points(_key(self.seed, "warp"), x, y, (420.0, 160.0, 60.0))
        return (np.float32(_SWIRL) * swirl + np.float32(_FIBRE_WARP) * wave).astype(np.float32)

    def _fibre_angle_points(self, x: _F32, y: _F32) -> _F32:
        """Local direction of the fibres at given points (perpendicular to the gradient of the phase)."""
        ang = self.layout.fibre_angle
        d = 1.5
        gx = (self._warp_points(x + d, y) - self._warp_points(x - d, y)) / (2 * d)
        gy = (self._warp_points(x, y + d) - self._warp_points(x, y - d)) / (2 * d)
        gx = math.cos(ang) / _FIBRE_PERIOD_PX + gx
        gy = math.sin(ang) / _FIBRE_PERIOD_PX + gy
        return (np.arctan2(gy, gx) + np.pi / 2).astype(np.float32)

    @staticmethod
    def _tumour(nest: _F32, cord: _F32, patch: _F32) -> _F32:
        """Invasive tumour cells (0..1): nests where ``nest`` is high, single-file cords along a level
        set of ``cord`` where ``patch`` allows them."""
        nests = np.clip((nest - _NEST_LEVEL) * 30.0, 0.0, 1.0)
        cords = np.clip((0.1 - np.abs(cord - 0.5)) * 40.0, 0.0, 1.0) * (patch > 0.55)
        return np.maximum(nests, cords).astype(np.float32)

    def _invasion_points(self, x: NDArray[Any], y: NDArray[Any]) -> tuple[_F32, _F32]:
        """(nest noise, tumour cells) at points: the same functions as :meth:`_invasion_grid`."""
        nest = _fbm_points(_key(self.seed, "nest"), x, y, (150.0, 60.0))
        cord = _noise_points(_key(self.seed, "cord"), x, y, 170.0)
        patch = _noise_points(_key(self.seed, "cord-patch"), x, y, 500.0)
        return nest, self._tumour(nest, cord, patch)

    def _invasion_grid(self, x0: int, y0: int, h: int, w: int) -> tuple[_F32, _F32]:
        nest = _fbm_grid(_key(self.seed, "nest"), x0, y0, h, w, (150.0, 60.0))
        cord = _noise_grid(_key(self.seed, "cord"), x0, y0, h, w, 170.0)
        patch = _noise_grid(_key(self.seed, "cord-patch"), x0, y0, h, w, 500.0)
        return nest, self._tumour(nest, cord, patch)

    # -- nuclei ----------------------------------------------------------------------------------
    def _grid_candidates(
        self, kind: _NucleusKind, x0: int, y0: int, w: int, h: int
    ) -> tuple[_F32, _F32, NDArray[np.uint64]]:
        """Candidate centres of one kind: one per grid cell, jittered, seeded by (seed, kind, cell)."""
        s = kind.spacing_px
        i = np.arange(math.floor(x0 / s), math.floor((x0 + w) / s) + 1)
        j = np.arange(math.floor(y0 / s), math.floor((y0 + h) / s) + 1)
        hashes = _hash2(_key(self.seed, "nuclei", kind.name), i[None, :], j[:, None]).ravel()
        ii = np.broadcast_to(i[None, :], (j.size, i.size)).ravel()
        jj = np.broadcast_to(j[:, None], (j.size, i.size)).ravel()
        cx = ((ii + 0.5 + 0.8 * (_unit(hashes, 1) - 0.5)) * s).astype(np.float32)
        cy = ((jj + 0.5 + 0.8 * (_unit(hashes, 2) - 0.5)) * s).astype(np.float32)
        inside = (cx >= x0) & (cx < x0 + w) & (cy >= y0) & (cy < y0 + h)
        return cx[inside], cy[inside], hashes[inside]

    def _nuclei(
        self, region: _U8, struct: _U8, ox: int, oy: int, x0: int, y0: int, w: int, h: int
    ) -> list[tuple[_NucleusKind, dict[str, NDArray[Any]]]]:
        """Nuclei that can reach the block [x0, x0+w) x [y0, y0+h); ``region``/``struct`` start at (ox, oy)."""
        mx0, my0 = x0 - _MARGIN_PX, y0 - _MARGIN_PX
        mw, mh = w + 2 * _MARGIN_PX, h + 2 * _MARGIN_PX
        present = np.bincount(region.ravel(), minlength=5) > 0
        out: list[tuple[_NucleusKind, dict[str, NDArray[Any]]]] = []

        def lookup(cx: _F32, cy: _F32) -> tuple[_U8, _U8]:
            c = np.clip(np.floor(cx).astype(np.int64) - ox, 0, region.shape[1] - 1)
            r = np.clip(np.floor(cy).astype(np.int64) - oy, 0, region.shape[0] - 1)
            return region[r, c], struct[r, c]

        for name in ("fibro", "lympho", "dcis", "tumour"):
            kind = _KINDS[name]
            if name == "dcis" and not present[_INSITU]:
                continue
            if name == "tumour" and not present[_INVASIVE]:
                continue
            if name in ("fibro", "lympho") and not present[1:].any():
                continue
            cx, cy, hashes = self._grid_candidates(kind, mx0, my0, mw, mh)
            reg, st = lookup(cx, cy)
            p = np.zeros(cx.shape, np.float32)
            if name in ("fibro", "lympho"):
                stroma = st == _S_NONE
                if name == "fibro":
                    table = np.array([0, 0.33, 0.3, 0.0, 0.55], np.float32)
                else:
                    table = np.array([0, 0.04, 0.06, 0.0, 0.22], np.float32)
                p = np.where(stroma, table[reg], 0).astype(np.float32)
                if present[_INVASIVE] and np.any(reg == _INVASIVE):
                    inv = reg == _INVASIVE
                    nest, tumour = self._invasion_points(cx[inv], cy[inv])
                    p[inv] = np.where((nest > _NEST_LEVEL - 0.04) | (tumour > 0), 0.0, p[inv])
            elif name == "dcis":
                p = np.where((reg == _INSITU) & (st == _S_CORE), 0.93, 0).astype(np.float32)
            else:
                inv = reg == _INVASIVE
                nest, tumour = self._invasion_points(cx, cy)
                single = (nest < _NEST_LEVEL - 0.04) & (tumour == 0)  # scattered single tumour cells
                p = np.where(inv & (tumour > 0.5), 0.9, np.where(inv & single, 0.05, 0)).astype(np.float32)
            keep = _unit(hashes, 3) < p
            if not keep.any():
                continue
            cx, cy, hashes = cx[keep], cy[keep], hashes[keep]
            params = self._kind_params(kind, cx, cy, hashes)
            if name == "fibro":
                params["angle"] = self._fibre_angle_points(cx, cy) + (_unit(hashes, 9) - 0.5) * 0.4
            out.append((kind, params))
        glands = self._gland_nuclei(mx0, my0, mw, mh)
        out += glands
        return out

    def _kind_params(
        self, kind: _NucleusKind, cx: _F32, cy: _F32, hashes: NDArray[np.uint64]
    ) -> dict[str, NDArray[Any]]:
        n = cx.size
        u = [_unit(hashes, 10 + k) for k in range(9)]
        gauss = np.sqrt(-2.0 * np.log(np.maximum(u[0], 1e-7))) * np.cos(2 * np.pi * u[1])
        major = (kind.radius_px[0] * np.exp(kind.radius_px[1] * gauss)).astype(np.float32)
        major = np.clip(major, 0.6 * kind.radius_px[0], min(1.6 * kind.radius_px[0], kind.half_px - 3.0))
        aspect = kind.aspect[0] + (kind.aspect[1] - kind.aspect[0]) * u[2]
        return {
            "cx": cx,
            "cy": cy,
            "a": major,
            "b": (major * aspect).astype(np.float32),
            "angle": (u[3] * np.pi).astype(np.float32),
            "intensity": (kind.intensity[0] + (kind.intensity[1] - kind.intensity[0]) * u[4]).astype(np.float32),
            "c2": (kind.irregular * (u[5] - 0.5) * 2).astype(np.float32),
            "s2": (kind.irregular * (u[6] - 0.5) * 2).astype(np.float32),
            "c3": (kind.irregular * (u[7] - 0.5) * 1.4).astype(np.float32),
            "nucleolus": np.where(u[8] < kind.nucleolus, 0.9, 0.0).astype(np.float32) * np.ones(n, np.float32),
        }

    def _gland_nuclei(self, x0: int, y0: int, w: int, h: int) -> list[tuple[_NucleusKind, dict[str, NDArray[Any]]]]:
        """Nuclei lining the glands near the window: one regular layer around the lumen, a sparse outer layer."""
        if self.gland_boxes.size == 0:
            return []
        b = self.gland_boxes
        near = np.flatnonzero((b[:, 2] > x0) & (b[:, 0] < x0 + w) & (b[:, 3] > y0) & (b[:, 1] < y0 + h))
        if near.size == 0:
            return []
        glands = [self.layout.glands[i] for i in near]
        out = []
        for kind_name in ("epi", "myo"):
            kind = _KINDS[kind_name]
            xs, ys, angs, hs = [], [], [], []
            for g in glands:
                if kind_name == "epi":
                    inset = 0.45 * g.wall_px  # basal, near the outer edge of the epithelium
                    ra, rb = g.a_px - inset, g.b_px - inset
                    step = 2.25 * g.nucleus_px
                else:
                    ra, rb = g.a_px - 4.0, g.b_px - 4.0
                    step = 55.0
                perimeter = math.pi * (3 * (ra + rb) - math.sqrt((3 * ra + rb) * (ra + 3 * rb)))
                count = max(3, int(perimeter / step))
                hh = _hash2(_key(self.seed, "gland", kind_name), np.full(count, g.index), np.arange(count))
                t = (np.arange(count) + 0.3 * (_unit(hh, 1) - 0.5)) * (2 * np.pi / count)
                ex, ey = ra * np.cos(t), rb * np.sin(t)
                ca, sa = math.cos(g.angle), math.sin(g.angle)
                xs.append(g.cx + ex * ca - ey * sa)
                ys.append(g.cy + ex * sa + ey * ca)
                radial = np.arctan2(ey * ca + ex * sa, ex * ca - ey * sa)
                angs.append(radial if kind_name == "epi" else radial + np.pi / 2)
                hs.append(hh)
            cx = np.concatenate(xs).astype(np.float32)
            cy = np.concatenate(ys).astype(np.float32)
            hashes = np.concatenate(hs)
            params = self._kind_params(kind, cx, cy, hashes)
            params["angle"] = (np.concatenate(angs) + (_unit(hashes, 9) - 0.5) * 0.3).astype(np.float32)
            out.append((kind, params))
        return out

    @staticmethod
    def _splat(
        acc_h: NDArray[np.float64],
        acc_c: NDArray[np.float64],
        ox: int,
        oy: int,
        kind: _NucleusKind,
        p: dict[str, NDArray[Any]],
    ) -> None:
        """Add the nuclei in ``p`` to the density and coverage accumulators (origin at (ox, oy))."""
        hgt, wid = acc_h.shape
        hp = kind.half_px
        off = np.arange(-hp, hp + 1, dtype=np.float32)
        n_all = p["cx"].size
        chunk = max(1, 600_000 // (2 * hp + 1) ** 2)
        for s in range(0, n_all, chunk):
            q = {k: v[s : s + chunk] for k, v in p.items()}
            px0 = np.floor(q["cx"]).astype(np.int64)
            py0 = np.floor(q["cy"]).astype(np.int64)
            rx = (px0 - q["cx"] + 0.5).astype(np.float32)[:, None] + off[None, :]  # (n, P)
            ry = (py0 - q["cy"] + 0.5).astype(np.float32)[:, None] + off[None, :]
            ct = np.cos(q["angle"]).astype(np.float32)[:, None, None]
            st = np.sin(q["angle"]).astype(np.float32)[:, None, None]
            u = rx[:, None, :] * ct + ry[:, :, None] * st  # (n, P_y, P_x)
            v = ry[:, :, None] * ct - rx[:, None, :] * st
            a = q["a"][:, None, None]
            b = q["b"][:, None, None]
            un = u / a
            vn = v / b
            rho = np.sqrt(un * un + vn * vn) + np.float32(1e-6)
            cphi = un / rho
            sphi = vn / rho
            shape = (
                1.0
                + q["c2"][:, None, None] * (cphi * cphi - sphi * sphi)
                + q["s2"][:, None, None] * (2 * cphi * sphi)
                + q["c3"][:, None, None] * cphi * (4 * cphi * cphi - 3)
            )
            r_eff = rho / shape
            cover = np.clip((1.0 - r_eff) * b * 0.8 + 0.5, 0.0, 1.0)
            ves = np.float32(kind.vesicular)
            profile = q["intensity"][:, None, None] * (1.0 - ves + ves * 1.25 * np.minimum(r_eff, 1.0) ** 2)
            if kind.nucleolus > 0:
                nu, nv = 0.25 * a, -0.15 * b
                spot = np.exp(-((u - nu) ** 2 + (v - nv) ** 2) / np.float32(2 * 2.6**2))
                profile = profile + q["nucleolus"][:, None, None] * spot
            dens = cover * profile
            gx = (px0[:, None] + np.arange(-hp, hp + 1)[None, :]) - ox  # (n, P)
            gy = (py0[:, None] + np.arange(-hp, hp + 1)[None, :]) - oy
            valid = ((gy >= 0) & (gy < hgt))[:, :, None] & ((gx >= 0) & (gx < wid))[:, None, :]
            flat = gy[:, :, None] * wid + gx[:, None, :]
            sel = flat[valid]
            acc_h += np.bincount(sel, weights=dens[valid], minlength=hgt * wid).reshape(hgt, wid)
            acc_c += np.bincount(sel, weights=cover[valid], minlength=hgt * wid).reshape(hgt, wid)

    # -- one block -------------------------------------------------------------------------------
    def render(self, x0: int, y0: int, w: int, h: int) -> _U8:
        """RGB pixels of the level-0 window [x0, x0+w) x [y0, y0+h).

        Stain concentrations are computed one pixel beyond the window and blurred (3x3 binomial, the
        scanner's optics); every texture depends on the absolute position only, so windows join seamlessly.
        """
        grain = self._grain(x0, y0, w, h)
        out = np.empty((h, w, 3), np.uint8)
        fields = self._fields(x0 - 1, y0 - 1, w + 2, h + 2)
        if fields is None:  # glass only
            rgb = grain + (255.0 * np.exp(-self.glass_od)).astype(np.float32) + np.float32(0.5)
            np.clip(rgb, 0, 255, out=rgb)
            out[...] = rgb
            return out
        c_e, c_h, pen_od = (_blur3(f) if f is not None else None for f in fields)
        assert c_e is not None and c_h is not None
        for ch in range(3):
            od = c_h * self.hema_od[ch]
            od += c_e * self.eosin_od[ch]
            od += self.glass_od[ch]
            if pen_od is not None:
                od += pen_od[..., ch]
            np.negative(od, out=od)
            np.exp(od, out=od)
            od *= np.float32(255.0)
            od += grain[..., ch]
            od += np.float32(0.5)
            np.clip(od, 0, 255, out=od)
            out[..., ch] = od
        return out

    def _grain(self, x0: int, y0: int, w: int, h: int) -> _F32:
        """Sensor noise: a 512 px periodic texture, addressed by absolute position (copies, no gathers)."""
        size = self.grain.shape[0]
        rows = np.take(self.grain, np.arange(y0, y0 + h) % size, axis=0)
        ox = x0 % size
        reps = math.ceil((ox + w) / size)
        wide = np.concatenate([rows] * reps, axis=1) if reps > 1 else rows
        return wide[:, ox : ox + w]

    def _fields(self, x0: int, y0: int, w: int, h: int) -> tuple[_F32, _F32, _F32 | None] | None:
        """Eosin and hematoxylin concentrations and pen ink density; None where there is only glass."""
        m = _MARGIN_PX
        region_m, struct_m, pen_m = self._rasters(x0 - m, y0 - m, w + 2 * m, h + 2 * m)
        region = region_m[m : m + h, m : m + w]
        struct = struct_m[m : m + h, m : m + w]
        pen = pen_m[m : m + h, m : m + w]
        has_tissue, has_pen = bool(region.any()), bool(pen.any())
        if not has_tissue and not has_pen:
            return None
        if has_tissue:
            c_e, c_h = self._stains(region, struct, region_m, struct_m, x0, y0, w, h)
        else:
            c_e = c_h = np.zeros((h, w), np.float32)
        pen_od = None
        if has_pen:
            ink = np.zeros((len(_INK_NAMES) + 1, 3), np.float32)
            ink[1:] = np.asarray([_INKS[n] for n in _INK_NAMES], np.float32)
            alpha = 0.6 + 0.35 * _fbm_grid(_key(self.seed, "ink"), x0, y0, h, w, (90.0, 25.0, 7.0))
            pen_od = (alpha * (pen > 0))[:, :, None] * ink[pen]
        return c_e, c_h, pen_od

    def _stroma(self, x0: int, y0: int, h: int, w: int, grain: _F32) -> tuple[_F32, _F32]:
        """Collagen texture (about 1) and its clefts (0..1).

        Fibres follow the level sets of a warped linear phase; every band between two level sets is a
        bundle with its own brightness (varying slowly along the bundle) and a pale cleft of its own width.
        """
        ang = self.layout.fibre_angle
        lin_x = (math.cos(ang) / _FIBRE_PERIOD_PX * (np.arange(x0, x0 + w) + 0.5)).astype(np.float32)
        lin_y = (math.sin(ang) / _FIBRE_PERIOD_PX * (np.arange(y0, y0 + h) + 0.5)).astype(np.float32)
        t = lin_y[:, None] + lin_x[None, :] + self._warp_grid(x0, y0, h, w)
        band = np.floor(t)
        frac = t - band
        along_x = (-math.sin(ang) / 160.0 * (np.arange(x0, x0 + w) + 0.5)).astype(np.float32)
        along_y = (math.cos(ang) / 160.0 * (np.arange(y0, y0 + h) + 0.5)).astype(np.float32)
        along = along_y[:, None] + along_x[None, :]
        iu = np.floor(along)
        fu = _smooth(along - iu)
        b0, u0 = int(band.min()), int(iu.min())
        nb, nu = int(band.max()) - b0 + 2, int(iu.max()) - u0 + 2
        rows, cols = np.arange(b0, b0 + nb)[:, None], np.arange(u0, u0 + nu)[None, :]
        bright_table = _unit(_hash2(_key(self.seed, "bundle"), rows, cols)).ravel()
        gap_table = _unit(_hash2(_key(self.seed, "gap"), rows, cols)).ravel()
        flat = (band.astype(np.int64) - b0) * nu + (iu.astype(np.int64) - u0)
        lo = bright_table[flat]
        bright = lo + (bright_table[flat + 1] - lo) * fu
        lo = bright_table[flat + nu]  # the next bundle, blended in over the last 40% of this one
        bright_next = lo + (bright_table[flat + nu + 1] - lo) * fu
        blend = _smooth(np.clip((frac - 0.6) * 2.5, 0.0, 1.0))
        bright = bright + (bright_next - bright) * blend
        gap_w = 0.45 * np.maximum(gap_table[flat] - 0.5, 0.0)
        cleft = np.clip((gap_w - frac) * 12.0, 0.0, 1.0)
        fibril = np.sin(t * np.float32(2 * np.pi * 5.0) + np.float32(3.0) * grain)  # wavy fibrils in a bundle
        texture = (0.68 + 0.55 * bright) * (1.0 + 0.13 * fibril)
        return texture.astype(np.float32), cleft.astype(np.float32)

    def _stains(
        self, region: _U8, struct: _U8, region_m: _U8, struct_m: _U8, x0: int, y0: int, w: int, h: int
    ) -> tuple[_F32, _F32]:
        """Eosin and hematoxylin concentrations of a block that holds tissue."""
        code = region.astype(np.intp) * _LUT_SIZE + struct
        base_e = _BASE_E[code]
        base_h = _BASE_H[code]
        fibre_w = _FIBRE[code]
        # Slow variation of section thickness and staining.
        var = 0.86 + 0.28 * _noise_grid(_key(self.seed, "thick"), x0, y0, h, w, 1400.0)
        grain = _fbm_grid(_key(self.seed, "grain"), x0, y0, h, w, (9.0, 3.0))
        texture, cleft = self._stroma(x0, y0, h, w, grain)
        stroma = 1.0 - fibre_w + fibre_w * texture * (1.0 - 0.85 * cleft)
        c_e = base_e * stroma * var * (0.88 + 0.24 * grain)
        c_h = base_h * var * (0.75 + 0.5 * grain)
        present = np.bincount(region.ravel(), minlength=5) > 0
        if present[_INVASIVE]:
            inv = region == _INVASIVE
            nest, tumour = self._invasion_grid(x0, y0, h, w)
            tumour = tumour * inv
            halo = np.clip(1.0 - np.abs(nest - _NEST_LEVEL + 0.012) * 90.0, 0.0, 1.0) * inv * (grain > 0.45)
            c_e = c_e * (1 - tumour) + tumour * (0.62 * var * (0.8 + 0.4 * grain)) - 0.7 * halo * c_e
            c_h = c_h * (1 - tumour) + tumour * (0.2 * var * (0.7 + 0.6 * grain))
        if present[_INSITU]:
            nec = struct == _S_NECROSIS
            if nec.any():
                debris = _noise_grid(_key(self.seed, "debris"), x0, y0, h, w, 3.0)
                c_h = c_h + nec * (0.12 * grain + np.clip((debris - 0.86) * 8.0, 0.0, 0.9))
                c_e = c_e * (1.0 - 0.35 * nec * grain)
        if present[_BENIGN]:
            lumen = struct == _S_LUMEN
            if lumen.any():
                secretion = _noise_grid(_key(self.seed, "secretion"), x0, y0, h, w, 40.0)
                c_e = c_e + lumen * np.clip((secretion - 0.75) * 1.5, 0, 0.15)
        # Nuclei, including those centred outside the block (up to the margin) that reach into it.
        m = _MARGIN_PX
        acc_h = np.zeros((h, w), np.float64)
        acc_c = np.zeros((h, w), np.float64)
        for kind, params in self._nuclei(region_m, struct_m, x0 - m, y0 - m, x0, y0, w, h):
            self._splat(acc_h, acc_c, x0, y0, kind, params)
            if self.collect_nuclei:  # own the nuclei centred in the block itself, not in its 1 px blur border
                self._collect(kind, params, x0 + 1, y0 + 1, w - 2, h - 2, region_m, x0 - m, y0 - m)
        cover = np.minimum(acc_c, 1.0).astype(np.float32)
        chromatin = _fbm_grid(_key(self.seed, "chromatin"), x0, y0, h, w, (6.0, 2.0))
        nuc_h = (acc_h / np.maximum(acc_c, 1.0)).astype(np.float32) * (0.55 + 0.9 * chromatin) * var
        c_e = c_e * (1.0 - 0.7 * cover) + 0.2 * cover
        c_h = c_h * (1.0 - cover) + nuc_h
        tissue = region > 0
        return (c_e * tissue).astype(np.float32), (c_h * tissue).astype(np.float32)

    def _collect(
        self,
        kind: _NucleusKind,
        p: dict[str, NDArray[Any]],
        x0: int,
        y0: int,
        w: int,
        h: int,
        region_m: _U8,
        ox: int,
        oy: int,
    ) -> None:
        """Keep the nuclei centred in this block (each nucleus belongs to exactly one block)."""
        cx, cy = p["cx"], p["cy"]
        own = (cx >= x0) & (cx < x0 + w) & (cy >= y0) & (cy < y0 + h)
        if not own.any():
            return
        c = np.floor(cx[own]).astype(np.int64) - ox
        r = np.floor(cy[own]).astype(np.int64) - oy
        reg = region_m[r, c].astype(np.float32)
        self.nuclei_out.append(
            np.column_stack([cx[own], cy[own], p["a"][own], p["b"][own], p["angle"][own], reg]).astype(np.float32)
        )


# ------------------------------------------------------------------------------------------- pyramid io
def _box4(a: _U8, rows: int, cols: int) -> _U8:
    """Rounded means of the 4 x 4 pixel blocks of the top-left ``4 rows x 4 cols`` pixels of ``a``."""
    block = a[: 4 * rows, : 4 * cols].reshape(rows, 4, cols, 4, 3)
    return ((block.sum(axis=(1, 3), dtype=np.uint32) + 8) // 16).astype(np.uint8)


class _LevelSink:
    """One reduced pyramid level: receives full-width row strips and appends them to a raw file.

    With ``reduce`` the strips come from the level above and are box-averaged 4 x 4 first (rows left
    over wait for the next strip); without, they are already at this level's size (level 1, averaged
    tile by tile from the rendered level 0). Each level passes what it wrote on to the level below.
    """

    def __init__(self, path: Path, width: int, height: int, reduce: bool, below: _LevelSink | None) -> None:
        self.width = width
        self.height = height
        self.reduce = reduce
        self.below = below
        self.rows = 0
        self.pending: _U8 | None = None
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish()

    def feed(self, strip: _U8) -> None:
        if self.reduce:
            data = strip if self.pending is None else np.concatenate([self.pending, strip])
            n = min(data.shape[0] // 4, self.height - self.rows)
            self.pending = data[4 * n :].copy()
            strip = _box4(data, n, self.width)
        self.file.write(np.ascontiguousarray(strip).tobytes())
        self.rows += strip.shape[0]
        if self.below is not None and strip.shape[0]:
            self.below.feed(strip)

    def finish(self) -> None:
        self.file.close()
        if self.below is not None:
            self.below.finish()


def _strip_tiles(path: Path, width: int, height: int, tile: int) -> Iterator[_U8]:
    """Tiles of a raw level file, read one tile row at a time."""
    row_bytes = width * 3
    with open(path, "rb") as f:
        for y in range(0, height, tile):
            rows = min(tile, height - y)
            buf = f.read(rows * row_bytes)
            strip = np.frombuffer(buf, np.uint8).reshape(rows, width, 3)
            for x in range(0, width, tile):
                yield strip[:, x : x + tile]


def _description(
    level_dims: Sequence[tuple[int, int]], level: int, tile: int, quality: int, name: str, seed: int, stain: str
) -> str:
    w0, h0 = level_dims[0]
    if level == 0:
        return (
            f"{_APERIO_HEADER} \r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile}) JPEG/RGB Q={quality}"
            f"|MPP = {MPP}|AppMag = {OBJECTIVE_POWER}|StripeWidth = 2048|ScanScope ID = QPBRIDGE-SYNTH"
            f"|Filename = {name}|Title = qpbridge synthetic H&E|Synth Seed = {seed}|Synth Stain = {stain}"
        )
    w, h = level_dims[level]
    return f"{_APERIO_HEADER} \r\n{w0}x{h0} -> {w}x{h} - ({tile}x{tile}) JPEG/RGB Q={quality}"


# ------------------------------------------------------------------------------------------- truth io
def _truth_features(layout: _Layout) -> list[tuple[BaseGeometry, str, tuple[int, int, int], str]]:
    feats: list[tuple[BaseGeometry, str, tuple[int, int, int], str]] = []
    for i, g in enumerate(layout.tissue, 1):
        feats.append((g, TISSUE_CLASS.name, TISSUE_CLASS.color, f"Tissue {i}"))
    counts: dict[str, int] = {}
    for label, g in layout.lesions:
        name = _LESION_NAMES[label]
        counts[name] = counts.get(name, 0) + 1
        feats.append((g, name, _CLASS_COLOR[name], f"{name} {counts[name]}"))
    for i, (ink, g) in enumerate(layout.pens, 1):
        feats.append((g, PEN_CLASS.name, PEN_CLASS.color, f"Pen mark {i} ({_INK_NAMES[ink]})"))
    return feats


def _write_truth_geojson(path: Path, layout: _Layout) -> None:
    """Write the truth as QuPath annotations (:func:`qpbridge.qupath.write_geojson`), area in um^2."""
    from qpbridge.qupath import Feature, write_geojson

    features = [
        Feature(geom, cls, color, "annotation", name=name, measurements={"Area um^2": round(geom.area * MPP * MPP, 2)})
        for geom, cls, color, name in _truth_features(layout)
    ]
    write_geojson(path, features)


def _write_nuclei_geojson(path: Path, nuclei: NDArray[np.float32]) -> None:
    """Every nucleus as a 16-vertex ellipse detection, classified by the region of its centre."""
    from qpbridge.qupath import Feature, write_geojson

    names = {_BG: "Normal", _NORMAL: "Normal", **_LESION_NAMES}
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    cx, cy, a, b, ang, reg = (nuclei[:, i].astype(np.float64)[:, None] for i in range(6))
    ex, ey = a * np.cos(t), b * np.sin(t)
    xs = cx + ex * np.cos(ang) - ey * np.sin(ang)
    ys = cy + ex * np.sin(ang) + ey * np.cos(ang)
    polygons = shapely.polygons(np.round(np.stack([xs, ys], axis=-1), 2))
    classes = [names[int(r)] for r in reg[:, 0]]
    write_geojson(
        path,
        (Feature(poly, name, _CLASS_COLOR[name], "detection") for poly, name in zip(polygons, classes, strict=True)),
    )


# ------------------------------------------------------------------------------------------------- main
def _check_args(
    path: Path,
    width_px: int,
    height_px: int,
    seed: int,
    stain: str,
    tile_px: int,
    quality: int,
    lesion_fraction: float,
    overwrite: bool,
) -> None:
    for name, value in (("width", width_px), ("height", height_px)):
        if not isinstance(value, int) or value < MIN_SIDE_PX:
            raise InputError(f"--{name} must be an integer >= {MIN_SIDE_PX} px, got {value}")
    if width_px * height_px > 2**34:
        raise InputError(f"slide of {width_px} x {height_px} px is too large: keep width x height under 2^34 px")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    if stain not in _STAINS:
        raise InputError(f"unknown --stain {stain!r}: choose one of {', '.join(STAIN_NAMES)}")
    if tile_px < 64 or tile_px % 16:
        raise InputError(f"tile size must be a multiple of 16 and >= 64 px, got {tile_px}")
    if not 1 <= quality <= 100:
        raise InputError(f"JPEG quality must be between 1 and 100, got {quality}")
    if not 0.0 <= lesion_fraction <= 0.5:
        raise InputError(f"--lesion-fraction must be between 0 and 0.5, got {lesion_fraction}")
    if path.suffix.lower() not in (".svs", ".tif", ".tiff"):
        raise InputError(f"output {path} must end in .svs, .tif or .tiff")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"{path.parent} is a file, not a folder: choose another output path")
    if not overwrite:
        for p in (path, *synth_paths(path)[:2]):
            if p.exists():
                raise OutputError(f"{p} exists: choose another path or pass --overwrite")


def write_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width_px: int,
    height_px: int,
    seed: int = 0,
    stain: str = "standard",
    tile_px: int = 256,
    quality: int = 85,
    lesion_fraction: float = 0.10,
    nuclei: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write a synthetic H&E-like Aperio slide (pyramidal JPEG TIFF) and its ground truth.

    Parameters
    ----------
    path
        Output slide, ``.svs`` (or ``.tif``/``.tiff``). The truth goes beside it (see :func:`synth_paths`).
    width_px, height_px
        Level-0 size in pixels (>= 512), at :data:`MPP` = 0.25 um/px.
    seed
        Same seed, same arguments -> identical pixels and truth. The seed also jitters the stain colours.
    stain
        One of :data:`STAIN_NAMES`: "standard", "faded" (weak, greyish hematoxylin, pale orange eosin) or
        "dark" (over-stained).
    tile_px, quality
        JPEG tile size (multiple of 16) and quality of every level.
    lesion_fraction
        Fraction of the tissue area covered by lesions (benign + in situ + invasive).
    nuclei
        Also write ``<stem>.nuclei.geojson``: every nucleus as a detection (16-vertex ellipse).
    overwrite
        Replace existing outputs; otherwise an existing slide or truth file raises :class:`OutputError`.
    progress
        Called as ``progress(done, total)`` while writing (units: level-0 blocks, then lower-level tile rows).

    Returns
    -------
    SynthResult
        Paths, sizes, levels and the measured class areas.

    Raises
    ------
    InputError
        A bad size, seed, stain, tile size, quality or lesion fraction.
    OutputError
        The folder is missing, or an output exists and ``overwrite`` is false.

    Examples
    --------
    >>> r = write_synthetic_slide("/tmp/s.svs", width_px=2048, height_px=1536, seed=3,
    ...                           overwrite=True)  # doctest: +SKIP
    >>> r.level_dimensions  # doctest: +SKIP
    ((2048, 1536), (512, 384), (128, 96))
    """
    import tifffile

    path = Path(path)
    _check_args(path, width_px, height_px, seed, stain, tile_px, quality, lesion_fraction, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)  # a new demo folder is fine to create
    truth_path, meta_path, nuclei_path = synth_paths(path)
    dims = level_dimensions_for(width_px, height_px)
    layout = _make_layout(width_px, height_px, seed, lesion_fraction)
    renderer = _Renderer.create(layout, seed, stain, collect_nuclei=nuclei)

    block_w = tile_px * _BLOCK_TILES
    n_rows = math.ceil(height_px / tile_px)
    n_blocks = n_rows * math.ceil(width_px / block_w)
    lower_rows = sum(math.ceil(h / tile_px) for _, h in dims[1:])
    total_steps = n_blocks + lower_rows
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps)

    tmp_slide = temporary_path(path)
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=path.parent) as tmpdir:
        sinks: list[_LevelSink] = []
        below: _LevelSink | None = None
        for level in range(len(dims) - 1, 0, -1):
            w, h = dims[level]
            below = _LevelSink(Path(tmpdir) / f"level{level}.raw", w, h, level > 1, below)
            sinks.insert(0, below)
        top = sinks[0]

        def level0_tiles() -> Iterator[_U8]:
            for r in range(n_rows):
                y0 = r * tile_px
                th = min(tile_px, height_px - y0)
                strip = np.empty((th // 4, dims[1][0], 3), np.uint8)
                for x0 in range(0, width_px, block_w):
                    bw = min(block_w, width_px - x0)
                    block = renderer.render(x0, y0, bw, th)
                    strip[:, x0 // 4 : x0 // 4 + bw // 4] = _box4(block, th // 4, bw // 4)
                    if x0 + bw >= width_px:  # row complete: flush it down the pyramid before the last yield
                        top.feed(strip)
                        if r == n_rows - 1:
                            top.finish()
                    step()
                    # tifffile closes this generator after the last tile: nothing may follow the last yield.
                    for tx in range(0, bw, tile_px):
                        yield block[:, tx : tx + tile_px]

        try:
            options: dict[str, Any] = {
                "dtype": np.uint8,
                "photometric": "rgb",
                "compression": "jpeg",
                "metadata": None,
                "software": "qpbridge",
            }
            with tifffile.TiffWriter(tmp_slide, bigtiff=width_px * height_px * 3 > 3_500_000_000) as tif:
                tif.write(
                    level0_tiles(),
                    shape=(height_px, width_px, 3),
                    tile=(tile_px, tile_px),
                    description=_description(dims, 0, tile_px, quality, path.name, seed, stain),
                    compressionargs={"level": quality},
                    **options,
                )
                _write_thumbnail(tif, Path(tmpdir), dims, options)
                lower_quality = max(quality, _LOWER_LEVEL_MIN_QUALITY)
                for level in range(1, len(dims)):
                    w, h = dims[level]

                    def tiles(level: int = level, w: int = w, h: int = h) -> Iterator[_U8]:
                        for i, t in enumerate(_strip_tiles(Path(tmpdir) / f"level{level}.raw", w, h, tile_px)):
                            if i % math.ceil(w / tile_px) == 0:
                                step()
                            yield t

                    tif.write(
                        tiles(),
                        shape=(h, w, 3),
                        tile=(tile_px, tile_px),
                        description=_description(dims, level, tile_px, lower_quality, path.name, seed, stain),
                        compressionargs={"level": lower_quality},
                        subsampling=(1, 1),
                        **options,
                    )
            # The truth files first (each atomic), the slide last: a slide never appears without its truth.
            _write_truth_geojson(truth_path, layout)
            nuclei_count = None
            if nuclei:
                found = np.concatenate(renderer.nuclei_out) if renderer.nuclei_out else np.empty((0, 6), np.float32)
                _write_nuclei_geojson(nuclei_path, found)
                nuclei_count = int(found.shape[0])
            result = _result(
                path, truth_path, meta_path, nuclei_path if nuclei else None, layout, seed, stain, dims, nuclei_count
            )
            _write_meta(meta_path, result, lesion_fraction)
            commit(tmp_slide, path)
        finally:
            for sink in sinks:
                if not sink.file.closed:
                    sink.file.close()
            tmp_slide.unlink(missing_ok=True)
    return result


def _write_thumbnail(tif: Any, tmpdir: Path, dims: Sequence[tuple[int, int]], options: dict[str, Any]) -> None:
    """A stripped thumbnail image in the second IFD (OpenSlide's aperio ``thumbnail`` associated image)."""
    from PIL import Image

    level = len(dims) - 1
    w, h = dims[level]
    small = np.fromfile(tmpdir / f"level{level}.raw", np.uint8).reshape(h, w, 3)
    scale = min(1.0, 768 / max(w, h))
    tw, th = max(16, round(w * scale)), max(16, round(h * scale))
    thumb = np.asarray(Image.fromarray(small).resize((tw, th), Image.Resampling.BOX))
    w0, h0 = dims[0]
    tif.write(
        thumb,
        rowsperstrip=16,
        description=f"{_APERIO_HEADER} \r\n{w0}x{h0} -> {tw}x{th} - ",
        compressionargs={"level": 90},
        **options,
    )


def _result(
    slide: Path,
    truth: Path,
    meta: Path,
    nuclei_path: Path | None,
    layout: _Layout,
    seed: int,
    stain: str,
    dims: tuple[tuple[int, int], ...],
    nuclei_count: int | None,
) -> SynthResult:
    px_um2 = MPP * MPP
    tissue = shapely.union_all(layout.tissue)
    tissue_um2 = tissue.area * px_um2
    areas = {c.name: 0.0 for c in DEEPBATCH_CLASSES}
    counts = {name: 0 for name in _LESION_NAMES.values()}
    for label, g in layout.lesions:
        areas[_LESION_NAMES[label]] += g.area * px_um2
        counts[_LESION_NAMES[label]] += 1
    lesion_um2 = sum(areas.values())
    areas["Normal"] = tissue_um2 - lesion_um2
    return SynthResult(
        slide_path=slide,
        truth_path=truth,
        meta_path=meta,
        nuclei_path=nuclei_path,
        width_px=layout.width_px,
        height_px=layout.height_px,
        mpp=MPP,
        seed=seed,
        stain=stain,
        level_count=len(dims),
        level_dimensions=dims,
        tissue_area_um2=round(tissue_um2, 2),
        class_areas_um2={k: round(v, 2) for k, v in areas.items()},
        lesion_fraction=round(lesion_um2 / tissue_um2, 5) if tissue_um2 else 0.0,
        lesion_counts=counts,
        pen_strokes=len(layout.pens),
        nuclei_count=nuclei_count,
    )


def _write_meta(path: Path, r: SynthResult, lesion_fraction_target: float) -> None:
    from qpbridge import __version__

    record = {
        "synth": {
            "generator": f"qpbridge {__version__}",
            "slide": r.slide_path.name,
            "truth": r.truth_path.name,
            "seed": r.seed,
            "stain": r.stain,
            "width_px": r.width_px,
            "height_px": r.height_px,
            "mpp": r.mpp,
            "objective_power": OBJECTIVE_POWER,
            "level_dimensions": [list(d) for d in r.level_dimensions],
            "lesion_fraction_target": lesion_fraction_target,
            "lesion_fraction_measured": r.lesion_fraction,
            "tissue_area_um2": r.tissue_area_um2,
            "class_areas_um2": r.class_areas_um2,
            "lesion_counts": r.lesion_counts,
            "pen_strokes": r.pen_strokes,
            "normal_is": "tissue minus lesions (no Normal feature in the truth file)",
            "nuclei": r.nuclei_path.name if r.nuclei_path else None,
            "nuclei_count": r.nuclei_count,
        }
    }
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
