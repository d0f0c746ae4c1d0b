"""One annotation format to another, through QuPath features: ``qpbridge convert``'s library side.

Every reader gives QuPath features (:func:`qpbridge.formats.read_annotations`), so a conversion is: read
(the format by content, :func:`~qpbridge.formats.detect_format`), rename classes (``class_map``), choose the
object types, and write with the writer of the output's format, chosen by the output's name
(:func:`output_format`):

=====================================  ==============  ===============================================
output name                            format          writer
=====================================  ==============  ===============================================
``.geojson``, ``.json`` (and ``.gz``)  QuPath GeoJSON  :func:`qpbridge.qupath.write_geojson`: valid after
                                                       rounding, every class with a colour
``.xml``                               ASAP XML        :func:`~qpbridge.formats.write_asap` (holes as
                                                       exclusion annotations)
``.png``, ``.tif``, ``.tiff``          label image     :func:`~qpbridge.formats.write_label_image`
=====================================  ==============  ===============================================

Rules
-----
- **Object types** (``object_type="auto"``): GeoJSON keeps its own; a label image keeps what its kind says
  (instances are detections, classes annotations); ASAP, ImageScope and DSA files get
  :func:`~qpbridge.formats.suggest_object_type`'s choice for the whole file (detections for many small
  objects such as nuclei, else annotations). ``"annotation"`` or ``"detection"`` sets every feature.
- **Class map** (the grammar of :func:`qpbridge.rasterize.parse_class_map`: ``{name: value}``), looked up by
  the one rule of :mod:`qpbridge.qupath.classes` (exact, any case, first part of a derived class):

  * into GeoJSON or ASAP, a value renames the class: a class name; a label number, which names the DeepBatch
    class of that label (``"Carcinoma in situ": 2`` gives ``"In situ carcinoma"``, as ``qpbridge masks``
    reads the same map); ``"ignore"`` gives ``"Ignore*"`` and ``"region"`` ``"Region*"`` (what ``masks``
    treats as unlabelled and as the reviewed area); ``"skip"`` leaves the objects out. A renamed class takes
    its colour from the class (the DeepBatch colour, else a colour derived from the name). Classes the map
    lacks keep their names. A label image's classes are named by their numbers (``{"1": "Tumor"}`` names them).
  * into a class label image, a value is the pixel label (``qpbridge masks``' meaning): a number,
    ``"ignore"`` (255), or ``"skip"``/``"region"`` (not painted). Without a map, class names that are
    numbers are those labels, and the DeepBatch names (``Normal`` 0 ... ``Invasive carcinoma`` 3, ``Tissue``
    0, ``Ignore*``/``Pen mark*`` 255) theirs; any other class is an error that lists them.
- **Label images** (``kind``): written as ``"instance"`` (one id per object: the ``instance_id``
  measurement when every object has one, else 1, 2, ...) or ``"class"``; ``"auto"`` writes instances when
  every area object is a detection or cell, else classes. Class labels are painted in ascending label order
  (a higher label wins where objects overlap, as in ``masks``). The image covers ``slide_size_px`` (the
  level-0 image QuPath shows) at ``label_mpp`` um/px (default: the slide's full resolution), and records
  its um/px. Read, a label image is ``kind`` (``"auto"``: instances) at ``label_mpp``, else at the
  resolution it records, else at the slide's full resolution.

Example
-------
>>> import tempfile, pathlib
>>> from shapely import box
>>> from qpbridge.qupath import Feature
>>> from qpbridge.formats import write_asap
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = write_asap(folder / "A01.xml", [Feature(box(0, 0, 40, 40), "Carcinoma in situ")])
>>> result = convert_annotations(folder / "A01.xml", folder / "A01.geojson", class_map={"Carcinoma in situ": 2})
>>> result.by_class, result.by_object_type
({'In situ carcinoma': 1}, {'annotation': 1})
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qpbridge.classes import DEEPBATCH_CLASSES, IGNORE_LABEL
from qpbridge.errors import InputError, OutputError
from qpbridge.formats.asap import DEFAULT_WRITE_EXCLUSION_GROUP, write_asap
from qpbridge.formats.common import UNCLASSIFIED, FormatResult, check_choice
from qpbridge.formats.detect import format_info, read_annotations
from qpbridge.formats.imagescope import suggest_object_type
from qpbridge.formats.labels import label_affine, write_label_image
from qpbridge.qupath import Feature, write_geojson
from qpbridge.qupath.classes import DEFAULT_IGNORE_PATTERNS, DEFAULT_REGION_PATTERNS, ClassMatcher
from qpbridge.qupath.project import GEOJSON_SUFFIXES

__all__ = [
    "KIND_CHOICES",
    "OBJECT_TYPE_CHOICES",
    "OUTPUT_SUFFIXES",
    "ConvertResult",
    "class_labels",
    "convert_annotations",
    "output_format",
    "rename_classes",
]

#: ``object_type`` values: ``auto`` (see the module docstring) or the type every feature gets.
OBJECT_TYPE_CHOICES = ("auto", "annotation", "detection")
#: ``kind`` values for label images.
KIND_CHOICES = ("auto", "instance", "class")
#: Output name endings and the format each writes (the longest ending that matches decides).
OUTPUT_SUFFIXES: dict[str, str] = {
    **{suffix: "geojson" for suffix in GEOJSON_SUFFIXES},
    ".xml": "asap",
    ".png": "labels",
    ".tif": "labels",
    ".tiff": "labels",
}

_DEEPBATCH_BY_LABEL = {c.label: c.name for c in DEEPBATCH_CLASSES}
_DEEPBATCH_COLORS = {c.name: c.color for c in DEEPBATCH_CLASSES}
_IGNORE_CLASS = "Ignore*"
_REGION_CLASS = "Region*"
_DROP = object()  # "skip" / "region" in a label image: not painted
_DETECTION_LIKE = ("detection", "cell")


def output_format(path: str | os.PathLike[str]) -> str:
    """The format a conversion writes to ``path``, by its name (:data:`OUTPUT_SUFFIXES`, any letter case).

    >>> output_format("A01.xml"), output_format("cells.GeoJSON.gz"), output_format("labels.tif")
    ('asap', 'geojson', 'labels')
    """
    name = Path(path).name.lower()
    for suffix in sorted(OUTPUT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return OUTPUT_SUFFIXES[suffix]
    raise InputError(
        f"cannot tell the output format of {path}: name it .geojson or .geojson.gz (QuPath GeoJSON), .xml "
        "(ASAP XML) or .png, .tif, .tiff (label image)"
    )


# --- classes ------------------------------------------------------------------------------------------
def _class_value(raw: int | str, key: str) -> int | str:
    if isinstance(raw, bool):
        raise InputError(f"class map entry {key!r}: {raw!r} is not a class name, a label, ignore, region or skip")
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    if not text:
        raise InputError(f"class map entry {key!r} has an empty value: give a class name, a label or skip")
    return int(text) if text.isdigit() else text


def rename_classes(
    features: Iterable[Feature], class_map: Mapping[str, int | str]
) -> tuple[list[Feature], int]:
    """Features with their classes renamed by ``class_map`` (see the module docstring), and how many were left out.

    >>> from shapely import box
    >>> feats = [Feature(box(0, 0, 1, 1), "benign"), Feature(box(0, 0, 1, 1), "Insitu"), Feature(box(0, 0, 1, 1), "x")]
    >>> out, dropped = rename_classes(feats, {"Benign": 1, "Insitu": "In situ carcinoma", "x": "skip"})
    >>> [f.class_name for f in out], dropped
    (['Benign', 'In situ carcinoma'], 1)
    """
    targets: dict[str, str | None] = {}
    for key, raw in class_map.items():
        value = _class_value(raw, key)
        if isinstance(value, int):
            if value not in _DEEPBATCH_BY_LABEL:
                known = ", ".join(f"{k} {v}" for k, v in _DEEPBATCH_BY_LABEL.items())
                raise InputError(
                    f"class map entry {key!r}: label {value} names no class ({known}): give a class name instead "
                    f"(e.g. '{key}=Stroma')"
                )
            targets[key] = _DEEPBATCH_BY_LABEL[value]
        else:
            keyword = value.lower()
            targets[key] = {"skip": None, "ignore": _IGNORE_CLASS, "region": _REGION_CLASS}.get(keyword, value)
    matcher: ClassMatcher[Any] = ClassMatcher({k: (v if v is not None else _DROP) for k, v in targets.items()})
    out: list[Feature] = []
    dropped = 0
    for feature in features:
        target = matcher.match(feature.class_name)
        if target is _DROP:
            dropped += 1
            continue
        if target is not None and target != feature.class_name:
            feature = replace(feature, class_name=target, color=None)
        out.append(feature)
    return out, dropped


def class_labels(
    names: Iterable[str | None], class_map: Mapping[str, int | str] | None = None
) -> dict[str, int | None]:
    """The pixel label of each class name for a class label image (``None``: not painted); see the module docstring.

    Raises :class:`InputError` listing the classes that have no label.

    >>> class_labels(["Tumor", "2", "Normal", "Region 1", None], {"Tumor": 3, "Unclassified": "skip"})
    {'Tumor': 3, '2': 2, 'Normal': 0, 'Region 1': None, 'Unclassified': None}
    """
    table: dict[str, Any] = {name: label for label, name in _DEEPBATCH_BY_LABEL.items()}
    table.setdefault("Tissue", 0)
    for key, raw in (class_map or {}).items():
        value = _class_value(raw, key)
        for existing in [n for n in table if n.casefold() == key.casefold()]:
            del table[existing]
        if isinstance(value, int):
            if not 0 <= value <= IGNORE_LABEL:
                raise InputError(f"class map entry {key!r}: label {value} does not fit a label image (0-255)")
            table[key] = value
            continue
        keyword = value.lower()
        if keyword == "ignore":
            table[key] = IGNORE_LABEL
        elif keyword in ("skip", "region"):
            table[key] = _DROP
        else:
            named = [label for label, name in _DEEPBATCH_BY_LABEL.items() if name.casefold() == keyword]
            if not named:
                raise InputError(
                    f"class map entry {key!r}: {value!r} is not a label: give a number 0-255, ignore, skip, or a "
                    f"DeepBatch class ({', '.join(_DEEPBATCH_BY_LABEL.values())})"
                )
            table[key] = named[0]
    patterns = [(p, IGNORE_LABEL) for p in DEFAULT_IGNORE_PATTERNS] + [(p, _DROP) for p in DEFAULT_REGION_PATTERNS]
    matcher: ClassMatcher[Any] = ClassMatcher(table, patterns)
    out: dict[str, int | None] = {}
    unknown: list[str] = []
    for raw_name in names:
        name = UNCLASSIFIED if raw_name is None else raw_name
        if name in out:
            continue
        found = matcher.match(name)
        if found is None and name.strip().isdigit():
            found = int(name.strip())
        if found is None or (isinstance(found, int) and not 0 <= found <= IGNORE_LABEL):
            unknown.append(name)
            continue
        out[name] = None if found is _DROP else int(found)
    if unknown:
        listing = ", ".join(repr(n) for n in sorted(set(unknown)))
        raise InputError(
            f"classes without a label: {listing}: give them one with --class-map (e.g. '{sorted(unknown)[0]}=1'; "
            "skip leaves them out)"
        )
    return out


# --- the result ---------------------------------------------------------------------------------------
@dataclass
class ConvertResult:
    """What :func:`convert_annotations` read and wrote.

    ``by_class`` and ``by_object_type`` count the objects written (label images: the objects painted);
    ``skipped`` counts what was left out, by reason (on reading, by the class map, by the writer);
    ``lines`` the line objects read (written as lines into GeoJSON, left out of ASAP XML and label images);
    ``size_px`` the label image's ``(width, height)``.
    """

    source: str
    target: str
    from_format: str
    to_format: str
    read_total: int = 0
    written: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    by_object_type: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    lines: int = 0
    holes: int = 0
    kind: str | None = None
    size_px: tuple[int, int] | None = None
    mpp: float | None = None
    warnings: list[str] = field(default_factory=list)

    def skip(self, reason: str, count: int = 1) -> None:
        """Count ``count`` objects left out for ``reason``."""
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    def summary_line(self) -> str:
        """One line: what was converted into what, the objects by type and class, what was left out.

        >>> r = ConvertResult("a.xml", "a.geojson", "asap", "geojson", read_total=3, written=2,
        ...                   by_class={"Tumor": 2}, by_object_type={"annotation": 2}, skipped={"ruler": 1})
        >>> print(r.summary_line())  # doctest: +NORMALIZE_WHITESPACE
        a.xml (ASAP XML) -> a.geojson (QuPath GeoJSON): 2 objects (2 annotation; Tumor 2) of 3 read;
        1 skipped (1 ruler)
        """
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.by_object_type.items()))
        classes = ", ".join(f"{c} {n}" for c, n in sorted(self.by_class.items(), key=lambda kv: (-kv[1], kv[0])))
        detail = "; ".join(part for part in (types, classes) if part)
        line = (
            f"{self.source} ({format_info(self.from_format).title}) -> {self.target} "
            f"({_OUTPUT_TITLES[self.to_format]}): {self.written} object{'s' if self.written != 1 else ''}"
            f"{f' ({detail})' if detail else ''} of {self.read_total} read"
        )
        if self.kind is not None and self.size_px is not None:
            at = f" at {self.mpp:g} um/px" if self.mpp else ""
            line += f"; {self.kind} labels, {self.size_px[0]} x {self.size_px[1]} px{at}"
        n_skipped = sum(self.skipped.values())
        if n_skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
            line += f"; {n_skipped} skipped ({reasons})"
        if self.repaired:
            line += f"; {self.repaired} repaired"
        if self.holes:
            line += f"; {self.holes} hole{'s' if self.holes != 1 else ''} as exclusions"
        if self.lines:
            kept = "written as lines" if self.to_format == "geojson" else "left out"
            line += f"; {self.lines} line{'s' if self.lines != 1 else ''} {kept}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "source": self.source, "target": self.target, "from": self.from_format, "to": self.to_format,
            "read": self.read_total, "written": self.written, "by_class": dict(self.by_class),
            "by_object_type": dict(self.by_object_type), "skipped": dict(self.skipped), "repaired": self.repaired,
            "lines": self.lines, "holes": self.holes, "kind": self.kind,
            "size_px": list(self.size_px) if self.size_px else None, "mpp": self.mpp, "warnings": list(self.warnings),
        }


_OUTPUT_TITLES = {"geojson": "QuPath GeoJSON", "asap": "ASAP XML", "labels": "label image"}


def _count(features: Iterable[Feature]) -> tuple[dict[str, int], dict[str, int]]:
    by_class: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for f in features:
        name = UNCLASSIFIED if f.class_name is None else f.class_name
        by_class[name] = by_class.get(name, 0) + 1
        by_type[f.object_type] = by_type.get(f.object_type, 0) + 1
    return by_class, by_type


def _is_area(feature: Feature) -> bool:
    geom = feature.geometry
    return geom is not None and not geom.is_empty and geom.geom_type in ("Polygon", "MultiPolygon") and geom.area > 0


def _is_line(feature: Feature) -> bool:
    geom = feature.geometry
    return geom is not None and not geom.is_empty and geom.geom_type in ("LineString", "MultiLineString", "LinearRing")


# --- the conversion -----------------------------------------------------------------------------------
def convert_annotations(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    from_format: str | None = None,
    object_type: str = "auto",
    class_map: Mapping[str, int | str] | None = None,
    exclusion_groups: Sequence[str] | None = None,
    kind: str = "auto",
    slide_size_px: tuple[int, int] | None = None,
    slide_mpp: float | None = None,
    label_mpp: float | None = None,
    threshold: float | None = None,
) -> ConvertResult:
    """Convert an annotation file of any readable format into QuPath GeoJSON, ASAP XML or a label image.

    Parameters
    ----------
    source
        Any file :func:`~qpbridge.formats.read_annotations` reads; its format is found from its content.
    target
        The output; its name decides the format (:func:`output_format`). Written atomically.
    from_format
        A name of :data:`~qpbridge.formats.FORMATS` to skip detecting the input's format.
    object_type
        ``"auto"``, ``"annotation"`` or ``"detection"`` (see the module docstring).
    class_map
        ``{class name: value}`` in the grammar of :func:`qpbridge.rasterize.parse_class_map` (see the module
        docstring for what a value means into each format).
    exclusion_groups
        ASAP: the groups whose areas are holes when reading (default ``_2``, ``Exclusion``, ``exclusion``);
        the first one is the group holes are written into (default ``Exclusion``).
    kind
        Label images: ``"instance"``, ``"class"`` or ``"auto"``.
    slide_size_px
        The level-0 ``(width, height)`` of the image QuPath shows: objects are clipped to it, and a label
        image covers it (needed to write one).
    slide_mpp
        The slide's level-0 um/px (places label images of another resolution; picks object types).
    label_mpp
        The um/px of the label image read or written (needs ``slide_mpp``); default the slide's full
        resolution (or, when read, the resolution the file records).
    threshold
        A label image read as a black-and-white mask (a JPEG, say): pixels brighter than this are label 1.

    Raises
    ------
    InputError
        Options that do not fit (a label image without a size, ``label_mpp`` without ``slide_mpp``, an output
        name of no format, the input as output, a bad class map).
    FormatError
        The input is unreadable (the reader's one line).
    OutputError
        The output's folder does not exist.
    """
    source, target = Path(source), Path(target)
    to_format = output_format(target)
    check_choice("object_type", object_type, OBJECT_TYPE_CHOICES)
    check_choice("kind", kind, KIND_CHOICES)
    _check_paths(source, target, to_format, slide_size_px=slide_size_px, slide_mpp=slide_mpp, label_mpp=label_mpp)
    groups = list(exclusion_groups) if exclusion_groups else None
    read = _read_source(source, from_format, groups, kind, threshold, slide_size_px, slide_mpp, label_mpp)
    result = ConvertResult(str(source), str(target), read.format_name, to_format, read_total=read.summary.total)
    result.warnings.extend(read.warnings)
    result.skip("on reading", len(read.summary.skipped))
    result.repaired = len(read.summary.repaired)
    features = _with_object_types(read, object_type, slide_mpp)
    if class_map and to_format != "labels":
        features, dropped = rename_classes(features, class_map)
        result.skip("by the class map", dropped)
    result.lines = sum(_is_line(f) for f in features)
    if to_format == "geojson":
        _write_geojson(result, target, features)
    elif to_format == "asap":
        _write_asap(result, target, features, groups[0] if groups else DEFAULT_WRITE_EXCLUSION_GROUP)
    else:
        _write_labels(result, target, features, kind, class_map, slide_size_px, slide_mpp, label_mpp)
    return result


def _check_paths(
    source: Path,
    target: Path,
    to_format: str,
    *,
    slide_size_px: tuple[int, int] | None,
    slide_mpp: float | None,
    label_mpp: float | None,
) -> None:
    """Options that fit: another output than the input, in a folder that exists, what a label image needs."""
    if source.exists() and target.exists() and source.resolve() == target.resolve():
        raise InputError(f"the output {target} is the input: give another output with -o")
    if not target.parent.is_dir():
        raise OutputError(f"output folder {target.parent} does not exist: create it or choose another path")
    if label_mpp is not None and slide_mpp is None:
        raise InputError(
            f"a label image at {label_mpp:g} um/px needs the slide's level-0 um/px to be placed: give the slide "
            "(--slide) or its pixel size (--mpp)"
        )
    if to_format == "labels" and slide_size_px is None:
        raise InputError(
            f"writing the label image {target} needs the image's size: give the slide the objects belong to "
            "(--slide) or its level-0 size (--size-px WIDTHxHEIGHT)"
        )


def _read_source(
    source: Path,
    from_format: str | None,
    groups: list[str] | None,
    kind: str,
    threshold: float | None,
    slide_size_px: tuple[int, int] | None,
    slide_mpp: float | None,
    label_mpp: float | None,
) -> FormatResult:
    """The input, read with the options of its format (ASAP's exclusion groups, a label image's kind and scale)."""
    label_options: dict[str, Any] = {"kind": "instance" if kind == "auto" else kind}
    if threshold is not None:
        label_options["threshold"] = threshold
    if slide_mpp is not None:
        label_options.update(slide_mpp=slide_mpp, mpp=label_mpp, on_missing_mpp="level0")
    return read_annotations(
        source,
        format=from_format,
        slide_size_px=slide_size_px,
        format_options={"asap": {"exclusion_groups": groups} if groups else {}, "labels": label_options},
    )


def _write_geojson(result: ConvertResult, target: Path, features: list[Feature]) -> None:
    written = write_geojson(target, features, default_color=dict(_DEEPBATCH_COLORS))
    result.written, result.by_class, result.by_object_type = (
        written.written, dict(written.by_class), dict(written.by_object_type)
    )
    result.skip("empty", written.dropped_empty)
    result.repaired += written.repaired


def _write_asap(result: ConvertResult, target: Path, features: list[Feature], exclusion: str) -> None:
    written_asap = write_asap(target, features, exclusion_group=exclusion)
    kept = [f for f in features if not _is_line(f) and f.geometry is not None and not f.geometry.is_empty]
    result.by_class, result.by_object_type = _count(kept)
    result.holes = written_asap.holes
    for reason, count in written_asap.skipped.items():
        if "no line annotation" not in reason:
            result.skip(reason, count)
    result.written = len(features) - sum(written_asap.skipped.values())


def _with_object_types(read: FormatResult, object_type: str, slide_mpp: float | None) -> list[Feature]:
    features = read.features
    if object_type == "auto":
        if read.format_name in ("geojson", "labels"):
            return features
        mpp = read.mpp if read.mpp is not None else slide_mpp
        object_type = suggest_object_type(features, mpp=mpp)
    return [f if f.object_type == object_type else replace(f, object_type=object_type) for f in features]


def _write_labels(
    result: ConvertResult,
    target: Path,
    features: list[Feature],
    kind: str,
    class_map: Mapping[str, int | str] | None,
    slide_size_px: tuple[int, int] | None,
    slide_mpp: float | None,
    label_mpp: float | None,
) -> None:
    assert slide_size_px is not None
    areas = [f for f in features if _is_area(f)]
    result.skip("not areas (points)", sum(1 for f in features if not _is_area(f) and not _is_line(f)))
    if kind == "auto":
        kind = "instance" if areas and all(f.object_type in _DETECTION_LIKE for f in areas) else "class"
    labels: dict[str, int] | None = None
    if kind == "class":
        resolved = class_labels([f.class_name for f in areas], class_map)
        painted = [f for f in areas if resolved[UNCLASSIFIED if f.class_name is None else f.class_name] is not None]
        result.skip("classes not painted (skip, Region*)", len(areas) - len(painted))
        labels = {name: value for name, value in resolved.items() if value is not None}
        painted.sort(key=lambda f: resolved[UNCLASSIFIED if f.class_name is None else f.class_name] or 0)
        areas = painted
    width, height = slide_size_px
    if label_mpp is not None and slide_mpp is not None:
        affine = label_affine(mpp=label_mpp, slide_mpp=slide_mpp)
        scale = label_mpp / slide_mpp
        shape = (max(1, math.ceil(height / scale - 1e-9)), max(1, math.ceil(width / scale - 1e-9)))
    else:
        affine = label_affine()
        shape = (int(height), int(width))
    mpp = label_mpp if label_mpp is not None else slide_mpp
    write_label_image(target, areas, shape, affine, kind=kind, class_map=labels, mpp=mpp)
    result.by_class, result.by_object_type = _count(areas)
    result.written, result.kind, result.size_px, result.mpp = len(areas), kind, (shape[1], shape[0]), mpp

