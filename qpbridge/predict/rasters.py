"""Label and probability rasters of the cell stage: pyramidal, tiled, deflate-compressed OME-TIFF, written block by
block at the cell model's um/px (``qpbridge predict --labels OUT.ome.tif --probabilities OUT.ome.tif``).

:class:`RasterWriter` is opened with the raster's size (the slide at the cell model's um/px) and the model's class
table. :meth:`RasterWriter.write_block` stores each block the cell stage finishes into the tiles of a raw level-0
file on disk beside the output (sparse: a tile no block reaches reads as background, and costs neither memory nor
disk); :meth:`RasterWriter.close` then streams those tiles into the TIFF, each one also reduced 2 x 2 into a row of
tiles of the level below, whose finished rows are encoded into a small temporary file and reduced again, and so on
down the pyramid; the TIFF is written through :func:`qpbridge.atomic.atomic_path` and appears only when complete.
:meth:`RasterWriter.abort` removes everything. Memory is bounded by a block (writing) and by a row of tiles per
level, about ``tile_px`` rows of level 0 in all (building the pyramid): never a whole-slide array at the model's
resolution. Tiles of one value (most of them: background, or inside a region) are encoded once.

The files:

- **labels** (``uint8``, one plane): the cell model's class label of each pixel where it ran, 0 (the
  background/normal label) where it did not. Lower levels: the mode of each 2 x 2 block (:func:`mode_reduce`;
  a tie goes to the top-left pixel, i.e. nearest sampling), so they hold class labels only.
- **probabilities** (``uint8``, one plane per class, ``round(255 p)``; 0 in every channel where the model did
  not run). Lower levels: the rounded mean of each 2 x 2 block (:func:`mean_reduce`).

Both are OME-TIFF pyramids as the OME-TIFF specification has them since 2019 (reduced levels in SubIFDs; read by
Bio-Formats 6+, which is QuPath's OME-TIFF reader, and by tifffile, which napari's TIFF readers use), with OME-XML:
``PhysicalSizeX/Y`` in um, one ``Channel`` per plane (probabilities: the class name and colour; labels: "Class
label"), a ``MapAnnotation`` label -> class name (namespace :data:`CLASSES_NAMESPACE`) and one label -> colour
(:data:`COLORS_NAMESPACE`), and a ``CommentAnnotation`` holding the same as JSON (:data:`INFO_NAMESPACE`), which
:func:`read_raster_info` reads back. TIFF ``XResolution`` / ``ResolutionUnit`` carry the pixel size too, for
readers that ignore OME-XML (OpenSlide opens the files as ``generic-tiff``, level 0 only: it does not follow
SubIFDs; probabilities: their first channel).

Disk: the raw level 0 is sparse, so it takes (1 + classes) bytes per pixel of the tiles the cell model's blocks
touched, beside the output, until :meth:`RasterWriter.close` (or :meth:`RasterWriter.abort`) removes it.

The raster grid is the slide's level 0 scaled by ``mpp / slide mpp`` (origin at level-0 pixel (0, 0), not at
QuPath's bounds offset, which the JSON records).

Example
-------
>>> import tempfile, pathlib
>>> from qpbridge.classes import DEEPBATCH_CLASSES
>>> from qpbridge.tiling import Window
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> writer = RasterWriter(folder / "x.labels.ome.tif", folder / "x.probs.ome.tif", width_px=600, height_px=400,
...                       mpp=1.0, classes=DEEPBATCH_CLASSES, tile_px=128)
>>> probs = np.zeros((4, 100, 100), np.float32); probs[3] = 1.0
>>> writer.write_block(Window(200, 100, 100, 100), np.full((100, 100), 3, np.uint8), probs)
>>> [info.levels for info in writer.close()]
[4, 4]
>>> info = read_raster_info(folder / "x.labels.ome.tif")
>>> info.kind, info.mpp, info.width_px, [c.name for c in info.classes]
('labels', 1.0, 600, ['Normal', 'Benign', 'In situ carcinoma', 'Invasive carcinoma'])
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from qpbridge import __version__
from qpbridge.atomic import atomic_path
from qpbridge.classes import ClassInfo
from qpbridge.errors import FormatError, InputError, OutputError
from qpbridge.tiling import Window

__all__ = [
    "CLASSES_NAMESPACE",
    "COLORS_NAMESPACE",
    "INFO_NAMESPACE",
    "RASTER_SUFFIXES",
    "TILE_PX",
    "ZLIB_LEVEL",
    "RasterInfo",
    "RasterWriter",
    "check_raster_targets",
    "mean_reduce",
    "mode_reduce",
    "ome_color",
    "pyramid_sizes",
    "read_raster_info",
]

#: Names the raster outputs must end in (QuPath and Bio-Formats take a ``.ome.tif`` for an OME-TIFF).
RASTER_SUFFIXES = (".ome.tif", ".ome.tiff")
#: Side of the TIFF tiles, at every level; the pyramid stops at the first level that fits in one tile.
TILE_PX = 512
#: zlib level of the tiles (zlib-ng at 3 is ~2x faster than libdeflate at tifffile's 6, for ~10% larger
#: probability tiles; constant tiles are encoded once).
ZLIB_LEVEL = 3
#: OME ``MapAnnotation`` namespaces: class label -> class name, class label -> colour (``#rrggbb``).
CLASSES_NAMESPACE = "qpbridge.org/classes"
COLORS_NAMESPACE = "qpbridge.org/class-colors"
#: OME ``CommentAnnotation`` namespace of the JSON that :func:`read_raster_info` reads back.
INFO_NAMESPACE = "qpbridge.org/raster"

_OME_NS = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
_BIGTIFF_ABOVE_BYTES = 3_500_000_000  # raw size of all levels above which the file is a BigTIFF


def pyramid_sizes(width_px: int, height_px: int, tile_px: int = TILE_PX) -> list[tuple[int, int]]:
    """(width, height) of each level: halved (rounded up) until a level fits in one tile.

    >>> pyramid_sizes(5000, 3750)
    [(5000, 3750), (2500, 1875), (1250, 938), (625, 469), (313, 235)]
    >>> pyramid_sizes(300, 200)
    [(300, 200)]
    """
    sizes = [(width_px, height_px)]
    while max(sizes[-1]) > tile_px:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    return sizes


def _pad_even(a: np.ndarray) -> np.ndarray:
    """``a`` (..., H, W) with its last row / column repeated where H / W is odd."""
    pad_h, pad_w = a.shape[-2] % 2, a.shape[-1] % 2
    if not (pad_h or pad_w):
        return a
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad_h), (0, pad_w)], mode="edge")


def mode_reduce(labels: np.ndarray) -> np.ndarray:
    """The most frequent label of each 2 x 2 block of ``labels`` (..., H, W) -> (..., ceil(H/2), ceil(W/2)).

    A tie (2 + 2, or four different labels) goes to the block's top-left pixel (nearest sampling); an odd last
    row or column is repeated.

    >>> mode_reduce(np.array([[1, 2, 5, 5], [2, 0, 5, 3], [7, 7, 4, 4]], np.uint8)).tolist()
    [[2, 5], [7, 4]]
    """
    a = _pad_even(labels)
    tl, tr, bl, br = a[..., 0::2, 0::2], a[..., 0::2, 1::2], a[..., 1::2, 0::2], a[..., 1::2, 1::2]
    tl_tr, tl_bl, tl_br = tl == tr, tl == bl, tl == br
    tr_bl, tr_br, bl_br = tr == bl, tr == br, bl == br
    out = tl.copy()
    best = tl_tr.astype(np.uint8) + tl_bl + tl_br
    for candidate, count in ((tr, tl_tr.astype(np.uint8) + tr_bl + tr_br), (bl, tl_bl.astype(np.uint8) + tr_bl + bl_br),
                             (br, tl_br.astype(np.uint8) + tr_br + bl_br)):
        better = count > best
        out[better] = candidate[better]
        np.maximum(best, count, out=best)
    return out


def mean_reduce(values: np.ndarray) -> np.ndarray:
    """The rounded mean of each 2 x 2 block of uint8 ``values`` (..., H, W) -> (..., ceil(H/2), ceil(W/2));
    an odd last row or column is repeated.

    >>> mean_reduce(np.array([[0, 255, 10], [0, 255, 11]], np.uint8)).tolist()
    [[128, 11]]
    """
    a = _pad_even(values)
    total = a[..., 0::2, 0::2].astype(np.uint16)
    total += a[..., 0::2, 1::2]
    total += a[..., 1::2, 0::2]
    total += a[..., 1::2, 1::2]
    total += 2
    total //= 4
    return total.astype(np.uint8)


def ome_color(rgb: Sequence[int]) -> int:
    """An (r, g, b) colour as OME-XML's ``Color``: RGBA packed in a signed 32-bit integer (opaque).

    >>> ome_color((255, 255, 255)), ome_color((215, 25, 35))
    (-1, -686218241)
    """
    r, g, b = (int(v) for v in rgb)
    packed = (r << 24) | (g << 16) | (b << 8) | 255
    return packed - (1 << 32) if packed >= 1 << 31 else packed


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


@dataclass(frozen=True)
class RasterInfo:
    """What a raster output is (also the JSON in its OME-XML and in ``<out>.meta.json``)."""

    kind: Literal["labels", "probabilities"]
    path: str
    mpp: float  #: um per pixel of level 0
    width_px: int
    height_px: int
    levels: int  #: pyramid levels (level 0 and its SubIFDs), each half the one above (rounded up)
    tile_px: int
    classes: tuple[ClassInfo, ...]  #: the cell model's classes; probabilities: channel i is classes[i]
    background_label: int = 0  #: the label where the model did not run
    slide_mpp: float | None = None  #: um per pixel of the slide's level 0
    qupath_offset_xy_px: tuple[int, int] = (0, 0)  #: level-0 px QuPath shows as (0, 0) (the raster starts at 0, 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (colours as ``[r, g, b]``)."""
        return {
            "kind": self.kind, "path": self.path, "mpp": self.mpp, "width_px": self.width_px,
            "height_px": self.height_px, "levels": self.levels, "tile_px": self.tile_px,
            "classes": [{"label": c.label, "name": c.name, "color": list(c.color)} for c in self.classes],
            "background_label": self.background_label, "slide_mpp": self.slide_mpp,
            "qupath_offset_xy_px": list(self.qupath_offset_xy_px), "qpbridge_version": __version__,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RasterInfo:
        """The inverse of :meth:`to_json`."""
        classes = tuple(ClassInfo(int(c["label"]), str(c["name"]), tuple(int(v) for v in c["color"]))  # type: ignore[arg-type]
                        for c in data["classes"])
        kind = data["kind"]
        if kind not in ("labels", "probabilities"):
            raise ValueError(f"unknown raster kind {kind!r}")
        offset = data.get("qupath_offset_xy_px") or (0, 0)
        return cls(kind=kind, path=str(data["path"]), mpp=float(data["mpp"]), width_px=int(data["width_px"]),
                   height_px=int(data["height_px"]), levels=int(data["levels"]), tile_px=int(data["tile_px"]),
                   classes=classes, background_label=int(data.get("background_label", 0)),
                   slide_mpp=None if data.get("slide_mpp") is None else float(data["slide_mpp"]),
                   qupath_offset_xy_px=(int(offset[0]), int(offset[1])))


def read_raster_info(path: str | os.PathLike[str]) -> RasterInfo:
    """The :class:`RasterInfo` a qpbridge raster output carries in its OME-XML; :class:`FormatError` for a file
    that is not one. (See the module example.)"""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise FormatError(f"{path}: not a readable TIFF ({exc})") from None
    if not xml:
        raise FormatError(f"{path}: no OME-XML: not a qpbridge label or probability raster")
    try:
        root = ET.fromstring(xml)
        for note in root.iter(f"{_OME_NS}CommentAnnotation"):
            if note.get("Namespace") == INFO_NAMESPACE:
                value = note.find(f"{_OME_NS}Value")
                if value is not None and value.text:
                    return RasterInfo.from_json(json.loads(value.text))
    except (ET.ParseError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise FormatError(f"{path}: unreadable qpbridge raster metadata ({exc})") from None
    raise FormatError(f"{path}: its OME-XML has no {INFO_NAMESPACE} annotation: not a qpbridge raster")


def check_raster_targets(
    labels: Path | None, probabilities: Path | None, *, output: Path, overlay: Path | None = None
) -> None:
    """:class:`InputError` / :class:`OutputError` for raster outputs that clash with another output (``-o``,
    ``--overlay``, each other), do not end in ``.ome.tif(f)`` or whose folder is missing.

    >>> check_raster_targets(Path("a.ome.tif"), Path("a.ome.tif"), output=Path("a.geojson"))
    Traceback (most recent call last):
    ...
    qpbridge.errors.InputError: --labels and --probabilities are the same file a.ome.tif: give each output its own path
    """
    others = [("-o", Path(output))] + ([("--overlay", Path(overlay))] if overlay is not None else [])
    checked: list[tuple[str, Path]] = []
    for flag, raw in (("--labels", labels), ("--probabilities", probabilities)):
        if raw is None:
            continue
        path = Path(raw)
        for other_flag, other in (*checked, *others):
            if other.resolve() == path.resolve():
                first, second = (other_flag, flag) if (other_flag, other) in checked else (flag, other_flag)
                raise InputError(f"{first} and {second} are the same file {path}: give each output its own path")
        checked.append((flag, path))
        if not path.name.lower().endswith(RASTER_SUFFIXES):
            raise InputError(f"{flag} {path} must end in .ome.tif or .ome.tiff (the OME-TIFF QuPath opens)")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError(f"{flag} folder {folder} does not exist: create it first or choose another path")


@cache
def _zlib_encoder() -> Callable[[np.ndarray], bytes]:
    """zlib-format (TIFF deflate) encoding at :data:`ZLIB_LEVEL`: zlib-ng, else libdeflate, else zlib."""
    import imagecodecs

    if imagecodecs.ZLIBNG.available:
        return partial(imagecodecs.zlibng_encode, level=ZLIB_LEVEL)  # type: ignore[return-value]
    if imagecodecs.DEFLATE.available:
        return partial(imagecodecs.deflate_encode, level=ZLIB_LEVEL)  # type: ignore[return-value]
    return lambda tile: zlib.compress(tile.tobytes(), ZLIB_LEVEL)


def _encode(tile: np.ndarray) -> bytes:
    return bytes(_zlib_encoder()(np.ascontiguousarray(tile)))


def _encode_tile(tile: np.ndarray, tile_px: int, uniform: dict[int, bytes]) -> bytes:
    """A tile padded with zeros to ``tile_px`` square, encoded; tiles of one value are encoded once (``uniform``:
    value -> its encoded tile)."""
    if tile.shape != (tile_px, tile_px):
        padded = np.zeros((tile_px, tile_px), np.uint8)
        padded[:tile.shape[0], :tile.shape[1]] = tile
        tile = padded
    first = int(tile[0, 0])
    if not (tile != first).any():
        if first not in uniform:
            uniform[first] = _encode(tile)
        return uniform[first]
    return _encode(tile)


class _TileStore:
    """Level 0 of one raster: ``planes`` uint8 planes cut into ``tile_px`` tiles, each stored whole (zero-padded
    past the raster's edge) and contiguous in a sparse file, plane by plane, tiles row-major. A tile never
    written is a hole: it reads as zeros and takes no disk. (Whole tiles, not rows: rows scattered over a
    sparse file cost one extent each, and freeing ~10^6 extents took a minute on ext4 with ``discard``.)"""

    def __init__(self, path: Path, width_px: int, height_px: int, planes: int, tile_px: int) -> None:
        self.path, self.width, self.height, self.planes, self.tile_px = path, width_px, height_px, planes, tile_px
        self.cols, self.rows = -(-width_px // tile_px), -(-height_px // tile_px)
        self.tile_bytes = tile_px * tile_px
        self.file = open(path, "w+b", buffering=0)  # noqa: SIM115 (closed in close)
        self.file.truncate(planes * self.rows * self.cols * self.tile_bytes)  # zeros, without writing them

    def _offset(self, plane: int, row: int, col: int) -> int:
        return ((plane * self.rows + row) * self.cols + col) * self.tile_bytes

    def read(self, plane: int, row: int, col: int) -> np.ndarray | None:
        """The tile at (row, col) of ``plane``; None if it was never written (zeros), which is not read."""
        offset = self._offset(plane, row, col)
        if self._hole(offset, self.tile_bytes):
            return None
        tile = np.empty((self.tile_px, self.tile_px), np.uint8)
        self.file.seek(offset)
        self.file.readinto(tile.data)
        return tile

    def paste(self, x: int, y: int, planes: np.ndarray) -> None:
        """Store ``planes`` (planes, h, w) uint8 with its top-left at pixel (x, y): each tile it touches is read
        (unless it covers the tile's pixels whole), patched and written back whole."""
        t = self.tile_px
        _, h, w = planes.shape
        for row in range(y // t, (y + h - 1) // t + 1):
            y0, y1 = max(y, row * t), min(y + h, (row + 1) * t)
            for col in range(x // t, (x + w - 1) // t + 1):
                x0, x1 = max(x, col * t), min(x + w, (col + 1) * t)
                whole = (y0, y1, x0, x1) == (row * t, min((row + 1) * t, self.height), col * t,
                                             min((col + 1) * t, self.width))
                for plane in range(self.planes):
                    tile = None if whole else self.read(plane, row, col)
                    if tile is None:
                        tile = np.zeros((t, t), np.uint8)
                    tile[y0 - row * t:y1 - row * t, x0 - col * t:x1 - col * t] = planes[plane, y0 - y:y1 - y,
                                                                                        x0 - x:x1 - x]
                    self.file.seek(self._offset(plane, row, col))
                    self.file.write(tile.data)

    def _hole(self, start: int, length: int) -> bool:
        """Whether bytes [start, start + length) are all in a hole of the sparse file (``SEEK_DATA``; False where
        the system cannot tell)."""
        seek_data = getattr(os, "SEEK_DATA", None)
        if seek_data is None:
            return False
        try:
            return os.lseek(self.file.fileno(), start, seek_data) >= start + length
        except OSError as exc:  # ENXIO: no data at or after start
            return exc.errno == errno.ENXIO

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class _Raster:
    """One raster output (labels or probabilities): its level 0 on disk and how its pyramid is built.

    :meth:`level0_tiles` reads level 0 tile by tile in TIFF order; each tile is also reduced 2 x 2 into a row
    of tiles of level 1 held in memory, and each finished row of level ``k`` is encoded into a temporary file
    (small: compressed) and reduced into level ``k + 1``. Memory: a row of tiles per level (together about
    ``tile_px`` rows of level 0)."""

    def __init__(self, kind: Literal["labels", "probabilities"], path: Path, workdir: Path, info: RasterInfo,
                 sizes: list[tuple[int, int]], tile_px: int) -> None:
        self.kind, self.path, self.info, self.sizes, self.tile_px = kind, path, info, sizes, tile_px
        self.planes = len(info.classes) if kind == "probabilities" else 1
        self.workdir = workdir
        self.store = _TileStore(workdir / f"{kind}.level0.raw", *sizes[0], self.planes, tile_px)
        self.reduce = mode_reduce if kind == "labels" else mean_reduce
        self.uniform: dict[int, bytes] = {}  # value -> its encoded tile of that one value
        self.zero = _encode_tile(np.zeros((tile_px, tile_px), np.uint8), tile_px, self.uniform)
        self.grid = [(-(-w // tile_px), -(-h // tile_px)) for w, h in sizes]  # (cols, rows) of tiles per level
        # Levels >= 1: encoded tiles in a temporary file, (offset, length) per (level, plane), length 0: zeros.
        self.lower: Any = None
        self.index: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.rows: dict[int, np.ndarray] = {}  # level -> the row of tiles being filled (of the current plane)

    def metadata(self) -> dict[str, Any]:
        """tifffile's OME metadata of level 0."""
        info = self.info
        if self.kind == "labels":
            channel = {"Name": ["Class label"], "Color": [ome_color((255, 255, 255))]}
        else:
            channel = {"Name": [c.name for c in info.classes], "Color": [ome_color(c.color) for c in info.classes]}
        return {
            "axes": "YX" if self.kind == "labels" else "CYX",
            "Name": f"qpbridge {self.kind}",
            "PhysicalSizeX": info.mpp, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": info.mpp, "PhysicalSizeYUnit": "µm",
            "Channel": channel,
            "MapAnnotation": [
                {"Namespace": CLASSES_NAMESPACE, "Value": {str(c.label): c.name for c in info.classes}},
                {"Namespace": COLORS_NAMESPACE, "Value": {str(c.label): _hex(c.color) for c in info.classes}},
            ],
            "CommentAnnotation": {"Namespace": INFO_NAMESPACE, "Value": json.dumps(info.to_json())},
        }

    def _feed(self, level: int, row: int, col: int, tile: np.ndarray) -> None:
        """Reduce the tile at (row, col) of ``level - 1`` into the row of tiles of ``level`` (an odd last column
        or row of the image is repeated first, as :func:`mode_reduce` / :func:`mean_reduce` do)."""
        t, (width, height) = self.tile_px, self.sizes[level - 1]
        valid_w, valid_h = min(t, width - col * t), min(t, height - row * t)
        if valid_w % 2:
            tile[:, valid_w] = tile[:, valid_w - 1]
        if valid_h % 2:
            tile[valid_h, :] = tile[valid_h - 1, :]
        if level not in self.rows:
            self.rows[level] = np.zeros((t, self.grid[level][0] * t), np.uint8)
        half = t // 2
        self.rows[level][row % 2 * half:row % 2 * half + half, col * half:col * half + half] = self.reduce(tile)

    def _row_done(self, level: int, plane: int, row: int) -> None:
        """Row ``row`` of tiles of ``level - 1`` is finished: when it completes a row of ``level``, encode that row
        and pass it on down."""
        if level >= len(self.sizes) or not (row % 2 or row == self.grid[level - 1][1] - 1):
            return
        t, buffer = self.tile_px, self.rows.pop(level, None)
        entries = self.index.setdefault((level, plane), [])
        for col in range(self.grid[level][0]):
            tile = None if buffer is None else buffer[:, col * t:(col + 1) * t]
            if tile is None or not tile.any():
                entries.append((0, 0))
                continue
            data = _encode_tile(tile, t, self.uniform)
            entries.append((self.lower.tell(), len(data)))
            self.lower.write(data)
            if level + 1 < len(self.sizes):
                self._feed(level + 1, row // 2, col, np.array(tile))
        self._row_done(level + 1, plane, row // 2)

    def level0_tiles(self) -> Iterator[bytes]:
        """Level 0's encoded tiles in TIFF order (plane by plane, row-major), building the lower levels on the
        way (before each yield: tifffile closes the generator after the last tile)."""
        cols, rows = self.grid[0]
        for plane in range(self.planes):
            for row in range(rows):
                for col in range(cols):
                    tile = self.store.read(plane, row, col)
                    data = self.zero
                    if tile is not None and tile.any():
                        data = _encode_tile(tile, self.tile_px, self.uniform)
                        if len(self.sizes) > 1:
                            self._feed(1, row, col, tile)
                    if col == cols - 1:
                        self._row_done(1, plane, row)
                    yield data

    def lower_tiles(self, level: int) -> Iterator[bytes]:
        """Level ``level``'s encoded tiles (``level >= 1``), from the temporary file."""
        for plane in range(self.planes):
            for offset, length in self.index[(level, plane)]:
                if not length:
                    yield self.zero
                    continue
                self.lower.seek(offset)
                yield self.lower.read(length)

    def write_tiff(self, tmp: Path) -> None:
        """Write the whole pyramid to ``tmp`` (an OME-TIFF), level 0 first (building the others), then each
        lower level from its encoded tiles."""
        import tifffile

        raw_bytes = sum(w * h for w, h in self.sizes) * self.planes
        t = self.tile_px
        with open(self.workdir / f"{self.kind}.lower.tiles", "w+b") as self.lower, tifffile.TiffWriter(
                tmp, ome=True, bigtiff=raw_bytes > _BIGTIFF_ABOVE_BYTES) as tif:
            for level, (w, h) in enumerate(self.sizes):
                per_cm = 1e4 / (self.info.mpp * 2**level)  # pixels per cm at this level
                tif.write(
                    self.level0_tiles() if level == 0 else self.lower_tiles(level),
                    shape=(h, w) if self.planes == 1 else (self.planes, h, w),
                    dtype=np.uint8, tile=(t, t), photometric="minisblack", compression="zlib",
                    resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                    subifds=len(self.sizes) - 1 if level == 0 else None,
                    subfiletype=0 if level == 0 else 1,
                    metadata=self.metadata() if level == 0 else None,
                    software=f"qpbridge {__version__}",
                )
                if level == 0:
                    self.store.close()  # level 0 is in the TIFF: its raw file goes

    def close(self) -> None:
        self.store.close()


class RasterWriter:
    """Label and/or probability OME-TIFFs (``labels``, ``probabilities``: their paths, either may be None) of a
    ``width_px x height_px`` raster at ``mpp``, written block by block; see the module docstring.

    ``classes`` is the cell model's class table (label, name, colour; probabilities: channel i is
    ``classes[i]``). As a context manager it :meth:`close`\\ s on a clean exit and :meth:`abort`\\ s on an
    exception. ``close_s`` is the time :meth:`close` took (building the pyramids).
    """

    def __init__(
        self, labels: str | os.PathLike[str] | None, probabilities: str | os.PathLike[str] | None, *,
        width_px: int, height_px: int, mpp: float, classes: Sequence[Any], slide_mpp: float | None = None,
        qupath_offset_xy_px: tuple[int, int] = (0, 0), tile_px: int = TILE_PX,
    ) -> None:
        targets: list[tuple[Literal["labels", "probabilities"], Path]] = []
        if labels is not None:
            targets.append(("labels", Path(labels)))
        if probabilities is not None:
            targets.append(("probabilities", Path(probabilities)))
        if not targets:
            raise ValueError("RasterWriter needs a labels or a probabilities path")
        if tile_px < 16 or tile_px % 16:
            raise ValueError(f"tile_px must be a multiple of 16 (TIFF tiles), got {tile_px}")
        self.classes = tuple(ClassInfo(int(c.label), str(c.name), (int(c.color[0]), int(c.color[1]), int(c.color[2])))
                             for c in classes)
        if not self.classes or max(c.label for c in self.classes) > 255 or min(c.label for c in self.classes) < 0:
            raise ValueError(f"class labels must be 0-255 (uint8), got {[c.label for c in self.classes]}")
        self.width_px, self.height_px, self.mpp = int(width_px), int(height_px), float(mpp)
        self.tile_px = tile_px
        self.sizes = pyramid_sizes(self.width_px, self.height_px, tile_px)
        self.close_s = 0.0
        anchor = targets[0][1]
        try:  # the raw levels live beside the output (same disk as the result; removed by close and abort)
            self._workdir: Path | None = Path(tempfile.mkdtemp(prefix=f".{anchor.name}.", suffix=".tmp",
                                                               dir=anchor.parent if str(anchor.parent) else "."))
        except OSError as exc:
            raise OutputError(f"cannot write in {anchor.parent}: {exc.strerror}; choose another folder") from None
        self._rasters: list[_Raster] = []
        try:
            for kind, path in targets:
                info = RasterInfo(kind=kind, path=str(path), mpp=self.mpp, width_px=self.width_px,
                                  height_px=self.height_px, levels=len(self.sizes), tile_px=tile_px,
                                  classes=self.classes, slide_mpp=slide_mpp, qupath_offset_xy_px=qupath_offset_xy_px)
                self._rasters.append(_Raster(kind, path, self._workdir, info, self.sizes, tile_px))
        except BaseException:
            self.abort()
            raise

    @property
    def infos(self) -> list[RasterInfo]:
        """What each output is (labels first)."""
        return [r.info for r in self._rasters]

    def write_block(
        self, window: Window, labels: np.ndarray, probabilities: np.ndarray | None = None,
        active: np.ndarray | None = None,
    ) -> None:
        """Store a block: its ``window`` on the raster's grid, its uint8 ``labels`` (H, W) and float class
        ``probabilities`` (C, H, W) in [0, 1] (needed when writing probabilities); ``active`` (H, W): where the
        model ran (elsewhere the probabilities are written as 0). Where blocks overlap, the later one wins; what
        no block covers stays background (0). Memory: the block's uint8 copy."""
        if self._workdir is None:
            raise ValueError("write_block after close or abort")
        if window.x_px < 0 or window.y_px < 0 or window.x_end_px > self.width_px or window.y_end_px > self.height_px:
            raise ValueError(f"{window} is outside the {self.width_px} x {self.height_px} px raster")
        if labels.shape != window.shape:
            raise ValueError(f"labels of shape {labels.shape} for a window of shape {window.shape}")
        planes = len(self.classes)
        if any(r.kind == "probabilities" for r in self._rasters) and (
                probabilities is None or probabilities.shape != (planes, *window.shape)):
            shape = None if probabilities is None else probabilities.shape
            raise ValueError(f"probabilities of shape {shape}, expected {(planes, *window.shape)}")
        try:
            self._write(window, labels, probabilities, active)
        except OSError as exc:
            raise OutputError(f"cannot write the rasters' temporary files in {self._workdir.parent}: "
                              f"{exc.strerror or exc}; free disk space or choose another folder") from None

    def _write(
        self, window: Window, labels: np.ndarray, probabilities: np.ndarray | None, active: np.ndarray | None
    ) -> None:
        for raster in self._rasters:
            if raster.kind == "labels":
                raster.store.paste(window.x_px, window.y_px, labels.astype(np.uint8, copy=False)[None])
                continue
            assert probabilities is not None  # checked by write_block
            quantized = np.empty(probabilities.shape, np.uint8)
            for channel in range(raster.planes):
                scaled = np.multiply(probabilities[channel], 255.0, dtype=np.float32)
                np.clip(scaled, 0.0, 255.0, out=scaled)
                quantized[channel] = np.rint(scaled, out=scaled)
                if active is not None:
                    quantized[channel][~active] = 0
            raster.store.paste(window.x_px, window.y_px, quantized)

    def close(self) -> list[RasterInfo]:
        """Build each output's pyramid and commit it (all written before any is renamed into place); the raw
        files are removed. Returns :attr:`infos`."""
        if self._workdir is None:
            raise ValueError("close after close or abort")
        clock = time.perf_counter()
        try:
            with ExitStack() as stack:
                temporaries = [stack.enter_context(atomic_path(r.path)) for r in self._rasters]
                for raster, tmp in zip(self._rasters, temporaries, strict=True):
                    try:
                        raster.write_tiff(tmp)
                    except OSError as exc:
                        raise OutputError(f"cannot write {raster.path}: {exc.strerror or exc}; free disk space or "
                                          "choose another folder") from None
        finally:
            self.abort()  # the raw files
        self.close_s = time.perf_counter() - clock
        return self.infos

    def abort(self) -> None:
        """Remove the raw files and any temporary output; the targets are left as they were. Idempotent."""
        for raster in self._rasters:
            raster.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> RasterWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @classmethod
    def for_slide(
        cls, labels: str | os.PathLike[str] | None, probabilities: str | os.PathLike[str] | None, slide: Any,
        mpp: float, classes: Sequence[Any], **kw: Any,
    ) -> RasterWriter:
        """A writer for the rasters of ``slide`` (a :class:`qpbridge.slide.Slide`) at ``mpp``: the whole slide
        on the grid of ``slide.size_at_mpp(mpp)`` / ``slide.affine_at(mpp)``; ``kw`` as for the constructor."""
        width_px, height_px = slide.size_at_mpp(mpp)
        return cls(labels, probabilities, width_px=width_px, height_px=height_px, mpp=mpp, classes=classes,
                   slide_mpp=slide.mpp, qupath_offset_xy_px=tuple(slide.qupath_offset_xy_px), **kw)
