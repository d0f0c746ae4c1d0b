"""Which format a file is, by its content, and one entry point that reads any of them.

:func:`detect_format` looks at the first bytes (decompressing gzip), never only at the name:

- an image (PNG, JPEG, TIFF, BMP magic bytes) -> ``"labels"``;
- a zip archive -> ``"geojson"`` (QuPath's zipped exports; :func:`qpbridge.qupath.read_geojson` reads them);
- XML whose root element is ``<ASAP_Annotations>`` -> ``"asap"``; ``<Annotations>`` -> ``"imagescope"``
  (Aperio's ``Annotation/Regions/Region/Vertices``);
- JSON: GeoJSON (``"type": "Feature"``/``"FeatureCollection"``/a geometry, or a list of them) ->
  ``"geojson"``; an annotation document with ``"elements"`` or ``"annotation"`` -> ``"dsa"``. The keys are
  looked for in the first 64 KiB (whichever comes first decides); when neither shows there, the file is
  parsed and its structure decides.

:data:`FORMATS` lists every format with what reads it and what writes it.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "slide.json"
>>> _ = p.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations/></ASAP_Annotations>')
>>> detect_format(p)
'asap'
>>> read_annotations(p).summary.total
0
"""

from __future__ import annotations

import gzip
import inspect
import os
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpbridge.errors import FormatError, InputError
from qpbridge.formats.asap import read_asap, write_asap
from qpbridge.formats.common import FormatResult, load_json_file
from qpbridge.formats.dsa import read_dsa
from qpbridge.formats.imagescope import read_imagescope
from qpbridge.formats.labels import read_label_image, write_label_image
from qpbridge.qupath import ReadResult, read_geojson, write_geojson
from qpbridge.qupath.project import QUPATH_IMPORT_SUFFIXES

__all__ = [
    "FORMATS",
    "FormatInfo",
    "detect_format",
    "format_info",
    "label_options_for_slide",
    "read_annotations",
    "require_geojson",
]

_HEAD_BYTES = 1 << 16
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"BM")
_GEOJSON_TYPE = re.compile(
    rb'"type"\s*:\s*"(?:FeatureCollection|Feature|Polygon|MultiPolygon|Point|MultiPoint|LineString|'
    rb'MultiLineString|GeometryCollection)"'
)
_DSA_KEY = re.compile(rb'"(?:elements|annotation)"\s*:\s*[\[{]')
_XML_ROOT = re.compile(rb"<([A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)")


@dataclass(frozen=True)
class FormatInfo:
    """One annotation format: its name, what it is, its usual suffixes, its reader and its writer (or None)."""

    name: str
    description: str
    suffixes: tuple[str, ...]
    reader: Callable[..., ReadResult]
    writer: Callable[..., Any] | None

    @property
    def title(self) -> str:
        """The format's name for messages: ``"ASAP XML"``, ``"label image"``...

        >>> FORMATS["dsa"].title, FORMATS["labels"].title
        ('Digital Slide Archive / HistomicsTK annotation JSON', 'label image')
        """
        return self.description.split(" (")[0].split(":")[0]


