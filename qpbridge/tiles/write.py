"""Training tiles from a slide and its (corrected) QuPath GeoJSON: ``qpbridge masks``.

:func:`build_tile_dataset` cuts a slide into ``tile_px`` tiles at ``mpp`` um/px and writes, per kept tile, an
RGB PNG and a label-mask PNG, plus ``manifest.csv`` and ``dataset.json``: the tile dataset format
(``qpbridge-tiles/1``, :mod:`qpbridge.tiles.format`) that ``qpbridge train`` reads (:mod:`qpbridge.tiles.read`).

How it works
------------
The slide's grid at ``mpp`` is covered by tiles every ``stride_px``; tiles are grouped into blocks of about
``block_px`` target pixels. Each block's labels are rasterized once (objects chosen with an STRtree, see
:class:`qpbridge.rasterize.LabelRasterizer`), each block's image is read once (only over the tiles kept), and
the tiles are cut from both: memory is bounded by the block, never the slide (blocks are 2048 px, smaller
when the level read is finer than the target; PNG encoding runs on a few threads with a bounded queue). The
only whole-slide arrays are coarse: the tissue mask (8 um/px) and the QA mask (:mod:`qpbridge.tiles.qa`,
written strip by strip). Tiles that reach past the slide's edge are white in the image and 255 (ignore) in the mask.

Which tiles are kept
--------------------
A tile is kept when at least ``min_labelled_frac`` of its pixels are labelled (not 255) and it shows tissue:
``min_tissue_frac`` of it is tissue by :func:`qpbridge.tissue.detect_tissue` (coarse, pen ink excluded) or is
covered by a labelled object other than the background label. ``min_tissue_frac=0`` skips tissue detection.
With ``max_per_class=N`` a seeded sample keeps at most N tiles per class, a tile counting for its majority
non-background class (label 0 when it has none); the labels are then rasterized in a first pass (counts only)
and again for the chosen tiles in a second pass.

Appending and atomicity
-----------------------
Several runs into one DIR make one dataset (multiple slides): mpp, tile and stride size, role and classes
must match the DIR's ``dataset.json``. A slide already in DIR is refused unless ``overwrite=True`` (its tiles
are then replaced). Tile PNGs are written first; ``manifest.csv`` and then ``dataset.json`` are written last,
each to a temporary file renamed over the target. A run that fails (a full disk, an unreadable region, Ctrl-C)
removes what it wrote (its tiles, QA mask, temporaries and the folders it created), so DIR is left as it was;
tiles that replace existing files (``overwrite``) are written to temporaries and renamed over them only once
every tile and the manifest are written (:class:`TileWriter`). Only a killed run leaves tiles behind: they are
listed nowhere (manifest rows of a slide that ``dataset.json`` does not list are dropped on the next run) and
are overwritten when the run is repeated.

Example
-------
>>> from qpbridge.tiles import MaskConfig, build_tile_dataset
>>> summary = build_tile_dataset("slide.svs", "slide.geojson", "tiles/",       # doctest: +SKIP
...                              MaskConfig(mpp=0.5, tile_px=256, max_per_class=500))
>>> summary.tiles_written                                                      # doctest: +SKIP
1312
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from PIL import Image

from qpbridge import __version__
from qpbridge.atomic import commit, temporary_path
from qpbridge.classes import IGNORE_LABEL, INSTANCE_IGNORE_LABEL
from qpbridge.errors import GeoJSONError, InputError, OutputError
from qpbridge.rasterize import LabelRasterizer
from qpbridge.slide import Slide, open_slide
from qpbridge.tiles.config import MaskConfig
from qpbridge.tiles.format import DATASET_FILE, DATASET_FORMAT, MANIFEST_FILE, manifest_header
from qpbridge.tiles.grid import TileGrid, TissueFractions, label_mask_for_window
from qpbridge.tiles.instances import InstanceRasterizer, instance_classes
from qpbridge.tiles.qa import legend, write_label_mask_tiff

if TYPE_CHECKING:
    from qpbridge.qupath import Feature

__all__ = ["DatasetSummary", "Progress", "TileWriter", "build_tile_dataset"]

#: Tiles queued for PNG encoding at most (each ~200 kB for 256 px RGB).
_MAX_PENDING = 64
#: Entries an unfinished run may leave in DIR (no dataset.json yet); anything else means "not ours".
_OWN_ENTRIES = {"images", "masks", "qa", MANIFEST_FILE}

Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------------------------- summary
@dataclass
class DatasetSummary:
    """What :func:`build_tile_dataset` did (or, with ``dry_run``, would do)."""

    slide_id: str
    slide_path: str
    geojson_path: str
    out_dir: str
    dry_run: bool
    mpp: float
    tile_px: int
    stride_px: int
    slide_mpp: float
    slide_size_px: tuple[int, int]
    grid_size_px: tuple[int, int]
    classes: list[dict[str, Any]]
    reviewed_effective: str
    tiles_total: int = 0
    tiles_kept: int = 0
    tiles_selected: int = 0
    tiles_written: int = 0
    kept_by_class: dict[int, int] = field(default_factory=dict)
    written_by_class: dict[int, int] = field(default_factory=dict)
    pixels_by_label: dict[int, int] = field(default_factory=dict)
    written_pixels_by_label: dict[int, int] = field(default_factory=dict)
    objects_painted: int = 0
    objects_regions: int = 0
    blocks: int = 0
    seconds: float = 0.0
    qa_mask: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        out = dict(self.__dict__)
        for key in ("kept_by_class", "written_by_class", "pixels_by_label", "written_pixels_by_label"):
            out[key] = {str(k): v for k, v in out[key].items()}
        return out


# --------------------------------------------------------------------------------------------- output dir
@dataclass
class _Existing:
    """A dataset already in DIR."""

    meta: dict[str, Any]
    rows: list[dict[str, str]]


def _describe(meta: dict[str, Any]) -> str:
    names = ", ".join(f"{c.get('label')} {c.get('name')}" for c in meta.get("classes", []))
    return (
        f"{meta.get('mpp')} um/px, {meta.get('tile_px')} px tiles, stride {meta.get('stride_px')}, "
        f"role {meta.get('role')}, classes [{names}]"
    )


def _open_existing(out_dir: Path, config: MaskConfig, slide_id: str, slide_path: Path) -> _Existing | None:
    """Check that DIR can take this slide's tiles; the dataset it holds (or ``None`` for a new one)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file, not a folder: give a folder for the tile dataset")
    meta_path = out_dir / DATASET_FILE
    if not meta_path.exists():
        if out_dir.exists():
            foreign = sorted(
                p.name for p in out_dir.iterdir() if p.name not in _OWN_ENTRIES and not p.name.startswith(".")
            )
            if foreign:
                raise OutputError(
                    f"{out_dir} is not empty and holds no tile dataset (found {', '.join(foreign[:5])}): "
                    "give a new or empty folder, or a folder written by qpbridge masks"
                )
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"cannot read {meta_path} ({exc}): give another folder, or delete the broken one") from None
    if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
        raise OutputError(f"{meta_path} is not a {DATASET_FORMAT} dataset: give another folder")
    our_classes = config.class_map.to_json()
    ours = {
        "mpp": config.mpp,
        "tile_px": config.tile_px,
        "stride_px": config.stride,
        "role": config.class_map.role,
        "classes": our_classes,
    }
    same_classes = [(c.get("label"), c.get("name")) for c in meta.get("classes", [])] == [
        (c["label"], c["name"]) for c in our_classes
    ]
    mpp = meta.get("mpp")
    same_mpp = isinstance(mpp, (int, float)) and math.isclose(mpp, config.mpp, rel_tol=1e-6)
    if not (
        same_mpp
        and meta.get("tile_px") == config.tile_px
        and meta.get("stride_px") == config.stride
        and meta.get("role") == config.class_map.role
        and same_classes
    ):
        raise OutputError(
            f"{out_dir} holds a dataset of {_describe(meta)}; this run makes {_describe(ours)}: "
            "tiles of one dataset must match, so write to another folder (or give matching --tile-mpp/--tile-px/"
            "--stride-px/--model)"
        )
    slides = {s.get("slide"): s for s in meta.get("slides", []) if isinstance(s, dict)}
    if slide_id in slides and not config.overwrite:
        previous = slides[slide_id]
        raise OutputError(
            f"slide {slide_id!r} is already in {out_dir} ({previous.get('tiles', '?')} tiles from "
            f"{previous.get('path')}): give --overwrite to replace its tiles, or rename the slide"
            if Path(str(previous.get("path"))).resolve() == slide_path.resolve()
            else f"a slide named {slide_id!r} ({previous.get('path')}) is already in {out_dir}: slide ids "
            "are file names without extension and must be unique in a dataset; rename this slide, write "
            "to another folder, or give --overwrite to replace it"
        )
    manifest = out_dir / MANIFEST_FILE
    rows: list[dict[str, str]] = []
    header = manifest_header(config.class_map.labels)
    if manifest.exists():
        with open(manifest, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != header:
                raise OutputError(
                    f"{manifest} has columns {reader.fieldnames}, expected {header}: the dataset is damaged; "
                    "write to another folder"
                )
            rows = list(reader)
    return _Existing(meta, rows)


# --------------------------------------------------------------------------------------------- the build
def _px(value: float) -> str:
    """A level-0 coordinate for a message: whole pixels, or ``1e+300`` for absurd ones."""
    return f"{value:.0f}" if abs(value) < 1e7 else f"{value:g}"


def _slide_box(slide: Slide) -> tuple[float, float, float, float]:
    """The slide's level 0 in the GeoJSON's (QuPath's) coordinates."""
    width, height = slide.dimensions
    ox, oy = slide.qupath_offset_xy_px
    return (-ox, -oy, width - ox, height - oy)


def _check_extent(
    features: Sequence[Feature], slide: Slide, geojson_path: Path, warnings: list[str], allow_off_slide: bool
) -> list[Feature]:
    """Fail clearly when no object lies on the slide (a GeoJSON of another slide), or when an object reaches
    far outside it (another slide's or another unit's coordinates: an error naming it; left out with a warning
    under ``allow_off_slide``); warn about strays. Returns the features to label."""
    from qpbridge.qupath.read import far_outside, far_outside_message, feature_label

    geoms = np.empty(len(features), dtype=object)
    geoms[:] = [f.geometry for f in features]
    width, height = slide.dimensions
    box = _slide_box(slide)
    on_slide = shapely.intersects(geoms, shapely.box(*box))
    b = shapely.bounds(geoms)
    if not on_slide.any():
        raise GeoJSONError(
            f"none of the {len(features)} objects in {geojson_path} lie on the slide {slide.path} "
            f"({width} x {height} px at level 0): the objects span x {_px(np.nanmin(b[:, 0]))} to "
            f"{_px(np.nanmax(b[:, 2]))}, y {_px(np.nanmin(b[:, 1]))} to {_px(np.nanmax(b[:, 3]))} px. "
            "Is the GeoJSON from another slide? Export it from this slide's QuPath image"
        )
    far, reach = far_outside(b, box)
    if far.any():
        where = np.flatnonzero(far).tolist()
        first = features[where[0]]
        label = feature_label(int(first.source_index if first.source_index is not None else where[0]), first.id,
                              first.class_name)  # fmt: skip
        what = f"{label}: {far_outside_message(float(reach[where[0]]), (width, height))}"
        more = f" (and {len(where) - 1} more object{'s' * (len(where) > 2)})" if len(where) > 1 else ""
        if not allow_off_slide:
            raise GeoJSONError(
                f"{geojson_path}: {what}{more}: is the GeoJSON from another slide, or in another unit? Fix or delete "
                "the object, or give --allow-off-slide to leave such objects out"
            )
        warnings.append(f"{what}{more}: left out (--allow-off-slide)")
    off = int((~on_slide & ~far).sum())
    if off:
        warnings.append(f"{off} of {len(features)} objects lie wholly outside the slide ({width} x {height} px)")
    return [f for f, out in zip(features, far, strict=True) if not out]


def _check_labelled_area(
    rasterizer: Rasterizer, slide: Slide, geojson_path: Path, warnings: list[str], allow_off_slide: bool
) -> None:
    """Refuse a GeoJSON whose labelled area lies mostly off the slide (more than half: another slide's objects),
    unless ``allow_off_slide`` (then a warning)."""
    geoms, values = rasterizer.painted()
    geoms = geoms[values != IGNORE_LABEL]
    if not len(geoms):
        return
    box = shapely.box(*_slide_box(slide))
    areas = shapely.area(geoms)
    total = float(areas.sum())
    if not total > 0:
        return
    on = areas.copy()
    partly = ~shapely.covered_by(geoms, box)
    on[partly] = shapely.area(shapely.intersection(geoms[partly], box))
    share = 1.0 - float(on.sum()) / total
    if share <= 0.5:
        return
    width, height = slide.dimensions
    where = f"{share:.0%} of the labelled area in {geojson_path} lies off the slide {slide.path} ({width} x {height} px"
    if not allow_off_slide:
        raise GeoJSONError(
            f"{where} at level 0): is the GeoJSON from another slide? Export it from this slide's QuPath image, or "
            "give --allow-off-slide to label only the part on the slide"
        )
    warnings.append(f"{share:.0%} of the labelled area lies off the slide ({width} x {height} px): only the part on "
                    "it is labelled (--allow-off-slide)")


def _majority(counts: np.ndarray, labels: Sequence[int], background: int) -> int:
    """The label with most pixels among the non-background classes (ties: higher label), else background."""
    best, best_count = background, 0
    for j, lab in enumerate(labels):
        if lab != background and counts[j] > 0 and counts[j] >= best_count:
            best, best_count = lab, int(counts[j])
    return best


def _save_png(path: Path, array: np.ndarray, compress_level: int) -> None:
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=compress_level)


