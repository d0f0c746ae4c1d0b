"""Instance labels of one block -> nuclei: ids, level-0 centroids, simplified outlines, areas.

A nuclei model's post-processing leaves an instance image per block: ``0`` background, ``1..N`` one id
per nucleus, in the model's own pixel grid. :func:`nuclei_from_labels` turns it into a :class:`NucleusSet`
in one pass over the block, with no per-nucleus Python loop over pixels:

1. :func:`clean_instances`: each id keeps its largest 4-connected piece, and background enclosed by that
   one id (a hole) becomes part of it, so every id is one simply connected region;
2. the cleaned image is vectorized once (:func:`qpbridge.vectorize.vectorize_mask`, i.e.
   ``rasterio.features.shapes`` with 4-connectivity, pixel-corner convention), one polygon per id;
3. outlines are smoothed and simplified with shapely 2's vectorized functions, in model pixels, then
   mapped to level 0 by the block's ``Affine``.

Outlines: a pixel outline is a staircase (~50 vertices for a 0.25 um/px nucleus) that says more about the
pixel grid than about the nucleus, and QuPath parses the whole GeoJSON as one tree, so vertices are a
cost. :func:`simplify_outlines` first cuts the staircase's corners (``smooth_passes``; the first pass is
the marching-squares contour, which holds exactly the same pixel centres), then Douglas-Peucker with
``preserve_topology=True`` removes vertices within a tolerance in model pixels. By default the tolerance
is 0.4 model px (:data:`SIMPLIFY_PX_RANGE`'s top): under half the pixel the model resolves. Only nuclei smaller
than any a model emits (an equivalent radius under 6.4 px, 130 px^2: 8 um^2 at 0.25 um/px) get less,
:data:`DEFAULT_SIMPLIFY_RADIUS_FRAC` of their radius (down to 0.2 px), so that they keep their shape.
``benchmarks/nuclei_outline.py`` measured on the 16,959 MoNuSeg training nuclei (GeoJSON bytes with the nine
measurements of :mod:`qpbridge.nuclei.measure`; Dice of the outlines rasterized back on the model grid
against the instance mask):

=====  =====================================  ==========================  =====  ===========
um/px  outline                                vertices (breast, worst)    bytes  Dice change
=====  =====================================  ==========================  =====  ===========
0.25   pixel staircase                        48.4 (56.6, 76.5)            967    0
0.25   2 passes, 0.5 px                       14.3 (16.1, 22.6)            683   -0.0048
0.25   2 passes, 0.35 px                      17.8 (20.6, 28.9)            733   -0.0015
0.25   2 passes, 0.0325 r (0.2-1.0 px)        17.9 (18.7, 22.9)            734   -0.0031
0.25   2 passes, 0.0625 r (0.2-0.4 px)        17.0 (19.4, 27.3)            720   -0.0022
0.25   3 passes, 0.0625 r (0.2-0.4: default)  15.8 (17.6, 24.5)            720   -0.0030
0.50   pixel staircase                        24.8 (29.2, 39.7)            734    0
0.50   2 passes, 0.5 px                        9.3 (10.2, 13.6)            605   -0.0112
0.50   3 passes, 0.0625 r (0.2-0.4: default)  11.6 (12.1, 15.6)            651   -0.0037
=====  =====================================  ==========================  =====  ===========

(breast: the six breast tiles, whose nuclei are larger; worst: the tile with the most vertices a nucleus.)
A tolerance relative to the radius (0.0325 r, up to 1 px, the earlier default) spends the Dice budget on the
large nuclei, which weigh most in pixel Dice: the flat 0.4 px beats it on both vertices and Dice. A network's
outlines are less regular than these hand-drawn ones and keep more vertices; a third corner-cutting pass rounds
them before simplifying: ``monuseg-nuclei``'s nuclei on its 6 validation tiles through ``predict`` have 21.7
vertices and 795 bytes each after 2 passes, 19.6 and 782 after 3 (same AJI and Dice). Pass ``simplify_px``
for another tolerance.

Example
-------
>>> import numpy as np
>>> from affine import Affine
>>> labels = np.zeros((8, 8), np.int32)
>>> labels[1:4, 1:4] = 7                 # a 3 x 3 nucleus
>>> labels[5:7, 4:8] = 9                 # a 2 x 4 one on the right border
>>> nuclei = nuclei_from_labels(labels, Affine(2, 0, 100, 0, 2, 50))   # model at 2x the level-0 pixel
>>> nuclei.ids.tolist(), nuclei.areas_px.tolist(), nuclei.centroids_xy.tolist()
([7, 9], [9, 8], [[105.0, 55.0], [112.0, 62.0]])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.ndimage as ndi
import shapely
import skimage.measure
from affine import Affine

from qpbridge.errors import InputError
from qpbridge.tiling import apply_affine, apply_affine_xy
from qpbridge.vectorize import vectorize_mask

__all__ = [
    "DEFAULT_SIMPLIFY_RADIUS_FRAC",
    "DEFAULT_SMOOTH_PASSES",
    "SIMPLIFY_PX_RANGE",
    "NucleusSet",
    "check_instance_labels",
    "clean_instances",
    "default_tolerance_px",
    "nuclei_from_labels",
    "simplify_outlines",
]

#: Default Douglas-Peucker tolerance of a nucleus: this fraction of its equivalent radius ``sqrt(area / pi)``
#: (clipped to :data:`SIMPLIFY_PX_RANGE`: in effect 0.4 px for every nucleus a model emits).
DEFAULT_SIMPLIFY_RADIUS_FRAC = 0.0625
#: The default tolerance is clipped to this range of model pixels (tiny nuclei keep their shape; no outline is
#: simplified by more than 0.4 of the pixel the model resolves).
SIMPLIFY_PX_RANGE = (0.2, 0.4)
#: Corner-cutting passes before simplifying (see :func:`simplify_outlines`).
DEFAULT_SMOOTH_PASSES = 3

_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class NucleusSet:
    """The nuclei of one block, as parallel arrays (ready for shapely's vectorized functions).

    Attributes
    ----------
    ids : numpy.ndarray
        ``(n,)`` int64: each nucleus's id in the block's instance image, increasing.
    centroids_xy : numpy.ndarray
        ``(n, 2)`` float64: level-0 ``(x, y)`` of the centroid of the nucleus's pixels (pixel-corner
        convention: pixel ``(c, r)`` covers ``[c, c + 1) x [r, r + 1)`` before the block's ``Affine``).
    polygons : numpy.ndarray
        ``(n,)`` object array of shapely Polygons in level-0 pixels: the simplified outline, no holes.
    areas_px : numpy.ndarray
        ``(n,)`` int64: the nucleus's pixel count in the model's grid (after :func:`clean_instances`).

    Example
    -------
    >>> import shapely
    >>> s = NucleusSet.from_arrays([3, 5], [[1.0, 1.0], [9.0, 9.0]], [shapely.box(0, 0, 2, 2)] * 2, [4, 4])
    >>> len(s), s.subset(s.ids > 3).ids.tolist()
    (2, [5])
    """

    ids: npt.NDArray[np.int64]
    centroids_xy: npt.NDArray[np.float64]
    polygons: npt.NDArray[np.object_]
    areas_px: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        if (
            self.ids.ndim != 1
            or self.centroids_xy.shape != (n, 2)
            or self.polygons.shape != (n,)
            or self.areas_px.shape != (n,)
        ):
            raise ValueError(
                f"NucleusSet arrays must be (n,), (n, 2), (n,), (n,): got ids {self.ids.shape}, centroids "
                f"{self.centroids_xy.shape}, polygons {self.polygons.shape}, areas {self.areas_px.shape}"
            )

    @classmethod
    def from_arrays(
        cls, ids: Any, centroids_xy: Any, polygons: Iterable[shapely.Geometry], areas_px: Any
    ) -> NucleusSet:
        """Build from array-likes (lists are fine)."""
        plist = list(polygons)
        geoms = np.empty(len(plist), dtype=object)
        geoms[:] = plist
        return cls(
            np.asarray(ids, dtype=np.int64).reshape(-1),
            np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2),
            geoms,
            np.asarray(areas_px, dtype=np.int64).reshape(-1),
        )

    @classmethod
    def empty(cls) -> NucleusSet:
        """No nuclei."""
        return cls(
            np.empty(0, np.int64), np.empty((0, 2), np.float64), np.empty(0, dtype=object), np.empty(0, np.int64)
        )

    @classmethod
    def concat(cls, parts: Iterable[NucleusSet]) -> NucleusSet:
        """All nuclei of ``parts``, in order (ids are not made unique: they belong to each block)."""
        plist = list(parts)
        if not plist:
            return cls.empty()
        return cls(
            np.concatenate([p.ids for p in plist]),
            np.concatenate([p.centroids_xy for p in plist]),
            np.concatenate([p.polygons for p in plist]).astype(object, copy=False),
            np.concatenate([p.areas_px for p in plist]),
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def subset(self, keep: npt.ArrayLike) -> NucleusSet:
        """The nuclei selected by a boolean mask or an index array (e.g. :func:`~qpbridge.nuclei.keep_owned`)."""
        sel = np.asarray(keep)
        return NucleusSet(self.ids[sel], self.centroids_xy[sel], self.polygons[sel], self.areas_px[sel])


def check_instance_labels(labels: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """``labels`` as a 2-D int32 instance image (0 background, ids >= 1); :class:`InputError` otherwise.

    Example
    -------
    >>> check_instance_labels(np.array([[0, 3], [3, 0]], np.uint16)).dtype
    dtype('int32')
    """
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"an instance image must be a 2-D array (rows, cols), got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"an instance image must hold integer ids (0 background, 1..N nuclei), got dtype {arr.dtype}: "
            "label it first (e.g. skimage.measure.label)"
        )
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > _INT32.max:
        raise InputError(f"instance ids must be 0..{_INT32.max}, got values from {lo} to {hi}")
    return arr.astype(np.int32, copy=False)


def clean_instances(labels: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """Each id keeps its largest 4-connected piece, and holes enclosed by one id are filled with it.

    A model can leave an id in several pieces (a blob split by a boundary class, a few stray pixels) and
    holes inside a nucleus; QuPath's own cell detection keeps filled outlines. Pieces are 4-connected (the
    connectivity the outlines are traced with); ties between pieces of equal size go to the piece that
    comes first in row-major order. A hole is a 4-connected background region that does not touch the
    image border and touches only that one id; background between several nuclei stays background (and a
    nucleus inside another's hole keeps its own id).

    Example
    -------
    >>> labels = np.array([[1, 1, 1, 0, 2],
    ...                    [1, 0, 1, 0, 0],
    ...                    [1, 1, 1, 0, 1]])
    >>> clean_instances(labels).tolist()
    [[1, 1, 1, 0, 2], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    """
    arr = check_instance_labels(labels)
    pieces = skimage.measure.label(arr, background=0, connectivity=1)
    n_pieces = int(pieces.max())
    if n_pieces == 0:
        return arr.copy()
    flat = pieces.ravel()
    sizes = np.bincount(flat, minlength=n_pieces + 1)[1:]
    owner = np.zeros(n_pieces + 1, np.int64)
    owner[flat] = arr.ravel()
    owner = owner[1:]
    piece_ids = np.arange(1, n_pieces + 1)
    # per owner id: largest piece first, then the piece that starts first (skimage numbers in scan order)
    order = np.lexsort((piece_ids, -sizes, owner))
    first = np.ones(n_pieces, bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    keep = np.zeros(n_pieces + 1, bool)
    keep[piece_ids[order][first]] = True
    out = np.where(keep[pieces], arr, 0).astype(np.int32)
    return _fill_holes(out)


def _fill_holes(labels: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Fill 4-connected background regions off the border that touch exactly one id (see clean_instances)."""
    background = labels == 0
    if not background.any() or background.all():
        return labels
    regions, n_regions = ndi.label(background)  # 4-connected in 2-D
    if n_regions == 0:
        return labels
    # (region, id) pairs of 4-adjacent pixels, one side background and the other a nucleus
    pairs: list[np.ndarray] = []
    for a_lab, b_lab, a_reg, b_reg in (
        (labels[:, :-1], labels[:, 1:], regions[:, :-1], regions[:, 1:]),
        (labels[:-1, :], labels[1:, :], regions[:-1, :], regions[1:, :]),
    ):
        left = (a_lab == 0) & (b_lab != 0)
        right = (b_lab == 0) & (a_lab != 0)
        pairs.append(a_reg[left].astype(np.int64) * (int(_INT32.max) + 1) + b_lab[left])
        pairs.append(b_reg[right].astype(np.int64) * (int(_INT32.max) + 1) + a_lab[right])
    keys = np.unique(np.concatenate(pairs))
    region_of, id_of = keys // (int(_INT32.max) + 1), keys % (int(_INT32.max) + 1)
    n_ids = np.bincount(region_of, minlength=n_regions + 1)
    fill = np.zeros(n_regions + 1, np.int32)
    single = n_ids[region_of] == 1
    fill[region_of[single]] = id_of[single]
    border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    fill[border] = 0
    fill[0] = 0
    if not fill.any():
        return labels
    filled = fill[regions]
    return np.where(filled != 0, filled, labels).astype(np.int32)


def _pixel_stats(labels: npt.NDArray[np.int32]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ids present, their pixel counts, and the mean pixel-corner-convention ``(x, y)`` of their pixels."""
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    lab = flat[fg]
    counts = np.bincount(lab)
    ids = np.flatnonzero(counts)
    rows, cols = np.divmod(fg, labels.shape[1])
    sum_x = np.bincount(lab, weights=cols, minlength=counts.size)
    sum_y = np.bincount(lab, weights=rows, minlength=counts.size)
    n = counts[ids].astype(np.float64)
    return ids.astype(np.int64), counts[ids].astype(np.int64), sum_x[ids] / n + 0.5, sum_y[ids] / n + 0.5


def _midpoint_outlines(polygons: np.ndarray) -> np.ndarray:
    """Cut every corner of pixel outlines at 45 degrees: the ring through the midpoints of the unit pixel edges.

    Input rings have whole-number vertices and axis-parallel edges; each edge of length ``L`` is split into
    ``L`` unit steps and the new ring joins their midpoints. That is the marching-squares contour at 0.5 of
    the pixel mask: it passes half a pixel from the centres on both sides, so it keeps exactly the same
    pixel centres inside.
    """
    rings = shapely.get_exterior_ring(polygons)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring_of[1:] != ring_of[:-1], True]
    starts, ends = coords[:-1][~closing[:-1]], coords[1:][~closing[:-1]]
    edge_ring = ring_of[:-1][~closing[:-1]]
    steps = np.abs(ends - starts).sum(axis=1).astype(np.int64)  # axis-parallel: length = |dx| + |dy|
    unit = (ends - starts) / steps[:, None]
    edge_index = np.repeat(np.arange(len(steps)), steps)
    k = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
    mids = starts[edge_index] + (k[:, None] + 0.5) * unit[edge_index]
    return shapely.polygons(shapely.linearrings(mids, indices=edge_ring[edge_index]))


def _cut_corners(polygons: np.ndarray) -> np.ndarray:
    """One more corner-cutting pass: the ring through the midpoints of the edges of each ring."""
    coords, ring_of = shapely.get_coordinates(shapely.get_exterior_ring(polygons), return_index=True)
    closing = np.r_[ring_of[1:] != ring_of[:-1], True]
    keep = ~closing[:-1]
    mids = (coords[:-1][keep] + coords[1:][keep]) / 2
    return shapely.polygons(shapely.linearrings(mids, indices=ring_of[:-1][keep]))


def default_tolerance_px(areas_px: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The default Douglas-Peucker tolerance of nuclei of these areas (model px^2), in model pixels.

    ``DEFAULT_SIMPLIFY_RADIUS_FRAC * sqrt(area / pi)``, clipped to :data:`SIMPLIFY_PX_RANGE`.

    Example
    -------
    >>> default_tolerance_px([4, 300, 1200, 10**6]).round(3).tolist()
    [0.2, 0.4, 0.4, 0.4]
    """
    radius_px = np.sqrt(np.asarray(areas_px, dtype=np.float64) / np.pi)
    return np.clip(DEFAULT_SIMPLIFY_RADIUS_FRAC * radius_px, *SIMPLIFY_PX_RANGE)


def simplify_outlines(
    polygons_px: npt.ArrayLike,
    simplify_px: float | npt.ArrayLike | None = None,
    *,
    smooth_passes: int = DEFAULT_SMOOTH_PASSES,
) -> npt.NDArray[np.object_]:
    """Smoothed and simplified outlines of pixel polygons, in the same (model pixel) coordinates.

    Parameters
    ----------
    polygons_px
        Shapely Polygons traced from a mask in its own pixel grid (whole-number vertices, axis-parallel
        edges, as ``rasterio.features.shapes`` gives them); holes are dropped.
    simplify_px
        Douglas-Peucker tolerance in model pixels, one for all or one per polygon, with
        ``preserve_topology=True`` (a polygon is never emptied or broken); ``0`` keeps every vertex.
        Default: :func:`default_tolerance_px` of each polygon's area.
    smooth_passes
        Corner-cutting passes before simplifying: ``0`` keeps the pixel staircase; ``1`` cuts every pixel
        corner at 45 degrees (the marching-squares contour, which holds exactly the same pixel centres);
        each further pass joins the midpoints of the previous outline's edges (the outline moves by less
        than 0.2 px per pass, rounding what the staircase left).

    A polygon that is not valid after these steps (not seen on real nuclei) falls back to its pixel outline.

    Example
    -------
    >>> import shapely
    >>> square = shapely.box(0, 0, 4, 4)
    >>> (shapely.get_num_coordinates(simplify_outlines([square], 0.0, smooth_passes=1)) - 1).tolist()
    [16]
    >>> (shapely.get_num_coordinates(simplify_outlines([square], 0.25, smooth_passes=1)) - 1).tolist()
    [8]
    """
    if isinstance(smooth_passes, bool) or not isinstance(smooth_passes, (int, np.integer)) or smooth_passes < 0:
        raise InputError(f"smooth_passes must be a whole number >= 0, got {smooth_passes!r}")
    geoms = np.asarray(polygons_px, dtype=object).reshape(-1)
    shells = shapely.polygons(shapely.get_exterior_ring(geoms)) if geoms.size else np.empty(0, dtype=object)
    if simplify_px is None:
        tolerance = default_tolerance_px(shapely.area(shells))
    else:
        tolerance = np.asarray(simplify_px, dtype=np.float64)
        if tolerance.ndim > 1 or (tolerance.ndim == 1 and tolerance.size != geoms.size):
            raise InputError(
                f"simplify_px must be one number or one per polygon ({geoms.size}), got shape {tolerance.shape}"
            )
        if not np.isfinite(tolerance).all() or (tolerance < 0).any():
            bad = tolerance if tolerance.ndim == 0 else tolerance[~np.isfinite(tolerance) | (tolerance < 0)][0]
            raise InputError(f"simplify_px must be a finite number >= 0, got {float(bad):g}")
    if geoms.size == 0:
        return np.empty(0, dtype=object)
    out = shells
    for done in range(int(smooth_passes)):
        out = _midpoint_outlines(out) if done == 0 else _cut_corners(out)
    tolerance = np.broadcast_to(tolerance, out.shape)
    simplify = tolerance > 0  # 0 keeps every vertex (GEOS would still drop collinear ones)
    if simplify.any():
        out = out.copy()
        out[simplify] = shapely.simplify(out[simplify], tolerance[simplify], preserve_topology=True)
    bad = ~shapely.is_valid(out) | shapely.is_empty(out) | (shapely.get_type_id(out) != 3)
    if bad.any():
        out[bad] = shells[bad]
    return np.asarray(out, dtype=object)


def nuclei_from_labels(
    labels: npt.ArrayLike,
    affine: Affine | None = None,
    *,
    simplify_px: float | npt.ArrayLike | None = None,
    smooth_passes: int = DEFAULT_SMOOTH_PASSES,
    clean: bool = True,
) -> NucleusSet:
    """The nuclei of one block's instance image, outlines simplified, in level-0 coordinates.

    Parameters
    ----------
    labels
        ``(H, W)`` instance image in the model's pixel grid: 0 background, ``1..N`` one id per nucleus
        (any integer dtype; ids need not be contiguous).
    affine
        Block pixel -> level-0 pixel, e.g. ``Affine(2, 0, x0, 0, 2, y0)`` for a model at 0.5 um/px over a
        0.25 um/px slide with the block (halo included) starting at level-0 ``(x0, y0)``. Default: identity.
    simplify_px, smooth_passes
        Outline smoothing and simplification in model pixels (see :func:`simplify_outlines`); by default
        each nucleus's tolerance follows its size (:func:`default_tolerance_px`).
    clean
        Apply :func:`clean_instances` first (largest piece per id, holes filled). Pass ``False`` only for an
        image that is already clean (e.g. to measure and vectorize the same cleaned image).

    Returns
    -------
    NucleusSet
        One nucleus per id present, in increasing id order.

    Example
    -------
    >>> labels = np.zeros((6, 6), np.int32)
    >>> labels[1:5, 1:5] = 4
    >>> labels[2:4, 2:4] = 0                       # a hole: filled
    >>> labels[0, 5] = 4                           # a stray pixel: dropped
    >>> n = nuclei_from_labels(labels, smooth_passes=0, simplify_px=0)
    >>> n.areas_px.tolist(), n.polygons[0].area, n.centroids_xy.tolist()
    ([16], 16.0, [[3.0, 3.0]])
    """
    arr = clean_instances(labels) if clean else check_instance_labels(labels)
    transform = Affine.identity() if affine is None else affine
    ids, areas, cx, cy = _pixel_stats(arr)
    if ids.size == 0:
        return NucleusSet.empty()
    traced = vectorize_mask(arr)  # one rasterio.features.shapes pass, model pixel coordinates
    pieces_label, pieces = traced.labels, traced.polygons
    # one polygon per id: the largest (after clean_instances there is exactly one per id)
    order = np.lexsort((-shapely.area(pieces), pieces_label))
    first = np.ones(order.size, bool)
    first[1:] = pieces_label[order][1:] != pieces_label[order][:-1]
    chosen_label, chosen = pieces_label[order][first], pieces[order][first]
    if not np.array_equal(chosen_label, ids):  # every id has pixels, so it has a polygon
        raise AssertionError(f"vectorized ids {chosen_label[:10]} differ from the pixel ids {ids[:10]}")
    outlines = simplify_outlines(chosen, simplify_px, smooth_passes=smooth_passes)
    if transform != Affine.identity():
        outlines = shapely.transform(outlines, lambda xy: apply_affine_xy(transform, xy))
    x0, y0 = apply_affine(transform, cx, cy)
    return NucleusSet(ids, np.column_stack([x0, y0]).astype(np.float64), outlines, areas)
