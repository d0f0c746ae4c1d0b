"""Rendering level-0 pixels block by block: stains (Beer-Lambert), textures and nuclei, from the layout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from numpy.typing import NDArray
from rasterio.features import rasterize
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from qpbridge.synth.common import (
    BENIGN,
    F32,
    INK_NAMES,
    INKS,
    INSITU,
    INVASIVE,
    NORMAL,
    S_BAND,
    S_CORE,
    S_GLAND,
    S_LUMEN,
    S_NECROSIS,
    S_NONE,
    U8,
)
from qpbridge.synth.layout import Layout
from qpbridge.synth.noise import (
    blur3,
    fbm_grid,
    fbm_points,
    hash2,
    hash_key,
    noise_grid,
    noise_points,
    smoothstep,
    unit,
)

__all__ = ["Renderer", "STAINS", "STAIN_NAMES"]

_MARGIN_PX = 64  # label rasters extend this far around a block: nuclei centred there reach into it


# ----------------------------------------------------------------------------------------------- stains
@dataclass(frozen=True)
class _Stain:
    """Optical density (natural log) per unit of stain, per R, G, B channel, and stain strengths."""

    hema_od: tuple[float, float, float]
    eosin_od: tuple[float, float, float]
    hema_scale: float
    eosin_scale: float
    glass_od: tuple[float, float, float]


STAINS: dict[str, _Stain] = {
    # Pink stroma, blue-purple nuclei: a typical, well-balanced H&E.
    "standard": _Stain((0.90, 1.05, 0.52), (0.06, 0.62, 0.27), 1.0, 1.0, (0.045, 0.052, 0.040)),
    # Old or under-stained section: weak, greyish hematoxylin and pale orange-pink eosin.
    "faded": _Stain((0.62, 0.66, 0.48), (0.04, 0.38, 0.34), 0.6, 0.6, (0.06, 0.055, 0.07)),
    # Over-stained section: dense purple hematoxylin and deep magenta eosin.
    "dark": _Stain((1.00, 1.25, 0.60), (0.16, 0.80, 0.30), 1.35, 1.3, (0.05, 0.06, 0.05)),
}

#: Stain names accepted by :func:`write_synthetic_slide`.
STAIN_NAMES: tuple[str, ...] = tuple(STAINS)


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


_set_lut(NORMAL, S_NONE, 0.85, 0.03, 0.75)
_set_lut(BENIGN, S_NONE, 0.66, 0.05, 0.55)
_set_lut(BENIGN, S_GLAND, 0.72, 0.13, 0.0)
_set_lut(BENIGN, S_LUMEN, 0.03, 0.0, 0.0)
_set_lut(INSITU, S_NONE, 0.07, 0.01, 0.0)  # retraction cleft around the duct
_set_lut(INSITU, S_BAND, 1.05, 0.08, 0.15)  # basement membrane / myoepithelial rim
_set_lut(INSITU, S_CORE, 0.58, 0.2, 0.0)
_set_lut(INSITU, S_NECROSIS, 0.95, 0.2, 0.0)
_set_lut(INVASIVE, S_NONE, 1.45, 0.07, 0.5)


@dataclass
class Renderer:
    """Renders level-0 blocks of one slide from its layout."""

    layout: Layout
    seed: int
    stain: _Stain
    hema_od: F32
    eosin_od: F32
    glass_od: F32
    tree: Any
    geoms: list[dict[str, Any]]
    geom_kind: NDArray[np.int8]  # 0 region, 1 structure, 2 pen
    geom_value: NDArray[np.int16]
    grain: F32  # 512 x 512 x 3 sensor noise, tiled by absolute position
    gland_boxes: NDArray[np.float64]  # (n, 4) x0, y0, x1, y1 of every gland, with room for its nuclei
    collect_nuclei: bool = False
    nuclei_out: list[NDArray[np.float32]] = field(default_factory=list)

    @classmethod
    def create(cls, layout: Layout, seed: int, stain_name: str, collect_nuclei: bool = False) -> Renderer:
        stain = STAINS[stain_name]
        rng = np.random.default_rng([seed, 0x57A1])
        hema = np.asarray(stain.hema_od, np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
        eosin = np.asarray(stain.eosin_od, np.float32) * rng.uniform(0.88, 1.12, 3).astype(np.float32)
        hema *= np.float32(stain.hema_scale * rng.uniform(0.9, 1.1))
        eosin *= np.float32(stain.eosin_scale * rng.uniform(0.9, 1.1))
        glass = np.asarray(stain.glass_od, np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
        items: list[tuple[int, int, BaseGeometry]] = [(0, NORMAL, g) for g in layout.tissue]
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
    def _rasters(self, x0: int, y0: int, w: int, h: int) -> tuple[U8, U8, U8]:
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
    def _warp_grid(self, x0: int, y0: int, h: int, w: int) -> F32:
        """How far (in bundles) the fibres are pushed: slow swirls plus local waviness."""
        swirl = noise_grid(hash_key(self.seed, "swirl"), x0, y0, h, w, _SWIRL_PX)
        wave = fbm_grid(hash_key(self.seed, "warp"), x0, y0, h, w, (420.0, 160.0, 60.0))
        return np.float32(_SWIRL) * swirl + np.float32(_FIBRE_WARP) * wave

    def _warp_points(self, x: NDArray[Any], y: NDArray[Any]) -> F32:
        swirl = noise_points(hash_key(self.seed, "swirl"), x, y, _SWIRL_PX)
        wave = fbm_points(hash_key(self.seed, "warp"), x, y, (420.0, 160.0, 60.0))
        return (np.float32(_SWIRL) * swirl + np.float32(_FIBRE_WARP) * wave).astype(np.float32)

    def _fibre_angle_points(self, x: F32, y: F32) -> F32:
        """Local direction of the fibres at given points (perpendicular to the gradient of the phase)."""
        ang = self.layout.fibre_angle
        d = 1.5
        gx = (self._warp_points(x + d, y) - self._warp_points(x - d, y)) / (2 * d)
        gy = (self._warp_points(x, y + d) - self._warp_points(x, y - d)) / (2 * d)
        gx = math.cos(ang) / _FIBRE_PERIOD_PX + gx
        gy = math.sin(ang) / _FIBRE_PERIOD_PX + gy
        return (np.arctan2(gy, gx) + np.pi / 2).astype(np.float32)

    @staticmethod
    def _tumour(nest: F32, cord: F32, patch: F32) -> F32:
        """Invasive tumour cells (0..1): nests where ``nest`` is high, single-file cords along a level
        set of ``cord`` where ``patch`` allows them."""
        nests = np.clip((nest - _NEST_LEVEL) * 30.0, 0.0, 1.0)
        cords = np.clip((0.1 - np.abs(cord - 0.5)) * 40.0, 0.0, 1.0) * (patch > 0.55)
        return np.maximum(nests, cords).astype(np.float32)

    def _invasion_points(self, x: NDArray[Any], y: NDArray[Any]) -> tuple[F32, F32]:
        """(nest noise, tumour cells) at points: the same functions as :meth:`_invasion_grid`."""
        nest = fbm_points(hash_key(self.seed, "nest"), x, y, (150.0, 60.0))
        cord = noise_points(hash_key(self.seed, "cord"), x, y, 170.0)
        patch = noise_points(hash_key(self.seed, "cord-patch"), x, y, 500.0)
        return nest, self._tumour(nest, cord, patch)

    def _invasion_grid(self, x0: int, y0: int, h: int, w: int) -> tuple[F32, F32]:
        nest = fbm_grid(hash_key(self.seed, "nest"), x0, y0, h, w, (150.0, 60.0))
        cord = noise_grid(hash_key(self.seed, "cord"), x0, y0, h, w, 170.0)
        patch = noise_grid(hash_key(self.seed, "cord-patch"), x0, y0, h, w, 500.0)
        return nest, self._tumour(nest, cord, patch)

    # -- nuclei ----------------------------------------------------------------------------------
    def _grid_candidates(
        self, kind: _NucleusKind, x0: int, y0: int, w: int, h: int
    ) -> tuple[F32, F32, NDArray[np.uint64]]:
        """Candidate centres of one kind: one per grid cell, jittered, seeded by (seed, kind, cell)."""
        s = kind.spacing_px
        i = np.arange(math.floor(x0 / s), math.floor((x0 + w) / s) + 1)
        j = np.arange(math.floor(y0 / s), math.floor((y0 + h) / s) + 1)
        hashes = hash2(hash_key(self.seed, "nuclei", kind.name), i[None, :], j[:, None]).ravel()
        ii = np.broadcast_to(i[None, :], (j.size, i.size)).ravel()
        jj = np.broadcast_to(j[:, None], (j.size, i.size)).ravel()
        cx = ((ii + 0.5 + 0.8 * (unit(hashes, 1) - 0.5)) * s).astype(np.float32)
        cy = ((jj + 0.5 + 0.8 * (unit(hashes, 2) - 0.5)) * s).astype(np.float32)
        inside = (cx >= x0) & (cx < x0 + w) & (cy >= y0) & (cy < y0 + h)
        return cx[inside], cy[inside], hashes[inside]

    def _nuclei(
        self, region: U8, struct: U8, ox: int, oy: int, x0: int, y0: int, w: int, h: int
    ) -> list[tuple[_NucleusKind, dict[str, NDArray[Any]]]]:
        """Nuclei that can reach the block [x0, x0+w) x [y0, y0+h); ``region``/``struct`` start at (ox, oy)."""
        mx0, my0 = x0 - _MARGIN_PX, y0 - _MARGIN_PX
        mw, mh = w + 2 * _MARGIN_PX, h + 2 * _MARGIN_PX
        present = np.bincount(region.ravel(), minlength=5) > 0
        out: list[tuple[_NucleusKind, dict[str, NDArray[Any]]]] = []

        def lookup(cx: F32, cy: F32) -> tuple[U8, U8]:
            c = np.clip(np.floor(cx).astype(np.int64) - ox, 0, region.shape[1] - 1)
            r = np.clip(np.floor(cy).astype(np.int64) - oy, 0, region.shape[0] - 1)
            return region[r, c], struct[r, c]

        for name in ("fibro", "lympho", "dcis", "tumour"):
            kind = _KINDS[name]
            if name == "dcis" and not present[INSITU]:
                continue
            if name == "tumour" and not present[INVASIVE]:
                continue
            if name in ("fibro", "lympho") and not present[1:].any():
                continue
            cx, cy, hashes = self._grid_candidates(kind, mx0, my0, mw, mh)
            reg, st = lookup(cx, cy)
            p = np.zeros(cx.shape, np.float32)
            if name in ("fibro", "lympho"):
                stroma = st == S_NONE
                if name == "fibro":
                    table = np.array([0, 0.33, 0.3, 0.0, 0.55], np.float32)
                else:
                    table = np.array([0, 0.04, 0.06, 0.0, 0.22], np.float32)
                p = np.where(stroma, table[reg], 0).astype(np.float32)
                if present[INVASIVE] and np.any(reg == INVASIVE):
                    inv = reg == INVASIVE
                    nest, tumour = self._invasion_points(cx[inv], cy[inv])
                    p[inv] = np.where((nest > _NEST_LEVEL - 0.04) | (tumour > 0), 0.0, p[inv])
            elif name == "dcis":
                p = np.where((reg == INSITU) & (st == S_CORE), 0.93, 0).astype(np.float32)
            else:
                inv = reg == INVASIVE
                nest, tumour = self._invasion_points(cx, cy)
                single = (nest < _NEST_LEVEL - 0.04) & (tumour == 0)  # scattered single tumour cells
                p = np.where(inv & (tumour > 0.5), 0.9, np.where(inv & single, 0.05, 0)).astype(np.float32)
            keep = unit(hashes, 3) < p
            if not keep.any():
                continue
            cx, cy, hashes = cx[keep], cy[keep], hashes[keep]
            params = self._kind_params(kind, cx, cy, hashes)
            if name == "fibro":
                params["angle"] = self._fibre_angle_points(cx, cy) + (unit(hashes, 9) - 0.5) * 0.4
            out.append((kind, params))
        glands = self._gland_nuclei(mx0, my0, mw, mh)
        out += glands
        return out

    def _kind_params(self, kind: _NucleusKind, cx: F32, cy: F32, hashes: NDArray[np.uint64]) -> dict[str, NDArray[Any]]:
        n = cx.size
        u = [unit(hashes, 10 + k) for k in range(9)]
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
                hh = hash2(hash_key(self.seed, "gland", kind_name), np.full(count, g.index), np.arange(count))
                t = (np.arange(count) + 0.3 * (unit(hh, 1) - 0.5)) * (2 * np.pi / count)
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
            params["angle"] = (np.concatenate(angs) + (unit(hashes, 9) - 0.5) * 0.3).astype(np.float32)
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
    def render(self, x0: int, y0: int, w: int, h: int) -> U8:
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
        c_e, c_h, pen_od = (blur3(f) if f is not None else None for f in fields)
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

    def _grain(self, x0: int, y0: int, w: int, h: int) -> F32:
        """Sensor noise: a 512 px periodic texture, addressed by absolute position (copies, no gathers)."""
        size = self.grain.shape[0]
        rows = np.take(self.grain, np.arange(y0, y0 + h) % size, axis=0)
        ox = x0 % size
        reps = math.ceil((ox + w) / size)
        wide = np.concatenate([rows] * reps, axis=1) if reps > 1 else rows
        return wide[:, ox : ox + w]

    def _fields(self, x0: int, y0: int, w: int, h: int) -> tuple[F32, F32, F32 | None] | None:
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
            ink = np.zeros((len(INK_NAMES) + 1, 3), np.float32)
            ink[1:] = np.asarray([INKS[n] for n in INK_NAMES], np.float32)
            alpha = 0.6 + 0.35 * fbm_grid(hash_key(self.seed, "ink"), x0, y0, h, w, (90.0, 25.0, 7.0))
            pen_od = (alpha * (pen > 0))[:, :, None] * ink[pen]
        return c_e, c_h, pen_od

    def _stroma(self, x0: int, y0: int, h: int, w: int, grain: F32) -> tuple[F32, F32]:
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
        fu = smoothstep(along - iu)
        b0, u0 = int(band.min()), int(iu.min())
        nb, nu = int(band.max()) - b0 + 2, int(iu.max()) - u0 + 2
        rows, cols = np.arange(b0, b0 + nb)[:, None], np.arange(u0, u0 + nu)[None, :]
        bright_table = unit(hash2(hash_key(self.seed, "bundle"), rows, cols)).ravel()
        gap_table = unit(hash2(hash_key(self.seed, "gap"), rows, cols)).ravel()
        flat = (band.astype(np.int64) - b0) * nu + (iu.astype(np.int64) - u0)
        lo = bright_table[flat]
        bright = lo + (bright_table[flat + 1] - lo) * fu
        lo = bright_table[flat + nu]  # the next bundle, blended in over the last 40% of this one
        bright_next = lo + (bright_table[flat + nu + 1] - lo) * fu
        blend = smoothstep(np.clip((frac - 0.6) * 2.5, 0.0, 1.0))
        bright = bright + (bright_next - bright) * blend
        gap_w = 0.45 * np.maximum(gap_table[flat] - 0.5, 0.0)
        cleft = np.clip((gap_w - frac) * 12.0, 0.0, 1.0)
        fibril = np.sin(t * np.float32(2 * np.pi * 5.0) + np.float32(3.0) * grain)  # wavy fibrils in a bundle
        texture = (0.68 + 0.55 * bright) * (1.0 + 0.13 * fibril)
        return texture.astype(np.float32), cleft.astype(np.float32)

    def _stains(
        self, region: U8, struct: U8, region_m: U8, struct_m: U8, x0: int, y0: int, w: int, h: int
    ) -> tuple[F32, F32]:
        """Eosin and hematoxylin concentrations of a block that holds tissue."""
        code = region.astype(np.intp) * _LUT_SIZE + struct
        base_e = _BASE_E[code]
        base_h = _BASE_H[code]
        fibre_w = _FIBRE[code]
        # Slow variation of section thickness and staining.
        var = 0.86 + 0.28 * noise_grid(hash_key(self.seed, "thick"), x0, y0, h, w, 1400.0)
        grain = fbm_grid(hash_key(self.seed, "grain"), x0, y0, h, w, (9.0, 3.0))
        texture, cleft = self._stroma(x0, y0, h, w, grain)
        stroma = 1.0 - fibre_w + fibre_w * texture * (1.0 - 0.85 * cleft)
        c_e = base_e * stroma * var * (0.88 + 0.24 * grain)
        c_h = base_h * var * (0.75 + 0.5 * grain)
        present = np.bincount(region.ravel(), minlength=5) > 0
        if present[INVASIVE]:
            inv = region == INVASIVE
            nest, tumour = self._invasion_grid(x0, y0, h, w)
            tumour = tumour * inv
            halo = np.clip(1.0 - np.abs(nest - _NEST_LEVEL + 0.012) * 90.0, 0.0, 1.0) * inv * (grain > 0.45)
            c_e = c_e * (1 - tumour) + tumour * (0.62 * var * (0.8 + 0.4 * grain)) - 0.7 * halo * c_e
            c_h = c_h * (1 - tumour) + tumour * (0.2 * var * (0.7 + 0.6 * grain))
        if present[INSITU]:
            nec = struct == S_NECROSIS
            if nec.any():
                debris = noise_grid(hash_key(self.seed, "debris"), x0, y0, h, w, 3.0)
                c_h = c_h + nec * (0.12 * grain + np.clip((debris - 0.86) * 8.0, 0.0, 0.9))
                c_e = c_e * (1.0 - 0.35 * nec * grain)
        if present[BENIGN]:
            lumen = struct == S_LUMEN
            if lumen.any():
                secretion = noise_grid(hash_key(self.seed, "secretion"), x0, y0, h, w, 40.0)
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
        chromatin = fbm_grid(hash_key(self.seed, "chromatin"), x0, y0, h, w, (6.0, 2.0))
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
        region_m: U8,
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
