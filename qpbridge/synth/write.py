"""Writing a synthetic slide: the arguments checked, the layout drawn, the pixels rendered into the pyramid, the
truth written."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qpbridge.atomic import commit
from qpbridge.errors import InputError, OutputError
from qpbridge.synth.common import MIN_SIDE_PX, U8
from qpbridge.synth.layout import make_layout
from qpbridge.synth.pyramid import (
    LevelSink,
    aperio_description,
    box4,
    level_dimensions_for,
    strip_tiles,
    write_thumbnail,
)
from qpbridge.synth.render import STAIN_NAMES, STAINS, Renderer
from qpbridge.synth.truth import (
    SynthResult,
    synth_paths,
    synth_result,
    write_meta,
    write_nuclei_geojson,
    write_truth_geojson,
)

__all__ = ["write_synthetic_slide"]

_BLOCK_TILES = 8  # level-0 blocks are one tile row high and this many tiles wide
# Reduced levels are small (1/16 of level 0 and less) and every pixel is busy: keep their chroma whole and
# their quality high, so that they stay within a few grey levels of a box-downsampled level-0 read.
_LOWER_LEVEL_MIN_QUALITY = 92


# ------------------------------------------------------------------------------------------------- main
def _check_args(
    path: Path,
    width_px: int,
    height_px: int,
    seed: int,
    stain: str,
    tile_px: int,
    quality: int,
    lesion_fraction: float,
    overwrite: bool,
) -> None:
    for name, value in (("width", width_px), ("height", height_px)):
        if not isinstance(value, int) or value < MIN_SIDE_PX:
            raise InputError(f"--{name} must be an integer >= {MIN_SIDE_PX} px, got {value}")
    if width_px * height_px > 2**34:
        raise InputError(f"slide of {width_px} x {height_px} px is too large: keep width x height under 2^34 px")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    if stain not in STAINS:
        raise InputError(f"unknown --stain {stain!r}: choose one of {', '.join(STAIN_NAMES)}")
    if tile_px < 64 or tile_px % 16:
        raise InputError(f"tile size must be a multiple of 16 and >= 64 px, got {tile_px}")
    if not 1 <= quality <= 100:
        raise InputError(f"JPEG quality must be between 1 and 100, got {quality}")
    if not 0.0 <= lesion_fraction <= 0.5:
        raise InputError(f"--lesion-fraction must be between 0 and 0.5, got {lesion_fraction}")
    if path.suffix.lower() not in (".svs", ".tif", ".tiff"):
        raise InputError(f"output {path} must end in .svs, .tif or .tiff")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"{path.parent} is a file, not a folder: choose another output path")
    if not overwrite:
        for p in (path, *synth_paths(path)[:2]):
            if p.exists():
                raise OutputError(f"{p} exists: choose another path or pass --overwrite")


def write_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width_px: int,
    height_px: int,
    seed: int = 0,
    stain: str = "standard",
    tile_px: int = 256,
    quality: int = 85,
    lesion_fraction: float = 0.10,
    nuclei: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write a synthetic H&E-like Aperio slide (pyramidal JPEG TIFF) and its ground truth.

    Parameters
    ----------
    path
        Output slide, ``.svs`` (or ``.tif``/``.tiff``). The truth goes beside it (see :func:`synth_paths`).
    width_px, height_px
        Level-0 size in pixels (>= 512), at :data:`MPP` = 0.25 um/px.
    seed
        Same seed, same arguments -> identical pixels and truth. The seed also jitters the stain colours.
    stain
        One of :data:`STAIN_NAMES`: "standard", "faded" (weak, greyish hematoxylin, pale orange eosin) or
        "dark" (over-stained).
    tile_px, quality
        JPEG tile size (multiple of 16) and quality of every level.
    lesion_fraction
        Fraction of the tissue area covered by lesions (benign + in situ + invasive).
    nuclei
        Also write ``<stem>.nuclei.geojson``: every nucleus as a detection (16-vertex ellipse).
    overwrite
        Replace existing outputs; otherwise an existing slide or truth file raises :class:`OutputError`.
    progress
        Called as ``progress(done, total)`` while writing (units: level-0 blocks, then lower-level tile rows).

    Returns
    -------
    SynthResult
        Paths, sizes, levels and the measured class areas.

    Raises
    ------
    InputError
        A bad size, seed, stain, tile size, quality or lesion fraction.
    OutputError
        The folder is missing, or an output exists and ``overwrite`` is false.

    Examples
    --------
    >>> r = write_synthetic_slide("/tmp/s.svs", width_px=2048, height_px=1536, seed=3,
    ...                           overwrite=True)  # doctest: +SKIP
    >>> r.level_dimensions  # doctest: +SKIP
    ((2048, 1536), (512, 384), (128, 96))
    """
    path = Path(path)
    _check_args(path, width_px, height_px, seed, stain, tile_px, quality, lesion_fraction, overwrite)
    made = _missing_folders(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)  # a new demo folder is fine to create
    truth_path, meta_path, nuclei_path = synth_paths(path)
    dims = level_dimensions_for(width_px, height_px)
    layout = make_layout(width_px, height_px, seed, lesion_fraction)
    renderer = Renderer.create(layout, seed, stain, collect_nuclei=nuclei)
    try:
        # Every file is written into a staging folder beside the outputs (a full disk shows there), then
        # renamed into place: the truth files first, the slide last, so a slide never appears without its truth
        # and a failed run leaves the folder as it was.
        with tempfile.TemporaryDirectory(prefix=".synth-", dir=path.parent) as staging_dir:
            staging = Path(staging_dir)
            _write_pyramid(staging / "slide.tif", renderer, dims,
                           _Writing(tile_px, quality, path.name, seed, stain, progress))  # fmt: skip
            staged = [(staging / truth_path.name, truth_path)]
            write_truth_geojson(staged[-1][0], layout)
            nuclei_count = None
            if nuclei:
                found = np.concatenate(renderer.nuclei_out) if renderer.nuclei_out else np.empty((0, 6), np.float32)
                staged.append((staging / nuclei_path.name, nuclei_path))
                write_nuclei_geojson(staged[-1][0], found)
                nuclei_count = int(found.shape[0])
            result = synth_result(
                path, truth_path, meta_path, nuclei_path if nuclei else None, layout, seed, stain, dims, nuclei_count
            )
            staged.append((staging / meta_path.name, meta_path))
            write_meta(staged[-1][0], result, lesion_fraction)
            staged.append((staging / "slide.tif", path))
            for tmp, target in staged:
                commit(tmp, target)
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when left empty
        raise
    return result


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, outermost first."""
    missing: list[Path] = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


@dataclass
class _Writing:
    """How the pyramid is written (tiles, JPEG quality, the description's name, seed and stain) and its progress."""

    tile_px: int
    quality: int
    name: str
    seed: int
    stain: str
    progress: Callable[[int, int], None] | None
    total_steps: int = 0
    done: int = 0

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total_steps)


