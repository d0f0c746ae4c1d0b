"""``qpbridge diff --changed-only``: the changes as QuPath features that ``qpbridge masks`` trains inside.

:func:`changed_only_features` turns a :class:`~qpbridge.diff.result.DiffResult`'s change pieces into
``Region*`` annotations (the reviewed area) and detections of the corrected classes;
:func:`write_changed_only` writes them as a QuPath GeoJSON file.

Examples
--------
>>> from shapely import box
>>> from qpbridge.diff import diff_geojson
>>> d = diff_geojson([Feature(box(0, 0, 100, 100), "Benign")], [Feature(box(0, 0, 50, 100), "Benign")])
>>> [(f.class_name, f.name, f.geometry.area) for f in changed_only_features(d, removed_class=None)]
[('Region*', 'Changed area', 5000.0)]
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely

from qpbridge.classes import DEEPBATCH_CLASSES
from qpbridge.diff.geometry import ChangePieces, explode_polygons, overlay
from qpbridge.diff.result import DiffResult
from qpbridge.errors import InputError, OutputError
from qpbridge.qupath import Feature, write_geojson

__all__ = [
    "REGION_CLASS",
    "REGION_COLOR",
    "changed_only_features",
    "write_changed_only",
]

#: Class of the reviewed-area annotations written by :func:`write_changed_only` (QuPath's built-in "Region*").
REGION_CLASS = "Region*"
#: Their colour.
REGION_COLOR = (0, 0, 180)
_COLORS = {c.name: c.color for c in DEEPBATCH_CLASSES}  # the detections' colour, by class


def changed_only_features(
    result: DiffResult,
    *,
    margin_px: float = 0.0,
    removed_class: str | None = "Normal",
    region_class: str = REGION_CLASS,
    region_name: str | None = None,
) -> list[Feature]:
    """The changes as QuPath features that ``qpbridge masks`` uses as a reviewed area.

    * ``region_class`` (``"Region*"``) **annotations**: the changed area (added + removed + relabelled),
      dilated by ``margin_px`` and clipped to the slide when its size is known. ``qpbridge masks`` trains
      only inside them (outside: label 255).
    * **detections** with the corrected class: the added pieces (name ``"Added"``) and the relabelled ones
      (name ``"Relabelled from <predicted class>"``);
    * **detections** of class ``removed_class`` (``"Normal"``, label 0): the removed pieces (name
      ``"Removed <predicted class>"``); ``None`` leaves them out (``masks`` fills a reviewed area's
      uncovered pixels with label 0 anyway, but not with ``--reviewed annotated``);
    * with a margin, **detections** for the corrected classes inside the margin (name
      ``"Unchanged (margin)"``), so that the whole ``Region*`` area is labelled as corrected.

    With ``margin_px == 0`` the detections cover exactly the changed area, as do the annotations. A margin
    is clipped to the slide (to ``x, y >= 0`` when its size is unknown). ``region_name`` names the
    annotations (default ``"Changed area"``).

    Examples
    --------
    >>> from shapely import box
    >>> from qpbridge.diff import diff_geojson
    >>> square = box(0, 0, 100, 100)
    >>> d = diff_geojson([Feature(square, "Benign")], [Feature(square, "In situ carcinoma")])
    >>> [(f.class_name, f.object_type, f.geometry.area) for f in changed_only_features(d)]
    [('Region*', 'annotation', 10000.0), ('In situ carcinoma', 'detection', 10000.0)]
    """
    if not math.isfinite(margin_px) or margin_px < 0:
        raise InputError(f"--margin-um must be >= 0, got a margin of {margin_px} px")
    pieces = result.pieces()
    every = pieces.all_geometries()
    if not len(every):
        return []
    changed = shapely.union_all(every)
    region = changed.buffer(margin_px, quad_segs=8) if margin_px > 0 else changed
    if margin_px > 0:  # keep the widened area on the image: inside the slide, else right of and below 0, 0
        x1, y1 = result.slide_size_px or shapely.total_bounds(region)[2:].tolist()
        region = shapely.intersection(region, shapely.box(0, 0, x1, y1))
    region_parts, _ = explode_polygons(np.array([region], dtype=object))
    measure = _measurer(result.mpp)
    label = region_name or ("Changed area" if margin_px == 0 else f"Changed area + {margin_px:g} px margin")
    features = [
        Feature(geom, region_class, REGION_COLOR, "annotation", name=label, measurements=measure(geom))
        for geom in region_parts
    ]
    features.extend(_piece_features(pieces, removed_class, measure))
    if margin_px > 0:
        features.extend(_margin_features(result, shapely.difference(region, changed), measure))
    return features


def _measurer(mpp: float | None) -> Callable[[shapely.Geometry], dict[str, float]]:
    """A piece's measurements: its area in um^2 with the pixel size, else in px^2."""

    def measure(geom: shapely.Geometry) -> dict[str, float]:
        area = float(geom.area)
        return {"Area um^2": area * mpp * mpp} if mpp is not None else {"Area px^2": area}

    return measure


