"""What every annotation-format reader shares: the result, the collector that checks features, colours, XML/JSON.

A reader turns the elements of its file into :class:`qpbridge.qupath.Feature` objects (level-0 pixel geometries)
and hands them to a :class:`FeatureCollector`, which then, for the whole file at once:

1. applies a class map ``{name in the file: QuPath class name}`` when one is given (names it lacks are an
   error that lists them with their counts, unless ``on_unknown`` is ``"keep"`` or ``"skip"``);
2. repairs invalid polygons (``make_valid``, polygonal parts kept) with a warning per feature;
3. clips to the slide when ``slide_size_px`` is given (features wholly outside are skipped);
4. drops empty geometries, and counts what is left by object type and class in a
   :class:`qpbridge.qupath.ReadSummary`, exactly as :func:`qpbridge.qupath.read_geojson` does.

Bad input is one :class:`~qpbridge.errors.FormatError` line that names the file, the element and what is
wrong; elements that cannot be used but do not make the file unreadable (an annotation without coordinates,
a ruler) are skipped, counted in ``summary.skipped`` and named in a warning.

>>> from shapely import box
>>> from qpbridge.qupath import Feature
>>> c = FeatureCollector("a.xml", class_map={"_0": "Tumor"})
>>> c.add(Feature(box(0, 0, 4, 4), "_0"), index=0)
>>> result = c.finish("asap")
>>> [f.class_name for f in result.features], result.summary.by_class, result.format_name
(['Tumor'], {'Tumor': 1}, 'asap')
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import orjson
import shapely

from qpbridge.errors import FormatError, InputError
from qpbridge.qupath import Feature, ReadResult, ReadSummary, make_valid_polygonal

__all__ = [
    "UNCLASSIFIED",
    "FeatureCollector",
    "FormatResult",
    "FormatWriteSummary",
    "NonFiniteValue",
    "bgr_int_color",
    "check_choice",
    "color_hex",
    "ellipse_polygon",
    "iter_xml",
    "load_json_file",
    "local_tag",
    "open_maybe_gzip",
    "parse_css_color",
    "parse_number",
    "subtract_exclusions",
]

#: The name an unclassified feature is looked up by in a class map.
UNCLASSIFIED = "Unclassified"

_MAX_WARNINGS = 200
_NAMED_REPAIRS = 10  # repairs named one by one in the warnings; the rest are counted
_AREA = (3, 6)  # shapely type ids of Polygon, MultiPolygon


class NonFiniteValue(FormatError):
    """A NaN or infinite coordinate; a reader given ``on_nonfinite="skip"`` skips that element instead."""


@dataclass
class FormatResult(ReadResult):
    """A :class:`qpbridge.qupath.ReadResult` that also says which format was read and its pixel size.

    Attributes
    ----------
    format_name
        A name of :data:`qpbridge.formats.FORMATS` (``"asap"``, ``"imagescope"``, ``"dsa"``, ``"labels"``,
        ``"geojson"``).
    mpp
        um/px of the level-0 pixels the coordinates are in, when the file (ImageScope ``MicronsPerPixel``, a
        label image's resolution) or the options say it; ``None`` otherwise.
    """

    format_name: str = "geojson"
    mpp: float | None = None


@dataclass
class FormatWriteSummary:
    """What a writer of another format wrote: elements written and features it could not write, by reason."""

    written: int = 0
    holes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Count one feature left out for ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else :class:`InputError` naming them.

    >>> check_choice("object_type", "detection", ("annotation", "detection"))
    'detection'
    """
    options = tuple(choices)
    if value not in options:
        raise InputError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


# --- the collector ------------------------------------------------------------------------------------
class FeatureCollector:
    """Collects a reader's features and turns them into a :class:`FormatResult` (see the module docstring).

    Parameters
    ----------
    source
        The file, for messages.
    slide_size_px
        ``(width, height)`` at level 0: geometries are clipped to the slide.
    class_map
        ``{name in the file: QuPath class name or None}`` (``None`` drops those features; unclassified
        features are looked up as ``"Unclassified"``).
    on_unknown
        What to do with names the class map lacks: ``"raise"`` (default), ``"keep"`` the name, ``"skip"``.
    on_nonfinite
        ``"raise"`` (default): a NaN/infinite coordinate is a :class:`NonFiniteValue` error naming the
        element; ``"skip"``: readers skip that element (see :meth:`nonfinite`).
    what
        What a class is called in this format, for messages (``"group"``, ``"label"``...).
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        slide_size_px: tuple[int, int] | None = None,
        class_map: Mapping[str, str | None] | None = None,
        on_unknown: str = "raise",
        on_nonfinite: str = "raise",
        what: str = "class",
    ) -> None:
        self.source = str(source)
        self.summary = ReadSummary()
        self.features: list[Feature] = []
        self.warnings: list[str] = []
        self._labels: list[str] = []  # label of each feature, for messages
        self._hidden = 0
        self._grouped: dict[str, int] = {}
        self.class_map = None if class_map is None else dict(class_map)
        self.on_unknown = check_choice("on_unknown", on_unknown, ("raise", "keep", "skip"))
        self.on_nonfinite = check_choice("on_nonfinite", on_nonfinite, ("raise", "skip"))
        self.what = what
        self.slide_box = None
        if slide_size_px is not None:
            w, h = slide_size_px
            if not (w > 0 and h > 0):
                raise InputError(f"slide size must be positive pixels, got {slide_size_px}: give (width, height)")
            self.slide_size_px = (w, h)
            self.slide_box = shapely.box(0, 0, w, h)

    # -- notes ---------------------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        """Add a warning line (``message`` names the element); the first 200 are kept."""
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(f"{self.source}: {message}")
        else:
            self._hidden += 1

    def element(self) -> None:
        """Count one element of the file (every element is counted once, whatever becomes of it)."""
        self.summary.total += 1

    def skip(self, index: int, label: str, reason: str, *, grouped: str | None = None) -> None:
        """Skip element ``index`` for ``reason``: counted in ``summary.skipped``; a warning names it, or, with
        ``grouped``, one counted line per ``grouped`` text at the end (for the many rulers of a file)."""
        self.summary.skipped.append((index, reason))
        if grouped is None:
            self.warn(f"{label}: skipped: {reason}")
        else:
            self._grouped[grouped] = self._grouped.get(grouped, 0) + 1

    def note(self, grouped: str) -> None:
        """Count one occurrence of ``grouped`` (reported once, with its count, at the end)."""
        self._grouped[grouped] = self._grouped.get(grouped, 0) + 1

    def nonfinite(self, index: int, label: str, exc: NonFiniteValue) -> None:
        """Handle a :class:`NonFiniteValue` met while reading element ``index``: re-raise it, or skip the element."""
        if self.on_nonfinite == "raise":
            raise exc
        self.skip(index, label, "non-finite (NaN or infinite) coordinate")

    def repaired(self, index: int, label: str, reason: str) -> None:
        """Record that element ``index`` was repaired (the first ten are named in warnings, the rest counted)."""
        self.summary.repaired.append((index, reason))
        if len(self.summary.repaired) <= _NAMED_REPAIRS:
            self.warn(f"{label}: {reason}")

    # -- features ------------------------------------------------------------------------------------
    def add(self, feature: Feature, *, index: int, label: str | None = None) -> None:
        """Add one feature read from element ``index`` (``label`` names it in messages)."""
        feature.source_index = index
        self.features.append(feature)
        self._labels.append(label or f"element {index}")

    def finish(self, format_name: str, *, mpp: float | None = None) -> FormatResult:
        """Class map, repair, clip, drop empties, count: the result of the file."""
        self._apply_class_map()
        self._check_geometries()
        n_repaired = len(self.summary.repaired)
        if n_repaired > _NAMED_REPAIRS:
            more = n_repaired - _NAMED_REPAIRS
            self.warn(f"{more} more element(s) repaired (all {n_repaired} are in summary.repaired)")
        for text, count in self._grouped.items():
            self.warn(f"{count} x {text}")
        if self._hidden:
            self.warnings.append(f"... and {self._hidden} more warnings (see the summary)")
        return FormatResult(self.features, self.summary, self.warnings, format_name=format_name, mpp=mpp)

    def _apply_class_map(self) -> None:
        if self.class_map is None:
            return
        unknown: dict[str, int] = {}
        kept: list[Feature] = []
        labels: list[str] = []
        for feat, label in zip(self.features, self._labels, strict=True):
            key = UNCLASSIFIED if feat.class_name is None else feat.class_name
            if key in self.class_map:
                mapped = self.class_map[key]
                if mapped is None:
                    self.skip(int(feat.source_index or 0), label, f"{self.what} {key!r} mapped to None",
                              grouped=f"skipped: {self.what} {key!r} mapped to None")
                    continue
                feat.class_name = mapped
            else:
                unknown[key] = unknown.get(key, 0) + 1
                if self.on_unknown == "skip":
                    self.skip(int(feat.source_index or 0), label, f"{self.what} {key!r} not in the class map",
                              grouped=f"skipped: {self.what} {key!r} not in the class map")
                    continue
            kept.append(feat)
            labels.append(label)
        if unknown and self.on_unknown == "raise":
            listing = ", ".join(
                f"{name!r} ({count} object{'s' if count != 1 else ''})"
                for name, count in sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            example = min(unknown)
            raise FormatError(
                f"{self.source}: {self.what}s not in the class map: {listing}: add them to the class map "
                f"(e.g. {{{example!r}: 'Tumor'}}), map them to None to drop them, or keep their names "
                "with on_unknown='keep'"
            )
        self.features, self._labels = kept, labels

    def _check_geometries(self) -> None:
        if not self.features:
            return
        geoms = np.empty(len(self.features), dtype=object)
        geoms[:] = [f.geometry for f in self.features]
        areas = np.isin(shapely.get_type_id(geoms), _AREA)
        for i in np.flatnonzero(areas & ~shapely.is_valid(geoms)).tolist():
            feat = self.features[i]
            reason = shapely.is_valid_reason(feat.geometry)
            feat.geometry = make_valid_polygonal(feat.geometry)
            self.repaired(int(feat.source_index or 0), self._labels[i], f"invalid polygon ({reason}) repaired")
        outside: set[int] = set()
        if self.slide_box is not None:
            geoms[:] = [f.geometry for f in self.features]
            w, h = self.slide_size_px
            for i in np.flatnonzero(~shapely.covered_by(geoms, self.slide_box) & ~shapely.is_empty(geoms)).tolist():
                feat = self.features[i]
                clipped = shapely.intersection(feat.geometry, self.slide_box)
                if areas[i]:
                    clipped = make_valid_polygonal(clipped)
                feat.geometry = clipped
                if clipped.is_empty:
                    outside.add(i)
                    continue
                self.summary.clipped.append((int(feat.source_index or 0), f"clipped to the slide ({w} x {h} px)"))
                self.warn(f"{self._labels[i]}: clipped to the slide ({w} x {h} px)")
        kept: list[Feature] = []
        for i, feat in enumerate(self.features):
            index = int(feat.source_index or 0)
            if feat.geometry is None or feat.geometry.is_empty:
                reason = "wholly outside the slide" if i in outside else "empty geometry"
                self.skip(index, self._labels[i], reason)
                continue
            kind = feat.geometry.geom_type
            if kind not in ("Polygon", "MultiPolygon"):
                self.summary.not_area.append((index, kind))
            klass = feat.class_name if feat.class_name is not None else UNCLASSIFIED
            by_type, by_class = self.summary.by_object_type, self.summary.by_class
            by_type[feat.object_type] = by_type.get(feat.object_type, 0) + 1
            by_class[klass] = by_class.get(klass, 0) + 1
            kept.append(feat)
        self.features = kept


# --- numbers and colours ------------------------------------------------------------------------------
def parse_number(text: Any, source: str, label: str, attribute: str) -> float:
    """A finite number from an XML attribute or JSON value; :class:`FormatError` naming the element otherwise.

    A decimal comma (``"12,5"``, written by ASAP under some locales) is read as a point.

    >>> parse_number("12,5", "a.xml", "annotation 0", "X")
    12.5
    >>> parse_number("abc", "a.xml", "annotation 0", "X")
    Traceback (most recent call last):
    ...
    qpbridge.errors.FormatError: a.xml: annotation 0: X='abc' is not a number: fix or delete that element
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip() if text is not None else ""
        try:
            value = float(raw)
        except ValueError:
            if raw.count(",") == 1 and "." not in raw:
                try:
                    value = float(raw.replace(",", "."))
                except ValueError:
                    value = math.nan
                    raw = ""
            else:
                raw = ""
            if not raw:
                raise FormatError(
                    f"{source}: {label}: {attribute}={text!r} is not a number: fix or delete that element"
                ) from None
    if not math.isfinite(value):
        raise NonFiniteValue(
            f"{source}: {label}: {attribute}={text!r} is not a finite number: fix or delete that element"
        )
    return value


_HEX = re.compile(r"#?([0-9a-fA-F]{6})(?:[0-9a-fA-F]{2})?$|#?([0-9a-fA-F]{3})$")
_CSS = re.compile(r"rgba?\(\s*([0-9.]+)\s*,\s*([0-9.]+)\s*,\s*([0-9.]+)\s*(?:,\s*[0-9.]+\s*)?\)$", re.IGNORECASE)


def parse_css_color(value: Any) -> tuple[int, int, int] | None:
    """``(r, g, b)`` from ``"#rrggbb"``, ``"#rgb"``, ``"#rrggbbaa"``, ``"rgb(r,g,b)"`` or ``"rgba(r,g,b,a)"``.

    Returns ``None`` for anything else (the caller keeps the class colour).

    >>> parse_css_color("rgb(255,125,0)"), parse_css_color("#F4FA58"), parse_css_color("rgba(0, 0, 255, 0.5)")
    ((255, 125, 0), (244, 250, 88), (0, 0, 255))
    >>> parse_css_color("blue") is None
    True
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    m = _HEX.match(text)
    if m:
        if m.group(1):
            h = m.group(1)
            return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
        s = m.group(2)
        return (int(s[0] * 2, 16), int(s[1] * 2, 16), int(s[2] * 2, 16))
    m = _CSS.match(text)
    if m:
        try:
            r, g, b = (max(0, min(255, round(float(c)))) for c in m.groups())
        except ValueError:
            return None
        return (r, g, b)
    return None


def bgr_int_color(value: Any) -> tuple[int, int, int] | None:
    """``(r, g, b)`` from an Aperio ``LineColor``: a Windows COLORREF integer, red in the lowest byte.

    ``255`` is red, ``65280`` green, ``16711680`` blue (the byte order of Aperio's files, as the DSA viewer's
    ``aperioLineColortoHex`` reads them). ``None`` for a value that is not an integer.

    >>> bgr_int_color("255"), bgr_int_color("65280"), bgr_int_color(16711680), bgr_int_color("x")
    ((255, 0, 0), (0, 255, 0), (0, 0, 255), None)
    """
    try:
        packed = int(str(value).strip()) & 0xFFFFFF
    except ValueError:
        return None
    return (packed & 255, (packed >> 8) & 255, (packed >> 16) & 255)


def color_hex(color: tuple[int, int, int]) -> str:
    """``"#RRGGBB"`` (upper case, as ASAP writes it).

    >>> color_hex((244, 250, 88))
    '#F4FA58'
    """
    r, g, b = (max(0, min(255, int(c))) for c in color)
    return f"#{r:02X}{g:02X}{b:02X}"


# --- geometry -----------------------------------------------------------------------------------------
def ellipse_polygon(
    cx: float, cy: float, rx: float, ry: float, rotation_rad: float = 0.0, segments: int = 64
) -> shapely.Polygon:
    """A polygon of ``segments`` vertices on the ellipse of centre ``(cx, cy)`` and semi-axes ``rx``, ``ry``,
    turned by ``rotation_rad`` (x towards y). Empty when an axis is not positive.

    >>> round(ellipse_polygon(0, 0, 10, 5, segments=256).area / (3.14159265 * 50), 3)
    1.0
    """
    if not (rx > 0 and ry > 0):
        return shapely.Polygon()
    t = np.linspace(0.0, 2.0 * math.pi, segments, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    return shapely.Polygon(np.column_stack([cx + c * x - s * y, cy + s * x + c * y]))


def subtract_exclusions(
    targets: list[shapely.Geometry], exclusions: list[shapely.Geometry]
) -> tuple[list[shapely.Geometry], int, list[int]]:
    """Cut every exclusion area out of the target areas it overlaps.

    An exclusion is subtracted from each target area whose interior it meets, except from a target that lies
    wholly inside it (an island drawn inside a hole is kept whole). Points and lines are left as they are.

    Returns the new targets, how many targets were cut, and the indices of the exclusions that cut nothing.

    >>> from shapely import box
    >>> cut, n, unused = subtract_exclusions([box(0, 0, 10, 10), box(4, 4, 6, 6)], [box(2, 2, 8, 8)])
    >>> cut[0].area, len(cut[0].interiors), cut[1].area, n, unused
    (64.0, 1, 4.0, 1, [])
    """
    if not exclusions or not targets:
        return list(targets), 0, list(range(len(exclusions)))
    excl = np.empty(len(exclusions), dtype=object)
    excl[:] = exclusions
    tree = shapely.STRtree(excl)
    out = list(targets)
    used = np.zeros(len(exclusions), dtype=bool)
    n_cut = 0
    for i, target in enumerate(targets):
        if shapely.get_type_id(target) not in _AREA or target.is_empty:
            continue
        hits = tree.query(target, predicate="intersects")
        hits = [
            int(j) for j in hits
            if shapely.relate_pattern(target, excl[j], "T********") and not shapely.within(target, excl[j])
        ]
        if not hits:
            continue
        used[hits] = True
        cutter = excl[hits[0]] if len(hits) == 1 else shapely.union_all(excl[hits])
        out[i] = make_valid_polygonal(shapely.difference(target, cutter))
        n_cut += 1
    return out, n_cut, np.flatnonzero(~used).tolist()


# --- files --------------------------------------------------------------------------------------------
def _check_file(path: Path) -> None:
    if not path.exists():
        raise FormatError(f"{path}: no such file: check the path")
    if path.is_dir():
        raise FormatError(f"{path} is a folder: give an annotation file")


@contextlib.contextmanager
def open_maybe_gzip(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``path`` opened for reading bytes (a context manager), decompressed on the fly when it is gzip data
    (by its magic bytes, whatever the name)."""
    path = Path(path)
    _check_file(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror}): check its permissions") from None
    try:
        magic = fh.read(2)
        fh.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                yield cast(BinaryIO, gz)
        else:
            yield fh
    finally:
        fh.close()


