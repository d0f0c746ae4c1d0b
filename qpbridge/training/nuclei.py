"""Validating a nuclei model: its nuclei on the validation tiles scored against the tiles' instances, and the
post-processing thresholds tuned on them at the end of a run.

The network's softmax over the validation tiles is kept (:class:`NucleiPredictions`); each tile's nuclei come
from :func:`~qpbridge.nuclei.postprocess.instances_from_probabilities` with the card's
:class:`~qpbridge.cards.NucleiParams` and are scored with :func:`~qpbridge.instance_metrics.instance_scores`,
pooled over the tiles (AJI, Dice, PQ as usually reported over a data set). Pixels marked ignore (65535) are
left out of both the prediction and the reference.

:func:`tune_thresholds` tries every pair of :data:`FOREGROUND_GRID` x :data:`MARKER_GRID` and keeps the one of
highest pooled AJI (ties: the first in grid order).

Example
-------
>>> import numpy as np
>>> from qpbridge.cards import NucleiParams
>>> ref = np.zeros((16, 16), np.int32); ref[2:8, 2:8] = 1; ref[9:15, 9:15] = 2
>>> from qpbridge.nuclei.postprocess import contour_targets
>>> probs = np.stack([contour_targets(ref, 1) == c for c in range(3)]).astype(np.float32)
>>> p = NucleiPredictions([probs], [ref], mpp=0.25)
>>> round(p.scores(NucleiParams(min_area_um2=0)).aji, 3)
1.0
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qpbridge.cards import NucleiParams
from qpbridge.classes import INSTANCE_IGNORE_LABEL
from qpbridge.instance_metrics import InstanceScores, instance_scores
from qpbridge.nuclei.postprocess import instances_from_probabilities

__all__ = ["FOREGROUND_GRID", "MARKER_GRID", "NucleiPredictions", "nuclei_metrics", "tune_thresholds"]

#: ``foreground_threshold`` values tried by :func:`tune_thresholds`.
FOREGROUND_GRID: tuple[float, ...] = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
#: ``marker_threshold`` values tried by :func:`tune_thresholds`.
MARKER_GRID: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)


@dataclass
class NucleiPredictions:
    """The softmax ``(3, H, W)`` of each validation tile and the tile's instances (65535 ignore), at ``mpp``."""

    probabilities: Sequence[np.ndarray]
    references: Sequence[np.ndarray]
    mpp: float

    def scores(self, params: NucleiParams) -> InstanceScores:
        """The tiles' nuclei under ``params`` scored against their instances, pooled over the tiles."""
        per_tile = []
        for probs, ref in zip(self.probabilities, self.references, strict=True):
            ignored = ref == INSTANCE_IGNORE_LABEL
            found = instances_from_probabilities(probs, params, self.mpp)
            found[ignored] = 0
            per_tile.append(instance_scores(found, np.where(ignored, 0, ref)))
        return InstanceScores.pooled(per_tile)


def nuclei_metrics(scores: InstanceScores, prefix: str = "") -> dict[str, Any]:
    """The card's / epoch record's instance metrics (``aji``, ``dice``, ``pq``, ``f1`` and the counts)."""
    keys = ("aji", "dice", "pq", "sq", "rq", "f1", "precision", "recall", "tp", "fp", "fn", "n_pred", "n_ref")
    raw = scores.to_dict()
    return {f"{prefix}{k}": raw[k] for k in keys}


def tune_thresholds(predictions: NucleiPredictions, params: NucleiParams) -> tuple[NucleiParams, InstanceScores]:
    """The ``foreground_threshold`` and ``marker_threshold`` of highest pooled AJI on the predictions."""
    best: tuple[NucleiParams, InstanceScores] | None = None
    for fg, marker in itertools.product(FOREGROUND_GRID, MARKER_GRID):
        candidate = replace(params, foreground_threshold=fg, marker_threshold=marker)
        scores = predictions.scores(candidate)
        if best is None or scores.aji > best[1].aji:
            best = (candidate, scores)
    assert best is not None  # the grids are not empty
    return best
