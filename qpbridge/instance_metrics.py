"""Instance segmentation scores between a predicted and a reference instance image (or polygon sets).

All scores come from one sparse contingency table of ``(predicted id, reference id)`` pixel counts, built
with one ``np.unique`` over the pixels where either image has a nucleus (no loop over instances or pixels):

- **Dice** (pixel, foreground): ``2 |P & R| / (|P| + |R|)`` of the masks ``pred > 0`` and ``ref > 0``.
- **AJI**, aggregated Jaccard index (Kumar et al., IEEE TMI 2017): each reference instance ``G`` takes the
  predicted instance ``S`` of largest IoU with it (ties: the lowest predicted id; a predicted instance may
  be taken by several references); ``AJI = sum |G & S| / (sum |G | S| + sum of the areas of predicted
  instances never taken)``. A reference that overlaps no prediction adds its area to the union.
- **PQ**, panoptic quality (Kirillov et al., CVPR 2019): a predicted and a reference instance match when
  their IoU is above ``iou_threshold`` (0.5: such matches are unique, since instances of one image do not
  overlap); ``SQ`` = mean IoU of the matches, ``RQ = TP / (TP + FP/2 + FN/2)``, ``PQ = SQ x RQ``.
- **F1** at the same threshold, with the TP/FP/FN counts, precision and recall (``F1`` equals ``RQ``).

Conventions where a ratio has nothing to count: both images empty -> every score 1.0 (nothing to find,
nothing found); no match -> SQ 0.0. The raw sums (intersection, union, IoU sum, counts) are kept, so scores
over many tiles can be pooled by adding them (:meth:`InstanceScores.pooled`) rather than by averaging ratios.

Example
-------
>>> import numpy as np
>>> ref = np.zeros((6, 10), np.int32); ref[1:5, 1:5] = 1; ref[1:5, 6:10] = 2   # two 4 x 4 squares
>>> pred = np.zeros((6, 10), np.int32); pred[1:5, 2:6] = 7                     # one square shifted by 1
>>> s = instance_scores(pred, ref)
>>> s.tp, s.fp, s.fn, round(s.aji, 4), round(s.pq, 4)
(1, 0, 1, 0.3333, 0.4)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio.features
from affine import Affine

from qpbridge.errors import InputError
from qpbridge.rasterize import polygon_dicts

__all__ = [
    "InstanceScores",
    "instance_scores",
    "polygon_instance_scores",
    "rasterize_instances",
]


@dataclass(frozen=True)
class InstanceScores:
    """Instance segmentation scores of one prediction against one reference, with the sums behind them.

    Attributes
    ----------
    dice, aji, pq, sq, rq, f1, precision, recall
        The scores (see the module docstring for definitions and empty-image conventions).
    tp, fp, fn
        Matches at IoU > ``iou_threshold``, unmatched predictions, unmatched references.
    n_pred, n_ref
        Instances in the prediction and the reference.
    iou_threshold
        The matching threshold of ``tp``/``fp``/``fn``, PQ and F1.
    fg_intersection_px, fg_pred_px, fg_ref_px
        Foreground pixel counts behind Dice.
    aji_intersection_px, aji_union_px
        AJI numerator and denominator.
    matched_iou_sum
        Sum of the IoU of the TP matches (SQ numerator).
    """

    dice: float
    aji: float
    pq: float
    sq: float
    rq: float
    f1: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    n_pred: int
    n_ref: int
    iou_threshold: float
    fg_intersection_px: int
    fg_pred_px: int
    fg_ref_px: int
    aji_intersection_px: int
    aji_union_px: int
    matched_iou_sum: float

    def to_dict(self) -> dict[str, Any]:
        """The scores as plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_sums(
        cls,
        *,
        tp: int,
        fp: int,
        fn: int,
        n_pred: int,
        n_ref: int,
        iou_threshold: float,
        fg_intersection_px: int,
        fg_pred_px: int,
        fg_ref_px: int,
        aji_intersection_px: int,
        aji_union_px: int,
        matched_iou_sum: float,
    ) -> InstanceScores:
        """Scores from the sums (how :func:`instance_scores` and :meth:`pooled` finish)."""
        fg_total = fg_pred_px + fg_ref_px
        dice = 2 * fg_intersection_px / fg_total if fg_total else 1.0
        aji = aji_intersection_px / aji_union_px if aji_union_px else 1.0
        nothing = tp + fp + fn == 0
        sq = matched_iou_sum / tp if tp else (1.0 if nothing else 0.0)
        rq = tp / (tp + 0.5 * fp + 0.5 * fn) if not nothing else 1.0
        precision = tp / (tp + fp) if tp + fp else (1.0 if nothing else 0.0)
        recall = tp / (tp + fn) if tp + fn else (1.0 if nothing else 0.0)
        return cls(
            dice=dice,
            aji=aji,
            pq=sq * rq,
            sq=sq,
            rq=rq,
            f1=rq,  # 2 TP / (2 TP + FP + FN)
            precision=precision,
            recall=recall,
            tp=tp,
            fp=fp,
            fn=fn,
            n_pred=n_pred,
            n_ref=n_ref,
            iou_threshold=iou_threshold,
            fg_intersection_px=fg_intersection_px,
            fg_pred_px=fg_pred_px,
            fg_ref_px=fg_ref_px,
            aji_intersection_px=aji_intersection_px,
            aji_union_px=aji_union_px,
            matched_iou_sum=matched_iou_sum,
        )

    @classmethod
    def pooled(cls, scores: Iterable[InstanceScores]) -> InstanceScores:
        """Scores of many tiles pooled by adding their sums (AJI and PQ over a data set, as usually reported).

        Example
        -------
        >>> a = instance_scores(np.array([[1, 0]]), np.array([[1, 0]]))
        >>> b = instance_scores(np.array([[0, 0]]), np.array([[0, 2]]))
        >>> p = InstanceScores.pooled([a, b])
        >>> p.tp, p.fn, p.aji, p.f1
        (1, 1, 0.5, 0.6666666666666666)
        """
        items = list(scores)
        if not items:
            raise InputError("no scores to pool: give at least one InstanceScores")
        thresholds = {s.iou_threshold for s in items}
        if len(thresholds) != 1:
            raise InputError(f"cannot pool scores matched at different IoU thresholds {sorted(thresholds)}")
        return cls.from_sums(
            tp=sum(s.tp for s in items),
            fp=sum(s.fp for s in items),
            fn=sum(s.fn for s in items),
            n_pred=sum(s.n_pred for s in items),
            n_ref=sum(s.n_ref for s in items),
            iou_threshold=items[0].iou_threshold,
            fg_intersection_px=sum(s.fg_intersection_px for s in items),
            fg_pred_px=sum(s.fg_pred_px for s in items),
            fg_ref_px=sum(s.fg_ref_px for s in items),
            aji_intersection_px=sum(s.aji_intersection_px for s in items),
            aji_union_px=sum(s.aji_union_px for s in items),
            matched_iou_sum=float(sum(s.matched_iou_sum for s in items)),
        )


