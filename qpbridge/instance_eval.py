"""``evaluate --instances``: nuclei of two files (GeoJSON polygons or instance masks) -> instance scores.

Each side is an annotation file of any vector format :func:`qpbridge.formats.read_annotations` reads (QuPath
GeoJSON, ASAP or ImageScope XML such as MoNuSeg's outlines, DSA JSON), whose polygon objects are the instances
-- detections, annotations, and cells by their ``nucleusGeometry`` (their nucleus; the cell outline when it has
none); tiles are left out -- or an instance mask image (PNG/TIFF: 0 background, one id per nucleus). Polygons
are rasterized (:func:`qpbridge.instance_metrics.rasterize_instances`) on one grid:

- both GeoJSON: level-0 pixels by default, or ``grid_mpp`` um/px (which needs the slide's um/px: ``slide``
  or ``slide_mpp``), over the box around both files' polygons (not the whole slide);
- one mask: the mask's own pixel grid, its pixel being ``grid_mpp`` um (default: a level-0 pixel) from
  level-0 ``(0, 0)``;
- two masks: compared pixel by pixel (same shape).

Scores are those of :func:`qpbridge.instance_metrics.instance_scores`: pixel Dice, AJI, PQ (SQ, RQ), F1 at
IoU > 0.5 with its TP/FP/FN.

Example
-------
>>> scores = evaluate_instances("pred.geojson", "truth.geojson", slide="slide.svs")   # doctest: +SKIP
>>> round(scores.aji, 3), scores.tp                                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import shapely
from affine import Affine

from qpbridge.errors import InputError
from qpbridge.instance_metrics import InstanceScores, instance_scores, rasterize_instances
from qpbridge.metrics import read_label_image
from qpbridge.qupath.project import is_annotation_path

__all__ = ["evaluate_instances", "instance_polygons"]


def instance_polygons(path: str | os.PathLike[str]) -> np.ndarray:
    """The instance polygons of an annotation file (level-0 px): its polygon objects except tiles, cells by their
    nucleus."""
    from qpbridge.formats import read_annotations

    geoms = []
    for feature in read_annotations(path).features:
        if feature.object_type == "tile":
            continue
        geom = feature.nucleus_geometry if feature.object_type == "cell" and feature.nucleus_geometry else (
            feature.geometry)
        if geom is not None and geom.geom_type in ("Polygon", "MultiPolygon") and not geom.is_empty:
            geoms.append(geom)
    out = np.empty(len(geoms), dtype=object)
    out[:] = geoms
    return out


def _slide_mpp(slide: str | os.PathLike[str] | None, slide_mpp: float | None) -> float | None:
    if slide_mpp is not None:
        if not math.isfinite(slide_mpp) or slide_mpp <= 0:
            raise InputError(f"--mpp must be > 0, got {slide_mpp}")
        return slide_mpp
    if slide is None:
        return None
    from qpbridge.slide import open_slide

    with open_slide(Path(slide)) as opened:
        return float(opened.mpp)


def _scale(grid_mpp: float | None, mpp: float | None) -> float:
    """Level-0 pixels per grid pixel."""
    if grid_mpp is None:
        return 1.0
    if mpp is None:
        raise InputError("--grid-mpp needs the slide's um/px: give --slide or --mpp")
    if not math.isfinite(grid_mpp) or grid_mpp <= 0:
        raise InputError(f"--grid-mpp must be > 0, got {grid_mpp}")
    return grid_mpp / mpp


def _polygons_grid(pred: np.ndarray, truth: np.ndarray, scale: float) -> tuple[tuple[int, int], Affine]:
    """The grid around both polygon sets (whole grid pixels from level-0 ``(0, 0)``)."""
    both = np.concatenate([pred, truth])
    if not len(both):
        return (1, 1), Affine.scale(scale)
    x0, y0, x1, y1 = shapely.total_bounds(both)
    c0, r0 = max(0, math.floor(x0 / scale)), max(0, math.floor(y0 / scale))
    c1, r1 = math.ceil(x1 / scale), math.ceil(y1 / scale)
    return (max(r1 - r0, 1), max(c1 - c0, 1)), Affine(scale, 0, c0 * scale, 0, scale, r0 * scale)


def evaluate_instances(
    pred: str | os.PathLike[str], truth: str | os.PathLike[str], *, slide: str | os.PathLike[str] | None = None,
    slide_mpp: float | None = None, grid_mpp: float | None = None, iou_threshold: float = 0.5,
) -> InstanceScores:
    """Instance scores of the nuclei of ``pred`` against those of ``truth`` (see the module docstring)."""
    paths = (Path(pred), Path(truth))
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path} not found: check the path")
    geo = [is_annotation_path(p) for p in paths]
    scale = _scale(grid_mpp, _slide_mpp(slide, slide_mpp))
    if not any(geo):
        if grid_mpp is not None or slide is not None:
            raise InputError("--grid-mpp and --slide apply to GeoJSON inputs; two masks are compared pixel by pixel")
        a, b = read_label_image(paths[0]), read_label_image(paths[1])
        if a.shape != b.shape:
            raise InputError(f"{paths[0]} is {a.shape} and {paths[1]} {b.shape}: instance masks must match in size")
        return instance_scores(a, b, iou_threshold=iou_threshold)
    if all(geo):
        polys = [instance_polygons(p) for p in paths]
        shape, affine = _polygons_grid(polys[0], polys[1], scale)
        images = [rasterize_instances(p, shape, affine) for p in polys]
    else:
        mask = read_label_image(paths[geo.index(False)])
        drawn = rasterize_instances(instance_polygons(paths[geo.index(True)]), mask.shape, Affine.scale(scale))
        images = [mask, drawn] if geo[1] else [drawn, mask]
    return instance_scores(images[0], images[1], iou_threshold=iou_threshold)
