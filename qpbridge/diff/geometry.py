"""The area overlays of ``qpbridge diff``: unions as disjoint parts, differences, intersections, the priority rule.

Every function works on numpy arrays of shapely 2 geometries (level-0 px) with its vectorized operations, and
an STRtree pairs the parts that meet: a union is kept as its disjoint simple polygons, never as one huge
multipolygon, so 10^5 objects take seconds. :func:`change_pieces` gives the geometry of what the
pathologist changed (:class:`ChangePieces`).

Examples
--------
>>> from shapely import box
>>> a = as_geometry_array([box(0, 0, 10, 10), box(5, 0, 15, 10)])
>>> parts = union_parts(a)
>>> len(parts), float(shapely.area(parts).sum())
(1, 150.0)
>>> rest, index = subtract(parts, as_geometry_array([box(0, 0, 5, 10)]))
>>> float(rest[0].area), index.tolist()
(100.0, [0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

__all__ = [
    "REL_EPS",
    "ChangePieces",
    "as_geometry_array",
    "change_pieces",
    "clean_area",
    "explode_polygons",
    "overlay",
    "resolve_priority",
    "subtract",
    "union_parts",
]

#: Areas within this relative error of zero are zero (float noise of overlaying identical shapes).
REL_EPS = 1e-9


@dataclass
class ChangePieces:
    """The geometry of the changes (level-0 px polygons, disjoint), with the classes involved.

    ``added``: ``(corrected class, polygon)``; ``removed``: ``(predicted class, polygon)``;
    ``relabelled``: ``(predicted class, corrected class, polygon)``.
    """

    added: list[tuple[str, shapely.Geometry]]
    removed: list[tuple[str, shapely.Geometry]]
    relabelled: list[tuple[str, str, shapely.Geometry]]

    def all_geometries(self) -> np.ndarray:
        """Every piece, as one array."""
        geoms = [g for _, g in self.added] + [g for _, g in self.removed] + [g for _, _, g in self.relabelled]
        out = np.empty(len(geoms), dtype=object)
        out[:] = geoms
        return out


def as_geometry_array(geoms: Sequence[shapely.Geometry]) -> np.ndarray:
    """``geoms`` as a 1-d object array (also when they are multi-part geometries, which numpy would unpack).

    Examples
    --------
    >>> as_geometry_array([shapely.MultiPoint([(0, 0), (1, 1)])]).shape
    (1,)
    """
    out = np.empty(len(geoms), dtype=object)
    out[:] = list(geoms)
    return out


def explode_polygons(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The simple polygons with an area in any geometries (collections, multi-parts), and their index.

    Examples
    --------
    >>> from shapely import box
    >>> parts, index = explode_polygons(as_geometry_array([box(0, 0, 1, 1), box(0, 0, 2, 2).union(box(5, 5, 6, 6))]))
    >>> shapely.area(parts).tolist(), index.tolist()
    ([1.0, 4.0, 1.0], [0, 1, 1])
    """
    index = np.arange(len(geoms))
    parts = geoms
    while len(parts):
        types = shapely.get_type_id(parts)
        multi = np.isin(types, (4, 5, 6, 7))
        if not multi.any():
            break
        exploded, where = shapely.get_parts(parts, return_index=True)
        index = index[where]
        parts = exploded
    if not len(parts):
        return np.empty(0, dtype=object), np.empty(0, dtype=np.intp)
    keep = (shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)
    return parts[keep], index[keep]


def union_parts(geoms: np.ndarray) -> np.ndarray:
    """The union of ``geoms`` as disjoint simple polygons.

    Examples
    --------
    >>> from shapely import box
    >>> shapely.area(union_parts(as_geometry_array([box(0, 0, 2, 2), box(1, 0, 3, 2), box(9, 9, 10, 10)]))).tolist()
    [6.0, 1.0]
    """
    if not len(geoms):
        return np.empty(0, dtype=object)
    merged = shapely.disjoint_subset_union_all(geoms) if len(geoms) > 1 else geoms[0]
    parts, _ = explode_polygons(np.array([merged], dtype=object))
    return parts


