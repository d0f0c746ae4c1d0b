"""QuPath's object types: what QuPath writes in ``properties.objectType``, and what its reader makes of a value.

The one table of them is :data:`QUPATH_OBJECT_TYPE_VALUES`, taken from QuPath's own reader
(``QuPathTypeAdapters.PathObjectTypeAdapter``, 0.4-0.7): it compares the value **case-sensitively**, and
anything it does not know becomes an annotation (with a warning in QuPath's log). The object type is looked
up in ``properties.objectType``, then ``properties.object_type`` (old, QuPath warns), then
``properties.type``; QuPath 0.2 stored it in the feature's ``id`` (``"PathDetectionObject"``). An
``objectType`` outside ``properties`` is ignored by QuPath (see ``docs/qupath-geojson.md``).

Three functions answer the three questions asked of that table:

* :func:`qupath_object_type`: what QuPath 0.4-0.7 creates (``validate`` reports this);
* :func:`normalize_object_type`: what the value means, whatever its letter case or spelling (the tolerant
  reader and ``validate --fix`` keep this, so ``"Detection"`` is repaired instead of becoming an annotation);
* :func:`legacy_type`: the type a QuPath 0.2 ``"id"`` stands for.

Examples
--------
>>> qupath_object_type("tma_core"), qupath_object_type("Detection"), normalize_object_type("Detection")
('tmaCore', None, 'detection')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "DRAWN_NUCLEUS_MAX_UM2",
    "LEGACY_TYPE_IDS",
    "NUCLEUS_MEASUREMENT_PREFIX",
    "PREDICTION_MEASUREMENT",
    "OBJECT_ROLES",
    "OBJECT_TYPES",
    "REGION_OBJECT_TYPES",
    "QUPATH_OBJECT_TYPE_VALUES",
    "legacy_type",
    "is_drawn_nucleus",
    "is_nucleus",
    "normalize_object_type",
    "object_role",
    "qupath_object_type",
]

#: Object types QuPath 0.4-0.7 writes in ``properties.objectType`` (and the ones qpbridge writes).
OBJECT_TYPES: tuple[str, ...] = ("annotation", "detection", "cell", "tile", "tmaCore")

#: Object types that can be class regions (see :func:`object_role`, the one rule).
REGION_OBJECT_TYPES: tuple[str, ...] = ("annotation", "detection")

#: The measurement prefix of a nucleus (QuPath's cell detection, StarDist and ``predict``'s nuclei stage all name
#: their nucleus measurements ``Nucleus: ...``).
NUCLEUS_MEASUREMENT_PREFIX = "Nucleus: "

#: What an object is to qpbridge (:func:`object_role`).
OBJECT_ROLES: tuple[str, ...] = ("region", "nucleus", "tile", "other")


def object_role(object_type: str, measurements: Mapping[str, Any] | None = None) -> str:
    """The one rule of what an object is in qpbridge, from its type and measurements:

    - ``"tile"``: a tile (``predict --heatmap``: class probabilities as measurements), never a label;
    - ``"nucleus"``: a cell (its nucleus and cell outline), or a detection with ``Nucleus: ...`` measurements
      (QuPath's cell detection, StarDist, ``predict``'s nuclei): an instance, never a class region;
    - ``"region"``: any other annotation or detection: the class regions ``masks`` paints, ``evaluate`` scores and
      ``diff`` compares (its class then says tissue class, ROI, reviewed ``Region*`` area or ignored:
      :mod:`qpbridge.qupath.classes`);
    - ``"other"``: TMA cores and the like.

    >>> object_role("detection"), object_role("detection", {"Nucleus: Area": 20.0}), object_role("tile")
    ('region', 'nucleus', 'tile')
    """
    if object_type == "tile":
        return "tile"
    if object_type == "cell":
        return "nucleus"
    if object_type in REGION_OBJECT_TYPES:
        if object_type == "detection" and measurements and any(
                str(name).startswith(NUCLEUS_MEASUREMENT_PREFIX) for name in measurements):
            return "nucleus"
        return "region"
    return "other"

#: A drawn (or foreign) object of region role up to this area is a nucleus where nuclei are compared or trained
#: (:func:`is_drawn_nucleus`).
DRAWN_NUCLEUS_MAX_UM2 = 400.0

#: The measurement that marks a qpbridge prediction (its values: :mod:`qpbridge.qupath.project`).
PREDICTION_MEASUREMENT = "qpbridge prediction"


def is_drawn_nucleus(object_type: str, measurements: Mapping[str, Any] | None, area_um2: float | None) -> bool:
    """Whether an object of region role is a nucleus after all, where nuclei are compared or trained.

    In QuPath a missing nucleus is drawn with the brush or the wand: an annotation (classified by the region it
    lies in, or not at all) with no ``Nucleus: ...`` measurements, so :func:`object_role` calls it a region; so
    are the detections of an instance label image or of a tool that writes no measurements. Where the files hold
    nuclei (``diff`` of a nuclei prediction, ``masks --role nuclei``), such an object counts as a nucleus when
    its area is at most :data:`DRAWN_NUCLEUS_MAX_UM2` (a large tumour nucleus is ~150 um^2) and it is not one of
    qpbridge's predicted class regions (those carry the ``qpbridge prediction`` measurement). ``area_um2``
    ``None`` (no pixel size known): never.

    >>> is_drawn_nucleus("annotation", None, 55.0), is_drawn_nucleus("annotation", None, 5000.0)
    (True, False)
    >>> is_drawn_nucleus("detection", {"qpbridge prediction": 1.2}, 55.0), is_drawn_nucleus("annotation", None, None)
    (False, False)
    """
    if area_um2 is None or not 0 < area_um2 <= DRAWN_NUCLEUS_MAX_UM2:
        return False
    if measurements and PREDICTION_MEASUREMENT in measurements:
        return False
    return object_role(object_type, measurements) == "region"


def is_nucleus(object_type: str, measurements: Mapping[str, Any] | None, area_um2: float | None) -> bool:
    """The one rule of which objects are nuclei where nuclei are compared or trained: nucleus-role objects
    (:func:`object_role`) and drawn ones (:func:`is_drawn_nucleus`).

    >>> is_nucleus("cell", None, None), is_nucleus("annotation", None, 40.0), is_nucleus("annotation", None, 900.0)
    (True, True, False)
    """
    return object_role(object_type, measurements) == "nucleus" or is_drawn_nucleus(object_type, measurements, area_um2)


#: QuPath 0.2 stored the object type in ``id``; QuPath 0.4-0.7 still read these (exact spelling).
LEGACY_TYPE_IDS: dict[str, str] = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
    "PathRootObject": "annotation",  # QuPath makes a root object; qpbridge reads it as an annotation
}

#: Every ``objectType`` value QuPath 0.4-0.7 recognises (case-sensitive) -> the object type created.
QUPATH_OBJECT_TYPE_VALUES: dict[str, str] = {
    "annotation": "annotation",
    "unknown": "annotation",
    "detection": "detection",
    "cell": "cell",
    "tile": "tile",
    "tmaCore": "tmaCore",
    "tma_core": "tmaCore",
    "root": "annotation",
    **LEGACY_TYPE_IDS,
}

#: The same table without letter case, for the tolerant reader.
_FOLDED_VALUES: dict[str, str] = {key.lower(): value for key, value in QUPATH_OBJECT_TYPE_VALUES.items()}


def qupath_object_type(value: Any) -> str | None:
    """The object type QuPath 0.4-0.7 creates for an ``objectType`` value, ``None`` for one it does not know.

    QuPath makes an annotation of an unknown value (and logs a warning): the caller decides whether that
    deserves a note.

    Examples
    --------
    >>> qupath_object_type("PathCellObject"), qupath_object_type("unknown"), qupath_object_type("cells")
    ('cell', 'annotation', None)
    """
    return QUPATH_OBJECT_TYPE_VALUES.get(value) if isinstance(value, str) else None


def normalize_object_type(value: Any) -> str | None:
    """The object type an ``objectType`` value means in any letter case (``"PathDetectionObject"`` -> ``"detection"``).

    Returns ``None`` for a value that is no object type at all (QuPath then creates an annotation).

    Examples
    --------
    >>> normalize_object_type("PathCellObject"), normalize_object_type(" TMA_core "), normalize_object_type("x")
    ('cell', 'tmaCore', None)
    """
    if not isinstance(value, str):
        return None
    return _FOLDED_VALUES.get(value.strip().lower())


def legacy_type(value: Any) -> str | None:
    """The object type a QuPath 0.2 ``"id": "PathDetectionObject"`` stands for, else ``None``.

    Examples
    --------
    >>> legacy_type("PathDetectionObject"), legacy_type("6f1c7a52-0a4e-4c39-a1f0-3b0d4a5e8c11")
    ('detection', None)
    """
    return LEGACY_TYPE_IDS.get(value) if isinstance(value, str) else None
