"""Segmentation metrics from label maps, accumulated block by block, and ``qpbridge evaluate``'s library side.

Per class (one-vs-rest) and overall: IoU, Dice (= F1 on pixel counts), pixel accuracy, sensitivity, specificity,
precision, and ROC AUC when class probabilities are given. Pixels whose *truth* is the ignore label (255)
are excluded from everything.

The counts come from MONAI: each block's labels are one-hot encoded and passed to
``monai.metrics.get_confusion_matrix``; the summed true/false positive/negative counts (int64) then go
through ``monai.metrics.compute_confusion_matrix_metric`` (IoU is its "threat score", Dice its "f1 score").
Only one block of one-hot values is in memory at a time, so a whole-slide mask costs what a block costs.

ROC AUC is the exception: ``monai.metrics.compute_roc_auc`` needs every score of the image at once and sorts
them, so here each class keeps two histograms of its probability (truth positive / negative, ``auc_bins``
bins over [0, 1]) and the AUC is the Mann-Whitney statistic over them (ties within a bin count one half).
It equals ``compute_roc_auc`` exactly when no two different scores share a bin (the tests check this), and
differs by at most the mass of shared bins otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qpbridge.classes import DEEPBATCH_CLASSES, IGNORE_LABEL
from qpbridge.errors import InputError

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "DEFAULT_BLOCK_PX",
    "ClassMetrics",
    "ConfusionAccumulator",
    "SegmentationMetrics",
    "evaluate_geojson",
    "evaluate_masks",
    "read_label_image",
    "read_probabilities",
]

#: Pixels per block handed to MONAI (bounded one-hot memory: classes x block x 4 bytes, twice).
DEFAULT_BLOCK_PX = 1 << 20


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


@dataclass(frozen=True)
class ClassMetrics:
    """The metrics of one class against all others (pixel counts and rates; NaN where a rate is 0/0)."""

    label: int
    name: str
    tp: int
    fp: int
    tn: int
    fn: int
    iou: float
    dice: float
    sensitivity: float
    specificity: float
    precision: float
    accuracy: float
    auc: float | None = None

    @property
    def f1(self) -> float:
        """F1 score; on pixel counts it is the Dice coefficient."""
        return self.dice

    @property
    def truth_px(self) -> int:
        """Pixels of this class in the truth."""
        return self.tp + self.fn

    @property
    def predicted_px(self) -> int:
        """Pixels predicted as this class."""
        return self.tp + self.fp

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (NaN -> null)."""
        return {
            "label": self.label,
            "name": self.name,
            "truth_px": self.truth_px,
            "predicted_px": self.predicted_px,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "iou": _nan_to_none(self.iou),
            "dice": _nan_to_none(self.dice),
            "f1": _nan_to_none(self.f1),
            "sensitivity": _nan_to_none(self.sensitivity),
            "specificity": _nan_to_none(self.specificity),
            "precision": _nan_to_none(self.precision),
            "accuracy": _nan_to_none(self.accuracy),
            "auc": None if self.auc is None else _nan_to_none(self.auc),
        }


