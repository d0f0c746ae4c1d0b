"""The field's other annotation formats, read into (and written from) the features of QuPath GeoJSON.

Every reader returns what :func:`qpbridge.qupath.read_geojson` returns: a
:class:`~qpbridge.qupath.ReadResult` (here a :class:`FormatResult`, which also carries the format's name and
pixel size) of :class:`~qpbridge.qupath.Feature` objects in level-0 pixels, with a
:class:`~qpbridge.qupath.ReadSummary` and warnings; so ``masks``, ``diff``, ``validate`` and ``evaluate`` can
take any of them through :func:`read_annotations`, which picks the reader by the file's content.

=============  ==========================================  =======================  =======================
format         files                                       reader                   writer
=============  ==========================================  =======================  =======================
``geojson``    QuPath GeoJSON (.geojson, .json, .gz, .zip)  ``qupath.read_geojson``  ``qupath.write_geojson``
``asap``       ASAP XML (CAMELYON16/17)                    :func:`read_asap`        :func:`write_asap`
``imagescope`` Aperio ImageScope XML (MoNuSeg)             :func:`read_imagescope`  --
``dsa``        DSA / HistomicsTK annotation JSON           :func:`read_dsa`         --
``labels``     instance / class label images (PNG, TIFF)   :func:`read_label_image` :func:`write_label_image`
=============  ==========================================  =======================  =======================

:func:`convert_annotations` turns any of them into QuPath GeoJSON, ASAP XML or a label image
(``qpbridge convert``); :func:`pair_slides` pairs a folder of slides with their annotation files
(``qpbridge masks SLIDES_DIR``).

>>> sorted(FORMATS)
['asap', 'dsa', 'geojson', 'imagescope', 'labels']
"""

from __future__ import annotations

from qpbridge.formats.asap import DEFAULT_EXCLUSION_GROUPS, read_asap, write_asap
from qpbridge.formats.common import FormatResult, FormatWriteSummary, NonFiniteValue
from qpbridge.formats.convert import (
    ConvertResult,
    class_labels,
    convert_annotations,
    output_format,
    rename_classes,
)
from qpbridge.formats.detect import (
    FORMATS,
    FormatInfo,
    detect_format,
    format_info,
    label_options_for_slide,
    read_annotations,
    require_geojson,
)
from qpbridge.formats.dsa import read_dsa
from qpbridge.formats.imagescope import read_imagescope, suggest_object_type
from qpbridge.formats.labels import (
    INSTANCE_ID,
    label_affine,
    labels_to_features,
    load_label_image,
    rasterize_labels,
    read_label_image,
    write_label_image,
)
from qpbridge.formats.pairing import SlidePairs, annotation_for_slide, pair_slides

__all__ = [
    "DEFAULT_EXCLUSION_GROUPS",
    "FORMATS",
    "INSTANCE_ID",
    "ConvertResult",
    "FormatInfo",
    "FormatResult",
    "FormatWriteSummary",
    "NonFiniteValue",
    "SlidePairs",
    "annotation_for_slide",
    "class_labels",
    "convert_annotations",
    "detect_format",
    "format_info",
    "label_affine",
    "label_options_for_slide",
    "labels_to_features",
    "load_label_image",
    "output_format",
    "pair_slides",
    "rasterize_labels",
    "read_annotations",
    "read_asap",
    "read_dsa",
    "read_imagescope",
    "read_label_image",
    "rename_classes",
    "require_geojson",
    "suggest_object_type",
    "write_asap",
    "write_label_image",
]