def _check_instances(image: npt.ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise InputError(f"the {what} instance image must be 2-D (rows, cols), got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"the {what} instance image must hold integer ids (0 background), got dtype {arr.dtype}")
    if arr.size and int(arr.min()) < 0:
        raise InputError(f"the {what} instance image has negative ids ({int(arr.min())}): ids must be >= 0")
    return arr


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, index)``: the ids present with 0 first, and each pixel's position in ``ids``."""
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 65536:  # a lookup table: one pass, no sort
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = True
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(ids.size)
        return ids, lut[flat]
    ids, index = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        return np.r_[0, ids], index + 1
    return ids, index


def instance_scores(pred: npt.ArrayLike, ref: npt.ArrayLike, *, iou_threshold: float = 0.5) -> InstanceScores:
    """Dice, AJI, PQ and F1 of a predicted instance image against a reference one of the same shape.

    Parameters
    ----------
    pred, ref
        ``(H, W)`` integer instance images: 0 background, any positive ids (not necessarily contiguous).
    iou_threshold
        Matching threshold of PQ and F1, at least 0.5 (at 0.5 or more, IoU matches are unique; below,
        they would need an assignment step).

    Example
    -------
    >>> one = np.zeros((4, 8), np.int32); one[:, :6] = 5        # one prediction covering ...
    >>> two = np.zeros((4, 8), np.int32); two[:, :3] = 1; two[:, 3:6] = 2   # ... two references
    >>> s = instance_scores(one, two)
    >>> s.dice, s.aji, s.tp, s.fp, s.fn
    (1.0, 0.5, 0, 1, 2)
    """
    if not isinstance(iou_threshold, (int, float)) or not 0.5 <= iou_threshold < 1:
        raise InputError(
            f"iou_threshold must be in [0.5, 1), got {iou_threshold!r}: below 0.5 IoU matches are not unique"
        )
    p = _check_instances(pred, "predicted")
    r = _check_instances(ref, "reference")
    if p.shape != r.shape:
        raise InputError(f"predicted {p.shape} and reference {r.shape} instance images must have the same shape")
    # contiguous indices: 0 = background, 1..n = instances in id order
    p_ids, p_idx = _compact(p.ravel())
    r_ids, r_idx = _compact(r.ravel())
    n_p, n_r = max(p_ids.size - 1, 0), max(r_ids.size - 1, 0)
    p_area = np.bincount(p_idx, minlength=n_p + 1)[1:].astype(np.int64)
    r_area = np.bincount(r_idx, minlength=n_r + 1)[1:].astype(np.int64)

    both = (p_idx > 0) & (r_idx > 0)
    pair_keys, pair_px = np.unique(p_idx[both].astype(np.int64) * (n_r + 1) + r_idx[both], return_counts=True)
    pair_p, pair_r = pair_keys // (n_r + 1) - 1, pair_keys % (n_r + 1) - 1  # 0-based instance indices
    inter = pair_px.astype(np.int64)
    union = p_area[pair_p] + r_area[pair_r] - inter
    iou = inter / union

    fg_inter = int(both.sum())
    fg_pred, fg_ref = int(p_area.sum()), int(r_area.sum())

    # AJI: per reference, the pair of largest IoU (ties: lowest predicted id, i.e. lowest pair key)
    order = np.lexsort((pair_p, -iou, pair_r))
    best = np.ones(order.size, bool)
    best[1:] = pair_r[order][1:] != pair_r[order][:-1]
    chosen = order[best]
    taken = np.zeros(n_p, bool)
    taken[pair_p[chosen]] = True
    unmatched_ref = np.ones(n_r, bool)
    unmatched_ref[pair_r[chosen]] = False
    aji_inter = int(inter[chosen].sum())
    aji_union = int(union[chosen].sum() + r_area[unmatched_ref].sum() + p_area[~taken].sum())

    match = iou > iou_threshold
    tp = int(match.sum())
    return InstanceScores.from_sums(
        tp=tp,
        fp=n_p - tp,
        fn=n_r - tp,
        n_pred=n_p,
        n_ref=n_r,
        iou_threshold=float(iou_threshold),
        fg_intersection_px=fg_inter,
        fg_pred_px=fg_pred,
        fg_ref_px=fg_ref,
        aji_intersection_px=aji_inter,
        aji_union_px=aji_union,
        matched_iou_sum=float(iou[match].sum()),
    )


def rasterize_instances(
    polygons: Sequence[Any] | np.ndarray, shape_hw: tuple[int, int], affine: Affine | None = None
) -> npt.NDArray[np.int32]:
    """Paint polygons into an instance image: polygon ``i`` gets id ``i + 1`` (a later one wins an overlap).

    A pixel belongs to a polygon when its centre lies inside (``all_touched=False``), the rule under which
    ``rasterio.features.shapes`` outlines rasterize back to the same pixels. ``affine`` maps the image's
    pixel corners to the polygons' coordinates (e.g. ``Slide.affine_at(mpp, x_px, y_px)`` for level-0
    GeoJSON); default identity.

    Example
    -------
    >>> from shapely import box
    >>> rasterize_instances([box(0, 0, 2, 1), box(1, 1, 3, 2)], (2, 3)).tolist()
    [[1, 1, 0], [0, 2, 2]]
    """
    if len(shape_hw) != 2 or min(int(shape_hw[0]), int(shape_hw[1])) <= 0:
        raise InputError(f"shape_hw must be (height, width) with both > 0, got {shape_hw}")
    height, width = int(shape_hw[0]), int(shape_hw[1])
    out = np.zeros((height, width), np.int32)
    geoms = np.asarray(polygons, dtype=object).reshape(-1)
    if geoms.size == 0:
        return out
    dicts, owner = polygon_dicts(geoms)
    if dicts:
        rasterio.features.rasterize(
            zip(dicts, (owner + 1).tolist(), strict=True),
            out=out,
            transform=Affine.identity() if affine is None else affine,
            all_touched=False,
        )
    return out


def polygon_instance_scores(
    pred_polygons: Sequence[Any] | np.ndarray,
    ref_polygons: Sequence[Any] | np.ndarray,
    shape_hw: tuple[int, int],
    affine: Affine | None = None,
    *,
    iou_threshold: float = 0.5,
) -> InstanceScores:
    """:func:`instance_scores` of two polygon sets, both rasterized on one pixel grid (e.g. GeoJSON nuclei).

    Parameters
    ----------
    pred_polygons, ref_polygons
        Shapely Polygons/MultiPolygons (one per instance), in the coordinates ``affine`` maps to.
    shape_hw, affine
        The common grid: ``(height, width)`` pixels whose corners ``affine`` maps to polygon coordinates
        (default identity: polygons in pixels of the grid). Choose its pixel size to match the resolution
        the nuclei were segmented at; finer grids score outlines, coarser ones blur them.

    Example
    -------
    >>> from shapely import box
    >>> s = polygon_instance_scores([box(0, 0, 4, 4)], [box(1, 0, 5, 4)], (4, 6))
    >>> s.tp, round(s.aji, 3), s.dice
    (1, 0.6, 0.75)
    """
    pred = rasterize_instances(pred_polygons, shape_hw, affine)
    ref = rasterize_instances(ref_polygons, shape_hw, affine)
    return instance_scores(pred, ref, iou_threshold=iou_threshold)
