"""The ground truth beside a synthetic slide: truth GeoJSON, nuclei GeoJSON, the meta JSON and its record."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from qpbridge.atomic import atomic_write_bytes
from qpbridge.classes import DEEPBATCH_CLASSES, PEN_CLASS, TISSUE_CLASS
from qpbridge.synth.common import BG, CLASS_COLOR, INK_NAMES, LESION_NAMES, MPP, NORMAL, OBJECTIVE_POWER
from qpbridge.synth.layout import Layout

__all__ = ["SynthResult", "synth_paths", "synth_result", "write_meta", "write_nuclei_geojson", "write_truth_geojson"]


# ------------------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class SynthResult:
    """What :func:`write_synthetic_slide` wrote.

    Areas are in um^2 at :data:`MPP`; ``class_areas_um2`` has one entry per DeepBatch class
    ("Normal" = tissue minus lesions).
    """

    slide_path: Path
    truth_path: Path
    meta_path: Path
    nuclei_path: Path | None
    width_px: int
    height_px: int
    mpp: float
    seed: int
    stain: str
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    tissue_area_um2: float
    class_areas_um2: dict[str, float]
    lesion_fraction: float
    lesion_counts: dict[str, int] = field(default_factory=dict)
    pen_strokes: int = 0
    nuclei_count: int | None = None


def synth_paths(slide_path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The truth, truth-meta and nuclei paths that go with a synthetic slide.

    Examples
    --------
    >>> [p.name for p in synth_paths("data/slide.svs")]
    ['slide.truth.geojson', 'slide.truth.meta.json', 'slide.nuclei.geojson']
    """
    path = Path(slide_path)
    stem = path.with_suffix("")
    return (
        stem.with_name(stem.name + ".truth.geojson"),
        stem.with_name(stem.name + ".truth.meta.json"),
        stem.with_name(stem.name + ".nuclei.geojson"),
    )


# ------------------------------------------------------------------------------------------- truth io
def _truth_features(layout: Layout) -> list[tuple[BaseGeometry, str, tuple[int, int, int], str]]:
    feats: list[tuple[BaseGeometry, str, tuple[int, int, int], str]] = []
    for i, g in enumerate(layout.tissue, 1):
        feats.append((g, TISSUE_CLASS.name, TISSUE_CLASS.color, f"Tissue {i}"))
    counts: dict[str, int] = {}
    for label, g in layout.lesions:
        name = LESION_NAMES[label]
        counts[name] = counts.get(name, 0) + 1
        feats.append((g, name, CLASS_COLOR[name], f"{name} {counts[name]}"))
    for i, (ink, g) in enumerate(layout.pens, 1):
        feats.append((g, PEN_CLASS.name, PEN_CLASS.color, f"Pen mark {i} ({INK_NAMES[ink]})"))
    return feats


def write_truth_geojson(path: Path, layout: Layout) -> None:
    """Write the truth as QuPath annotations (:func:`qpbridge.qupath.write_geojson`), area in um^2."""
    from qpbridge.qupath import Feature, write_geojson

    features = [
        Feature(geom, cls, color, "annotation", name=name, measurements={"Area um^2": round(geom.area * MPP * MPP, 2)})
        for geom, cls, color, name in _truth_features(layout)
    ]
    write_geojson(path, features)


def write_nuclei_geojson(path: Path, nuclei: NDArray[np.float32]) -> None:
    """Every nucleus as a 16-vertex ellipse detection, classified by the region of its centre."""
    from qpbridge.qupath import Feature, write_geojson

    names = {BG: "Normal", NORMAL: "Normal", **LESION_NAMES}
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    cx, cy, a, b, ang, reg = (nuclei[:, i].astype(np.float64)[:, None] for i in range(6))
    ex, ey = a * np.cos(t), b * np.sin(t)
    xs = cx + ex * np.cos(ang) - ey * np.sin(ang)
    ys = cy + ex * np.sin(ang) + ey * np.cos(ang)
    polygons = shapely.polygons(np.round(np.stack([xs, ys], axis=-1), 2))
    classes = [names[int(r)] for r in reg[:, 0]]
    write_geojson(
        path,
        (Feature(poly, name, CLASS_COLOR[name], "detection") for poly, name in zip(polygons, classes, strict=True)),
    )


def synth_result(
    slide: Path,
    truth: Path,
    meta: Path,
    nuclei_path: Path | None,
    layout: Layout,
    seed: int,
    stain: str,
    dims: tuple[tuple[int, int], ...],
    nuclei_count: int | None,
) -> SynthResult:
    """The :class:`SynthResult` of a written slide, with its class areas measured on the layout."""
    px_um2 = MPP * MPP
    tissue = shapely.union_all(layout.tissue)
    tissue_um2 = tissue.area * px_um2
    areas = {c.name: 0.0 for c in DEEPBATCH_CLASSES}
    counts = {name: 0 for name in LESION_NAMES.values()}
    for label, g in layout.lesions:
        areas[LESION_NAMES[label]] += g.area * px_um2
        counts[LESION_NAMES[label]] += 1
    lesion_um2 = sum(areas.values())
    areas["Normal"] = tissue_um2 - lesion_um2
    return SynthResult(
        slide_path=slide,
        truth_path=truth,
        meta_path=meta,
        nuclei_path=nuclei_path,
        width_px=layout.width_px,
        height_px=layout.height_px,
        mpp=MPP,
        seed=seed,
        stain=stain,
        level_count=len(dims),
        level_dimensions=dims,
        tissue_area_um2=round(tissue_um2, 2),
        class_areas_um2={k: round(v, 2) for k, v in areas.items()},
        lesion_fraction=round(lesion_um2 / tissue_um2, 5) if tissue_um2 else 0.0,
        lesion_counts=counts,
        pen_strokes=len(layout.pens),
        nuclei_count=nuclei_count,
    )


def write_meta(path: Path, r: SynthResult, lesion_fraction_target: float) -> None:
    """Write ``<stem>.truth.meta.json``: the ``synth`` record of the slide (atomically)."""
    from qpbridge import __version__

    record = {
        "synth": {
            "generator": f"qpbridge {__version__}",
            "slide": r.slide_path.name,
            "truth": r.truth_path.name,
            "seed": r.seed,
            "stain": r.stain,
            "width_px": r.width_px,
            "height_px": r.height_px,
            "mpp": r.mpp,
            "objective_power": OBJECTIVE_POWER,
            "level_dimensions": [list(d) for d in r.level_dimensions],
            "lesion_fraction_target": lesion_fraction_target,
            "lesion_fraction_measured": r.lesion_fraction,
            "tissue_area_um2": r.tissue_area_um2,
            "class_areas_um2": r.class_areas_um2,
            "lesion_counts": r.lesion_counts,
            "pen_strokes": r.pen_strokes,
            "normal_is": "tissue minus lesions (no Normal feature in the truth file)",
            "nuclei": r.nuclei_path.name if r.nuclei_path else None,
            "nuclei_count": r.nuclei_count,
        }
    }
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
