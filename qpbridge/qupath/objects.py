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

from typing import Any

__all__ = [
    "LEGACY_TYPE_IDS",
    "OBJECT_TYPES",
    "REGION_OBJECT_TYPES",
    "QUPATH_OBJECT_TYPE_VALUES",
    "legacy_type",
    "normalize_object_type",
    "qupath_object_type",
]

#: Object types QuPath 0.4-0.7 writes in ``properties.objectType`` (and the ones qpbridge writes).
OBJECT_TYPES: tuple[str, ...] = ("annotation", "detection", "cell", "tile", "tmaCore")

#: The one rule of what an object's type makes it in qpbridge: annotations and detections are **class regions**
#: (the areas ``masks`` paints as labels, ``evaluate`` scores and ``diff`` compares); tiles are **heat-map
#: tiles** (``predict --heatmap``: class probabilities as measurements), never labels; cells are nuclei with
#: their cell outline (instances, not regions); TMA cores are the array's layout. A class region's class then
#: says whether it is a tissue class, the ROI, a reviewed area (``Region*``) or ignored (``Ignore*``, pen):
#: :mod:`qpbridge.qupath.classes`.
REGION_OBJECT_TYPES: tuple[str, ...] = ("annotation", "detection")

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
