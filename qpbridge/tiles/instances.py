"""Nucleus objects -> 16-bit instance masks for any window: the rasterizer of ``qpbridge masks --role nuclei``.

Every area object that is not a reviewed-area (``Region*``), ignore (``Ignore*``, ``Pen mark*``) or skipped
class and that is a nucleus by the one rule (:func:`qpbridge.qupath.objects.is_nucleus`: detections with
``Nucleus: ...`` measurements, cells by their ``nucleusGeometry`` when they have one, and, given the slide's
``mpp``, objects up to 400 um^2 that are not qpbridge's predicted class regions: nuclei drawn in QuPath, the
detections of an instance label image (:mod:`qpbridge.formats.labels`)) is painted; other objects are skipped
and counted (``(geometry, class)`` pairs are nuclei). Each
nucleus a window meets gets its own id (1, 2, ... in paint order, per window), painted at pixel centres
(``rasterio``, like :class:`qpbridge.rasterize.LabelRasterizer`); where two overlap the later wins.
``grow_px`` grows every nucleus by that many pixels into background only
(:func:`skimage.segmentation.expand_labels`). Ignore objects and pixels outside the reviewed regions (when
there are ``Region*`` objects) are :data:`~qpbridge.classes.INSTANCE_IGNORE_LABEL` (65535).

Example
-------
>>> from shapely import box
>>> from affine import Affine
>>> r = InstanceRasterizer([(box(0, 0, 2, 2), "Nucleus"), (box(2, 0, 4, 2), None), (box(0, 3, 5, 4), "Ignore*")])
>>> r.window((4, 5), Affine.identity()).tolist()
[[1, 1, 2, 2, 0], [1, 1, 2, 2, 0], [0, 0, 0, 0, 0], [65535, 65535, 65535, 65535, 65535]]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize as _rio_rasterize

from qpbridge.cards import NUCLEUS_CLASSES
from qpbridge.classes import IGNORE_LABEL, INSTANCE_IGNORE_LABEL, ClassInfo
from qpbridge.errors import InputError
from qpbridge.qupath.objects import is_nucleus, object_role
from qpbridge.rasterize import REGION, SKIP, ClassMap, RasterizeReport, _check_shape, _window_box, polygon_dicts

__all__ = ["InstanceRasterizer", "instance_classes", "nuclei_class_map"]

#: The most nuclei one window may hold (ids 1..65534; 65535 is ignore).
MAX_WINDOW_INSTANCES = INSTANCE_IGNORE_LABEL - 1


def nuclei_class_map() -> ClassMap:
    """The class map of a nuclei tile dataset: the contour classes, the default region and ignore patterns."""
    classes = tuple(ClassInfo(label, name, color) for label, name, color in NUCLEUS_CLASSES)
    return ClassMap(classes, {}, role="nuclei")


def instance_classes(instances: np.ndarray) -> np.ndarray:
    """uint8 class view of an instance window (0 background, 1 nucleus, 255 ignore), for pixel counts.

    >>> instance_classes(np.array([[0, 3, 65535]])).tolist()
    [[0, 1, 255]]
    """
    out = (instances > 0).astype(np.uint8)
    out[instances == INSTANCE_IGNORE_LABEL] = IGNORE_LABEL
    return out


def _area(geom: Any) -> bool:
    return geom is not None and not shapely.is_empty(geom) and shapely.area(geom) > 0


class InstanceRasterizer:
    """Nuclei, ignore and reviewed-area objects prepared once (STRtrees) to rasterize instance windows fast.

    The same shape of API as :class:`qpbridge.rasterize.LabelRasterizer`: :meth:`window`, :meth:`painted`,
    :attr:`report`, :attr:`n_painted`, :attr:`n_regions`, :attr:`reviewed_effective`, :attr:`fill_label`,
    :attr:`uncovered_label`; its windows are ``uint16`` instance ids and :attr:`ignore_value` is 65535.
    """

    ignore_value = INSTANCE_IGNORE_LABEL
    fill_label = 0

    def __init__(
        self,
        features: Iterable[Any],
        class_map: ClassMap | None = None,
        *,
        reviewed: str = "region",
        grow_px: int = 0,
        mpp: float | None = None,
        source: str = "the annotations",
    ) -> None:
        if grow_px < 0:
            raise InputError(f"--grow-instances-px must be >= 0, got {grow_px}")
        self.class_map = class_map or nuclei_class_map()
        self.grow_px = int(grow_px)
        self.source = source
        self.report = RasterizeReport()
        nuclei: list[Any] = []
        ignored: list[Any] = []
        regions: list[Any] = []
        for item in features:
            if hasattr(item, "geometry"):
                geom, class_name = item.geometry, item.class_name
                otype = getattr(item, "object_type", None)
                if otype == "cell" and getattr(item, "nucleus_geometry", None) is not None:
                    geom = item.nucleus_geometry
                if otype is not None and object_role(otype, getattr(item, "measurements", None)) in ("tile", "other"):
                    self.report.skipped_by_type[otype] = self.report.skipped_by_type.get(otype, 0) + 1
                    continue
            else:
                geom, class_name = item
            value = self.class_map.lookup(class_name)
            if value == SKIP:
                continue
            if not _area(geom):
                self.report.skipped_not_area += 1
                continue
            if value == REGION:
                regions.append(geom)
                self.report.regions += 1
            elif value == IGNORE_LABEL:
                ignored.append(geom)
            elif hasattr(item, "geometry") and not self._is_nucleus(item, geom, mpp):
                self.report.skipped_not_nuclei += 1
            else:
                nuclei.append(geom)
        self.report.painted["nucleus"] = len(nuclei)
        self._nuclei = np.asarray(nuclei + [None], dtype=object)[:-1]
        self._ignored = np.asarray(ignored + [None], dtype=object)[:-1]
        self._regions = np.asarray(regions + [None], dtype=object)[:-1]
        self._trees = {name: shapely.STRtree(g) for name, g in
                       (("nuclei", self._nuclei), ("ignored", self._ignored), ("regions", self._regions))}  # fmt: skip
        self.reviewed_effective = reviewed if reviewed != "region" else ("region" if regions else "all")
        self.report.reviewed_effective = self.reviewed_effective

    @staticmethod
    def _is_nucleus(item: Any, geom: Any, mpp: float | None) -> bool:
        area_um2 = float(shapely.area(geom)) * mpp * mpp if mpp is not None else None
        return is_nucleus(getattr(item, "object_type", "annotation"), getattr(item, "measurements", None), area_um2)

    @property
    def n_painted(self) -> int:
        """Nuclei and ignore objects."""
        return len(self._nuclei) + len(self._ignored)

    @property
    def n_regions(self) -> int:
        """Reviewed-area objects."""
        return len(self._regions)

    @property
    def uncovered_label(self) -> int:
        """Pixels no object covers: background (0)."""
        return 0

    def painted(self) -> tuple[np.ndarray, np.ndarray]:
        """The nuclei then the ignore objects, with their class labels (1, or 255 for ignore)."""
        geoms = np.concatenate([self._nuclei, self._ignored]) if self.n_painted else np.empty(0, object)
        values = np.r_[np.ones(len(self._nuclei), np.uint8), np.full(len(self._ignored), IGNORE_LABEL, np.uint8)]
        return geoms, values

    def _paint(self, out: np.ndarray, affine: Affine, name: str, geoms: np.ndarray, ids: bool) -> None:
        box = _window_box(out.shape, affine)
        idx = np.sort(self._trees[name].query(shapely.box(*box)))
        if idx.size == 0:
            return
        if ids and idx.size > MAX_WINDOW_INSTANCES:
            raise InputError(f"{self.source}: {idx.size} nuclei in one window; at most {MAX_WINDOW_INSTANCES} fit "
                             "16-bit tiles: use a smaller --tile-px")  # fmt: skip
        dicts, owner = polygon_dicts(geoms[idx])
        values = (owner + 1) if ids else np.ones(len(owner), np.int64)
        if dicts:
            _rio_rasterize(list(zip(dicts, values.tolist(), strict=True)), out=out, transform=affine,
                           all_touched=False)  # fmt: skip

    def window(self, shape_hw: tuple[int, int], affine: Affine) -> np.ndarray:
        """The ``uint16`` instance mask of one window (0 background, 1..N nuclei, 65535 ignore / unreviewed)."""
        height, width = _check_shape(shape_hw)
        ids = np.zeros((height, width), np.int32)
        self._paint(ids, affine, "nuclei", self._nuclei, ids=True)
        if self.grow_px:
            from skimage.segmentation import expand_labels

            ids = expand_labels(ids, self.grow_px)
        out = ids.astype(np.uint16)
        masked = np.zeros((height, width), np.uint8)
        self._paint(masked, affine, "ignored", self._ignored, ids=False)
        out[masked > 0] = INSTANCE_IGNORE_LABEL
        if self.reviewed_effective == "region":
            reviewed = np.zeros((height, width), np.uint8)
            self._paint(reviewed, affine, "regions", self._regions, ids=False)
            out[reviewed == 0] = INSTANCE_IGNORE_LABEL
        return out