def _piece_features(
    pieces: ChangePieces, removed_class: str | None, measure: Callable[[shapely.Geometry], dict[str, float]]
) -> list[Feature]:
    """Detections for the added and relabelled pieces (corrected class) and the removed ones (``removed_class``)."""
    features = [
        Feature(geom, klass, _COLORS.get(klass), "detection", name="Added", measurements=measure(geom))
        for klass, geom in pieces.added
    ]
    for before, after, geom in pieces.relabelled:
        features.append(
            Feature(
                geom,
                after,
                _COLORS.get(after),
                "detection",
                name=f"Relabelled from {before}",
                measurements=measure(geom),
            )
        )
    if removed_class is not None:
        for before, geom in pieces.removed:
            features.append(
                Feature(
                    geom,
                    removed_class,
                    _COLORS.get(removed_class),
                    "detection",
                    name=f"Removed {before}",
                    measurements=measure(geom),
                )
            )
    return features


def _margin_features(
    result: DiffResult, ring: shapely.Geometry, measure: Callable[[shapely.Geometry], dict[str, float]]
) -> list[Feature]:
    """Detections for the corrected classes inside the margin ``ring`` around the changed area."""
    ring_parts, _ = explode_polygons(np.array([ring], dtype=object))
    hit_i, _, inter = overlay(result.corrected_regions, ring_parts)
    polys, idx = explode_polygons(inter)
    features = []
    for geom, k in zip(polys, idx, strict=True):
        klass = result.classes[int(result.corrected_region_class[hit_i[k]])]
        features.append(
            Feature(
                geom,
                klass,
                _COLORS.get(klass),
                "detection",
                name="Unchanged (margin)",
                measurements=measure(geom),
            )
        )
    return features


def write_changed_only(
    path: str | os.PathLike[str],
    result: DiffResult,
    *,
    margin_um: float = 0.0,
    removed_class: str | None = "Normal",
    overwrite: bool = False,
) -> int:
    """Write :func:`changed_only_features` to a QuPath GeoJSON (atomic); returns the number of features.

    ``margin_um`` needs the pixel size (``result.mpp``). An existing ``path`` is an :class:`OutputError`
    unless ``overwrite``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> from qpbridge.diff import diff_geojson
    >>> d = diff_geojson([Feature(box(0, 0, 100, 100), "Benign")], [Feature(box(0, 0, 100, 100), "Benign"),
    ...                  Feature(box(105, 0, 200, 100), "Invasive carcinoma")], mpp=0.5)
    >>> write_changed_only(pathlib.Path(tempfile.mkdtemp()) / "changed.geojson", d, margin_um=5)
    3
    """
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists: add --overwrite to replace it, or choose another output")
    if not math.isfinite(margin_um) or margin_um < 0:
        raise InputError(f"--margin-um must be >= 0, got {margin_um}")
    if margin_um > 0 and result.mpp is None:
        raise InputError("--margin-um needs the pixel size: give --mpp or --slide")
    margin_px = margin_um / result.mpp if (margin_um > 0 and result.mpp is not None) else 0.0
    label = "Changed area" if margin_um == 0 else f"Changed area + {margin_um:g} um margin"
    features = changed_only_features(
        result, margin_px=margin_px, removed_class=removed_class, region_name=label
    )
    meta = {
        "what": "qpbridge diff --changed-only",
        "predicted": result.predicted_source,
        "corrected": result.corrected_source,
        "mpp": result.mpp,
        "margin_um": margin_um,
        "removed_class": removed_class,
    }
    summary = write_geojson(out, features, meta=meta)
    return summary.written
