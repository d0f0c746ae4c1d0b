"""Which annotation file belongs to which slide of a folder: ``qpbridge masks SLIDES_DIR``.

A folder of slides with one annotation file per slide (BACH: ``A01.svs`` beside ``A01.xml``) is paired by the
slide's base name (:func:`qpbridge.qupath.image_basename`: ``A01.svs`` -> ``A01``):

- by default, the file beside the slide named ``<base>`` plus the first ending of
  :data:`ANNOTATION_LOOKUP_SUFFIXES` that exists (GeoJSON first, then XML, then JSON);
- ``annotations`` a folder: the same names in that folder;
- ``annotations`` a pattern with ``{stem}`` (the base name) or ``{name}`` (the slide's file name), relative to
  the slide's folder unless absolute: ``"{stem}.xml"``, ``"../corrections/{stem}.geojson"``.

Slides without an annotation file are listed in :attr:`SlidePairs.missing` (BACH has 10 annotated and 20
unannotated whole-slide images); a folder where none has one is an :class:`~qpbridge.errors.InputError`.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("A01.svs", "A01.xml", "A02.svs", "A03.svs", "A03.geojson"):
...     _ = (folder / name).write_text("x")
>>> pairs = pair_slides(folder)
>>> [(s.name, a.name) for s, a in pairs.pairs], [m.name for m in pairs.missing]
([('A01.svs', 'A01.xml'), ('A03.svs', 'A03.geojson')], ['A02.svs'])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from qpbridge.errors import InputError
from qpbridge.qupath.project import ANNOTATION_SUFFIXES, image_basename
from qpbridge.slide import SLIDE_SUFFIXES, dicom_member, has_slide_suffix

__all__ = ["ANNOTATION_LOOKUP_SUFFIXES", "SlidePairs", "annotation_for_slide", "pair_slides"]

#: Endings tried, in order, for ``<base>`` beside a slide: QuPath GeoJSON, XML (ASAP, ImageScope), JSON (DSA).
ANNOTATION_LOOKUP_SUFFIXES: tuple[str, ...] = (".geojson", ".geojson.gz", ".xml", ".xml.gz", ".json", ".json.gz")


@dataclass
class SlidePairs:
    """Slides paired with their annotation files, the slides without one, and notes."""

    pairs: list[tuple[Path, Path]]
    missing: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _slides_in(folder: Path) -> list[Path]:
    """The slides of a folder (a DICOM slide is a folder of ``.dcm`` files), sorted by name."""
    found = sorted(
        p for p in folder.iterdir()
        if (p.is_file() and has_slide_suffix(p) and p.suffix.lower() != ".dcm"
            and not p.name.lower().endswith(ANNOTATION_SUFFIXES))
        or (p.is_dir() and dicom_member(p) is not None)
    )
    if not found:
        raise InputError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in folder {folder}")
    return found


def annotation_for_slide(
    slide: str | os.PathLike[str], annotations: str | os.PathLike[str] | None = None
) -> tuple[Path | None, list[Path]]:
    """The annotation file of ``slide`` (``None`` when there is none), and other candidates that were passed over.

    ``annotations`` is ``None`` (beside the slide), a folder, or a pattern with ``{stem}``/``{name}`` (see the
    module docstring).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for sub in ("xml", "slides"): (root / sub).mkdir()
    >>> _ = (root / "xml" / "A01.xml").write_text("x")
    >>> annotation_for_slide(root / "slides" / "A01.svs", "../xml/{stem}.xml")[0].name
    'A01.xml'
    """
    slide = Path(slide)
    base = image_basename(slide)
    if annotations is not None and ("{stem}" in os.fspath(annotations) or "{name}" in os.fspath(annotations)):
        text = os.fspath(annotations)
        try:
            relative = Path(text.format(stem=base, name=slide.name))
        except (KeyError, IndexError, ValueError):
            raise InputError(
                f"--annotations {text!r}: a pattern may use only {{stem}} (the slide's base name) and {{name}} (its "
                "file name), e.g. '{stem}.xml'"
            ) from None
        path = relative if relative.is_absolute() else slide.parent / relative
        return (path if path.is_file() else None), []
    folder = slide.parent if annotations is None else Path(annotations)
    found = [folder / (base + suffix) for suffix in ANNOTATION_LOOKUP_SUFFIXES if (folder / (base + suffix)).is_file()]
    return (found[0] if found else None), found[1:]


def pair_slides(
    slides_dir: str | os.PathLike[str], annotations: str | os.PathLike[str] | None = None
) -> SlidePairs:
    """Pair every slide of ``slides_dir`` with its annotation file (see the module docstring)."""
    folder = Path(slides_dir)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of slides: check the path")
    if annotations is not None:
        text = os.fspath(annotations)
        if "{stem}" not in text and "{name}" not in text and not Path(text).is_dir():
            raise InputError(
                f"--annotations {text}: give a folder of annotation files or a pattern with {{stem}}, "
                "e.g. --annotations '{stem}.xml'"
            )
    result = SlidePairs([])
    for slide in _slides_in(folder):
        path, others = annotation_for_slide(slide, annotations)
        if path is None:
            result.missing.append(slide)
            continue
        if others:
            result.warnings.append(
                f"{slide.name}: {', '.join(p.name for p in [path, *others])} could all be its annotations; using "
                f"{path.name} (give --annotations to choose)"
            )
        result.pairs.append((slide, path))
    used = {a.resolve() for _, a in result.pairs}
    result.missing = [s for s in result.missing if s.resolve() not in used]  # a label image of another slide
    if not result.pairs:
        where = "beside them" if annotations is None else f"at {os.fspath(annotations)}"
        raise InputError(
            f"none of the {len(result.missing)} slide(s) in {folder} has an annotation file {where} (looked for "
            f"<slide>{', <slide>'.join(ANNOTATION_LOOKUP_SUFFIXES)}): give --annotations, e.g. '{{stem}}.xml'"
        )
    return result
