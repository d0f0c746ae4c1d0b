"""QuPath GeoJSON I/O: a streaming writer of what QuPath 0.4-0.7 imports cleanly, and a tolerant reader.

The writer lives in :mod:`qpbridge.qupath_write`, the reader in :mod:`qpbridge.qupath_read`; import
both from here. The format and its pitfalls are described in ``qupath-geojson.md``.

Examples
--------
>>> import tempfile, pathlib
>>> from shapely import box
>>> out = pathlib.Path(tempfile.mkdtemp()) / "objects.geojson"
>>> summary = write_geojson(out, [Feature(box(0, 0, 10, 10), "Tumor", (200, 0, 0), "detection")])
>>> [(f.class_name, f.color, f.object_type) for f in read_geojson(out).features]
[('Tumor', (200, 0, 0), 'detection')]
"""

from __future__ import annotations

from qpbridge.qupath_read import (
    JsonDocument,
    ReadResult,
    ReadSummary,
    feature_label,
    flatten_features,
    iter_feature_objects,
    load_json_documents,
    make_valid_polygonal,
    normalize_object_type,
    parse_classification,
    parse_color,
    read_geojson,
    require_features,
)
from qpbridge.qupath_write import (
    OBJECT_TYPES,
    Feature,
    GeoJSONWriter,
    WriteSummary,
    class_color,
    clean_geometry,
    is_uuid,
    meta_path,
    write_geojson,
)

__all__ = [
    "OBJECT_TYPES",
    "Feature",
    "GeoJSONWriter",
    "JsonDocument",
    "ReadResult",
    "ReadSummary",
    "WriteSummary",
    "class_color",
    "clean_geometry",
    "feature_label",
    "flatten_features",
    "is_uuid",
    "iter_feature_objects",
    "load_json_documents",
    "make_valid_polygonal",
    "meta_path",
    "normalize_object_type",
    "parse_classification",
    "parse_color",
    "read_geojson",
    "require_features",
    "write_geojson",
]