def subtract(parts: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``parts[i]`` minus the union of ``others``, exploded: ``(polygons, index into parts)``.

    Examples
    --------
    >>> from shapely import box
    >>> rest, index = subtract(as_geometry_array([box(0, 0, 4, 4), box(10, 0, 12, 2)]),
    ...                        as_geometry_array([box(1, -1, 2, 5), box(3, -1, 4, 5)]))
    >>> shapely.area(rest).tolist(), index.tolist()
    ([4.0, 4.0, 4.0], [0, 0, 1])
    """
    out = parts.copy()
    if len(parts) and len(others):
        tree = shapely.STRtree(others)
        hit_i, hit_j = tree.query(parts, predicate="intersects")
        if len(hit_i):
            counts = np.bincount(hit_i, minlength=len(parts))
            single = counts[hit_i] == 1
            out[hit_i[single]] = shapely.difference(parts[hit_i[single]], others[hit_j[single]])
            multi_i, multi_j = hit_i[~single], hit_j[~single]
            order = np.argsort(multi_i, kind="stable")
            multi_i, multi_j = multi_i[order], multi_j[order]
            bounds = np.flatnonzero(np.diff(multi_i)) + 1
            for group_i, group_j in zip(np.split(multi_i, bounds), np.split(multi_j, bounds), strict=True):
                if len(group_i):
                    k = int(group_i[0])
                    out[k] = shapely.difference(parts[k], shapely.union_all(others[group_j]))
    return explode_polygons(out)


def overlay(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of ``a`` and ``b`` parts that meet and their intersections: ``(i, j, geometries)``.

    Examples
    --------
    >>> from shapely import box
    >>> a, b = as_geometry_array([box(0, 0, 2, 2)]), as_geometry_array([box(9, 9, 10, 10), box(1, 1, 3, 3)])
    >>> i, j, inter = overlay(a, b)
    >>> i.tolist(), j.tolist(), shapely.area(inter).tolist()
    ([0], [1], [1.0])
    """
    if not len(a) or not len(b):
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, np.empty(0, dtype=object)
    tree = shapely.STRtree(b)
    hit_i, hit_j = tree.query(a, predicate="intersects")
    return hit_i, hit_j, shapely.intersection(a[hit_i], b[hit_j])


def resolve_priority(unions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-class disjoint parts (index = priority, lowest first) -> parts where higher classes win, and their class.

    Examples
    --------
    >>> from shapely import box
    >>> parts, labels = resolve_priority([as_geometry_array([box(0, 0, 4, 4)]), as_geometry_array([box(2, 0, 6, 4)])])
    >>> shapely.area(parts).tolist(), labels.tolist()
    ([8.0, 16.0], [0, 1])
    """
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    higher = np.empty(0, dtype=object)
    for k in range(len(unions) - 1, -1, -1):
        own = unions[k]
        kept = subtract(own, higher)[0] if len(higher) else own
        parts.append(kept)
        labels.append(np.full(len(kept), k, dtype=np.intp))
        higher = np.concatenate([higher, own])
    if not parts:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.intp)
    return np.concatenate(parts[::-1]), np.concatenate(labels[::-1])


def clean_area(value: float, scale: float) -> float:
    """``value`` with float noise around zero removed (and never negative): zero within :data:`REL_EPS` of ``scale``.

    Examples
    --------
    >>> clean_area(1e-7, 1e6), clean_area(-3.0, 10.0), clean_area(2.5, 10.0)
    (0.0, 0.0, 2.5)
    """
    return 0.0 if value <= REL_EPS * max(scale, 1.0) else float(value)


def change_pieces(
    classes: Sequence[str], pred: np.ndarray, pred_cls: np.ndarray, corr: np.ndarray, corr_cls: np.ndarray
) -> ChangePieces:
    """What changed between the predicted parts ``pred`` (of class ``classes[pred_cls[i]]``) and the corrected ones.

    Both are disjoint within themselves (after :func:`resolve_priority`).

    Examples
    --------
    >>> from shapely import box
    >>> pieces = change_pieces(["Benign", "Tumor"], as_geometry_array([box(0, 0, 4, 4)]), np.array([0]),
    ...                        as_geometry_array([box(2, 0, 6, 4)]), np.array([1]))
    >>> [(c, g.area) for c, g in pieces.added], [(c, g.area) for c, g in pieces.removed]
    ([('Tumor', 8.0)], [('Benign', 8.0)])
    >>> [(a, b, g.area) for a, b, g in pieces.relabelled]
    [('Benign', 'Tumor', 8.0)]
    """
    removed_geoms, removed_idx = subtract(pred, corr)
    added_geoms, added_idx = subtract(corr, pred)
    hit_i, hit_j, inter = overlay(pred, corr)
    relabel = pred_cls[hit_i] != corr_cls[hit_j]
    rel_geoms, rel_idx = explode_polygons(inter[relabel])
    rel_i, rel_j = hit_i[relabel][rel_idx], hit_j[relabel][rel_idx]
    return ChangePieces(
        added=[(classes[int(corr_cls[k])], g) for g, k in zip(added_geoms, added_idx, strict=True)],
        removed=[(classes[int(pred_cls[k])], g) for g, k in zip(removed_geoms, removed_idx, strict=True)],
        relabelled=[
            (classes[int(pred_cls[i])], classes[int(corr_cls[j])], g)
            for g, i, j in zip(rel_geoms, rel_i, rel_j, strict=True)
        ],
    )

