"""QuPath project layout and file names: what qpbridge and its QuPath scripts (``groovy/*.groovy``) share.

This module is the single Python owner of every rule that the Groovy scripts must follow too;
``tests/test_groovy.py`` checks that the scripts use the same literals and that the Groovy copy of
:func:`image_basename` gives the same answer as this one on a table of names. It also owns the file name
endings of QuPath's GeoJSON (see ``docs/qupath-geojson.md``):

* :data:`GEOJSON_SUFFIXES` (``.geojson``, ``.json``, and both gzipped): GeoJSON text, what qpbridge writes
  and what ``qpbridge evaluate`` takes for GeoJSON (:func:`is_geojson_path`);
* :data:`QUPATH_IMPORT_SUFFIXES`: those and ``.zip``, ``.qpdata``, every name QuPath's *Import objects*
  reads (any letter case; from any other file it imports 0 objects, without an error);
* :data:`PREDICTION_SUFFIXES` (``.geojson``, ``.geojson.gz``): the prediction and corrections files of a
  project, which :func:`geojson_file_base` turns back into the image's base name;
* :data:`ANNOTATION_SUFFIXES` (those of GeoJSON and ``.xml``, ``.xml.gz``): the annotation files of every
  vector format qpbridge reads (QuPath GeoJSON, ASAP and ImageScope XML, DSA JSON; :func:`is_annotation_path`),
  and :data:`ANNOTATION_BASE_SUFFIXES`, the endings :func:`annotation_file_base` strips from a file named
  for its slide (``slide1.geojson``, ``slide1.xml``).

**File names.** A prediction for an image lives in ``<project>/qpbridge/<base>.geojson`` (or
``.geojson.gz``), a pathologist's corrections in ``<project>/qpbridge/corrections/<base>.geojson`` with a
sidecar ``<base>.json``. ``<base>`` comes from QuPath's image name (usually the slide's file name, e.g.
``slide1.svs``) or from the slide path given to ``qpbridge predict``, by :func:`image_basename`:

1. keep the part after the last ``/`` or ``\\``;
2. remove **one** known slide extension (:data:`SLIDE_EXTENSIONS`, any letter case) if the name is
   longer than it (``slide1.svs`` -> ``slide1``, ``a.ome.tiff`` -> ``a``, ``x.czi - Scene #1`` is kept
   whole: QuPath's names for one series of a multi-image file end in `` - <series>``);
3. replace each character that a file name cannot hold on Windows, macOS or Linux
   (``\\ / : * ? " < > |`` and control characters) with ``_``.

**How a prediction is recognised in QuPath.** Every object that qpbridge writes carries the measurement
:data:`PREDICTION_MEASUREMENT` (``"qpbridge prediction"``, written as ``1``; see
:func:`prediction_properties`). QuPath 0.4 keeps GeoJSON ``measurements`` on annotations *and*
detections, whereas it drops ``properties.metadata`` on both (0.4 restores metadata only for TMA cores;
per-object metadata arrived in 0.5), so the measurement is what the scripts go by:

* ``import_predictions.groovy`` replaces the value by a fingerprint in [1, 2) of the object's class,
  area and centroid. On the next import, a marked object whose fingerprint no longer matches was
  reclassified, reshaped or moved by the pathologist: it loses the marker and is kept as a correction;
  the objects still marked are earlier predictions and are removed. Objects the pathologist drew never
  carry the marker.
* ``export_corrections.groovy`` does the same release before writing, so in an exported corrections file
  a feature that still has the marker (:func:`is_prediction_feature`) is a prediction nobody changed.

The writer also puts :data:`PREDICTION_METADATA_KEY` / :data:`PREDICTION_RUN_METADATA_KEY` into
``metadata`` for provenance (kept by QuPath 0.5+); nothing relies on it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpbridge.errors import InputError
from qpbridge.qupath.objects import PREDICTION_MEASUREMENT as _PREDICTION_MEASUREMENT
from qpbridge.slide import SLIDE_SUFFIXES

__all__ = [
    "ANNOTATION_BASE_SUFFIXES",
    "ANNOTATION_SUFFIXES",
    "CORRECTIONS_DIRNAME",
    "CORRECTIONS_SUFFIX",
    "FORBIDDEN_FILENAME_CHARS",
    "GEOJSON_SUFFIXES",
    "PREDICTIONS_DIRNAME",
    "PREDICTION_MEASUREMENT",
    "META_SUFFIX",
    "PREDICTION_MEASUREMENT_VALUE",
    "PREDICTION_RELEASED_VALUE",
    "PREDICTION_METADATA_KEY",
    "PREDICTION_RUN_METADATA_KEY",
    "PREDICTION_SUFFIXES",
    "QUPATH_IMPORT_SUFFIXES",
    "QUPATH_ONLY_EXTENSIONS",
    "SIDECAR_FORMAT",
    "SIDECAR_FORMAT_KEY",
    "SIDECAR_DETECTIONS_KEY",
    "SIDECAR_EXPORTED_KEY",
    "SIDECAR_EXPORTED_PREDICTIONS_KEY",
    "SIDECAR_GEOJSON_KEY",
    "SIDECAR_HEIGHT_KEY",
    "SIDECAR_IMAGE_NAME_KEY",
    "SIDECAR_IMAGE_PATHS_KEY",
    "SIDECAR_IMAGE_URIS_KEY",
    "SIDECAR_PIXEL_SIZE_KEY",
    "SIDECAR_SUFFIX",
    "SIDECAR_VERSION_KEY",
    "SIDECAR_WIDTH_KEY",
    "SLIDE_EXTENSIONS",
    "XML_ANNOTATION_SUFFIXES",
    "CorrectionsSidecar",
    "annotation_file_base",
    "corrections_dir",
    "corrections_paths",
    "corrections_sidecar_path",
    "describe_suffixes",
    "geojson_file_base",
    "image_basename",
    "is_annotation_path",
    "is_geojson_path",
    "check_export_holds",
    "is_prediction_feature",
    "prediction_state",
    "load_corrections_sidecar",
    "prediction_filename",
    "prediction_of_corrections",
    "prediction_path",
    "prediction_properties",
    "predictions_dir",
    "project_folder",
    "read_corrections_sidecar",
]

#: Folder, inside the QuPath project folder, that holds qpbridge's predictions.
PREDICTIONS_DIRNAME = "qpbridge"

#: Folder, inside :data:`PREDICTIONS_DIRNAME`, that ``export_corrections.groovy`` writes to.
CORRECTIONS_DIRNAME = "corrections"

#: GeoJSON text files, plain or gzip-compressed (QuPath 0.4+ reads ``.gz``): what qpbridge writes.
GEOJSON_SUFFIXES: tuple[str, ...] = (".geojson", ".json", ".geojson.gz", ".json.gz")

#: Every file name QuPath 0.4-0.7's *Import objects* reads objects from (any letter case).
QUPATH_IMPORT_SUFFIXES: tuple[str, ...] = (*GEOJSON_SUFFIXES, ".zip", ".qpdata")

#: Endings of a prediction file, in the order the import script looks for them.
PREDICTION_SUFFIXES: tuple[str, ...] = (".geojson", ".geojson.gz")

#: ASAP XML and Aperio ImageScope XML annotation files, plain or gzip-compressed.
XML_ANNOTATION_SUFFIXES: tuple[str, ...] = (".xml", ".xml.gz")

#: Vector annotation files qpbridge reads (:func:`qpbridge.formats.read_annotations`): QuPath GeoJSON, DSA JSON
#: (``.json``), ASAP and ImageScope XML. Label images (PNG, TIFF) are masks, not in this list.
ANNOTATION_SUFFIXES: tuple[str, ...] = (*GEOJSON_SUFFIXES, *XML_ANNOTATION_SUFFIXES)

#: Endings of an annotation file named for its slide (``<base>.geojson``, ``<base>.xml``), GeoJSON first;
#: ``.json`` is left out: in a corrections folder it is a sidecar.
ANNOTATION_BASE_SUFFIXES: tuple[str, ...] = (*PREDICTION_SUFFIXES, *XML_ANNOTATION_SUFFIXES)

#: Ending of a corrections GeoJSON file and of its sidecar.
CORRECTIONS_SUFFIX = ".geojson"
SIDECAR_SUFFIX = ".json"

#: Measurement that marks an object as a qpbridge prediction. qpbridge writes
#: :data:`PREDICTION_MEASUREMENT_VALUE`; the import script replaces it by a fingerprint in [1, 2); an object that
#: a pathologist reclassified, reshaped or moved gets :data:`PREDICTION_RELEASED_VALUE` (an edited prediction:
#: a correction, still known as a prediction, so the export includes it whatever its object type).
PREDICTION_MEASUREMENT = _PREDICTION_MEASUREMENT
PREDICTION_MEASUREMENT_VALUE = 1.0
PREDICTION_RELEASED_VALUE = 0.0

#: The provenance sidecar of a prediction: ``<out>.meta.json``; it says whether the run finished.
META_SUFFIX = ".meta.json"

#: ``properties.metadata`` keys written for provenance (the qpbridge version and the run id).
PREDICTION_METADATA_KEY = "qpbridge"
PREDICTION_RUN_METADATA_KEY = "qpbridge_run"

#: Extensions of images that QuPath opens (through Bio-Formats) and qpbridge does not.
QUPATH_ONLY_EXTENSIONS: tuple[str, ...] = (".czi", ".vsi", ".qptiff", ".isyntax")

#: Slide extensions removed from an image name, longest first where one ends another: what qpbridge opens
#: (:data:`qpbridge.slide.SLIDE_SUFFIXES`, the one list of those) and what only QuPath opens.
SLIDE_EXTENSIONS: tuple[str, ...] = (*SLIDE_SUFFIXES, *QUPATH_ONLY_EXTENSIONS)

#: Characters replaced by ``_`` in a base name.
FORBIDDEN_FILENAME_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1F\x7F]')

#: Sidecar written by ``export_corrections.groovy`` next to each corrections GeoJSON.
SIDECAR_FORMAT = "qpbridge-corrections-sidecar"
SIDECAR_FORMAT_KEY = "format"
SIDECAR_VERSION_KEY = "format_version"
SIDECAR_IMAGE_NAME_KEY = "image_name"
SIDECAR_IMAGE_PATHS_KEY = "image_paths"
SIDECAR_IMAGE_URIS_KEY = "image_uris"
SIDECAR_WIDTH_KEY = "width_px"
SIDECAR_HEIGHT_KEY = "height_px"
SIDECAR_PIXEL_SIZE_KEY = "pixel_size_um"
SIDECAR_GEOJSON_KEY = "geojson"
SIDECAR_DETECTIONS_KEY = "detections"
#: format 2: which objects the export holds (``exported.qpbridge_predictions``: every prediction, any type)
SIDECAR_EXPORTED_KEY = "exported"
SIDECAR_EXPORTED_PREDICTIONS_KEY = "qpbridge_predictions"


def image_basename(image_name_or_slide_path: str | os.PathLike[str]) -> str:
    """Return the base name used for an image's prediction and corrections files.

    Parameters
    ----------
    image_name_or_slide_path
        QuPath's image name (``getProjectEntry().getImageName()``, e.g. ``"slide1.svs"``) or the path
        of the slide file.

    Returns
    -------
    str
        The name without folders and without one known slide extension, with characters that are
        not allowed in file names replaced by ``_``. The Groovy scripts apply the same rule.

    Raises
    ------
    InputError
        If nothing is left of the name (``""``, ``"folder/"``).

    Examples
    --------
    >>> image_basename("/data/slides/Case 12.SVS")
    'Case 12'
    >>> image_basename("scan.ome.tiff")
    'scan'
    >>> image_basename("tma.czi - Scene #1")
    'tma.czi - Scene #1'
    >>> image_basename("a:b?.ndpi")
    'a_b_'
    """
    name = os.fspath(image_name_or_slide_path)
    cut = max(name.rfind("/"), name.rfind("\\"))
    if cut >= 0:
        name = name[cut + 1 :]
    for extension in SLIDE_EXTENSIONS:
        if len(name) > len(extension) and name[-len(extension) :].lower() == extension:
            name = name[: -len(extension)]
            break
    name = FORBIDDEN_FILENAME_CHARS.sub("_", name)
    if not name:
        raise InputError(
            f"cannot make a file name from the image name {os.fspath(image_name_or_slide_path)!r}: "
            "give the slide's file path or QuPath's image name"
        )
    return name


def prediction_filename(image_name_or_slide_path: str | os.PathLike[str], *, gzip: bool = False) -> str:
    """Return the file name ``import_predictions.groovy`` looks for, for one image.

    Parameters
    ----------
    image_name_or_slide_path
        QuPath's image name or the slide path (see :func:`image_basename`).
    gzip
        Return the ``.geojson.gz`` name instead of ``.geojson``.

    Examples
    --------
    >>> prediction_filename("slides/slide1.svs")
    'slide1.geojson'
    >>> prediction_filename("slide1.svs", gzip=True)
    'slide1.geojson.gz'
    """
    suffix = PREDICTION_SUFFIXES[1] if gzip else PREDICTION_SUFFIXES[0]
    return image_basename(image_name_or_slide_path) + suffix


def describe_suffixes(suffixes: tuple[str, ...]) -> str:
    """``".geojson, .json or .zip"`` for messages.

    Examples
    --------
    >>> describe_suffixes(GEOJSON_SUFFIXES)
    '.geojson, .json, .geojson.gz or .json.gz'
    """
    return ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else "".join(suffixes)


def is_geojson_path(path: str | os.PathLike[str]) -> bool:
    """True for a GeoJSON text file name (:data:`GEOJSON_SUFFIXES`, any letter case).

    Examples
    --------
    >>> is_geojson_path("cells.GeoJSON.gz"), is_geojson_path("mask.png"), is_geojson_path("objects.zip")
    (True, False, False)
    """
    return Path(path).name.lower().endswith(GEOJSON_SUFFIXES)


def is_annotation_path(path: str | os.PathLike[str]) -> bool:
    """True for a vector annotation file name (:data:`ANNOTATION_SUFFIXES`, any letter case): GeoJSON, DSA JSON,
    ASAP or ImageScope XML; a label image (PNG, TIFF) is a mask, not one of these.

    Examples
    --------
    >>> is_annotation_path("A01.XML"), is_annotation_path("cells.geojson.gz"), is_annotation_path("mask.png")
    (True, True, False)
    """
    return Path(path).name.lower().endswith(ANNOTATION_SUFFIXES)


def annotation_file_base(path: str | os.PathLike[str]) -> str | None:
    """The ``<base>`` of an annotation file named for its slide: :func:`geojson_file_base`, else the name less
    ``.xml`` or ``.xml.gz`` (any letter case); ``None`` for any other name (``.json`` included).

    Examples
    --------
    >>> annotation_file_base("A01.xml"), annotation_file_base("c/slide1.geojson"), annotation_file_base("a.json")
    ('A01', 'slide1', None)
    """
    base = geojson_file_base(path)
    if base is not None:
        return base
    name = Path(path).name
    lower = name.lower()
    for suffix in sorted(XML_ANNOTATION_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return name[: -len(suffix)]
    return None


def geojson_file_base(path: str | os.PathLike[str]) -> str | None:
    """The ``<base>`` of a ``<base>.geojson`` or ``<base>.geojson.gz`` file (any letter case), else ``None``.

    That is how predictions and corrections are named (:data:`PREDICTION_SUFFIXES`); a ``.json`` file in a
    corrections folder is a sidecar, not GeoJSON.

    Examples
    --------
    >>> geojson_file_base("corrections/slide1.GEOJSON"), geojson_file_base("a.geojson.gz"), geojson_file_base("a.json")
    ('slide1', 'a', None)
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in sorted(PREDICTION_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return name[: -len(suffix)]
    return None


def corrections_sidecar_path(geojson_path: str | os.PathLike[str]) -> Path | None:
    """The sidecar ``<base>.json`` that ``export_corrections.groovy`` writes beside ``<base>.geojson``.

    ``None`` when the file is not named ``<base>.geojson`` (or ``.geojson.gz``); the sidecar may not exist.

    Examples
    --------
    >>> corrections_sidecar_path("/p/qpbridge/corrections/slide1.geojson").as_posix()
    '/p/qpbridge/corrections/slide1.json'
    """
    path = Path(geojson_path)
    base = geojson_file_base(path)
    return None if base is None else path.with_name(base + SIDECAR_SUFFIX)


def project_folder(project: str | os.PathLike[str]) -> Path:
    """Return the QuPath project folder for a project folder or a ``project.qpproj`` path.

    Examples
    --------
    >>> project_folder("/data/study/project.qpproj").as_posix()
    '/data/study'
    >>> project_folder("/data/study").as_posix()
    '/data/study'
    """
    path = Path(project)
    return path.parent if path.suffix.lower() == ".qpproj" else path


def predictions_dir(project: str | os.PathLike[str]) -> Path:
    """Return ``<project>/qpbridge``, where predictions for the QuPath scripts go.

    Examples
    --------
    >>> predictions_dir("/data/study/project.qpproj").as_posix()
    '/data/study/qpbridge'
    """
    return project_folder(project) / PREDICTIONS_DIRNAME


def prediction_path(
    project: str | os.PathLike[str], image_name_or_slide_path: str | os.PathLike[str], *, gzip: bool = False
) -> Path:
    """Return where ``qpbridge predict`` should write an image's prediction for ``import_predictions.groovy``.

    Examples
    --------
    >>> prediction_path("/data/study", "/slides/slide1.svs").as_posix()
    '/data/study/qpbridge/slide1.geojson'
    """
    return predictions_dir(project) / prediction_filename(image_name_or_slide_path, gzip=gzip)


def corrections_dir(project: str | os.PathLike[str]) -> Path:
    """Return ``<project>/qpbridge/corrections``, where ``export_corrections.groovy`` writes.

    Examples
    --------
    >>> corrections_dir("/data/study").as_posix()
    '/data/study/qpbridge/corrections'
    """
    return predictions_dir(project) / CORRECTIONS_DIRNAME


def prediction_of_corrections(corrections: str | os.PathLike[str]) -> Path | None:
    """The prediction an export of corrections was made from, where the project layout puts it: for
    ``<project>/qpbridge/corrections/<base>.geojson``, ``<project>/qpbridge/<base>.geojson`` (or ``.geojson.gz``)
    when it exists; else None.

    >>> prediction_of_corrections("/nowhere/qpbridge/corrections/slide1.geojson") is None
    True
    """
    corrections = Path(corrections)
    base = geojson_file_base(corrections)
    if base is None or corrections.parent.name != CORRECTIONS_DIRNAME:
        return None
    for suffix in PREDICTION_SUFFIXES:
        candidate = corrections.parent.parent / (base + suffix)
        if candidate.is_file():
            return candidate
    return None


def corrections_paths(
    project: str | os.PathLike[str], image_name_or_slide_path: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Return ``(geojson_path, sidecar_path)`` of an image's exported corrections.

    Parameters
    ----------
    project
        The QuPath project folder or its ``project.qpproj`` file.
    image_name_or_slide_path
        QuPath's image name or the slide path (see :func:`image_basename`).

    Examples
    --------
    >>> geojson, sidecar = corrections_paths("/data/study/project.qpproj", "slide1.svs")
    >>> geojson.as_posix(), sidecar.name
    ('/data/study/qpbridge/corrections/slide1.geojson', 'slide1.json')
    """
    folder = corrections_dir(project)
    base = image_basename(image_name_or_slide_path)
    return folder / (base + CORRECTIONS_SUFFIX), folder / (base + SIDECAR_SUFFIX)


def prediction_properties(run_id: str, version: str | None = None) -> dict[str, dict[str, Any]]:
    """Return the ``measurements`` and ``metadata`` entries that mark a feature as a qpbridge prediction.

    Merge them into each feature's ``properties`` (measurements of your own may sit beside the marker).

    Parameters
    ----------
    run_id
        Identifier of the prediction run (kept in ``metadata`` for provenance).
    version
        qpbridge version; defaults to the installed one.

    Examples
    --------
    >>> props = prediction_properties("run-1", version="0.1.0")
    >>> props["measurements"]
    {'qpbridge prediction': 1.0}
    >>> props["metadata"]
    {'qpbridge': '0.1.0', 'qpbridge_run': 'run-1'}
    """
    if version is None:
        from qpbridge import __version__

        version = __version__
    return {
        "measurements": {PREDICTION_MEASUREMENT: PREDICTION_MEASUREMENT_VALUE},
        "metadata": {PREDICTION_METADATA_KEY: str(version), PREDICTION_RUN_METADATA_KEY: str(run_id)},
    }


def prediction_state(measurements: Mapping[str, Any] | Sequence[Any] | None) -> str | None:
    """What qpbridge's marker says of an object, from its measurements (an object, or QuPath 0.3's
    ``[{"name", "value"}]`` list): ``"untouched"`` (a prediction nobody changed: 1, or the import's
    fingerprint in [1, 2)), ``"edited"`` (a prediction a pathologist reclassified, reshaped or moved:
    :data:`PREDICTION_RELEASED_VALUE`), or None (not a prediction: drawn by hand, or from another tool).

    >>> prediction_state({"qpbridge prediction": 1.42}), prediction_state({"qpbridge prediction": 0})
    ('untouched', 'edited')
    >>> prediction_state([{"name": "Area", "value": 3.0}]) is None
    True
    """
    value: Any = None
    if isinstance(measurements, Mapping):
        if PREDICTION_MEASUREMENT not in measurements:
            return None
        value = measurements[PREDICTION_MEASUREMENT]
    elif isinstance(measurements, Sequence) and not isinstance(measurements, str):
        found = [m for m in measurements if isinstance(m, Mapping) and m.get("name") == PREDICTION_MEASUREMENT]
        if not found:
            return None
        value = found[0].get("value")
    else:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "untouched"  # a marker qpbridge did not write: read as the plain marker it stands for
    return "edited" if number < PREDICTION_MEASUREMENT_VALUE else "untouched"


def is_prediction_feature(feature: Mapping[str, Any]) -> bool:
    """Tell whether a GeoJSON feature is an untouched qpbridge prediction (:func:`prediction_state`).

    In a file written by ``export_corrections.groovy``, such a feature is a prediction that nobody
    reclassified, reshaped or moved; an object a pathologist drew has no marker, one they changed is
    ``"edited"``.

    Examples
    --------
    >>> is_prediction_feature({"properties": {"measurements": {"qpbridge prediction": 1}}})
    True
    >>> is_prediction_feature({"properties": {"measurements": {"qpbridge prediction": 0}}})
    False
    >>> is_prediction_feature({"properties": {"measurements": [{"name": "Area", "value": 3.0}]}})
    False
    """
    properties = feature.get("properties")
    if not isinstance(properties, Mapping):
        return False
    return prediction_state(properties.get("measurements")) == "untouched"


@dataclass(frozen=True)
class CorrectionsSidecar:
    """What ``export_corrections.groovy`` records about an image next to its corrections."""

    image_name: str
    image_paths: tuple[str, ...]
    image_uris: tuple[str, ...]
    width_px: int | None
    height_px: int | None
    pixel_size_um: float | None
    format_version: int | None = None
    #: what the export holds (format 2+): {"annotations": bool, "qpbridge_predictions": bool,
    #: "other_detections": bool}; None for an older script, which exported detections only on request
    exported: Mapping[str, bool] | None = None
    #: detections in the export (format 1: all of them; None when not recorded)
    detections: int | None = None

    @property
    def holds_every_prediction(self) -> bool:
        """Whether the export holds every qpbridge prediction whatever its object type (format 2+)."""
        return bool(self.exported and self.exported.get(SIDECAR_EXPORTED_PREDICTIONS_KEY))


def check_export_holds(
    predicted: Iterable[tuple[str, str | None]], corrected: Iterable[tuple[str, str | None, str | None]],
    sidecar: CorrectionsSidecar | None, corrected_path: str | os.PathLike[str], *,
    compared: Iterable[str] = ("detection", "cell"),
) -> None:
    """Refuse to read "not exported" as "deleted".

    ``predicted`` holds ``(object type, class)`` of the predicted objects compared, ``corrected`` ``(object type,
    class, prediction state)`` of the corrected ones (:func:`prediction_state`). When the predictions hold
    objects of a ``compared`` type (detections, cells) and the corrections hold none of that type and no
    prediction of those classes in another type (converted to annotations), the export left them out: an older
    ``export_corrections.groovy``, whose ``INCLUDE_DETECTIONS`` was false by default, or a hand-made export.
    Comparing would report every one of them deleted, so that is an :class:`InputError` naming the setting,
    unless the sidecar says the export holds every qpbridge prediction (``export_corrections.groovy`` 2+).

    >>> check_export_holds([("detection", "Benign")], [("annotation", "ROI", "untouched")], None, "c.geojson")
    Traceback (most recent call last):
    ...
    qpbridge.errors.InputError: c.geojson holds no detections, but the predictions hold 1: the export left them \
out, which is not deleting them. Export the corrections again with this qpbridge's \
groovy/export_corrections.groovy (it exports every qpbridge prediction, whatever its object type), or set \
INCLUDE_DETECTIONS = true in an older copy of the script
    """
    if sidecar is not None and sidecar.holds_every_prediction:
        return
    wanted = tuple(compared)
    counts: dict[str, int] = {}
    classes: dict[str, set[str | None]] = {}
    for otype, class_name in predicted:
        if otype in wanted:
            counts[otype] = counts.get(otype, 0) + 1
            classes.setdefault(otype, set()).add(class_name)
    if not counts:
        return
    present: set[str] = set()
    marked_classes: set[str | None] = set()
    for otype, class_name, state in corrected:
        present.add(otype)
        if state is not None:
            marked_classes.add(class_name)
    for otype, n in counts.items():
        if otype not in present and not classes[otype] & marked_classes:
            raise InputError(
                f"{os.fspath(corrected_path)} holds no {otype}s, but the predictions hold {n}: the export left "
                "them out, which is not deleting them. Export the corrections again with this qpbridge's "
                "groovy/export_corrections.groovy (it exports every qpbridge prediction, whatever its object type), "
                "or set INCLUDE_DETECTIONS = true in an older copy of the script"
            )


def load_corrections_sidecar(path: str | os.PathLike[str]) -> CorrectionsSidecar:
    """Read a corrections sidecar (``<project>/qpbridge/corrections/<base>.json``).

    Raises
    ------
    InputError
        If the file is missing, is not JSON, or lacks the image name or the path list.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "s.json").write_text(json.dumps({"image_name": "s.svs", "image_paths": ["/x/s.svs"]}))
    >>> load_corrections_sidecar(folder / "s.json").image_paths
    ('/x/s.svs',)
    """
    sidecar = Path(path)
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"corrections sidecar {sidecar} not found: run groovy/export_corrections.groovy in QuPath "
            "for this image, or give the slide path with --slide"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read corrections sidecar {sidecar}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"corrections sidecar {sidecar} is not valid JSON ({exc}): export it again from QuPath"
        ) from exc
    if not isinstance(data, dict):
        raise InputError(f"corrections sidecar {sidecar} must hold a JSON object, got {type(data).__name__}")
    image_name = data.get(SIDECAR_IMAGE_NAME_KEY)
    paths = data.get(SIDECAR_IMAGE_PATHS_KEY)
    if not isinstance(image_name, str):
        raise InputError(f"corrections sidecar {sidecar} has no {SIDECAR_IMAGE_NAME_KEY!r} string")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise InputError(f"corrections sidecar {sidecar} has no {SIDECAR_IMAGE_PATHS_KEY!r} list of strings")
    uris = data.get(SIDECAR_IMAGE_URIS_KEY, [])
    if not isinstance(uris, list):
        uris = []
    return CorrectionsSidecar(
        image_name=image_name,
        image_paths=tuple(paths),
        image_uris=tuple(str(u) for u in uris),
        width_px=_optional_int(data.get(SIDECAR_WIDTH_KEY)),
        height_px=_optional_int(data.get(SIDECAR_HEIGHT_KEY)),
        pixel_size_um=_optional_float(data.get(SIDECAR_PIXEL_SIZE_KEY)),
        format_version=_optional_int(data.get(SIDECAR_VERSION_KEY)),
        exported=({str(k): bool(v) for k, v in data[SIDECAR_EXPORTED_KEY].items()}
                  if isinstance(data.get(SIDECAR_EXPORTED_KEY), dict) else None),
        detections=_optional_int(data.get(SIDECAR_DETECTIONS_KEY)),
    )


def read_corrections_sidecar(path: str | os.PathLike[str], *, must_exist: bool = True) -> Path:
    """Return the slide file recorded in a corrections sidecar.

    Parameters
    ----------
    path
        The sidecar, ``<project>/qpbridge/corrections/<base>.json``.
    must_exist
        Return the first recorded path that exists on this machine, and fail if none does (the
        project may come from another computer). With ``False``, return the first recorded path.

    Raises
    ------
    InputError
        If the sidecar cannot be read (see :func:`load_corrections_sidecar`), records no local file
        (e.g. an image served over the network), or none of its files exists here.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> slide = folder / "s.svs"
    >>> _ = slide.write_bytes(b"")
    >>> _ = (folder / "s.json").write_text(json.dumps({"image_name": "s.svs", "image_paths": [str(slide)]}))
    >>> read_corrections_sidecar(folder / "s.json") == slide
    True
    """
    info = load_corrections_sidecar(path)
    if not info.image_paths:
        uris = ", ".join(info.image_uris) or "none"
        raise InputError(
            f"corrections sidecar {path} records no local file for image {info.image_name!r} "
            f"(image URIs: {uris}): give the slide path with --slide"
        )
    if not must_exist:
        return Path(info.image_paths[0])
    for candidate in info.image_paths:
        if Path(candidate).is_file():
            return Path(candidate)
    listed = ", ".join(info.image_paths)
    raise InputError(
        f"slide of image {info.image_name!r} not found: the corrections sidecar {path} lists {listed}, "
        "none of which exists on this machine; give the slide path with --slide"
    )


def _optional_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _optional_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if number == number and number > 0 else None