class TileWriter:
    """Writes tile PNGs on a small thread pool (PNG encoding dominates; zlib runs without the GIL) and collects
    manifest rows. At most ``_MAX_PENDING`` tiles wait, so memory stays bounded.

    Nothing it writes is left when the run fails: a tile whose name is new is written under that name and
    removed again by :meth:`abort`; a tile that replaces an existing file (``--overwrite``) is written to a
    temporary beside it and renamed over it by :meth:`publish`, after every tile and the manifest are written,
    so the previous dataset stays whole until then. The folders it creates go too when they are left empty.
    """

    def __init__(self, out_dir: Path, slide_id: str, config: MaskConfig, labels: Sequence[int], scale: float):
        self.out_dir = out_dir
        self.slide_id = slide_id
        self.config = config
        self.labels = labels
        self.scale = scale
        self.rows: list[dict[str, str]] = []
        self._created: list[Path] = []  # files written where none was: removed by abort()
        self._deferred: list[tuple[Path, Path]] = []  # (temporary, target): renamed over target by publish()
        self._made_dirs: list[Path] = []
        self.make_dir(out_dir / "images")
        self.make_dir(out_dir / "masks")
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
        self._pending: deque[Future[None]] = deque()

    def make_dir(self, folder: Path) -> None:
        """Create ``folder`` (and its parents); those created are removed by :meth:`abort` when left empty."""
        missing: list[Path] = []
        here = folder
        while not here.exists() and here.parent != here:
            missing.append(here)
            here = here.parent
        folder.mkdir(parents=True, exist_ok=True)
        self._made_dirs.extend(reversed(missing))  # outermost first

    def path_for(self, target: Path) -> Path:
        """Where to write ``target``: itself when nothing is there (removed by :meth:`abort`), else a temporary
        beside it that :meth:`publish` renames over it."""
        if os.path.lexists(target):
            tmp = temporary_path(target)
            self._deferred.append((tmp, target))
            return tmp
        self._created.append(target)
        return target

    def write(self, x_t: int, y_t: int, rgb: np.ndarray, mask: np.ndarray, counts: np.ndarray) -> None:
        """Queue one tile (image and mask copied, so the caller may reuse its arrays) and record its row."""
        x0, y0 = int(round(x_t * self.scale)), int(round(y_t * self.scale))
        name = f"{self.slide_id}_{x0}_{y0}.png"
        level = self.config.png_compress_level
        while len(self._pending) >= _MAX_PENDING:
            self._pending.popleft().result()
        for folder, array in (("images", rgb), ("masks", mask)):
            path = self.path_for(self.out_dir / folder / name)
            self._pending.append(self._pool.submit(_save_png, path, array.copy(), level))
        row = {
            "slide": self.slide_id,
            "image": f"images/{name}",
            "mask": f"masks/{name}",
            "x0_px": str(x0),
            "y0_px": str(y0),
            "mpp": repr(float(self.config.mpp)),
            "tile_px": str(self.config.tile_px),
        }
        for j, lab in enumerate(self.labels):
            row[f"count_{lab}"] = str(int(counts[j]))
        row["count_ignore"] = str(int(counts[-1]))
        self.rows.append(row)

    def close(self) -> None:
        """Wait for every queued tile (re-raising the first write error) and stop the threads."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def publish(self) -> None:
        """Rename the tiles that replace existing files into place (call it once everything else is written)."""
        deferred, self._deferred = self._deferred, []
        for tmp, target in deferred:
            os.replace(tmp, target)
        self._created = []
        self._made_dirs = []

    def abort(self) -> None:
        """Stop writing and remove everything written so far (the tiles of new names, the temporaries, the
        folders created and left empty): the output is left as it was."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        for path in [*self._created, *(tmp for tmp, _ in self._deferred)]:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        for folder in reversed(self._made_dirs):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        self._created, self._deferred, self._made_dirs = [], [], []


