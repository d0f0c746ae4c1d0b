"""Tests of qpbridge.instance_metrics against scores worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine

from qpbridge.errors import InputError
from qpbridge.instance_metrics import (
    InstanceScores,
    instance_scores,
    polygon_instance_scores,
    rasterize_instances,
)


def two_squares() -> np.ndarray:
    """Reference: 4 x 4 squares A (id 1, columns 1-4) and B (id 2, columns 6-9), rows 1-4."""
    ref = np.zeros((6, 11), np.int32)
    ref[1:5, 1:5] = 1
    ref[1:5, 6:10] = 2
    return ref


def test_shifted_square_against_two_squares() -> None:
    # prediction: A shifted right by one column (columns 2-5): |P & A| = 4 x 3 = 12, |P | A| = 16 + 16 - 12 = 20
    pred = np.zeros((6, 11), np.int32)
    pred[1:5, 2:6] = 7
    s = instance_scores(pred, two_squares())
    # Dice: 2 x 12 / (16 + 32) = 0.5
    assert s.dice == 0.5
    assert (s.fg_intersection_px, s.fg_pred_px, s.fg_ref_px) == (12, 16, 32)
    # AJI: A -> P (IoU 0.6): C = 12, U = 20; B overlaps nothing: U += 16; no unused prediction -> 12 / 36
    assert (s.aji_intersection_px, s.aji_union_px) == (12, 36)
    assert s.aji == pytest.approx(1 / 3)
    # PQ: one match at IoU 0.6 > 0.5; FP 0, FN 1 (B): SQ 0.6, RQ 1 / (1 + 0.5) = 2/3, PQ 0.4
    assert (s.tp, s.fp, s.fn, s.n_pred, s.n_ref) == (1, 0, 1, 1, 2)
    assert s.sq == pytest.approx(0.6)
    assert s.rq == pytest.approx(2 / 3)
    assert s.pq == pytest.approx(0.4)
    assert s.f1 == pytest.approx(2 / 3)
    assert (s.precision, s.recall) == (1.0, 0.5)


def test_empty_prediction() -> None:
    s = instance_scores(np.zeros((6, 11), np.int32), two_squares())
    assert (s.dice, s.aji, s.pq, s.sq, s.rq, s.f1, s.precision, s.recall) == (0, 0, 0, 0, 0, 0, 0, 0)
    assert (s.tp, s.fp, s.fn) == (0, 0, 2)
    assert (s.aji_intersection_px, s.aji_union_px) == (0, 32)  # both references add their area


def test_empty_reference() -> None:
    pred = np.zeros((6, 11), np.int32)
    pred[1:5, 2:6] = 3
    s = instance_scores(pred, np.zeros((6, 11), np.int32))
    assert (s.dice, s.aji, s.pq, s.f1, s.precision, s.recall) == (0, 0, 0, 0, 0, 0)
    assert (s.tp, s.fp, s.fn) == (0, 1, 0)
    assert (s.aji_intersection_px, s.aji_union_px) == (0, 16)  # the unused prediction


def test_both_empty_is_perfect() -> None:
    s = instance_scores(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8))
    assert (s.dice, s.aji, s.pq, s.sq, s.rq, s.f1, s.precision, s.recall) == (1, 1, 1, 1, 1, 1, 1, 1)
    assert (s.tp, s.fp, s.fn, s.n_pred, s.n_ref) == (0, 0, 0, 0, 0)


def test_one_prediction_covering_two_references() -> None:
    # references: columns 0-2 (id 1) and 3-5 (id 2), 4 rows: 12 px each; prediction: columns 0-5, 24 px
    ref = np.zeros((4, 8), np.int32)
    ref[:, :3], ref[:, 3:6] = 1, 2
    pred = np.zeros((4, 8), np.int32)
    pred[:, :6] = 5
    s = instance_scores(pred, ref)
    assert s.dice == 1.0  # same foreground
    # each reference takes the prediction (IoU 12/24 = 0.5): C = 12 + 12, U = 24 + 24 (counted twice) -> 0.5
    assert (s.aji_intersection_px, s.aji_union_px, s.aji) == (24, 48, 0.5)
    # IoU 0.5 is not > 0.5: no match
    assert (s.tp, s.fp, s.fn, s.pq, s.f1) == (0, 1, 2, 0.0, 0.0)


def test_unused_prediction_and_non_contiguous_ids() -> None:
    # reference 1 (2 x 2) matched exactly by prediction 40; prediction 900 (3 px) touches nothing
    ref = np.zeros((5, 5), np.int64)
    ref[0:2, 0:2] = 1
    pred = np.zeros((5, 5), np.int64)
    pred[0:2, 0:2] = 40
    pred[4, 2:5] = 900
    s = instance_scores(pred, ref)
    assert (s.aji_intersection_px, s.aji_union_px) == (4, 4 + 3)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.sq == 1.0 and s.rq == pytest.approx(1 / 1.5)
    assert s.dice == pytest.approx(8 / 11)  # 2 x 4 / (7 + 4)


def test_aji_tie_goes_to_lowest_predicted_id() -> None:
    # reference: one row of 4 px; predictions 9 (left half) and 3 (right half): IoU 0.5 each
    ref = np.array([[1, 1, 1, 1]])
    pred = np.array([[9, 9, 3, 3]])
    s = instance_scores(pred, ref)
    # the reference takes 3 (C = 2, U = 4); 9 is never taken: U += 2 -> 2 / 6
    assert (s.aji_intersection_px, s.aji_union_px) == (2, 6)
    assert (s.tp, s.fp, s.fn) == (0, 2, 1)


def test_iou_threshold() -> None:
    pred = np.zeros((6, 11), np.int32)
    pred[1:5, 2:6] = 7  # IoU 0.6 with A
    assert instance_scores(pred, two_squares(), iou_threshold=0.55).tp == 1
    strict = instance_scores(pred, two_squares(), iou_threshold=0.75)
    assert (strict.tp, strict.fp, strict.fn, strict.pq, strict.iou_threshold) == (0, 1, 2, 0.0, 0.75)
    assert strict.aji == pytest.approx(1 / 3)  # AJI has no threshold
    with pytest.raises(InputError, match=r"iou_threshold must be in \[0.5, 1\), got 0.3: below 0.5 IoU matches"):
        instance_scores(pred, two_squares(), iou_threshold=0.3)


def test_large_ids_take_the_sorting_path() -> None:
    pred = np.zeros((6, 11), np.int64)
    pred[1:5, 2:6] = 10**12
    ref = two_squares().astype(np.int64) * 10**11
    assert instance_scores(pred, ref) == instance_scores((pred > 0).astype(np.int32) * 7, two_squares())


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match=r"predicted \(2, 2\) and reference \(2, 3\) instance images must have"):
        instance_scores(np.zeros((2, 2), np.int32), np.zeros((2, 3), np.int32))
    with pytest.raises(InputError, match="the predicted instance image must hold integer ids .*got dtype float64"):
        instance_scores(np.zeros((2, 2)), np.zeros((2, 2), np.int32))
    with pytest.raises(InputError, match=r"the reference instance image has negative ids \(-1\)"):
        instance_scores(np.zeros((2, 2), np.int32), np.full((2, 2), -1, np.int32))
    with pytest.raises(InputError, match=r"must be 2-D \(rows, cols\), got shape \(4,\)"):
        instance_scores(np.zeros(4, np.int32), np.zeros(4, np.int32))


def test_pooled_adds_sums() -> None:
    pred = np.zeros((6, 11), np.int32)
    pred[1:5, 2:6] = 7
    a = instance_scores(pred, two_squares())  # TP 1, FN 1, AJI 12 / 36
    b = instance_scores(two_squares(), two_squares())  # TP 2, AJI 32 / 32
    p = InstanceScores.pooled([a, b])
    assert (p.tp, p.fp, p.fn, p.n_pred, p.n_ref) == (3, 0, 1, 3, 4)
    assert p.aji == pytest.approx(44 / 68)
    assert p.sq == pytest.approx((0.6 + 2.0) / 3)
    assert p.dice == pytest.approx((24 + 64) / (48 + 64))
    with pytest.raises(InputError, match="no scores to pool"):
        InstanceScores.pooled([])
    with pytest.raises(InputError, match=r"different IoU thresholds \[0.5, 0.75\]"):
        InstanceScores.pooled([a, instance_scores(pred, two_squares(), iou_threshold=0.75)])


def test_rasterize_instances_ids_and_pixel_centres() -> None:
    out = rasterize_instances([shapely.box(0, 0, 2, 1), shapely.box(1, 1, 3, 2), shapely.box(0.6, 0, 0.9, 2)], (2, 3))
    # the third box holds no pixel centre; ids are positions + 1
    assert out.tolist() == [[1, 1, 0], [0, 2, 2]]
    assert out.dtype == np.int32
    assert rasterize_instances([], (2, 2)).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(InputError, match=r"shape_hw must be \(height, width\) with both > 0, got \(0, 3\)"):
        rasterize_instances([], (0, 3))


def test_polygon_scores_on_a_common_affine() -> None:
    # level-0 polygons scored on a grid of 4 x 4 level-0 px cells starting at (1000, 2000)
    grid = Affine(4, 0, 1000, 0, 4, 2000)
    ref = [shapely.box(1004, 2004, 1020, 2020), shapely.box(1024, 2004, 1040, 2020)]  # the two 4 x 4 squares
    pred = [shapely.box(1008, 2004, 1024, 2020)]  # shifted by one grid pixel
    s = polygon_instance_scores(pred, ref, (6, 11), grid)
    assert s == instance_scores(rasterize_instances(pred, (6, 11), grid), two_squares())
    assert (s.tp, s.fn, s.dice) == (1, 1, 0.5)
    assert s.aji == pytest.approx(1 / 3)