@dataclass(frozen=True)
class SegmentationMetrics:
    """Per-class and overall metrics of one comparison (see :class:`ConfusionAccumulator`).

    ``mean_*`` average the classes where the metric is defined; ``*_foreground`` leave label 0 out.
    """

    classes: tuple[ClassMetrics, ...]
    n_pixels: int
    n_ignored: int
    pixel_accuracy: float
    mean_iou: float
    mean_dice: float
    mean_iou_foreground: float
    mean_dice_foreground: float
    mean_auc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def by_name(self, name: str) -> ClassMetrics:
        """The metrics of the class called ``name``."""
        for cls in self.classes:
            if cls.name == name:
                return cls
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (NaN -> null); what ``qpbridge evaluate --json`` prints."""
        out: dict[str, Any] = {
            "n_pixels": self.n_pixels,
            "n_ignored": self.n_ignored,
            "pixel_accuracy": _nan_to_none(self.pixel_accuracy),
            "mean_iou": _nan_to_none(self.mean_iou),
            "mean_dice": _nan_to_none(self.mean_dice),
            "mean_iou_foreground": _nan_to_none(self.mean_iou_foreground),
            "mean_dice_foreground": _nan_to_none(self.mean_dice_foreground),
            "mean_auc": None if self.mean_auc is None else _nan_to_none(self.mean_auc),
            "classes": [c.to_dict() for c in self.classes],
        }
        out.update(self.extra)
        return out

    def table(self, title: str | None = None) -> Table:
        """A rich table: one row per class, then the overall row.

        Examples
        --------
        >>> acc = ConfusionAccumulator([0, 1])
        >>> acc.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]))
        >>> acc.result().table().row_count
        3
        """
        from rich.table import Table

        def fmt(value: float | None) -> str:
            return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

        with_auc = self.mean_auc is not None
        table = Table(title=title)
        for header in (
            "label",
            "class",
            "truth px",
            "pred px",
            "IoU",
            "Dice",
            "sensitivity",
            "specificity",
            "precision",
        ) + (("AUC",) if with_auc else ()):
            table.add_column(header, justify="left" if header == "class" else "right")
        for c in self.classes:
            row = [
                str(c.label),
                c.name,
                str(c.truth_px),
                str(c.predicted_px),
                fmt(c.iou),
                fmt(c.dice),
                fmt(c.sensitivity),
                fmt(c.specificity),
                fmt(c.precision),
            ]
            table.add_row(*row, *((fmt(c.auc),) if with_auc else ()))
        table.add_section()
        overall = [
            "",
            f"mean (pixel accuracy {fmt(self.pixel_accuracy)})",
            str(self.n_pixels),
            "",
            fmt(self.mean_iou),
            fmt(self.mean_dice),
            "",
            "",
            "",
        ]
        table.add_row(*overall, *((fmt(self.mean_auc),) if with_auc else ()))
        return table


class ConfusionAccumulator:
    """Accumulates per-class confusion counts (and probability histograms) over any number of blocks.

    Parameters
    ----------
    labels
        The class labels, in output order (label ``labels[i]`` is probability channel ``i``).
    names
        Display names of the classes (default ``"class <label>"``).
    ignore_label
        Truth pixels with this value are left out (255).
    auc_bins
        Histogram bins per class for ROC AUC (see the module docstring).
    block_px
        Pixels per MONAI call.

    Examples
    --------
    >>> acc = ConfusionAccumulator([0, 1], ["Background", "ROI"])
    >>> truth = np.array([[0, 0, 1, 1]] * 4)
    >>> pred = np.array([[0, 1, 1, 1]] * 4)
    >>> acc.update(pred, truth)
    >>> m = acc.result()
    >>> round(m.by_name("ROI").iou, 4), m.pixel_accuracy
    (0.6667, 0.75)
    """

    def __init__(
        self,
        labels: Sequence[int],
        names: Sequence[str] | None = None,
        *,
        ignore_label: int = IGNORE_LABEL,
        auc_bins: int = 4096,
        block_px: int = DEFAULT_BLOCK_PX,
    ) -> None:
        self.labels = [int(v) for v in labels]
        if not self.labels:
            raise InputError("no classes to evaluate: give at least one class label")
        if len(set(self.labels)) != len(self.labels) or min(self.labels) < 0:
            raise InputError(f"class labels must be distinct and >= 0, got {self.labels}")
        if ignore_label in self.labels:
            raise InputError(f"the ignore label {ignore_label} cannot also be a class label")
        self.names = list(names) if names is not None else [f"class {v}" for v in self.labels]
        if len(self.names) != len(self.labels):
            raise InputError(f"{len(self.names)} class names for {len(self.labels)} labels")
        self.ignore_label = int(ignore_label)
        self.auc_bins = int(auc_bins)
        self.block_px = max(1, int(block_px))
        n = len(self.labels)
        self._lut = np.full(max(max(self.labels), self.ignore_label) + 1, -1, dtype=np.int64)
        self._lut[self.labels] = np.arange(n)
        self.counts = np.zeros((n, 4), dtype=np.int64)  # tp, fp, tn, fn per class
        self.n_ignored = 0
        self._hist_pos: np.ndarray | None = None
        self._hist_neg: np.ndarray | None = None
        self._blocks_with_probs = 0
        self._blocks = 0

    def _indices(self, values: np.ndarray, what: str) -> np.ndarray:
        values = values.astype(np.int64, copy=False)
        out_of_range = (values < 0) | (values >= self._lut.size)
        index = np.where(out_of_range, -1, self._lut[np.clip(values, 0, self._lut.size - 1)])
        if (index < 0).any():
            bad = sorted({int(v) for v in np.unique(values[index < 0])[:10]})
            raise InputError(
                f"{what} has label(s) {bad} that are not among the classes {self.labels}: "
                "give a class map that covers them"
                + (
                    f" (only the truth may use {self.ignore_label} to mark pixels to ignore)"
                    if self.ignore_label in bad
                    else ""
                )
            )
        return index

    def update(
        self,
        pred: np.ndarray | torch.Tensor,
        truth: np.ndarray | torch.Tensor,
        probs: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Add one block: predicted and true label maps of the same shape, optional class probabilities.

        ``probs`` has shape ``(C, *pred.shape)`` with one channel per class in ``labels`` order; for two
        classes a single channel (or no channel axis) is the probability of the second class.
        """
        pred_np = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        truth_np = truth.detach().cpu().numpy() if isinstance(truth, torch.Tensor) else np.asarray(truth)
        if pred_np.shape != truth_np.shape:
            raise InputError(f"prediction shape {pred_np.shape} differs from truth shape {truth_np.shape}")
        probs_np = self._check_probs(probs, truth_np.shape)
        if self._blocks and (probs_np is None) != (self._blocks_with_probs == 0):
            raise InputError("give class probabilities for every block or for none")
        self._blocks += 1
        truth_flat = truth_np.reshape(-1)
        valid = truth_flat != self.ignore_label
        self.n_ignored += int(valid.size - np.count_nonzero(valid))
        truth_idx = self._indices(truth_flat[valid], "the truth")
        pred_idx = self._indices(pred_np.reshape(-1)[valid], "the prediction")
        self._add_counts(pred_idx, truth_idx)
        if probs_np is not None:
            self._blocks_with_probs += 1
            self._add_histograms(probs_np.reshape(probs_np.shape[0], -1)[:, valid], truth_idx)

    def _check_probs(self, probs: np.ndarray | torch.Tensor | None, shape: tuple[int, ...]) -> np.ndarray | None:
        if probs is None:
            return None
        arr = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
        n = len(self.labels)
        if arr.shape == shape and n == 2:
            arr = arr[None]
        if n == 2 and arr.shape == (1, *shape):
            arr = np.concatenate([1.0 - arr, arr], axis=0)
        if arr.shape != (n, *shape):
            raise InputError(
                f"class probabilities have shape {arr.shape}; expected {(n, *shape)} (one channel per class)"
            )
        return arr

    def _add_counts(self, pred_idx: np.ndarray, truth_idx: np.ndarray) -> None:
        from monai.metrics import get_confusion_matrix

        n = len(self.labels)
        for start in range(0, pred_idx.size, self.block_px):
            p = torch.from_numpy(pred_idx[start : start + self.block_px])
            t = torch.from_numpy(truth_idx[start : start + self.block_px])
            p_hot = torch.nn.functional.one_hot(p, n).T.unsqueeze(0).to(torch.float32)
            t_hot = torch.nn.functional.one_hot(t, n).T.unsqueeze(0).to(torch.float32)
            matrix = get_confusion_matrix(p_hot, t_hot, include_background=True)  # (1, C, 4), exact below 2**24
            self.counts += matrix[0].round().to(torch.int64).numpy()

    def _add_histograms(self, probs: np.ndarray, truth_idx: np.ndarray) -> None:
        n = len(self.labels)
        if self._hist_pos is None or self._hist_neg is None:
            self._hist_pos = np.zeros((n, self.auc_bins), dtype=np.int64)
            self._hist_neg = np.zeros((n, self.auc_bins), dtype=np.int64)
        for c in range(n):
            scores = np.clip(np.nan_to_num(probs[c].astype(np.float64), nan=0.0), 0.0, 1.0)
            bins = np.minimum((scores * self.auc_bins).astype(np.int64), self.auc_bins - 1)
            positive = truth_idx == c
            self._hist_pos[c] += np.bincount(bins[positive], minlength=self.auc_bins)
            self._hist_neg[c] += np.bincount(bins[~positive], minlength=self.auc_bins)

    def _auc(self, c: int) -> float:
        assert self._hist_pos is not None and self._hist_neg is not None
        pos = self._hist_pos[c].astype(np.float64)
        neg = self._hist_neg[c].astype(np.float64)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return math.nan
        negatives_below = np.cumsum(neg) - neg
        return float((pos * (negatives_below + 0.5 * neg)).sum() / (n_pos * n_neg))

    def result(self) -> SegmentationMetrics:
        """The metrics of everything added so far."""
        from monai.metrics import compute_confusion_matrix_metric

        matrix = torch.from_numpy(self.counts.astype(np.float64))

        def metric(name: str) -> list[float]:
            return [float(v) for v in compute_confusion_matrix_metric(name, matrix)]

        iou, dice = metric("threat score"), metric("f1 score")
        sens, spec = metric("sensitivity"), metric("specificity")
        prec, acc = metric("precision"), metric("accuracy")
        with_auc = self._hist_pos is not None
        classes = tuple(
            ClassMetrics(
                label=label,
                name=self.names[i],
                tp=int(self.counts[i, 0]),
                fp=int(self.counts[i, 1]),
                tn=int(self.counts[i, 2]),
                fn=int(self.counts[i, 3]),
                iou=iou[i],
                dice=dice[i],
                sensitivity=sens[i],
                specificity=spec[i],
                precision=prec[i],
                accuracy=acc[i],
                auc=self._auc(i) if with_auc else None,
            )
            for i, label in enumerate(self.labels)
        )
        n_pixels = int(self.counts[0, 0] + self.counts[0, 1] + self.counts[0, 2] + self.counts[0, 3])
        correct = int(self.counts[:, 0].sum())
        foreground = [c for c in classes if c.label != 0]
        aucs = [c.auc for c in classes if c.auc is not None]
        if len(classes) == 2 and with_auc:
            aucs = [classes[1].auc] if classes[1].auc is not None else []  # binary: one curve, not two mirrored
        return SegmentationMetrics(
            classes=classes,
            n_pixels=n_pixels,
            n_ignored=self.n_ignored,
            pixel_accuracy=correct / n_pixels if n_pixels else math.nan,
            mean_iou=_nanmean([c.iou for c in classes]),
            mean_dice=_nanmean([c.dice for c in classes]),
            mean_iou_foreground=_nanmean([c.iou for c in foreground]),
            mean_dice_foreground=_nanmean([c.dice for c in foreground]),
            mean_auc=_nanmean(aucs) if with_auc else None,
        )


