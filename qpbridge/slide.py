"""Opening slides and reading them at a target resolution in um/px.

One interface for every whole-slide format that OpenSlide opens (svs, tiff, ndpi, mrxs, scn, dcm...) and for
plain images (png, jpg, non-tiled tif) read with Pillow. Resolution is always chosen in um/px (``mpp``), never
in levels: :meth:`Slide.read_region_at` reads any window of the *target grid* at a given um/px from the
coarsest level that is at least as fine, and resamples it.

The target grid
---------------
At a target um/px ``mpp`` the slide is seen as a grid whose pixel ``(c, r)`` covers the level-0 square
``[c*s, (c+1)*s) x [r*s, (r+1)*s)`` with ``s = mpp / slide.mpp`` (level-0 pixels per target pixel).
:meth:`Slide.affine_at` gives the :class:`affine.Affine` from target-grid pixels to level-0 pixels; the same
Affine is handed to ``rasterio.features.shapes`` and ``rasterize``, so masks and polygons line up exactly.

Example
-------
>>> from qpbridge.slide import open_slide
>>> with open_slide("slide.svs") as slide:                      # doctest: +SKIP
...     rgb = slide.read_region_at(0, 0, 512, 512, mpp=4.0)      # 512 x 512 px at 4 um/px
...     to_level0 = slide.affine_at(4.0)                        # target px -> level-0 px
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from affine import Affine
from PIL import Image

from qpbridge.errors import InputError, SlideError

__all__ = [
    "MAX_WHOLE_SLIDE_PX",
    "SLIDE_MPP_RANGE",
    "SLIDE_SUFFIXES",
    "Slide",
    "SlideInfo",
    "WHOLE_SLIDE_ONLY_SUFFIXES",
    "check_mpp",
    "check_slide_mpp",
    "dicom_member",
    "has_slide_suffix",
    "open_slide",
]

#: What :func:`open_slide` opens, by file name (any letter case; longest first where one ends another): the
#: formats OpenSlide reads, then plain images (read with Pillow when OpenSlide does not open the file).
#: A folder given as slides is searched for these (``.dcm`` files make their folder one DICOM slide).
SLIDE_SUFFIXES: tuple[str, ...] = (
    ".ome.tiff", ".ome.tif", ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
    ".dcm", ".png", ".jpg", ".jpeg", ".bmp",
)

#: Formats that only whole-slide scanners write: when OpenSlide cannot read one, no plain-image reader is tried.
WHOLE_SLIDE_ONLY_SUFFIXES: tuple[str, ...] = (
    ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm",
)

#: Level-0 pixel sizes (um/px) a slide or image can have: scanners give 0.1-2, thumbnails and low-power images up to
#: ~30. A metadata value outside this range is not trusted (a plain TIFF's 72 dpi reads as 352.8 um/px) and an
#: ``--mpp`` outside it is refused.
SLIDE_MPP_RANGE = (0.05, 50.0)

#: TIFF and image resolutions that image writers put in by default (72 or 96 dpi, or 1): no pixel size at all.
_DEFAULT_DPI = (1.0, 72.0, 96.0)

#: A level is "as fine as" the target when its um/px is at most this factor above it (float noise in downsamples).
_LEVEL_TOLERANCE = 1.01

#: Largest whole-slide array :meth:`Slide.read_whole_at` agrees to allocate (pixels), to keep memory bounded.
MAX_WHOLE_SLIDE_PX = 80_000_000

# Pillow refuses big images by default ("decompression bomb"); plain images here are ours to read.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class SlideInfo:
    """What ``qpbridge info`` shows about a slide."""

    path: str
    reader: str  # "openslide" or "pillow"
    vendor: str | None
    width_px: int
    height_px: int
    level_count: int
    level_dimensions_px: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None
    mpp_source: str | None
    magnification: float | None
    bounds_xy_px: tuple[int, int]
    qupath_offset_xy_px: tuple[int, int]
    associated_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def _positive_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _mpp_from_properties(props: dict[str, str]) -> tuple[float | None, str | None]:
    """Pixel size in um/px from slide metadata: openslide mpp, then TIFF resolution tags, then vendor keys."""
    mpp_x = _positive_float(props.get("openslide.mpp-x"))
    mpp_y = _positive_float(props.get("openslide.mpp-y"))
    if mpp_x is not None:
        return (mpp_x + (mpp_y or mpp_x)) / 2, "openslide.mpp-x/y"
    unit = props.get("tiff.ResolutionUnit", "").lower()
    x_res = _positive_float(props.get("tiff.XResolution"))
    um_per_unit = {"centimeter": 10_000.0, "inch": 25_400.0}.get(unit)
    if x_res is not None and um_per_unit is not None and not (unit == "inch" and x_res in _DEFAULT_DPI):
        return um_per_unit / x_res, "tiff.XResolution"
    for key in (
        "aperio.MPP",
        "hamamatsu.XResolution",
        "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X",
        "philips.DICOM_PIXEL_SPACING",
    ):
        raw = props.get(key)
        if raw is None:
            continue
        if key == "philips.DICOM_PIXEL_SPACING":  # '"0.000243902" "0.000243902"' in mm
            first = re.findall(r"[0-9.eE+-]+", raw)
            value = _positive_float(first[0]) if first else None
            value = value * 1000 if value is not None else None
        elif key == "hamamatsu.XResolution":  # pixels per cm
            res = _positive_float(raw)
            value = 10_000.0 / res if res else None
        else:
            value = _positive_float(raw)
        if value is not None:
            return value, key
    return None, None


class Slide:
    """An open slide (OpenSlide or Pillow) with a known pixel size.

    Use :func:`open_slide` to create one. All coordinates are level-0 pixels unless a name says otherwise.
    """

    def __init__(self, path: Path, *, mpp: float | None = None) -> None:
        self.path = path
        self._osr: Any = None
        self._image: Image.Image | None = None
        override = check_slide_mpp(mpp, "--mpp") if mpp is not None else None
        self._open()
        self._mpp: float | None
        self.mpp_source: str | None
        #: why the metadata's pixel size was not taken (a default resolution tag, an impossible value), if so
        self.mpp_rejected: str | None = None
        if override is not None:
            self._mpp, self.mpp_source = override, "user override (--mpp)"
        else:
            found, source = self._metadata_mpp()
            self._mpp, self.mpp_source = found, source
            if found is not None and not SLIDE_MPP_RANGE[0] <= found <= SLIDE_MPP_RANGE[1]:
                low, high = SLIDE_MPP_RANGE
                self.mpp_rejected = (f"its metadata says {found:.4g} um/px ({source}), outside the {low:g}-{high:g} "
                                     "um/px any slide or image has")
                self._mpp, self.mpp_source = None, None

    # -- opening -----------------------------------------------------------------------------------
    def _open(self) -> None:
        import openslide

        path = self.path
        if not path.exists():
            raise InputError(f"slide not found: {path}: check the path")
        if path.is_dir():
            member = dicom_member(path)
            if member is None:
                raise InputError(f"{path} is a folder, not a slide: give a slide file (a DICOM slide is a folder "
                                 "of .dcm files)")
            path = member  # OpenSlide opens a DICOM slide from any file of its series
        openslide_error: str | None = None
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            openslide_error = "format not recognised by OpenSlide"
        except openslide.OpenSlideError as exc:
            openslide_error = str(exc)
        except OSError as exc:
            raise SlideError(f"cannot open slide {path}: {exc}: check the file's permissions") from exc
        if self._osr is not None:
            self._check_readable()
            return
        if path.name.lower().endswith(WHOLE_SLIDE_ONLY_SUFFIXES):  # no plain image: Pillow would read a thumbnail
            raise SlideError(
                f"cannot open {path}: OpenSlide cannot read it ({openslide_error}): the file is damaged or "
                "incomplete (a copy cut short?): copy or export the slide again"
            )
        try:
            with warnings.catch_warnings():  # "Corrupt EXIF data" and the like: the pixels are what counts
                warnings.simplefilter("ignore")
                image = Image.open(path)
                image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            hint = f" (OpenSlide: {openslide_error})" if openslide_error else ""
            raise SlideError(
                f"cannot open {path}: not a slide or image that OpenSlide or Pillow can read{hint}: the file is "
                "damaged or incomplete, or in a format neither reads (convert it to a tiled pyramidal TIFF)"
            ) from exc
        self._image = image.convert("RGB")
        self._image_info = dict(image.info)

    def _check_readable(self) -> None:
        """Read one small region so that a slide whose pixels cannot be decoded fails now, clearly."""
        import openslide

        try:
            self._osr.read_region((0, 0), self._osr.level_count - 1, (1, 1))
        except openslide.OpenSlideError as exc:
            self._osr.close()
            self._osr = None
            raise SlideError(
                f"cannot read pixels of {self.path}: {exc}: the file is damaged or incomplete; "
                "re-export or re-copy the slide"
            ) from exc

    def _metadata_mpp(self) -> tuple[float | None, str | None]:
        if self._osr is not None:
            return _mpp_from_properties(dict(self._osr.properties))
        info = self._image_info
        resolution = info.get("resolution") or info.get("dpi")
        unit = info.get("resolution_unit")
        if resolution and _positive_float(str(resolution[0])):
            # Pillow: TIFF resolution with unit 2 = inch, 3 = cm; PNG/JPEG dpi = pixels per inch.
            per = 10_000.0 if unit == 3 else 25_400.0
            if unit != 3 and float(resolution[0]) in _DEFAULT_DPI:
                self.mpp_rejected = f"its resolution tag is {float(resolution[0]):g} dpi, an image writer's default"
                return None, None
            if info.get("dpi") is not None or unit in (2, 3):
                return per / float(resolution[0]), "image resolution tag"
        return None, None

    # -- properties -------------------------------------------------------------------------------
    @property
    def properties(self) -> dict[str, str]:
        """The slide's metadata (OpenSlide properties; empty for plain images)."""
        return dict(self._osr.properties) if self._osr is not None else {}

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        if self._osr is not None:
            w, h = self._osr.dimensions
            return int(w), int(h)
        assert self._image is not None
        return self._image.size

    @property
    def level_downsamples(self) -> list[float]:
        """Downsample of each level relative to level 0 (exact ratios of level sizes)."""
        if self._osr is None:
            return [1.0]
        w0, h0 = self._osr.dimensions
        return [((w0 / w) + (h0 / h)) / 2 for (w, h) in self._osr.level_dimensions]

    @property
    def has_mpp(self) -> bool:
        """Whether a pixel size is known (metadata or override)."""
        return self._mpp is not None

    @property
    def mpp(self) -> float:
        """Level-0 pixel size in um/px; raises :class:`SlideError` when neither metadata nor override gives it."""
        if self._mpp is None:
            why = f"has no usable pixel size ({self.mpp_rejected})" if self.mpp_rejected else (
                "has no pixel size in its metadata")
            raise SlideError(
                f"{self.path} {why}: give it with --mpp (um/px at full resolution, e.g. --mpp 0.25 for a 40x scan)"
            )
        return self._mpp

    @property
    def magnification(self) -> float | None:
        """Objective power from metadata, else estimated from um/px (10 / mpp), else None."""
        power = _positive_float(self.properties.get("openslide.objective-power"))
        if power is not None:
            return power
        return round(10.0 / self._mpp, 1) if self._mpp else None

    @property
    def bounds_xy_px(self) -> tuple[int, int]:
        """``openslide.bounds-x/y``: where the scanned area starts in level 0 (0, 0 when absent)."""
        props = self.properties
        return int(props.get("openslide.bounds-x", 0)), int(props.get("openslide.bounds-y", 0))

    @property
    def qupath_offset_xy_px(self) -> tuple[int, int]:
        """Level-0 pixel that QuPath shows as (0, 0): GeoJSON for QuPath is shifted by this offset.

        QuPath's OpenSlide server crops to ``openslide.bounds-*``; the rule is
        :func:`qpbridge.qupath.bounds.qupath_image_rect`.
        """
        x, y, _, _ = self._qupath_rect()
        return x, y

    @property
    def qupath_size_px(self) -> tuple[int, int]:
        """``(width, height)`` of the image QuPath shows (the ``openslide.bounds-*`` crop, see above)."""
        _, _, width, height = self._qupath_rect()
        return width, height

    def _qupath_rect(self) -> tuple[int, int, int, int]:
        from qpbridge.qupath.bounds import qupath_image_rect  # here: qpbridge.qupath imports this module

        return qupath_image_rect(self.properties, self.dimensions)

    def info(self) -> SlideInfo:
        """A summary of the slide for ``qpbridge info``."""
        if self._osr is not None:
            levels = [(int(w), int(h)) for (w, h) in self._osr.level_dimensions]
            associated = sorted(self._osr.associated_images.keys())
            vendor = self.properties.get("openslide.vendor")
        else:
            levels = [self.dimensions]
            associated = []
            vendor = None
        width, height = self.dimensions
        return SlideInfo(
            path=str(self.path),
            reader="openslide" if self._osr is not None else "pillow",
            vendor=vendor,
            width_px=width,
            height_px=height,
            level_count=len(levels),
            level_dimensions_px=levels,
            level_downsamples=[round(d, 4) for d in self.level_downsamples],
            mpp=self._mpp,
            mpp_source=self.mpp_source,
            magnification=self.magnification,
            bounds_xy_px=self.bounds_xy_px,
            qupath_offset_xy_px=self.qupath_offset_xy_px,
            associated_images=associated,
        )

    # -- resolution arithmetic -------------------------------------------------------------------
    def scale_for_mpp(self, mpp: float) -> float:
        """Level-0 pixels per target pixel at ``mpp`` (``mpp / slide.mpp``)."""
        return check_mpp(mpp, "target mpp") / self.mpp

    def size_at_mpp(self, mpp: float) -> tuple[int, int]:
        """(width, height) of the whole slide in target-grid pixels at ``mpp`` (partial pixels included)."""
        scale = self.scale_for_mpp(mpp)
        width, height = self.dimensions
        return math.ceil(width / scale - 1e-9), math.ceil(height / scale - 1e-9)

    def affine_at(self, mpp: float, x_px: float = 0, y_px: float = 0) -> Affine:
        """Affine from pixels of a window at ``mpp`` whose top-left is target-grid pixel (x_px, y_px) to level 0.

        >>> slide.affine_at(1.0) * (10, 10)   # doctest: +SKIP
        (40.0, 40.0)
        """
        scale = self.scale_for_mpp(mpp)
        return Affine(scale, 0.0, x_px * scale, 0.0, scale, y_px * scale)

    def level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose um/px is at most ``mpp`` (so a read never upsamples unless level 0 must)."""
        scale = self.scale_for_mpp(mpp)
        downsamples = self.level_downsamples
        adequate = [level for level, ds in enumerate(downsamples) if ds <= scale * _LEVEL_TOLERANCE]
        return max(adequate, key=lambda level: downsamples[level], default=0)

    # -- reading -----------------------------------------------------------------------------------
    def read_region_at(self, x_px: int, y_px: int, width_px: int, height_px: int, mpp: float) -> np.ndarray:
        """Read a window of the target grid at ``mpp`` as an (height, width, 3) uint8 RGB array.

        Reads from the level chosen by :meth:`level_for_mpp` and resamples with an area (box) filter.
        Pixels outside the slide, and transparent ones, come back white.
        """
        if width_px <= 0 or height_px <= 0:
            raise InputError(f"region size must be positive, got {width_px} x {height_px} px")
        scale = self.scale_for_mpp(mpp)
        level = self.level_for_mpp(mpp)
        downsample = self.level_downsamples[level]
        # The window in level-0 and then in level coordinates (floats).
        x0, y0 = x_px * scale, y_px * scale
        x1, y1 = (x_px + width_px) * scale, (y_px + height_px) * scale
        lx0, ly0 = math.floor(x0 / downsample), math.floor(y0 / downsample)
        lx1, ly1 = math.ceil(x1 / downsample - 1e-9), math.ceil(y1 / downsample - 1e-9)
        region = self._read_level(level, lx0, ly0, max(1, lx1 - lx0), max(1, ly1 - ly0))
        box = (x0 / downsample - lx0, y0 / downsample - ly0, x1 / downsample - lx0, y1 / downsample - ly0)
        same_size = region.size == (width_px, height_px) and box == (0.0, 0.0, float(width_px), float(height_px))
        factor = round(scale / downsample)
        aligned = (
            abs(scale / downsample - factor) < 1e-9
            and region.size == (width_px * factor, height_px * factor)
            and box == (0.0, 0.0, float(region.width), float(region.height))
        )
        if not same_size and aligned and factor >= 2:
            # An integer factor on aligned pixels: the exact (rounded) mean of each factor x factor box, ~4x
            # faster than resize's box filter (which rounds between its two passes: the two differ by <= 1).
            region = region.reduce(factor)
        elif not same_size:
            resample = Image.Resampling.BOX if scale / downsample >= 1 else Image.Resampling.BILINEAR
            region = region.resize((width_px, height_px), resample=resample, box=box)
        return np.array(region, dtype=np.uint8)

    def _read_level(self, level: int, lx: int, ly: int, width: int, height: int) -> Image.Image:
        """Read a region in level coordinates as an RGB image, white outside the slide and where transparent."""
        if self._osr is None:
            assert self._image is not None
            if (lx, ly, width, height) == (0, 0, *self._image.size):
                return self._image
            iw, ih = self._image.size
            if lx >= 0 and ly >= 0 and lx + width <= iw and ly + height <= ih:
                return self._image.crop((lx, ly, lx + width, ly + height))
            white = Image.new("RGB", (width, height), (255, 255, 255))  # outside the image: white, as OpenSlide's
            inside = (max(lx, 0), max(ly, 0), min(lx + width, iw), min(ly + height, ih))
            if inside[0] < inside[2] and inside[1] < inside[3]:
                white.paste(self._image.crop(inside), (inside[0] - lx, inside[1] - ly))
            return white
        import openslide

        downsample = self.level_downsamples[level]
        location = (int(round(lx * downsample)), int(round(ly * downsample)))
        try:
            rgba = self._osr.read_region(location, level, (width, height))
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"cannot read pixels of {self.path} at level {level}, {location}: {exc}: "
                "the file is damaged or incomplete; re-export or re-copy the slide"
            ) from exc
        if rgba.getchannel("A").getextrema() == (255, 255):  # opaque (most reads): no compositing
            return rgba.convert("RGB")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white

    def read_whole_at(self, mpp: float) -> tuple[np.ndarray, Affine]:
        """The whole slide at a coarse ``mpp`` (thumbnail scale) and its Affine to level 0.

        Refuses sizes above :data:`MAX_WHOLE_SLIDE_PX` (use block-wise reads at fine resolutions).
        """
        width, height = self.size_at_mpp(mpp)
        if width * height > MAX_WHOLE_SLIDE_PX:
            raise InputError(
                f"{mpp} um/px is too fine to read {self.path} whole ({width} x {height} px): "
                "use a coarser um/px or read block by block"
            )
        # In strips: one read_region of a whole coarse level would hold RGBA copies of it (memory grows with slide).
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        strip_px = max(1, 2_000_000 // max(width, 1))
        for top in range(0, height, strip_px):
            rows = min(strip_px, height - top)
            rgb[top:top + rows] = self.read_region_at(0, top, width, rows, mpp)
        return rgb, self.affine_at(mpp)

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file handle."""
        if self._osr is not None:
            self._osr.close()
            self._osr = None
        self._image = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, mpp={self._mpp})"