def local_tag(tag: str) -> str:
    """An XML tag without its ``{namespace}``.

    >>> local_tag("{http://x}Annotation"), local_tag("Region")
    ('Annotation', 'Region')
    """
    return tag.rsplit("}", 1)[-1] if tag.startswith("{") else tag


def iter_xml(
    path: str | os.PathLike[str], root: str, format_label: str, hint: str = ""
) -> Iterator[tuple[str, ET.Element]]:
    """``(event, element)`` pairs (``"start"``/``"end"``) of an XML file, read incrementally (``iterparse``).

    Raises :class:`FormatError` for a missing file, malformed or truncated XML (with line and column), and
    a root element other than ``<root>`` (``hint`` is added to that message). Gzip data is read too.
    Elements are the parser's own: clear those handled at their end event to keep memory flat.
    """
    path = Path(path)
    with open_maybe_gzip(path) as fh:
        events = ET.iterparse(fh, events=("start", "end"))
        first = True
        try:
            for event, elem in events:
                if first:
                    first = False
                    tag = local_tag(elem.tag)
                    if tag != root:
                        raise FormatError(
                            f"{path}: root element <{tag}>, not <{root}>: not {format_label}{hint}"
                        )
                yield event, elem
        except ET.ParseError as exc:
            line, column = exc.position
            what = str(exc).split(":", 1)[0]
            raise FormatError(
                f"{path}: malformed XML at line {line}, column {column} ({what}): the file is truncated or "
                f"not XML: save it again from the program that wrote it"
            ) from None
        except (OSError, EOFError) as exc:
            raise FormatError(f"{path}: cannot read ({exc}): the file is truncated; write it again") from None


def load_json_file(path: str | os.PathLike[str], format_label: str) -> Any:
    """The parsed JSON of a file (gzip read too); :class:`FormatError` with line and column when it is not JSON."""
    path = Path(path)
    with open_maybe_gzip(path) as fh:
        try:
            raw = fh.read()
        except (OSError, EOFError) as exc:
            raise FormatError(f"{path}: cannot read ({exc}): the file is truncated; write it again") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.load(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text (byte {exc.start}): not {format_label}") from None
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}): the file is truncated "
            f"or not JSON: export {format_label} again"
        ) from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply to read: not {format_label}") from None