# --------------------------------------------------------------------------------------------- evaluate
def read_label_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A 2-D label mask from a PNG (mode L, P, I;16 or I) or TIFF file.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> p = Path(tempfile.mkdtemp()) / "m.png"
    >>> Image.fromarray(np.array([[0, 1], [2, 255]], dtype=np.uint8)).save(p)
    >>> read_label_image(p).tolist()
    [[0, 1], [2, 255]]
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"mask not found: {file}: check the path")
    try:
        if file.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(file))
        else:
            from PIL import Image

            with Image.open(file) as image:
                if image.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                    raise InputError(
                        f"{file} is a {image.mode} image, not a label mask: give a single-channel "
                        "image whose pixel values are class labels (mode L or P)"
                    )
                array = np.asarray(image)
    except InputError:
        raise
    except Exception as exc:  # any decoder failure is the file's problem
        raise InputError(f"cannot read mask {file}: {exc}") from None
    array = np.squeeze(array)
    if array.ndim != 2:
        raise InputError(f"{file} has shape {array.shape}, not a 2-D label mask: give one label per pixel")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        if np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0):
            return array.astype(np.int64)
        raise InputError(f"{file} holds {array.dtype} values, not integer class labels")
    return array.astype(np.int64) if array.dtype == bool else array


def read_probabilities(path: str | os.PathLike[str]) -> np.ndarray:
    """Class probabilities ``(C, H, W)`` from a ``.npy`` or TIFF file; uint8 values are scaled by 1/255."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"probabilities not found: {file}: check the path")
    try:
        if file.suffix.lower() == ".npy":
            array = np.load(file, allow_pickle=False)
        else:
            import tifffile

            array = np.asarray(tifffile.imread(file))
    except Exception as exc:
        raise InputError(f"cannot read probabilities {file}: {exc} (give a .npy or TIFF of shape C x H x W)") from None
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32, copy=False)


def _names_by_label(class_map: Mapping[str, int | str]) -> dict[int, str]:
    """Display name per label: the first name the map gives it (``ignore``/``region``/``skip`` entries name none)."""
    names: dict[int, str] = {}
    for name, label in class_map.items():
        if isinstance(label, int):
            names.setdefault(label, name)
    return names


def evaluate_masks(
    pred_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    *,
    class_map: Mapping[str, int | str] | None = None,
    probs_path: str | os.PathLike[str] | None = None,
    ignore_label: int = IGNORE_LABEL,
) -> SegmentationMetrics:
    """Compare a predicted label mask with a true one (PNG or TIFF, same size).

    The classes are the class map's labels, plus any other label found in either mask (named ``class <n>``);
    a map's ``ignore``/``region``/``skip`` entries (see :func:`qpbridge.rasterize.parse_class_map`) name no
    label and do not matter here.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> d = Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.array([[0, 1, 1, 1]] * 4, dtype=np.uint8)).save(d / "pred.png")
    >>> Image.fromarray(np.array([[0, 0, 1, 1]] * 4, dtype=np.uint8)).save(d / "truth.png")
    >>> m = evaluate_masks(d / "pred.png", d / "truth.png", class_map={"Background": 0, "ROI": 1})
    >>> round(m.by_name("ROI").iou, 4)
    0.6667
    """
    pred = read_label_image(pred_path)
    truth = read_label_image(truth_path)
    if pred.shape != truth.shape:
        raise InputError(
            f"prediction {pred_path} is {pred.shape[1]} x {pred.shape[0]} px but truth {truth_path} is "
            f"{truth.shape[1]} x {truth.shape[0]} px: masks must have the same size"
        )
    names = _names_by_label(class_map or {})
    found = {int(v) for v in np.unique(pred)} | {int(v) for v in np.unique(truth) if v != ignore_label}
    if ignore_label in {int(v) for v in np.unique(pred)}:
        raise InputError(
            f"prediction {pred_path} has pixels labelled {ignore_label} (ignore): only the truth may "
            "mark pixels to ignore"
        )
    labels = sorted(found | set(names))
    accumulator = ConfusionAccumulator(labels, [names.get(v, f"class {v}") for v in labels], ignore_label=ignore_label)
    probs = read_probabilities(probs_path) if probs_path is not None else None
    rows = max(1, DEFAULT_BLOCK_PX // max(1, pred.shape[1]))
    for top in range(0, pred.shape[0], rows):
        block_probs = probs[:, top : top + rows] if probs is not None and probs.ndim == 3 else None
        if probs is not None and probs.ndim == 2:
            block_probs = probs[top : top + rows]
        accumulator.update(pred[top : top + rows], truth[top : top + rows], block_probs)
    result = accumulator.result()
    result.extra.update(
        {"prediction": str(pred_path), "truth": str(truth_path), "size_px": [int(pred.shape[1]), int(pred.shape[0])]}
    )
    return result


def _labels_from_geojson(path: str | os.PathLike[str], class_map: Mapping[str, int | str] | None, *,
                         truth: bool, role: str = "cell"
                         ) -> tuple[Any, tuple[int, ...], dict[int, str], tuple[float, ...] | None]:
    """Prepare a GeoJSON file for rasterizing windows: ``(window(shape_hw, affine) -> labels, labels, names, bounds)``.

    Uses :mod:`qpbridge.rasterize` (imported here, so that mask evaluation works without it). The truth is
    rasterized as training masks are: where it has "Region*" annotations, only their inside is reviewed and
    the rest is ignored (255); the prediction counts everywhere, uncovered pixels being label 0.
    """
    try:
        from qpbridge.classes import ROI_CLASS, ClassInfo
        from qpbridge.formats import read_annotations
        from qpbridge.qupath.classes import ClassMatcher
        from qpbridge.rasterize import ClassMap, LabelRasterizer
    except ImportError as exc:
        raise InputError(f"evaluating GeoJSON needs {exc.name}, which this installation lacks: "
                         "compare label masks (PNG/TIFF) instead") from None
    if role == "roi":
        cmap = ClassMap.roi()
    elif class_map:
        names = _names_by_label(class_map)
        known = {c.label: c.color for c in DEEPBATCH_CLASSES}
        infos = [ClassInfo(label, name, known.get(label, (128, 128, 128))) for label, name in sorted(names.items())]
        aliases = {k: v for k, v in class_map.items() if isinstance(v, int) and names.get(v) != k}
        cmap = ClassMap.from_classes(infos, aliases)
        others = {k: v for k, v in class_map.items() if not isinstance(v, int)}
        if others:  # ignore / region / skip, or another class's name
            cmap = cmap.with_overrides(others)
    else:
        cmap = ClassMap.deepbatch()
    features = list(read_annotations(path).features)
    if not truth:
        # A prediction holds the ROI model's regions and the cell model's classes: keep the role's own.
        is_roi = ClassMatcher({ROI_CLASS.name: True})
        features = [f for f in features if (is_roi.match(f.class_name) is True) == (role == "roi")]
    rasterizer = LabelRasterizer(features, cmap, reviewed="region" if truth else "all", source=str(path),
                                 ignore_unknown=not truth)
    return (rasterizer.window, cmap.labels, {c.label: c.name for c in cmap.classes}, rasterizer.bounds())


def _check_grid(grid_mpp: float, slide_mpp: float, what: str) -> None:
    """A comparison grid finer than the slide's pixels only multiplies the work (by ``(slide/grid)^2``)."""
    if grid_mpp < slide_mpp * (1 - 1e-6):
        factor = (slide_mpp / grid_mpp) ** 2
        raise InputError(
            f"--grid-mpp {grid_mpp:g} is finer than {what}: it multiplies the work ({factor:,.0f}x here) and finds "
            f"nothing more; give --grid-mpp {slide_mpp:g} or coarser (2 is plenty for regions), or leave it out for "
            "full resolution"
        )


