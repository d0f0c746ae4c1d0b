"""``qpbridge diff`` on files and folders: the pixel and image sizes found beside the files, slides paired by name.

:func:`diff_files` finds the pixel size (``--mpp``, the slide, the corrections sidecar that
``export_corrections.groovy`` writes, the prediction's ``.meta.json``) and the image size on its own;
:func:`match_pairs` pairs a predictions folder with a corrections folder by slide name; :func:`diff_pairs`
diffs several slides and ranks them by how much was corrected (:class:`~qpbridge.diff.result.BatchResult`).

Examples
--------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for p in ("pred/s1.geojson", "corr/s1.geojson", "corr/s2.xml"):
...     (root / p).parent.mkdir(exist_ok=True); _ = (root / p).write_text("{}")
>>> m = match_pairs(root / "pred", root / "corr")
>>> [(n, a.name, b.name) for n, a, b in m.pairs], m.corrected_only
([('s1', 's1.geojson', 's1.geojson')], ['s2'])
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpbridge.diff.compare import diff_geojson
from qpbridge.diff.result import BatchResult, DiffResult
from qpbridge.errors import FormatError, InputError
from qpbridge.formats import detect_format
from qpbridge.qupath import (
    CorrectionsSidecar,
    corrections_sidecar_path,
    geojson_file_base,
    image_basename,
    load_corrections_sidecar,
    meta_path,
)
from qpbridge.qupath.project import annotation_file_base

__all__ = [
    "PairMatch",
    "diff_files",
    "diff_pairs",
    "match_pairs",
]


def _sidecar_info(corrected: Path) -> tuple[CorrectionsSidecar | None, tuple[int, int] | None, str | None]:
    """``export_corrections.groovy``'s sidecar beside ``corrected`` and the image size it records, if any."""
    sidecar = corrections_sidecar_path(corrected)
    if sidecar is None or not sidecar.is_file():
        return None, None, None
    try:
        info = load_corrections_sidecar(sidecar)
    except InputError as exc:
        return None, None, f"ignored {sidecar}: {exc}"
    size = (info.width_px, info.height_px) if info.width_px and info.height_px else None
    return info, size, None