def build_tile_dataset(
    slide_path: str | os.PathLike[str],
    geojson_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: MaskConfig | None = None,
    progress: Progress | None = None,
) -> DatasetSummary:
    """Cut a slide and its QuPath GeoJSON into training tiles (RGB + label mask PNGs) with a manifest.

    Parameters
    ----------
    slide_path
        The slide (any format :func:`qpbridge.slide.open_slide` reads).
    geojson_path
        The objects of that slide, level-0 pixels: QuPath GeoJSON or any format
        :func:`qpbridge.formats.read_annotations` reads (ASAP or ImageScope XML, DSA JSON; a label image as the
        class labels of ``config``, placed by the resolution it records, else at level 0).
    out_dir
        The dataset folder (created; a folder holding a dataset gets this slide appended).
    config
        :class:`MaskConfig` (default: DeepBatch classes at 0.5 um/px, 256 px tiles).
    progress
        Called as ``progress(stage, done, total)`` with stage ``"scan"`` or ``"write"`` (blocks).

    Returns
    -------
    DatasetSummary
        Counts of pixels per label, tiles kept and written per class, paths, warnings.

    Raises
    ------
    InputError
        Missing files, bad options, unknown classes (listed with counts), no pixel size.
    GeoJSONError
        An empty GeoJSON, no area objects, objects that all lie off the slide, an object far outside it, or
        more than half of the labelled area off it (the last two: warnings with ``allow_off_slide``).
    OutputError
        DIR is a file, holds something else, holds a dataset of other settings or this slide already.

    Example
    -------
    >>> s = build_tile_dataset("a.svs", "a.geojson", "tiles", MaskConfig(dry_run=True))  # doctest: +SKIP
    >>> s.kept_by_class                                                                   # doctest: +SKIP
    {0: 812, 1: 40, 2: 13, 3: 96}
    """
    from qpbridge.formats import label_options_for_slide, read_annotations
    from qpbridge.qupath import require_features

    started = time.perf_counter()
    config = (config or MaskConfig()).checked()
    slide_path, geojson_path, out_dir = Path(slide_path), Path(geojson_path), Path(out_dir)
    if not slide_path.exists():
        raise InputError(f"slide not found: {slide_path}: check the path")
    if not geojson_path.is_file():
        raise InputError(
            f"GeoJSON not found: {geojson_path}: export the objects from QuPath "
            "(File > Export objects as GeoJSON) and give that file"
        )
    slide_id = slide_path.stem
    existing = None if config.dry_run else _open_existing(out_dir, config, slide_id, slide_path)

    with open_slide(slide_path, mpp=config.slide_mpp) as slide:
        if not slide.has_mpp:
            raise InputError(
                f"{slide_path} has no pixel size in its metadata: give it with --mpp (um/px at full "
                "resolution, e.g. --mpp 0.25 for a 40x scan)"
            )
        warnings: list[str] = []
        if config.mpp < slide.mpp * 0.99:
            warnings.append(
                f"tiles at {config.mpp} um/px are finer than the slide ({slide.mpp:.4g} um/px): images are upsampled"
            )
        names = {c.label: c.name for c in config.class_map.classes}
        options = label_options_for_slide(names, slide.mpp)
        result = require_features(read_annotations(geojson_path, format_options=options), geojson_path)
        warnings.extend(result.warnings[:20])
        if len(result.warnings) > 20:
            warnings.append(f"... and {len(result.warnings) - 20} more GeoJSON warnings")
        features = _check_extent(result.features, slide, geojson_path, warnings, config.allow_off_slide)
        _check_export(geojson_path, features)
        rasterizer = _rasterizer(features, config, geojson_path, slide.mpp)
        warnings.extend(rasterizer.report.notes())
        _check_labelled_area(rasterizer, slide, geojson_path, warnings, config.allow_off_slide)
        if rasterizer.n_painted == 0 and rasterizer.n_regions == 0:
            raise GeoJSONError(
                f"{geojson_path} holds no area objects to make labels from ({len(result.features)} objects, "
                "none a polygon of a mapped class): draw or export annotations with areas"
            )
        if config.reviewed == "region" and rasterizer.reviewed_effective == "all":
            warnings.append("no 'Region*' objects: the whole slide counts as reviewed (--reviewed all)")

        summary = _run(slide, rasterizer, config, out_dir, slide_id, geojson_path, existing, warnings, progress)
        summary.objects_painted, summary.objects_regions = rasterizer.n_painted, rasterizer.n_regions
        summary.seconds = time.perf_counter() - started
        return summary