def _write_pyramid(tmp_slide: Path, renderer: Renderer, dims: tuple[tuple[int, int], ...], job: _Writing) -> None:
    """Render level 0 into ``tmp_slide`` block by block, feeding the lower levels (raw files in a temporary
    folder beside it), then write the thumbnail and the lower levels from those files."""
    import tifffile

    width_px, height_px = dims[0]
    n_rows = math.ceil(height_px / job.tile_px)
    n_blocks = n_rows * math.ceil(width_px / (job.tile_px * _BLOCK_TILES))
    job.total_steps = n_blocks + sum(math.ceil(h / job.tile_px) for _, h in dims[1:])
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=tmp_slide.parent) as tmpdir:
        sinks: list[LevelSink] = []
        below: LevelSink | None = None
        for level in range(len(dims) - 1, 0, -1):
            lw, lh = dims[level]
            below = LevelSink(Path(tmpdir) / f"level{level}.raw", lw, lh, level > 1, below)
            sinks.insert(0, below)
        try:
            options: dict[str, Any] = {
                "dtype": np.uint8,
                "photometric": "rgb",
                "compression": "jpeg",
                "metadata": None,
                "software": "qpbridge",
            }
            with tifffile.TiffWriter(tmp_slide, bigtiff=width_px * height_px * 3 > 3_500_000_000) as tif:
                tif.write(
                    _level0_tiles(renderer, sinks[0], dims, job),
                    shape=(height_px, width_px, 3),
                    tile=(job.tile_px, job.tile_px),
                    description=aperio_description(dims, 0, job.tile_px, job.quality, job.name, job.seed, job.stain),
                    compressionargs={"level": job.quality},
                    **options,
                )
                write_thumbnail(tif, Path(tmpdir), dims, options)
                lower_quality = max(job.quality, _LOWER_LEVEL_MIN_QUALITY)
                for level in range(1, len(dims)):
                    lw, lh = dims[level]
                    description = aperio_description(dims, level, job.tile_px, lower_quality, job.name, job.seed,
                                                     job.stain)  # fmt: skip
                    tif.write(
                        _lower_tiles(Path(tmpdir) / f"level{level}.raw", lw, lh, job),
                        shape=(lh, lw, 3),
                        tile=(job.tile_px, job.tile_px),
                        description=description,
                        compressionargs={"level": lower_quality},
                        subsampling=(1, 1),
                        **options,
                    )
        finally:
            for sink in sinks:
                if not sink.file.closed:
                    sink.file.close()


def _level0_tiles(renderer: Renderer, top: LevelSink, dims: tuple[tuple[int, int], ...], job: _Writing) -> Iterator[U8]:
    """Level 0's tiles in order, rendered a block (a tile row high) at a time; each finished row is box-averaged
    into level 1 (``top``), which passes it on down the pyramid."""
    width_px, height_px = dims[0]
    tile_px = job.tile_px
    block_w = tile_px * _BLOCK_TILES
    n_rows = math.ceil(height_px / tile_px)
    for r in range(n_rows):
        y0 = r * tile_px
        th = min(tile_px, height_px - y0)
        strip = np.empty((th // 4, dims[1][0], 3), np.uint8)
        for x0 in range(0, width_px, block_w):
            bw = min(block_w, width_px - x0)
            block = renderer.render(x0, y0, bw, th)
            strip[:, x0 // 4 : x0 // 4 + bw // 4] = box4(block, th // 4, bw // 4)
            if x0 + bw >= width_px:  # row complete: flush it down the pyramid before the last yield
                top.feed(strip)
                if r == n_rows - 1:
                    top.finish()
            job.step()
            # tifffile closes this generator after the last tile: nothing may follow the last yield.
            for tx in range(0, bw, tile_px):
                yield block[:, tx : tx + tile_px]


def _lower_tiles(raw_path: Path, width_px: int, height_px: int, job: _Writing) -> Iterator[U8]:
    """A lower level's tiles from its raw file; one progress step per tile row."""
    for i, t in enumerate(strip_tiles(raw_path, width_px, height_px, job.tile_px)):
        if i % math.ceil(width_px / job.tile_px) == 0:
            job.step()
        yield t