def evaluate_geojson(pred_path: str | os.PathLike[str], truth_path: str | os.PathLike[str], *,
                     class_map: Mapping[str, int | str] | None = None, slide: str | os.PathLike[str] | None = None,
                     slide_mpp: float | None = None, grid_mpp: float | None = None, block_px: int = 4096,
                     role: str = "cell", mpp: float | None = None,
                     progress: Callable[[int, int], None] | None = None) -> SegmentationMetrics:
    """Compare two QuPath GeoJSON files, rasterized block by block on a grid of ``grid_mpp`` um/px.

    Parameters
    ----------
    pred_path, truth_path
        The prediction and the truth (level-0 pixel coordinates, QuPath's): QuPath GeoJSON, or any vector
        format :func:`qpbridge.formats.read_annotations` reads (ASAP or ImageScope XML, DSA JSON).
    class_map
        QuPath class name -> label (or ``ignore``/``region``/``skip``), as :func:`qpbridge.rasterize.parse_class_map`
        reads it; default the DeepBatch classes. Class names are matched by the rule of
        :mod:`qpbridge.qupath.classes`.
    slide
        The slide: the whole image QuPath shows of it is compared (its ``openslide.bounds-*`` crop, see
        :mod:`qpbridge.qupath.bounds`). Without it, the union of both files' feature bounds.
    slide_mpp
        The slide's level-0 pixel size in um/px (overrides its metadata; what ``--mpp`` gives).
    grid_mpp
        um/px of the comparison grid (``--grid-mpp``); default level 0. Needs the level-0 pixel size (from
        ``slide`` or ``slide_mpp``).
    role
        ``"roi"`` compares the prediction's "ROI" regions with the truth's lesions (every DeepBatch lesion class
        counts as ROI); ``"cell"`` the tissue classes.
    mpp
        Deprecated name of ``grid_mpp`` (a DeprecationWarning; it goes in the next release).
    progress
        Called as ``progress(done, total)`` after each block compared.

    Memory is bounded by one block of ``block_px`` x ``block_px`` pixels. A grid finer than the slide's pixels
    is refused (:class:`InputError`: it only multiplies the work), and so, without ``slide``, are objects whose
    coordinates no slide has (beyond :data:`qpbridge.qupath.read.ABSURD_COORDINATE_PX`).
    """
    if mpp is not None:
        import warnings

        warnings.warn("evaluate_geojson(mpp=...) is the comparison grid: call it grid_mpp= (mpp= goes in the next "
                      "release)", DeprecationWarning, stacklevel=2)
        if grid_mpp is not None and grid_mpp != mpp:
            raise InputError(f"mpp={mpp} and grid_mpp={grid_mpp} are the same parameter: give only grid_mpp")
        grid_mpp = mpp
    if role not in ("cell", "roi"):
        raise InputError(f"--role must be cell or roi, got {role!r}")
    from affine import Affine

    from qpbridge.qupath.read import ABSURD_COORDINATE_PX
    from qpbridge.slide import check_mpp

    if grid_mpp is not None:
        check_mpp(grid_mpp, "--grid-mpp")
    pred_window, labels, names, pred_bounds = _labels_from_geojson(pred_path, class_map, truth=False, role=role)
    truth_window, _, _, truth_bounds = _labels_from_geojson(truth_path, class_map, truth=True, role=role)
    if slide is not None:
        from qpbridge.slide import open_slide

        with open_slide(Path(slide), mpp=slide_mpp) as opened:
            scale = 1.0 if grid_mpp is None else opened.scale_for_mpp(grid_mpp)
            if grid_mpp is not None:
                _check_grid(grid_mpp, opened.mpp, f"the slide's pixels ({opened.mpp:g} um/px)")
            qupath_width, qupath_height = opened.qupath_size_px
        width, height = math.ceil(qupath_width / scale - 1e-9), math.ceil(qupath_height / scale - 1e-9)
        x0 = y0 = 0.0
    else:
        if grid_mpp is not None and slide_mpp is None:
            raise InputError("--grid-mpp needs the slide's pixel size (the scale of GeoJSON coordinates): give --slide "
                             "or --mpp")
        scale = 1.0 if grid_mpp is None else grid_mpp / check_mpp(float(slide_mpp or 0.0))
        if grid_mpp is not None and slide_mpp is not None:
            _check_grid(grid_mpp, slide_mpp, f"the slide's pixels (--mpp {slide_mpp:g})")
        boxes = [b for b in (pred_bounds, truth_bounds) if b is not None]
        if not boxes:
            raise InputError(f"no area features in {pred_path} or {truth_path}: nothing to compare (give --slide "
                             "to compare over a whole slide)")
        reach = max(abs(v) for b in boxes for v in b)
        if reach > ABSURD_COORDINATE_PX:
            raise InputError(f"objects in {pred_path} or {truth_path} reach {reach:g} px, which no slide has: give "
                             "--slide SLIDE to compare over the slide only (qpbridge validate lists such objects)")
        x0 = float(math.floor(min(b[0] for b in boxes)))
        y0 = float(math.floor(min(b[1] for b in boxes)))
        width = math.ceil((math.ceil(max(b[2] for b in boxes)) - x0) / scale - 1e-9)
        height = math.ceil((math.ceil(max(b[3] for b in boxes)) - y0) / scale - 1e-9)
    accumulator = ConfusionAccumulator(list(labels), [names[v] for v in labels])
    total, done = math.ceil(height / block_px) * math.ceil(width / block_px), 0
    for top in range(0, height, block_px):
        for left in range(0, width, block_px):
            shape = (min(block_px, height - top), min(block_px, width - left))
            affine = Affine(scale, 0.0, x0 + left * scale, 0.0, scale, y0 + top * scale)
            accumulator.update(pred_window(shape, affine), truth_window(shape, affine))
            done += 1
            if progress is not None:
                progress(done, total)
    result = accumulator.result()
    result.extra.update({"prediction": str(pred_path), "truth": str(truth_path), "size_px": [width, height],
                         "level0_px_per_px": scale})
    return result