#: Every format qpbridge reads, by name.
FORMATS: dict[str, FormatInfo] = {
    info.name: info
    for info in (
        FormatInfo("geojson", "QuPath GeoJSON (FeatureCollection, Feature, arrays; .gz, .zip)",
                   (".geojson", ".json", ".geojson.gz", ".json.gz", ".zip"), read_geojson, write_geojson),
        FormatInfo("asap", "ASAP XML (<ASAP_Annotations>; CAMELYON16/17)", (".xml",), read_asap, write_asap),
        FormatInfo("imagescope", "Aperio ImageScope XML (<Annotations>/Regions/Vertices; MoNuSeg)", (".xml",),
                   read_imagescope, None),
        FormatInfo("dsa", "Digital Slide Archive / HistomicsTK annotation JSON (elements)", (".json",), read_dsa,
                   None),
        FormatInfo("labels", "label image: instance ids or class labels (PNG, TIFF; JPEG masks with threshold)",
                   (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"), read_label_image, write_label_image),
    )
}


def format_info(name: str) -> FormatInfo:
    """The :class:`FormatInfo` of ``name``; :class:`InputError` listing the formats for any other name.

    >>> format_info("asap").writer.__name__
    'write_asap'
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise InputError(f"unknown annotation format {name!r}: use one of {', '.join(FORMATS)}") from None


def _head(path: Path) -> bytes:
    if not path.exists():
        raise FormatError(f"{path}: no such file: check the path")
    if path.is_dir():
        raise FormatError(f"{path} is a folder: give an annotation file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror}): check its permissions") from None
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                head = gz.read(_HEAD_BYTES)
        except (OSError, EOFError, zlib.error):
            decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
            try:
                head = decomp.decompress(head, _HEAD_BYTES)
            except zlib.error as exc:
                raise FormatError(f"{path}: broken gzip data ({exc}): write it again") from None
    return head


def _xml_root(head: bytes) -> str | None:
    text = head
    pos = 0
    while True:
        start = text.find(b"<", pos)
        if start < 0:
            return None
        if text.startswith(b"<?", start):
            pos = text.find(b"?>", start) + 2
        elif text.startswith(b"<!--", start):
            pos = text.find(b"-->", start) + 3
        elif text.startswith(b"<!", start):
            pos = text.find(b">", start) + 1
        else:
            m = _XML_ROOT.match(text, start)
            return m.group(2).decode("ascii", "replace") if m else None
        if pos <= start:  # unterminated declaration or comment in the head
            return None


def _json_kind(path: Path, head: bytes) -> str:
    geo = _GEOJSON_TYPE.search(head)
    dsa = _DSA_KEY.search(head)
    if geo or dsa:
        if geo and (not dsa or geo.start() < dsa.start()):
            return "geojson"
        return "dsa"
    data = load_json_file(path, "an annotation JSON file")
    first = data[0] if isinstance(data, list) and data else data
    if isinstance(first, dict) and ("elements" in first or "annotation" in first):
        return "dsa"
    return "geojson"  # read_geojson says what is wrong with anything else


def detect_format(path: str | os.PathLike[str]) -> str:
    """The name in :data:`FORMATS` of the format of ``path``, from its content (see the module docstring).

    Raises :class:`FormatError` for a missing or empty file, XML of another root element, or content that
    is none of the formats.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "objects.xml"          # the name does not decide
    >>> _ = p.write_text('{"type": "FeatureCollection", "features": []}')
    >>> detect_format(p)
    'geojson'
    """
    path = Path(path)
    head = _head(path)
    if not head.strip():
        raise FormatError(f"{path}: empty file: it holds no annotations; export them again")
    if any(head.startswith(m) for m in _IMAGE_MAGIC):
        return "labels"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "geojson"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"<"):
        root = _xml_root(stripped)
        if root == "ASAP_Annotations":
            return "asap"
        if root == "Annotations":
            return "imagescope"
        shown = f"<{root}>" if root else "no element"
        raise FormatError(
            f"{path}: XML with root {shown}: neither ASAP XML (<ASAP_Annotations>) nor Aperio ImageScope XML "
            "(<Annotations>)"
        )
    if stripped[:1] in (b"{", b"["):
        return _json_kind(path, stripped)
    raise FormatError(
        f"{path}: not an annotation file qpbridge knows (GeoJSON, ASAP XML, ImageScope XML, DSA JSON, label image)"
    )


def _detect_for_reading(path: str | os.PathLike[str]) -> str:
    """:func:`detect_format`, except that a file named as GeoJSON that detection cannot place is GeoJSON:
    :func:`qpbridge.qupath.read_geojson` then says what is wrong with it, in the words it always used."""
    try:
        return detect_format(path)
    except FormatError:
        if Path(path).name.lower().endswith(QUPATH_IMPORT_SUFFIXES):
            return "geojson"
        raise


def read_annotations(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    slide_size_px: tuple[int, int] | None = None,
    format_options: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> FormatResult:
    """Read the annotations of any format in :data:`FORMATS` as QuPath features.

    Parameters
    ----------
    path
        The file; its format is detected from its content (:func:`detect_format`) unless ``format`` names it.
        A file named as GeoJSON (``.geojson``, ``.json``, ``.gz``, ``.zip``) whose content is none of the
        formats is read as GeoJSON, so that :func:`~qpbridge.qupath.read_geojson` reports what is wrong.
    format
        One of :data:`FORMATS` to skip detection.
    slide_size_px
        ``(width, height)`` at level 0: every reader clips to the slide.
    format_options
        ``{format name: options}``: options for the reader of that format only, applied when the file is of
        it (e.g. ``{"labels": {"kind": "class"}}``), on top of ``**options``.
    **options
        Options of the chosen reader (e.g. ``class_map=``, ``object_type=``, ``exclusion_groups=`` for
        ASAP, ``kind=``/``mpp=``/``slide_mpp=`` for label images, ``on_nonfinite=`` for GeoJSON); an option
        the reader does not take is an :class:`InputError` that lists the ones it does.

    Returns
    -------
    FormatResult
        A :class:`qpbridge.qupath.ReadResult` that also says ``format_name`` and ``mpp``; for GeoJSON the
        result of :func:`qpbridge.qupath.read_geojson`, wrapped.
    """
    name = format if format is not None else _detect_for_reading(path)
    info = format_info(name)
    options = {**options, **dict((format_options or {}).get(name, {}))}
    accepted = [p for p in inspect.signature(info.reader).parameters if p not in ("path", "slide_size_px")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"option(s) {', '.join(unknown)} do not apply to {info.description.split(' (')[0]} ({path}); "
            f"it takes: {', '.join(accepted) or 'none'}"
        )
    result = info.reader(path, slide_size_px=slide_size_px, **options)
    if isinstance(result, FormatResult):
        return result
    return FormatResult(result.features, result.summary, result.warnings, format_name=name)


def label_options_for_slide(
    names_by_label: Mapping[int, str], slide_mpp: float | None = None
) -> dict[str, dict[str, Any]]:
    """``format_options`` for :func:`read_annotations` that read a label image as a slide's class labels.

    A label image given where annotations of a slide are expected (``masks``, ``diff``) holds the training
    labels: each value becomes the class ``names_by_label`` gives it (255 becomes ``"Ignore*"``, other values
    keep their number as a name), and with ``slide_mpp`` the image is placed by the resolution it records
    (else it is at the slide's full resolution).

    >>> label_options_for_slide({0: "Normal", 3: "Invasive carcinoma"}, 0.25)["labels"]["class_map"]
    {0: 'Normal', 3: 'Invasive carcinoma', 255: 'Ignore*'}
    """
    options: dict[str, Any] = {
        "kind": "class",
        "class_map": {**dict(names_by_label), 255: "Ignore*"},
        "on_unknown": "keep",
    }
    if slide_mpp is not None:
        options.update(slide_mpp=slide_mpp, on_missing_mpp="level0")
    return {"labels": options}


def require_geojson(path: str | os.PathLike[str], command: str = "validate") -> None:
    """Raise :class:`FormatError` when ``path`` is, by its content, an annotation format other than GeoJSON.

    For commands that take QuPath GeoJSON only (``validate``): the one line names the format and the
    ``qpbridge convert`` command that turns the file into GeoJSON. A file whose format cannot be detected is
    left to the command (its GeoJSON reader says what is wrong).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "A01.xml"
    >>> _ = p.write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")
    >>> require_geojson(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    qpbridge.errors.FormatError: .../A01.xml: ASAP XML, not QuPath GeoJSON: validate checks QuPath GeoJSON only; ...
    """
    try:
        name = detect_format(path)
    except FormatError:
        return
    if name == "geojson":
        return
    path = Path(path)
    stem = path.name[: -len(".gz")] if path.name.lower().endswith(".gz") else path.name
    target = path.with_name(Path(stem).stem + ".geojson")
    raise FormatError(
        f"{path}: {FORMATS[name].title}, not QuPath GeoJSON: {command} checks QuPath GeoJSON only; convert it "
        f"first: qpbridge convert {path} -o {target}"
    )