def _prediction_meta_mpp(predicted: Path) -> float | None:
    meta = meta_path(predicted)
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    summary = data.get("summary") if isinstance(data, dict) else None
    value = summary.get("slide_mpp") if isinstance(summary, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def diff_files(
    predicted: str | os.PathLike[str],
    corrected: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    slide: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **kw: Any,
) -> DiffResult:
    """:func:`diff_geojson` on two files, finding the pixel size and the slide size on its own.

    The pixel size comes from, in order: ``mpp``; the slide (``slide``, its metadata); the corrections
    sidecar ``<base>.json`` that ``export_corrections.groovy`` writes beside ``<base>.geojson``; the
    prediction's ``<file>.meta.json``; else areas are in px^2. The image size (for the "another slide"
    check) comes from the slide, else from the corrections sidecar.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> from qpbridge.qupath import Feature, write_geojson
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> square = Feature(box(0, 0, 100, 100), "Benign")
    >>> _ = write_geojson(folder / "p.geojson", [square])
    >>> _ = write_geojson(folder / "c.geojson", [Feature(box(0, 0, 100, 50), "Benign")])
    >>> d = diff_files(folder / "p.geojson", folder / "c.geojson", mpp=0.5)
    >>> d.to_dict()["totals"]["removed_um2"]
    1250.0
    """
    predicted, corrected = Path(predicted), Path(corrected)
    for path, what in ((predicted, "predicted"), (corrected, "corrected")):
        if not path.is_file():
            raise InputError(f"{what} file {path} not found: check the path")
    warnings: list[str] = []
    size: tuple[int, int] | None = None
    source = "none"
    export, side_size, side_warning = _sidecar_info(corrected)
    side_mpp = export.pixel_size_um if export is not None else None
    if side_warning:
        warnings.append(side_warning)
    if slide is not None:
        from qpbridge.slide import open_slide

        with open_slide(Path(slide), mpp=mpp) as opened:
            size = opened.qupath_size_px
            if mpp is None and opened.has_mpp:
                mpp, source = opened.mpp, f"slide {Path(slide).name}"
        if name is None:
            name = image_basename(slide)
    else:
        size = side_size
    if mpp is not None and source == "none":
        source = "--mpp"
    if mpp is None and side_mpp is not None:
        mpp, source = side_mpp, "corrections sidecar"
    if mpp is None:
        meta_mpp = _prediction_meta_mpp(predicted)
        if meta_mpp is not None:
            mpp, source = meta_mpp, "prediction meta"
    if name is None:
        name = image_basename(annotation_file_base(corrected) or corrected.name)
    result = diff_geojson(
        predicted, corrected, mpp=mpp, slide_size_px=size, mpp_source=source, name=name, export=export, **kw
    )
    result.warnings[:0] = warnings
    if mpp is None:
        result.warnings.append(
            "no pixel size (give --mpp or --slide): areas are in px^2 of the slide's full resolution"
        )
    return result


@dataclass
class PairMatch:
    """Files of a predictions folder and a corrections folder paired by slide name."""

    pairs: list[tuple[str, Path, Path]]
    predicted_only: list[str]
    corrected_only: list[str]
    warnings: list[str] = field(default_factory=list)


def _folder_file_base(path: Path) -> str | None:
    """The slide base name of an annotation file in a folder: ``<base>.geojson[.gz]``, ``<base>.xml[.gz]``, or a
    ``<base>.json[.gz]`` that holds DSA annotations (other ``.json`` files are sidecars)."""
    base = annotation_file_base(path)
    if base is not None:
        return base
    lower = path.name.lower()
    for suffix in (".json.gz", ".json"):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            try:
                return path.name[: -len(suffix)] if detect_format(path) == "dsa" else None
            except FormatError:
                return None
    return None


def _index_folder(folder: Path, what: str, warnings: list[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} not found: give a folder of .geojson files")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        base = _folder_file_base(path) if path.is_file() else None
        if base is None:
            continue
        found.setdefault(image_basename(base), []).append(path)
    out: dict[str, Path] = {}
    for key, paths in found.items():
        # .geojson before .geojson.gz (the import script's order) before other formats, an exact base before a
        # normalised one
        paths.sort(key=lambda p: (
            _folder_file_base(p) != key, geojson_file_base(p) is None, p.name.lower().endswith(".gz"), p.name
        ))
        out[key] = paths[0]
        if len(paths) > 1:
            warnings.append(
                f"{what} folder {folder}: {', '.join(p.name for p in paths)} are all for {key!r}; "
                f"using {paths[0].name}"
            )
    return out


def match_pairs(predicted_dir: str | os.PathLike[str], corrected_dir: str | os.PathLike[str]) -> PairMatch:
    """Pair the ``<base>.geojson[.gz]`` files of two folders by slide name (:func:`qpbridge.qupath.image_basename`).

    A prediction ``slide1.geojson`` (``qpbridge.qupath.prediction_filename("slide1.svs")``) pairs with the
    corrections ``slide1.geojson`` that ``export_corrections.groovy`` wrote; ``slide1.svs.geojson`` pairs too.
    Corrections in the field's other formats pair the same way: ``slide1.xml`` (ASAP or ImageScope XML, plain
    or ``.gz``) and ``slide1.json`` holding DSA annotations (a ``.json`` of anything else is a sidecar). Where
    a folder holds several files for one slide, GeoJSON comes first (with a warning).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for p in ("pred/a.geojson", "pred/b.geojson.gz", "corr/a.geojson", "corr/a.json", "corr/c.geojson"):
    ...     (root / p).parent.mkdir(exist_ok=True); _ = (root / p).write_text("{}")
    >>> m = match_pairs(root / "pred", root / "corr")
    >>> [n for n, _, _ in m.pairs], m.predicted_only, m.corrected_only
    (['a'], ['b'], ['c'])
    """
    warnings: list[str] = []
    pred = _index_folder(Path(predicted_dir), "predictions", warnings)
    corr = _index_folder(Path(corrected_dir), "corrections", warnings)
    pairs = [(key, pred[key], corr[key]) for key in sorted(set(pred) & set(corr))]
    return PairMatch(
        pairs=pairs,
        predicted_only=sorted(set(pred) - set(corr)),
        corrected_only=sorted(set(corr) - set(pred)),
        warnings=warnings,
    )


def _rank_key(result: DiffResult) -> tuple[float, float, str]:
    share = result.changed_share
    if share is None:
        share = math.inf if result.changed_px2 > 0 else 0.0
    return (-share, -result.area(result.changed_px2), result.name or "")


def diff_pairs(
    pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    *,
    mpp: float | None = None,
    **kw: Any,
) -> BatchResult:
    """Diff several slides; each pair is (predicted, corrected) files or (predictions, corrections) folders.

    Folders are paired by slide name (:func:`match_pairs`). A pair that fails (empty corrections, another
    slide's file...) is listed in ``failures`` and the others go on. Results are ranked by
    :attr:`DiffResult.changed_share`, most corrected first (a slide with changes but no prediction first of
    all), then by changed area.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from shapely import box
    >>> from qpbridge.qupath import Feature, write_geojson
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for sub in ("pred", "corr"):
    ...     (root / sub).mkdir()
    >>> for name, width in (("a", 100), ("b", 50)):
    ...     _ = write_geojson(root / "pred" / f"{name}.geojson", [Feature(box(0, 0, 100, 100), "Benign")])
    ...     _ = write_geojson(root / "corr" / f"{name}.geojson", [Feature(box(0, 0, width, 100), "Benign")])
    >>> [r.name for r in diff_pairs([(root / "pred", root / "corr")]).results]
    ['b', 'a']
    """
    from qpbridge.errors import QpbridgeError

    jobs: list[tuple[str, Path, Path]] = []
    batch = BatchResult([], [])
    for first, second in pairs:
        a, b = Path(first), Path(second)
        if a.is_dir() or b.is_dir():
            if not (a.is_dir() and b.is_dir()):
                raise InputError(
                    f"pair {a} {b}: give two folders (predictions, corrections) or two files, not one of each"
                )
            match = match_pairs(a, b)
            jobs.extend(match.pairs)
            batch.predicted_only.extend(match.predicted_only)
            batch.corrected_only.extend(match.corrected_only)
            batch.warnings.extend(match.warnings)
        else:
            jobs.append((image_basename(annotation_file_base(b) or b.name), a, b))
    if not jobs:
        raise InputError(
            "no prediction and corrections share a slide name: the folders must hold <slide>.geojson files "
            "with the same <slide> (as qpbridge predict and groovy/export_corrections.groovy name them)"
        )
    for name, pred, corr in jobs:
        try:
            batch.results.append(diff_files(pred, corr, mpp=mpp, name=name, **kw))
        except QpbridgeError as exc:
            batch.failures.append((name, str(exc), exc.exit_code))
    batch.results.sort(key=_rank_key)
    return batch

