"""Label images (PNG / TIFF / JPEG masks) <-> features, pixel-exact both ways.

Two kinds of label image:

- **instance** labels: 0 is background, every other value one object (MoNuSeg's ``*_instances.png``, uint16).
  Each id becomes one feature (a MultiPolygon when its pixels are not 4-connected), object type
  ``"detection"``, with its id in ``measurements["instance_id"]``.
- **class** labels: each value a class (``{label: class name}``; 0 = background by default). Each class
  becomes one feature (a MultiPolygon of its regions; ``split_regions=True`` gives one per region), object
  type ``"annotation"``.

Coordinates follow the project's convention: label pixel ``(c, r)`` covers ``[c, c + 1) x [r, r + 1)``, and
one :class:`affine.Affine` maps label pixels to level-0 pixels, both when vectorizing
(:func:`qpbridge.vectorize.vectorize_mask`) and when rasterizing (pixel centres,
:mod:`qpbridge.rasterize`), so label image -> features -> label image gives the same pixels back (holes and
touching instances included). The Affine is given, or built by :func:`label_affine` from the label image's
um/px, the slide's level-0 um/px and the level-0 position of the image's top-left corner.

A black-and-white mask saved as JPEG (lossy: its edges hold every grey) is read with ``threshold=127``:
pixels brighter than the threshold are label 1.

>>> import numpy as np
>>> labels = np.zeros((6, 6), np.uint16)
>>> labels[1:3, 1:3] = 7
>>> labels[3:5, 1:5] = 9                       # touches instance 7
>>> result = labels_to_features(labels)
>>> [(f.measurements["instance_id"], f.geometry.area, f.object_type) for f in result.features]
[(7.0, 4.0, 'detection'), (9.0, 8.0, 'detection')]
>>> back, _ = rasterize_labels(result.features, labels.shape)
>>> bool((back == labels).all())
True
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from PIL import Image

from qpbridge.atomic import atomic_path
from qpbridge.errors import FormatError, InputError
from qpbridge.formats.common import UNCLASSIFIED, FeatureCollector, FormatResult, FormatWriteSummary, check_choice
from qpbridge.qupath import OBJECT_TYPES, Feature
from qpbridge.rasterize import polygon_dicts, rasterize_shapes
from qpbridge.vectorize import vectorize_mask

__all__ = [
    "INSTANCE_ID",
    "LABEL_KINDS",
    "label_affine",
    "labels_to_features",
    "load_label_image",
    "rasterize_labels",
    "read_label_image",
    "write_label_image",
]

#: The measurement that holds an instance's id (read and written).
INSTANCE_ID = "instance_id"
LABEL_KINDS = ("instance", "class")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PLAUSIBLE_MPP = (0.01, 100.0)  # a file's resolution outside this (72 dpi = 353 um/px) is a default, not a size
_WRITE_SUFFIXES = (".png", ".tif", ".tiff")


def _check_mpp(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number of um/px, got {value!r}")
    return float(value)


def label_affine(
    *, mpp: float | None = None, slide_mpp: float | None = None, offset_px: Sequence[float] = (0.0, 0.0)
) -> Affine:
    """The Affine from label pixels to level-0 pixels: scale ``mpp / slide_mpp``, then ``offset_px``.

    ``mpp`` is the label image's um/px, ``slide_mpp`` the slide's level-0 um/px (both or neither: without them
    the label image is at level 0); ``offset_px`` the level-0 ``(x, y)`` of the image's top-left corner.

    >>> label_affine(mpp=2.0, slide_mpp=0.5, offset_px=(1000, 2000))
    Affine(4.0, 0.0, 1000.0,
           0.0, 4.0, 2000.0)
    """
    mpp, slide_mpp = _check_mpp(mpp, "mpp"), _check_mpp(slide_mpp, "slide_mpp")
    if (mpp is None) != (slide_mpp is None):
        missing = "slide_mpp (the slide's level-0 um/px)" if slide_mpp is None else "mpp (the label image's um/px)"
        raise InputError(f"placing a label image by its pixel size needs both mpp and slide_mpp: give {missing}, "
                         "or an affine")
    x0, y0 = (float(v) for v in offset_px)
    if not (math.isfinite(x0) and math.isfinite(y0)):
        raise InputError(f"offset_px must be finite level-0 pixels, got {tuple(offset_px)}")
    scale = 1.0 if mpp is None or slide_mpp is None else mpp / slide_mpp
    return Affine(scale, 0.0, x0, 0.0, scale, y0)


# --- loading ------------------------------------------------------------------------------------------
def _plausible(mpp: float) -> float | None:
    lo, hi = _PLAUSIBLE_MPP
    return mpp if math.isfinite(mpp) and lo <= mpp <= hi else None


def _tiff_mpp(page: Any) -> float | None:
    tags = page.tags
    xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
    if xres is None or unit is None:
        return None
    try:
        num, den = xres.value
        per_unit = float(num) / float(den)
        unit_value = int(unit.value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    um_per_unit = {2: 25_400.0, 3: 10_000.0}.get(unit_value)
    if um_per_unit is None or not per_unit > 0:
        return None
    return _plausible(um_per_unit / per_unit)


def _gray(arr: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, C) image, as Pillow's ``convert("L")``."""
    rgb = arr[..., :3].astype(np.float64)
    if arr.shape[-1] < 3:
        return arr[..., 0].astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def load_label_image(
    path: str | os.PathLike[str], *, threshold: float | None = None
) -> tuple[np.ndarray, float | None]:
    """A label image as a 2-D integer array, and its um/px when the file records a plausible one.

    TIFF is read with tifffile (first page, level 0; ``XResolution`` + ``ResolutionUnit``), PNG / JPEG / BMP
    with Pillow (PNG ``pHYs``; a JPEG's density is never a pixel size). Palette images give their indices.
    ``threshold`` turns the image (colour ones through their luma) into a 0/1 mask: 1 where brighter than it.
    A colour image without ``threshold`` is an error (it is a picture, not labels), unless its channels are equal.

    Raises :class:`FormatError` for a missing file, an image that cannot be decoded, a colour image, or
    non-integer values.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file: check the path")
    if path.is_dir():
        raise FormatError(f"{path} is a folder: give a label image file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    mpp: float | None = None
    try:
        if magic in _TIFF_MAGIC:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                arr = np.asarray(page.asarray())
                mpp = _tiff_mpp(page)
        else:
            with Image.open(path) as im:
                fmt = im.format
                if im.mode == "1":
                    arr = np.asarray(im.convert("L")) // 255
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    arr = np.asarray(im.convert("RGB"))
                else:
                    arr = np.asarray(im)
                dpi = im.info.get("dpi")
                if fmt == "PNG" and dpi and float(dpi[0]) > 0:
                    mpp = _plausible(25_400.0 / float(dpi[0]))
    except Image.DecompressionBombError:
        raise FormatError(f"{path}: larger than Pillow reads safely: save the label image as a (tiled) TIFF") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise FormatError(f"{path}: not a readable image ({exc}): give a PNG or TIFF label image") from None
    arr = np.squeeze(arr) if arr.ndim == 3 and 1 in arr.shape else arr
    if arr.ndim == 3:
        if threshold is not None:
            arr = _gray(arr)
        elif all(np.array_equal(arr[..., 0], arr[..., k]) for k in range(1, min(arr.shape[-1], 3))):
            arr = arr[..., 0]
        else:
            raise FormatError(
                f"{path}: a colour image ({arr.shape[-1]} channels), not a label image: give a single-channel "
                "image of labels, or threshold=127 for a black-and-white mask"
            )
    if arr.ndim != 2:
        raise FormatError(f"{path}: image of shape {arr.shape}: a label image is one 2-D plane")
    if threshold is not None:
        return (arr > threshold).astype(np.uint8), mpp
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8), mpp
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise FormatError(
                f"{path}: {arr.dtype} values that are not whole numbers: labels are integers (or give threshold=)"
            )
        arr = arr.astype(np.int64)
    return arr, mpp


# --- label image -> features --------------------------------------------------------------------------
def labels_to_features(
    labels: np.ndarray,
    affine: Affine | None = None,
    *,
    kind: str = "instance",
    class_map: Mapping[int, str | None] | None = None,
    class_name: str | None = None,
    background: int | None = 0,
    object_type: str | None = None,
    split_regions: bool = False,
    on_unknown: str = "raise",
    source: str = "label image",
    slide_size_px: tuple[int, int] | None = None,
    mpp: float | None = None,
) -> FormatResult:
    """Features of a label array (see the module docstring); :func:`read_label_image` for files.

    Parameters
    ----------
    labels
        ``(H, W)`` integer labels.
    affine
        Label pixel -> level-0 pixel (default: identity, the labels are at level 0).
    kind
        ``"instance"``: one feature per id; ``"class"``: one per class (``split_regions``: per region).
    class_map
        Class labels only: ``{label: QuPath class name or None}`` (``None``: leave that label out). A label it
        lacks is an error naming it with its pixel count (``on_unknown="keep"`` names the class by its number,
        ``"skip"`` leaves it out). Default: every label is a class named by its number (``"3"``).
    class_name
        Instances only: the class of every instance (default unclassified).
    background
        The label that is no object (default 0; ``None``: every value is one).
    object_type
        Default ``"detection"`` for instances, ``"annotation"`` for classes.
    mpp
        Reported as :attr:`FormatResult.mpp` (the level-0 um/px, when known).

    Examples
    --------
    >>> import numpy as np
    >>> m = np.array([[0, 1, 1], [2, 2, 1], [2, 0, 0]], np.uint8)
    >>> r = labels_to_features(m, kind="class", class_map={1: "Tumor", 2: "Stroma"})
    >>> [(f.class_name, f.geometry.area, f.object_type) for f in r.features]
    [('Tumor', 3.0, 'annotation'), ('Stroma', 3.0, 'annotation')]
    """
    check_choice("kind", kind, LABEL_KINDS)
    check_choice("on_unknown", on_unknown, ("raise", "keep", "skip"))
    otype = object_type or ("detection" if kind == "instance" else "annotation")
    check_choice("object_type", otype, OBJECT_TYPES)
    if kind == "instance" and class_map is not None:
        raise InputError("class_map applies to class labels (kind='class'); for instances give class_name")
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputError(f"labels must be a 2-D array, got shape {arr.shape}")
    values, counts = np.unique(arr, return_counts=True)
    present = [(int(v), int(c)) for v, c in zip(values.tolist(), counts.tolist(), strict=True) if v != background]
    names: dict[int, str | None] = {}
    if kind == "class":
        if class_map is None:
            names = {v: str(v) for v, _ in present}
        else:
            unknown = [(v, c) for v, c in present if v not in class_map]
            if unknown and on_unknown == "raise":
                listing = ", ".join(f"{v} ({c:,} px)" for v, c in unknown)
                raise FormatError(
                    f"{source}: labels not in the class map: {listing}: add them (e.g. {{{unknown[0][0]}: 'Stroma'}}), "
                    "map them to None to leave them out, or give on_unknown='keep'"
                )
            names = {v: (class_map[v] if v in class_map else (str(v) if on_unknown == "keep" else None))
                     for v, _ in present}
    wanted = [v for v, _ in present if kind == "instance" or names.get(v) is not None]
    collector = FeatureCollector(source, slide_size_px=slide_size_px)
    if wanted:
        polys = vectorize_mask(arr, affine, labels_to_vectorize=wanted)
        order = np.argsort(polys.labels, kind="stable")
        ids, starts = np.unique(polys.labels[order], return_index=True)
        groups = np.split(polys.polygons[order], starts[1:])
        index = 0
        for value, parts in zip(ids.tolist(), groups, strict=True):
            name = f"{kind} label {value}"
            if kind == "class" and split_regions:
                for part in parts:
                    collector.element()
                    collector.add(Feature(part, names[value], object_type=otype), index=index, label=name)
                    index += 1
                continue
            collector.element()
            geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(list(parts))
            if kind == "instance":
                feature = Feature(geom, class_name, object_type=otype, measurements={INSTANCE_ID: float(value)})
            else:
                feature = Feature(geom, names[value], object_type=otype)
            collector.add(feature, index=index, label=name)
            index += 1
    return collector.finish("labels", mpp=mpp)


def read_label_image(
    path: str | os.PathLike[str],
    *,
    kind: str = "instance",
    affine: Affine | None = None,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    offset_px: Sequence[float] = (0.0, 0.0),
    threshold: float | None = None,
    class_map: Mapping[int, str | None] | None = None,
    class_name: str | None = None,
    background: int | None = 0,
    object_type: str | None = None,
    split_regions: bool = False,
    on_unknown: str = "raise",
    slide_size_px: tuple[int, int] | None = None,
    on_nonfinite: str = "raise",
    on_missing_mpp: str = "raise",
) -> FormatResult:
    """Read a label image into features (see :func:`labels_to_features` for ``kind`` and the class options).

    Where the label pixels lie at level 0: ``affine`` if given; else, when ``slide_mpp`` (the slide's level-0
    um/px) is given, the label image's um/px (``mpp``, else the file's resolution) scaled to it, shifted by
    ``offset_px``; else the label image is taken to be at level 0 (shifted by ``offset_px``). When
    ``slide_mpp`` is given but neither ``mpp`` nor the file says the label image's um/px, ``on_missing_mpp``
    decides: ``"raise"`` (default) or ``"level0"`` (the label image is at the slide's full resolution).

    ``on_nonfinite`` is accepted as by the other readers (``"raise"``/``"skip"``); a label image has no
    coordinates that could be NaN.

    Raises
    ------
    FormatError
        An unreadable image, a colour image or a JPEG without ``threshold``, a label the class map lacks, or a label
        image whose pixel size is needed (``slide_mpp`` given) but neither given nor recorded in the file.
    InputError
        Options that contradict each other.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from PIL import Image
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.png"
    >>> Image.fromarray(np.array([[0, 255], [255, 255]], np.uint8)).save(p)
    >>> r = read_label_image(p, kind="class", threshold=127, class_map={1: "Tumor"}, mpp=2, slide_mpp=0.5)
    >>> r.features[0].class_name, r.features[0].geometry.area, r.mpp
    ('Tumor', 48.0, 0.5)
    """
    check_choice("on_nonfinite", on_nonfinite, ("raise", "skip"))
    check_choice("on_missing_mpp", on_missing_mpp, ("raise", "level0"))
    arr, file_mpp = load_label_image(path, threshold=threshold)
    if threshold is None:
        with open(path, "rb") as fh:
            if fh.read(3) == _JPEG_MAGIC:
                raise FormatError(
                    f"{path}: a JPEG (lossy: its edges hold every grey), not a label image: read it as a "
                    "black-and-white mask with a threshold (threshold=127; qpbridge convert --threshold 127)"
                )
    if affine is not None:
        if mpp is not None or slide_mpp is not None or tuple(offset_px) != (0.0, 0.0):
            raise InputError("give either affine, or mpp / slide_mpp / offset_px, not both")
        level0_mpp = None
    elif slide_mpp is not None:
        label_mpp = _check_mpp(mpp, "mpp") if mpp is not None else file_mpp
        if label_mpp is None and on_missing_mpp == "level0":
            label_mpp = _check_mpp(slide_mpp, "slide_mpp")
        if label_mpp is None:
            raise FormatError(
                f"{path}: label image without a pixel size (no resolution in the file) and slide_mpp={slide_mpp} was "
                "given: give the label image's um/px (mpp=...) or an affine"
            )
        affine = label_affine(mpp=label_mpp, slide_mpp=slide_mpp, offset_px=offset_px)
        level0_mpp = float(slide_mpp)
    else:
        if mpp is not None:
            raise InputError(
                f"mpp={mpp} places the label image only with slide_mpp (the slide's level-0 um/px): give it too, "
                "or an affine"
            )
        affine = label_affine(offset_px=offset_px)
        level0_mpp = file_mpp
    return labels_to_features(
        arr, affine, kind=kind, class_map=class_map, class_name=class_name, background=background,
        object_type=object_type, split_regions=split_regions, on_unknown=on_unknown, source=str(path),
        slide_size_px=slide_size_px, mpp=level0_mpp,
    )


# --- features -> label image --------------------------------------------------------------------------
def _instance_ids(items: list[Feature], id_key: str | None) -> list[int]:
    if id_key is not None and items:
        raw = [f.measurements.get(id_key) for f in items]
        if all(isinstance(v, (int, float)) and float(v).is_integer() and v > 0 for v in raw):
            return [int(v) for v in raw if v is not None]
    return list(range(1, len(items) + 1))


def rasterize_labels(
    features: Iterable[Feature],
    shape_hw: tuple[int, int],
    affine: Affine | None = None,
    *,
    kind: str = "instance",
    class_map: Mapping[str, int] | None = None,
    id_key: str | None = INSTANCE_ID,
) -> tuple[np.ndarray, FormatWriteSummary]:
    """The label image of features: ``shape_hw`` pixels whose corners ``affine`` maps to level 0.

    ``kind="instance"``: each feature painted with its id, ``measurements[id_key]`` when every feature has a
    positive whole one (as :func:`labels_to_features` writes), else 1, 2, ... in order; uint16 (uint32 past
    65535 ids). ``kind="class"``: each feature painted with ``class_map[class_name]`` (default: class names
    that are numbers, as read without a class map); uint8. Later features win where they overlap; points,
    lines and empty geometries are left out and counted. A pixel gets a feature's value when its centre lies
    inside it (:mod:`qpbridge.rasterize`'s rule), so the labels a feature was read from come back exactly.

    >>> from shapely import box
    >>> img, s = rasterize_labels([Feature(box(0, 0, 2, 1), "2")], (2, 3), kind="class")
    >>> img.tolist(), img.dtype.name, s.written
    ([[2, 2, 0], [0, 0, 0]], 'uint8', 1)
    """
    check_choice("kind", kind, LABEL_KINDS)
    transform = Affine.identity() if affine is None else affine
    summary = FormatWriteSummary()
    areas: list[Feature] = []
    for feature in features:
        geom = feature.geometry
        if geom is None or geom.is_empty or shapely.get_type_id(geom) not in (3, 6, 7) or geom.area <= 0:
            summary.skip("not an area (point, line or empty)")
            continue
        areas.append(feature)
    if kind == "class":
        values: list[int] = []
        unknown: dict[str, int] = {}
        for feature in areas:
            name = UNCLASSIFIED if feature.class_name is None else feature.class_name
            if class_map is not None:
                value = class_map.get(name)
            else:
                value = int(name) if name.strip().lstrip("-").isdigit() else None
            if value is None:
                unknown[name] = unknown.get(name, 0) + 1
            values.append(-1 if value is None else int(value))
        if unknown:
            listing = ", ".join(f"{n!r} ({c})" for n, c in sorted(unknown.items()))
            raise InputError(
                f"classes without a label: {listing}: give class_map={{class name: label 0-255}}"
                + (" (without one, class names must be label numbers)" if class_map is None else "")
            )
        out = rasterize_shapes(
            [(f.geometry, v) for f, v in zip(areas, values, strict=True)], shape_hw, transform
        )
        summary.written = len(areas)
        return out, summary
    ids = _instance_ids(areas, id_key)
    dtype = np.uint16 if not ids or max(ids) <= np.iinfo(np.uint16).max else np.uint32
    height, width = (int(v) for v in shape_hw)
    if height <= 0 or width <= 0:
        raise InputError(f"label image shape must be (height, width) with both > 0, got {shape_hw}")
    out = np.zeros((height, width), dtype=dtype)
    geoms = np.empty(len(areas), dtype=object)
    geoms[:] = [f.geometry for f in areas]
    dicts, owner = polygon_dicts(geoms)
    if dicts:
        id_arr = np.asarray(ids, dtype=np.int64)[owner]
        rasterio.features.rasterize(
            zip(dicts, id_arr.tolist(), strict=True), out=out, transform=transform, all_touched=False
        )
    summary.written = len(areas)
    return out, summary


def write_label_image(
    path: str | os.PathLike[str],
    features: Iterable[Feature],
    shape_hw: tuple[int, int],
    affine: Affine | None = None,
    *,
    kind: str = "instance",
    class_map: Mapping[str, int] | None = None,
    id_key: str | None = INSTANCE_ID,
    mpp: float | None = None,
) -> FormatWriteSummary:
    """Write the label image of features (:func:`rasterize_labels`) as PNG or TIFF, atomically.

    ``mpp`` (the label image's um/px) is recorded as the file's resolution (PNG ``pHYs``, TIFF
    ``XResolution``), so :func:`read_label_image` finds it. PNG holds up to 65535 instances; TIFF any number.

    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "inst.tif"
    >>> _ = write_label_image(out, [Feature(box(0, 0, 2, 2))], (4, 4), mpp=0.5)
    >>> img, mpp = load_label_image(out)
    >>> int(img.sum()), img.dtype.name, mpp
    (4, 'uint16', 0.5)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITE_SUFFIXES:
        raise InputError(f"{path}: label images are written as {', '.join(_WRITE_SUFFIXES)} (lossless), not {suffix!r}")
    mpp = _check_mpp(mpp, "mpp")
    img, summary = rasterize_labels(features, shape_hw, affine, kind=kind, class_map=class_map, id_key=id_key)
    if suffix == ".png" and img.dtype == np.uint32:
        raise InputError(f"{path}: {int(img.max())} instances do not fit a 16-bit PNG: write a .tif")
    with atomic_path(path) as tmp:
        if suffix == ".png":
            kwargs: dict[str, Any] = {"dpi": (25_400.0 / mpp, 25_400.0 / mpp)} if mpp else {}
            Image.fromarray(img).save(tmp, format="PNG", **kwargs)
        else:
            import tifffile

            res: dict[str, Any] = {}
            if mpp:
                res = {"resolution": (10_000.0 / mpp, 10_000.0 / mpp), "resolutionunit": "CENTIMETER"}
            tifffile.imwrite(tmp, img, compression="zlib", photometric="minisblack", **res)
    return summary