#: What rasterizes a slide's windows: class labels, or nuclei instances.
Rasterizer = LabelRasterizer | InstanceRasterizer


def _rasterizer(features: Sequence[Feature], config: MaskConfig, geojson_path: Path, mpp: float) -> Rasterizer:
    """The class rasterizer, or for nuclei tiles the instance rasterizer (:mod:`qpbridge.tiles.instances`)."""
    if config.role == "nuclei":
        return InstanceRasterizer(features, config.class_map, reviewed=config.reviewed,
                                  grow_px=config.grow_instances_px, mpp=mpp, source=str(geojson_path))  # fmt: skip
    return LabelRasterizer(
        features,
        config.class_map,
        overlap=config.overlap,
        reviewed=config.reviewed,
        ignore_unknown=config.ignore_unknown,
        priority=config.priority,
        source=str(geojson_path),
    )


def _check_export(geojson_path: Path, features: Sequence[Feature]) -> None:
    """An export of corrections that left the predictions out (an older export script's default) would
    label every predicted lesion as background: refuse it (:func:`qpbridge.qupath.check_export_holds`). What
    the predictions were is read from the prediction beside the corrections in the project layout (its
    ``.meta.json``); without one there is nothing to check against."""
    from qpbridge.qupath import (
        check_export_holds,
        corrections_sidecar_path,
        load_corrections_sidecar,
        meta_path,
        prediction_of_corrections,
        prediction_state,
    )

    prediction = prediction_of_corrections(geojson_path)
    if prediction is None:
        return
    try:
        meta = json.loads(meta_path(prediction).read_text(encoding="utf-8"))
        object_type = str(meta["config"]["object_type"])
        by_class = {str(k): int(v) for k, v in meta["summary"]["features_by_class"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    sidecar_path = corrections_sidecar_path(geojson_path)
    try:
        sidecar = load_corrections_sidecar(sidecar_path) if sidecar_path is not None else None
    except InputError:
        sidecar = None
    predicted = [(object_type, name) for name, n in by_class.items() if name not in ("ROI", "heatmap tiles")
                 for _ in range(n)]
    check_export_holds(predicted, ((f.object_type, f.class_name, prediction_state(f.measurements)) for f in features),
                       sidecar, geojson_path)


@dataclass
class _Scan:
    """Per-tile label counts (columns: class labels, then 255), the keep decision and slide-wide totals."""

    counts: np.ndarray
    keep: np.ndarray
    pixel_totals: np.ndarray


def _scan(
    slide: Slide,
    rasterizer: Rasterizer,
    config: MaskConfig,
    grid: TileGrid,
    tissue: TissueFractions | None,
    writer: TileWriter | None,
    progress: Progress | None,
) -> _Scan:
    """Rasterize every block once: count labels per tile, decide which tiles to keep, write them if ``writer``."""
    columns = np.asarray([*config.class_map.labels, IGNORE_LABEL])
    tile, area = grid.tile_px, grid.tile_px * grid.tile_px
    scan = _Scan(
        np.zeros((grid.n_tiles, len(columns)), dtype=np.int64),
        np.zeros(grid.n_tiles, dtype=bool),
        np.zeros(256, dtype=np.int64),
    )
    min_labelled = max(1, math.ceil(config.min_labelled_frac * area))
    # Pixels that count as "something drawn here": every labelled pixel, except uncovered background ones.
    background = rasterizer.fill_label if rasterizer.uncovered_label == rasterizer.fill_label else None
    for b, block in enumerate(grid.blocks):
        window = label_mask_for_window(rasterizer, slide, block.x_px, block.y_px, block.width_px, block.height_px,
                                       grid.mpp)  # fmt: skip
        labels = instance_classes(window) if isinstance(rasterizer, InstanceRasterizer) else window
        own_w, own_h = grid.owned(block)
        scan.pixel_totals += np.bincount(labels[:own_h, :own_w].ravel(), minlength=256)
        kept: list[int] = []
        for t in grid.tiles(block):
            x, y = grid.origin(t)
            ox, oy = x - block.x_px, y - block.y_px
            tile_counts = np.bincount(labels[oy : oy + tile, ox : ox + tile].ravel(), minlength=256)
            scan.counts[t] = tile_counts[columns]
            labelled = area - int(tile_counts[IGNORE_LABEL])
            if labelled < min_labelled:
                continue
            if tissue is not None:
                drawn = labelled - (int(tile_counts[background]) if background is not None else 0)
                need = config.min_tissue_frac
                if drawn < need * area and tissue.fraction(x, y, tile, tile) < need:
                    continue
            scan.keep[t] = True
            kept.append(t)
        if writer is not None and kept:
            _write_tiles(slide, writer, grid, kept, scan.counts, window, (block.x_px, block.y_px))
        if progress is not None:
            progress("write" if writer is not None else "scan", b + 1, len(grid.blocks))
    return scan


def _sample(scan: _Scan, labels: Sequence[int], background: int, config: MaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each kept tile's majority class (-1 for tiles not kept) and the tiles selected under ``max_per_class``."""
    majority = np.full(len(scan.keep), -1, dtype=np.int64)
    for t in np.flatnonzero(scan.keep).tolist():
        majority[t] = _majority(scan.counts[t], labels, background)
    selected = scan.keep.copy()
    if config.max_per_class is not None:
        rng = np.random.default_rng(config.seed)
        for lab in labels:
            members = np.flatnonzero(majority == lab)
            if len(members) > config.max_per_class:
                chosen = rng.choice(members, size=config.max_per_class, replace=False)
                selected[np.setdiff1d(members, chosen)] = False
    return majority, selected


def _run(
    slide: Slide,
    rasterizer: Rasterizer,
    config: MaskConfig,
    out_dir: Path,
    slide_id: str,
    geojson_path: Path,
    existing: _Existing | None,
    warnings: list[str],
    progress: Progress | None,
) -> DatasetSummary:
    grid = TileGrid.of(slide, config)
    labels = list(config.class_map.labels)
    summary = DatasetSummary(
        slide_id=slide_id,
        slide_path=str(slide.path),
        geojson_path=str(geojson_path),
        out_dir=str(out_dir),
        dry_run=config.dry_run,
        mpp=config.mpp,
        tile_px=config.tile_px,
        stride_px=config.stride,
        slide_mpp=slide.mpp,
        slide_size_px=slide.dimensions,
        grid_size_px=(grid.width_px, grid.height_px),
        classes=config.class_map.to_json(),
        reviewed_effective=rasterizer.reviewed_effective,
        tiles_total=grid.n_tiles,
        blocks=len(grid.blocks),
        warnings=warnings,
    )
    tissue: TissueFractions | None = None
    if config.min_tissue_frac > 0:
        from qpbridge.tissue import detect_tissue

        found = detect_tissue(slide, mpp=config.tissue_mpp)
        tissue = TissueFractions(found.tissue, found.affine, slide.affine_at(config.mpp))

    writer = None if config.dry_run else TileWriter(out_dir, slide_id, config, labels, slide.scale_for_mpp(config.mpp))
    try:
        # Without sampling one pass writes as it goes; with sampling, pass 1 counts and pass 2 writes the chosen.
        single_pass = config.max_per_class is None
        scan = _scan(slide, rasterizer, config, grid, tissue, writer if single_pass else None, progress)
        majority, selected = _sample(scan, labels, rasterizer.fill_label, config)
        if writer is not None and not single_pass:
            todo = [[t for t in grid.tiles(block) if selected[t]] for block in grid.blocks]
            todo = [tiles for tiles in todo if tiles]
            for done, tiles in enumerate(todo):
                _write_tiles(slide, writer, grid, tiles, scan.counts, rasterizer)
                if progress is not None:
                    progress("write", done + 1, len(todo))
        if writer is not None:
            writer.close()

        columns = [*labels, IGNORE_LABEL]
        summary.tiles_kept = int(scan.keep.sum())
        summary.tiles_selected = int(selected.sum())
        summary.tiles_written = 0 if config.dry_run else summary.tiles_selected
        summary.kept_by_class = {lab: int((majority == lab).sum()) for lab in labels}
        summary.written_by_class = {lab: int((majority[selected] == lab).sum()) for lab in labels}
        summary.pixels_by_label = {v: int(scan.pixel_totals[v]) for v in columns}
        summary.written_pixels_by_label = {v: int(scan.counts[selected, j].sum()) for j, v in enumerate(columns)}
        if writer is None:
            return summary
        qa_rel: str | None = None
        if config.qa_mpp is not None and isinstance(rasterizer, LabelRasterizer):
            writer.make_dir(out_dir / "qa")
            qa_rel = f"qa/{slide_id}_label_mask.tiff"
            write_label_mask_tiff(writer.path_for(out_dir / qa_rel), rasterizer, slide, config.qa_mpp)
            summary.qa_mask = str(out_dir / qa_rel)
        _commit(out_dir, config, slide, slide_id, summary, writer, existing, qa_rel)
    except BaseException:
        if writer is not None:
            writer.abort()  # a full disk, a failed read, Ctrl-C: nothing of this run is left in DIR
        raise
    return summary


def _write_tiles(
    slide: Slide,
    writer: TileWriter,
    grid: TileGrid,
    tiles: Sequence[int],
    counts: np.ndarray,
    labels: np.ndarray | Rasterizer,
    labels_origin: tuple[int, int] = (0, 0),
) -> None:
    """Read the image once over the bounding box of ``tiles`` and queue each tile with its mask.

    ``labels`` is the label array of a window starting at ``labels_origin`` that covers the tiles, or a
    :class:`LabelRasterizer` to rasterize the bounding box with.
    """
    tile = grid.tile_px
    origins = [grid.origin(t) for t in tiles]
    x0, y0 = min(x for x, _ in origins), min(y for _, y in origins)
    width, height = max(x for x, _ in origins) + tile - x0, max(y for _, y in origins) + tile - y0
    rgb = slide.read_region_at(x0, y0, width, height, grid.mpp)
    if not isinstance(labels, np.ndarray):
        labels = label_mask_for_window(labels, slide, x0, y0, width, height, grid.mpp)
        labels_origin = (x0, y0)
    lx, ly = labels_origin
    for t, (x, y) in zip(tiles, origins, strict=True):
        writer.write(
            x,
            y,
            rgb[y - y0 : y - y0 + tile, x - x0 : x - x0 + tile],
            labels[y - ly : y - ly + tile, x - lx : x - lx + tile],
            counts[t],
        )


def _commit(
    out_dir: Path,
    config: MaskConfig,
    slide: Slide,
    slide_id: str,
    summary: DatasetSummary,
    writer: TileWriter,
    existing: _Existing | None,
    qa_rel: str | None,
) -> None:
    """Write manifest.csv and dataset.json to temporaries (flushed to disk), rename the tiles that replace
    existing ones into place, then the manifest, then dataset.json; then drop a replaced slide's old tiles."""
    rows = writer.rows
    header = manifest_header(config.class_map.labels)
    slides: list[dict[str, Any]] = []
    old_rows: list[dict[str, str]] = []
    stale: set[str] = set()
    if existing is not None:
        listed = {s.get("slide") for s in existing.meta.get("slides", []) if isinstance(s, dict)}
        for row in existing.rows:
            if row["slide"] == slide_id:
                stale.update((row["image"], row["mask"]))
            elif row["slide"] in listed:
                old_rows.append(row)
        dropped = sum(1 for row in existing.rows if row["slide"] not in listed)
        if dropped:
            summary.warnings.append(f"dropped {dropped} manifest rows of an interrupted earlier run")
        for s in existing.meta.get("slides", []):
            if not isinstance(s, dict):
                continue
            if s.get("slide") != slide_id:
                slides.append(s)
            elif isinstance(s.get("label_mask"), str):
                stale.add(s["label_mask"])
    entry: dict[str, Any] = {
        "slide": slide_id,
        "path": str(Path(summary.slide_path).resolve()),
        "geojson": str(Path(summary.geojson_path).resolve()),
        "slide_mpp": slide.mpp,
        "tiles": len(rows),
        "reviewed": summary.reviewed_effective,
    }
    if qa_rel is not None:
        entry["label_mask"] = qa_rel
        entry["label_mask_mpp"] = max(config.qa_mpp or 0.0, slide.mpp)
    slides.append(entry)
    buffer = io.StringIO()
    csv_writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    csv_writer.writeheader()
    csv_writer.writerows(old_rows)
    csv_writer.writerows(rows)
    meta = {
        "format": DATASET_FORMAT,
        "mpp": config.mpp,
        "tile_px": config.tile_px,
        "stride_px": config.stride,
        "ignore_label": INSTANCE_IGNORE_LABEL if config.role == "nuclei" else IGNORE_LABEL,
        "role": config.class_map.role,
        "classes": config.class_map.to_json(),
        "slides": slides,
        "qpbridge_version": __version__,
        "label_mask_legend": legend(config.class_map),
    }
    staged: list[tuple[Path, Path]] = []
    try:
        for target, text in ((out_dir / MANIFEST_FILE, buffer.getvalue()),
                             (out_dir / DATASET_FILE, json.dumps(meta, indent=2) + "\n")):
            tmp = temporary_path(target)
            staged.append((tmp, target))
            _write_synced(tmp, text)
        # Everything that can run out of space is written: only renames follow.
        writer.publish()
        for tmp, target in staged:
            commit(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    written = {r["image"] for r in rows} | {r["mask"] for r in rows} | ({qa_rel} if qa_rel else set())
    for rel in stale - written:
        (out_dir / rel).unlink(missing_ok=True)


def _write_synced(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` and flush it to disk (a full disk shows here, not at the rename)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