def dicom_member(folder: str | os.PathLike[str]) -> Path | None:
    """The first ``.dcm`` file of ``folder`` (a DICOM slide is a folder of them), or None when it holds none."""
    found = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".dcm" and p.is_file())
    return found[0] if found else None


def has_slide_suffix(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s name ends in one of :data:`SLIDE_SUFFIXES` (any letter case).

    >>> has_slide_suffix("a/b.SVS"), has_slide_suffix("x.ome.tif"), has_slide_suffix("notes.txt")
    (True, True, False)
    """
    return os.fspath(path).lower().endswith(SLIDE_SUFFIXES)


def check_mpp(mpp: float, what: str = "--mpp") -> float:
    """Return ``mpp`` if it is a finite positive number, else raise :class:`InputError`."""
    if not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
        raise InputError(f"{what} must be a positive number of um/px, got {mpp}: e.g. 0.25 for a 40x scan")
    return float(mpp)


def check_slide_mpp(mpp: float, what: str = "--mpp") -> float:
    """:func:`check_mpp` for a slide's level-0 pixel size, which must also lie in :data:`SLIDE_MPP_RANGE`.

    >>> check_slide_mpp(0.25)
    0.25
    >>> check_slide_mpp(1000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qpbridge.errors.InputError: --mpp 1000 um/px is outside the 0.05-50 um/px any slide or image has: ...
    """
    mpp = check_mpp(mpp, what)
    low, high = SLIDE_MPP_RANGE
    if not low <= mpp <= high:
        raise InputError(f"{what} {mpp:g} um/px is outside the {low:g}-{high:g} um/px any slide or image has: give "
                         "the level-0 pixel size, e.g. 0.25 for a 40x scan, 0.5 for 20x")
    return mpp


def open_slide(path: str | Path, *, mpp: float | None = None) -> Slide:
    """Open a slide or plain image; ``mpp`` (um/px at level 0) overrides the metadata.

    Raises :class:`InputError` for a missing path or bad ``mpp`` and :class:`SlideError` for a file that is
    not a readable slide. A missing pixel size is reported only when :attr:`Slide.mpp` is first needed.
    """
    return Slide(Path(path), mpp=mpp)
