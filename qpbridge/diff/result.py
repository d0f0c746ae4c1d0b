"""What ``qpbridge diff`` reports: the areas of one slide (:class:`DiffResult`, per class :class:`ClassDiff`, the
ROI :class:`RoiDiff`) and of several (:class:`BatchResult`), with their JSON-ready ``to_dict``.

Areas are stored in px^2 (level 0) and given in um^2 when the pixel size is known (:meth:`DiffResult.area`).

Examples
--------
>>> c = ClassDiff("Benign", predicted_px2=100.0, unchanged_px2=60.0, removed_px2=40.0, added_px2=10.0)
>>> c.changed_px2, c.changed_share, c.added_share
(50.0, 0.5, 0.1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from qpbridge.diff.geometry import ChangePieces, change_pieces
from qpbridge.diff.nuclei import NucleiDiff

__all__ = [
    "BatchResult",
    "ClassDiff",
    "DiffResult",
    "RoiDiff",
]


@dataclass
class ClassDiff:
    """Areas of one tissue class, in px^2 (see :meth:`DiffResult.area` for um^2).

    ``relabelled_out_px2``: predicted as this class, corrected as another; ``relabelled_in_px2``: predicted
    as another class, corrected as this one. ``predicted = unchanged + relabelled_out + removed`` and
    ``corrected = unchanged + relabelled_in + added``.
    """

    name: str
    predicted_px2: float = 0.0
    corrected_px2: float = 0.0
    unchanged_px2: float = 0.0
    added_px2: float = 0.0
    removed_px2: float = 0.0
    relabelled_out_px2: float = 0.0
    relabelled_in_px2: float = 0.0

    @property
    def changed_px2(self) -> float:
        """Area of this class that the pathologist changed: ``added + removed + relabelled in + relabelled out``
        (what the class gained as well as what it lost)."""
        return self.added_px2 + self.removed_px2 + self.relabelled_in_px2 + self.relabelled_out_px2

    @property
    def changed_share(self) -> float | None:
        """``changed_px2 / predicted_px2`` (above 1 when the class gained more than was predicted of it);
        ``None`` when the class was not predicted (its added area is still in ``added_px2``)."""
        return self.changed_px2 / self.predicted_px2 if self.predicted_px2 > 0 else None

    @property
    def added_share(self) -> float | None:
        """``added_px2 / predicted_px2``; ``None`` when the class was not predicted."""
        return self.added_px2 / self.predicted_px2 if self.predicted_px2 > 0 else None


@dataclass
class RoiDiff:
    """Areas of the ``ROI`` annotations (the ROI model's output), in px^2."""

    predicted_px2: float = 0.0
    corrected_px2: float = 0.0
    unchanged_px2: float = 0.0
    added_px2: float = 0.0
    removed_px2: float = 0.0


@dataclass
class DiffResult:
    """What :func:`diff_geojson` found. Areas are stored in px^2; :meth:`to_dict` gives them in the area unit.

    Attributes
    ----------
    classes
        Tissue classes compared, in priority order (lowest first).
    per_class
        Class name -> :class:`ClassDiff`.
    relabelled_px2
        Predicted class -> corrected class -> area (non-zero entries only).
    roi
        The ROI section, ``None`` when neither file holds ROI objects.
    mpp, mpp_source
        Pixel size (um/px) used for um^2, and where it came from (``None``/``"none"``: areas in px^2).
    objects
        Object counts: ``predicted``/``corrected`` (compared), ``corrected_unchanged_predictions`` (still
        carrying the qpbridge prediction marker), ``corrected_edited_or_new``.
    excluded
        Objects left out, by reason (``"class Region*"``, ``"type cell"``, ``"no area"``).
    unknown_classes
        Classes of the corrected file that are neither known nor in the prediction -> object count.
    predicted_regions, predicted_region_class, corrected_regions, corrected_region_class
        Each file's tissue-class regions after the priority rule: disjoint simple polygons (level-0 px), and the
        class of each (an index into ``classes``). :meth:`pieces` derives the changes from them.
    nuclei
        The nuclei compared one by one (:mod:`qpbridge.diff.nuclei`), when either file holds nuclei.
    """

    classes: tuple[str, ...]
    per_class: dict[str, ClassDiff]
    relabelled_px2: dict[str, dict[str, float]]
    roi: RoiDiff | None
    mpp: float | None
    mpp_source: str
    objects: dict[str, int]
    excluded: dict[str, int]
    unknown_classes: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    name: str | None = None
    predicted_source: str | None = None
    corrected_source: str | None = None
    slide_size_px: tuple[int, int] | None = None
    predicted_regions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object), repr=False)
    predicted_region_class: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.intp), repr=False)
    corrected_regions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object), repr=False)
    corrected_region_class: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.intp), repr=False)
    nuclei: NucleiDiff | None = None
    _pieces: ChangePieces | None = field(default=None, init=False, repr=False)

    # -- units --------------------------------------------------------------------------------------
    @property
    def area_unit(self) -> str:
        """``"um^2"`` when the pixel size is known, else ``"px^2"``."""
        return "um^2" if self.mpp is not None else "px^2"

    @property
    def _suffix(self) -> str:
        return "um2" if self.mpp is not None else "px2"

    def area(self, px2: float) -> float:
        """An area in px^2 in the result's unit (um^2 with ``mpp``, else px^2 unchanged)."""
        return px2 * self.mpp * self.mpp if self.mpp is not None else px2

    # -- totals -------------------------------------------------------------------------------------
    @property
    def predicted_px2(self) -> float:
        """Total predicted tissue-class area (classes are disjoint after the priority rule)."""
        return sum(c.predicted_px2 for c in self.per_class.values())

    @property
    def corrected_px2(self) -> float:
        """Total corrected tissue-class area."""
        return sum(c.corrected_px2 for c in self.per_class.values())

    @property
    def added_px2(self) -> float:
        """Area in a corrected class and in no predicted class."""
        return sum(c.added_px2 for c in self.per_class.values())

    @property
    def removed_px2(self) -> float:
        """Area in a predicted class and in no corrected class."""
        return sum(c.removed_px2 for c in self.per_class.values())

    @property
    def relabelled_total_px2(self) -> float:
        """Area predicted as one class and corrected as another."""
        return sum(sum(row.values()) for row in self.relabelled_px2.values())

    @property
    def unchanged_px2(self) -> float:
        """Area with the same class in both files."""
        return sum(c.unchanged_px2 for c in self.per_class.values())

    @property
    def changed_px2(self) -> float:
        """``added + removed + relabelled``: the area the pathologist corrected."""
        return self.added_px2 + self.removed_px2 + self.relabelled_total_px2

    @property
    def changed_share(self) -> float | None:
        """``changed / predicted`` (may exceed 1 when much was added); ``None`` when nothing was predicted."""
        predicted = self.predicted_px2
        return self.changed_px2 / predicted if predicted > 0 else None

    @property
    def identical(self) -> bool:
        """Whether nothing changed in the tissue classes, the ROI and the nuclei."""
        roi_same = self.roi is None or (self.roi.added_px2 == 0 and self.roi.removed_px2 == 0)
        nuclei_same = self.nuclei is None or self.nuclei.changed == 0
        return self.changed_px2 == 0 and roi_same and nuclei_same

    # -- geometry -----------------------------------------------------------------------------------
    def pieces(self) -> ChangePieces:
        """The geometry of every added, removed and relabelled piece (computed on first use)."""
        if self._pieces is None:
            self._pieces = change_pieces(
                self.classes,
                self.predicted_regions,
                self.predicted_region_class,
                self.corrected_regions,
                self.corrected_region_class,
            )
        return self._pieces

    def corrected_parts(self) -> list[tuple[str, shapely.Geometry]]:
        """The corrected tissue-class regions after the priority rule: ``(class, polygon)``, disjoint."""
        regions = zip(self.corrected_regions, self.corrected_region_class, strict=True)
        return [(self.classes[int(k)], g) for g, k in regions]

    # -- output -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; area keys end in ``_um2`` or ``_px2`` (see ``area_unit``)."""
        s = self._suffix
        per_class = {
            name: {
                f"predicted_{s}": self.area(c.predicted_px2),
                f"corrected_{s}": self.area(c.corrected_px2),
                f"unchanged_{s}": self.area(c.unchanged_px2),
                f"added_{s}": self.area(c.added_px2),
                f"removed_{s}": self.area(c.removed_px2),
                f"relabelled_out_{s}": self.area(c.relabelled_out_px2),
                f"relabelled_in_{s}": self.area(c.relabelled_in_px2),
                f"changed_{s}": self.area(c.changed_px2),
                "changed_share": c.changed_share,
                "added_share": c.added_share,
            }
            for name, c in self.per_class.items()
        }
        roi = None
        if self.roi is not None:
            roi = {
                f"predicted_{s}": self.area(self.roi.predicted_px2),
                f"corrected_{s}": self.area(self.roi.corrected_px2),
                f"unchanged_{s}": self.area(self.roi.unchanged_px2),
                f"added_{s}": self.area(self.roi.added_px2),
                f"removed_{s}": self.area(self.roi.removed_px2),
            }
        return {
            "name": self.name,
            "predicted": self.predicted_source,
            "corrected": self.corrected_source,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "area_unit": self.area_unit,
            "slide_size_px": list(self.slide_size_px) if self.slide_size_px else None,
            "classes": list(self.classes),
            "totals": {
                f"predicted_{s}": self.area(self.predicted_px2),
                f"corrected_{s}": self.area(self.corrected_px2),
                f"unchanged_{s}": self.area(self.unchanged_px2),
                f"added_{s}": self.area(self.added_px2),
                f"removed_{s}": self.area(self.removed_px2),
                f"relabelled_{s}": self.area(self.relabelled_total_px2),
                f"changed_{s}": self.area(self.changed_px2),
                "changed_share": self.changed_share,
            },
            "per_class": per_class,
            f"relabelled_{s}": {
                a: {b: self.area(v) for b, v in row.items()} for a, row in self.relabelled_px2.items()
            },
            "roi": roi,
            "objects": dict(self.objects),
            "excluded": dict(self.excluded),
            "unknown_classes": dict(self.unknown_classes),
            "nuclei": self.nuclei.to_dict() if self.nuclei is not None else None,
            "warnings": list(self.warnings),
        }


@dataclass
class BatchResult:
    """Diffs of several slides, ranked by changed share (most corrected first), and the pairs that failed."""

    results: list[DiffResult]
    failures: list[tuple[str, str, int]]  # (name, message, exit code)
    predicted_only: list[str] = field(default_factory=list)
    corrected_only: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "slides": [r.to_dict() for r in self.results],
            "failures": [{"name": n, "error": m} for n, m, _ in self.failures],
            "predicted_only": list(self.predicted_only),
            "corrected_only": list(self.corrected_only),
            "warnings": list(self.warnings),
        }

