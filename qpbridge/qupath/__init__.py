"""Everything QuPath's rules decide, in one package: QuPath GeoJSON in and out, validation, classes, project files.

The format these modules follow, and why, is ``docs/qupath-geojson.md``: what QuPath 0.4-0.7 writes and
reads, what makes it reject a whole file, what it mangles, and the rules qpbridge keeps. The modules:

* :mod:`~qpbridge.qupath.write`: a streaming writer of what QuPath 0.4-0.7 imports cleanly;
* :mod:`~qpbridge.qupath.load`: the JSON documents of a file (plain, ``.gz``, ``.zip``) and their feature objects;
* :mod:`~qpbridge.qupath.read`: a tolerant reader of everything QuPath 0.2-0.7 and its peers write;
* :mod:`~qpbridge.qupath.validate`: what QuPath would reject or mangle, feature by feature, and ``--fix``;
* :mod:`~qpbridge.qupath.versions`: the QuPath versions, what each does with each finding (``ISSUE_EFFECTS``)
  and the verdicts;
* :mod:`~qpbridge.qupath.lenient`: the JSON that only QuPath's lenient Gson parser takes;
* :mod:`~qpbridge.qupath.classes`: class names (derived classes, the ``Region*``/``Ignore*``/pen patterns) and
  the one matcher of a class name to a table;
* :mod:`~qpbridge.qupath.objects`: object types (``annotation``, ``detection``...) and their spellings;
* :mod:`~qpbridge.qupath.project`: the project layout, file names and endings, the prediction marker and the
  corrections sidecar (the rules the ``groovy/`` scripts share);
* :mod:`~qpbridge.qupath.bounds`: what QuPath shows as the image of a slide with ``openslide.bounds-*``;
* :mod:`~qpbridge.qupath.qpproj`: reading a QuPath project (``project.qpproj``): its images and their files.

Import from here (``from qpbridge.qupath import Feature, read_geojson``); the names below are the public ones
of those modules.

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

from qpbridge.qupath.bounds import (
    BOUNDS_KEYS,
    qupath_image_rect,
)
from qpbridge.qupath.classes import (
    DEFAULT_IGNORE_PATTERNS,
    DEFAULT_REGION_PATTERNS,
    RESERVED_PATTERNS,
    UNCLASSIFIED,
    ClassMatcher,
    class_name_candidates,
    join_class_names,
    matches_pattern,
    split_class_name,
)
from qpbridge.qupath.load import (
    GEOMETRY_TYPES,
    JsonDocument,
    flatten_features,
    gc_paused,
    iter_feature_objects,
    load_json_documents,
)
from qpbridge.qupath.objects import (
    LEGACY_TYPE_IDS,
    OBJECT_TYPES,
    QUPATH_OBJECT_TYPE_VALUES,
    legacy_type,
    normalize_object_type,
    qupath_object_type,
)
from qpbridge.qupath.project import (
    CORRECTIONS_DIRNAME,
    CORRECTIONS_SUFFIX,
    FORBIDDEN_FILENAME_CHARS,
    GEOJSON_SUFFIXES,
    META_SUFFIX,
    PREDICTION_MEASUREMENT,
    PREDICTION_MEASUREMENT_VALUE,
    PREDICTION_METADATA_KEY,
    PREDICTION_RELEASED_VALUE,
    PREDICTION_RUN_METADATA_KEY,
    PREDICTION_SUFFIXES,
    PREDICTIONS_DIRNAME,
    QUPATH_IMPORT_SUFFIXES,
    QUPATH_ONLY_EXTENSIONS,
    SIDECAR_FORMAT,
    SIDECAR_FORMAT_KEY,
    SIDECAR_GEOJSON_KEY,
    SIDECAR_HEIGHT_KEY,
    SIDECAR_IMAGE_NAME_KEY,
    SIDECAR_IMAGE_PATHS_KEY,
    SIDECAR_IMAGE_URIS_KEY,
    SIDECAR_PIXEL_SIZE_KEY,
    SIDECAR_SUFFIX,
    SIDECAR_VERSION_KEY,
    SIDECAR_WIDTH_KEY,
    SLIDE_EXTENSIONS,
    CorrectionsSidecar,
    check_export_holds,
    corrections_dir,
    corrections_paths,
    corrections_sidecar_path,
    describe_suffixes,
    geojson_file_base,
    image_basename,
    is_geojson_path,
    is_prediction_feature,
    load_corrections_sidecar,
    prediction_filename,
    prediction_of_corrections,
    prediction_path,
    prediction_properties,
    prediction_state,
    predictions_dir,
    project_folder,
    read_corrections_sidecar,
)
from qpbridge.qupath.qpproj import (
    PROJECT_FILENAME,
    ImageCorrections,
    PredictionTarget,
    ProjectImage,
    QuPathProject,
    builder_uris,
    find_project_file,
    read_project,
)
from qpbridge.qupath.read import (
    ReadResult,
    ReadSummary,
    feature_label,
    make_valid_polygonal,
    parse_classification,
    parse_qupath_color,
    read_geojson,
    require_features,
    simple_ring,
)
from qpbridge.qupath.validate import (
    FixResult,
    Issue,
    ValidationReport,
    fix_geojson,
    validate_geojson,
)
from qpbridge.qupath.write import (
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
    "BOUNDS_KEYS",
    "CORRECTIONS_DIRNAME",
    "CORRECTIONS_SUFFIX",
    "DEFAULT_IGNORE_PATTERNS",
    "DEFAULT_REGION_PATTERNS",
    "FORBIDDEN_FILENAME_CHARS",
    "GEOJSON_SUFFIXES",
    "GEOMETRY_TYPES",
    "LEGACY_TYPE_IDS",
    "OBJECT_TYPES",
    "PREDICTIONS_DIRNAME",
    "PROJECT_FILENAME",
    "PREDICTION_MEASUREMENT",
    "META_SUFFIX",
    "PREDICTION_MEASUREMENT_VALUE",
    "PREDICTION_RELEASED_VALUE",
    "PREDICTION_METADATA_KEY",
    "PREDICTION_RUN_METADATA_KEY",
    "PREDICTION_SUFFIXES",
    "QUPATH_IMPORT_SUFFIXES",
    "QUPATH_OBJECT_TYPE_VALUES",
    "QUPATH_ONLY_EXTENSIONS",
    "RESERVED_PATTERNS",
    "SIDECAR_FORMAT",
    "SIDECAR_FORMAT_KEY",
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
    "UNCLASSIFIED",
    "ClassMatcher",
    "CorrectionsSidecar",
    "Feature",
    "FixResult",
    "GeoJSONWriter",
    "ImageCorrections",
    "Issue",
    "JsonDocument",
    "PredictionTarget",
    "ProjectImage",
    "QuPathProject",
    "ReadResult",
    "ReadSummary",
    "ValidationReport",
    "WriteSummary",
    "builder_uris",
    "class_color",
    "class_name_candidates",
    "clean_geometry",
    "corrections_dir",
    "corrections_paths",
    "corrections_sidecar_path",
    "describe_suffixes",
    "feature_label",
    "find_project_file",
    "fix_geojson",
    "flatten_features",
    "gc_paused",
    "geojson_file_base",
    "image_basename",
    "is_geojson_path",
    "check_export_holds",
    "is_prediction_feature",
    "prediction_state",
    "is_uuid",
    "iter_feature_objects",
    "join_class_names",
    "legacy_type",
    "load_corrections_sidecar",
    "load_json_documents",
    "make_valid_polygonal",
    "matches_pattern",
    "meta_path",
    "normalize_object_type",
    "parse_classification",
    "parse_qupath_color",
    "prediction_filename",
    "prediction_of_corrections",
    "prediction_path",
    "prediction_properties",
    "predictions_dir",
    "project_folder",
    "qupath_image_rect",
    "qupath_object_type",
    "read_corrections_sidecar",
    "read_geojson",
    "read_project",
    "require_features",
    "simple_ring",
    "split_class_name",
    "validate_geojson",
    "write_geojson",
]
