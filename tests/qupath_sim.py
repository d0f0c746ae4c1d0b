"""A scripted QuPath for the loop tests: what the groovy scripts do to objects, with their own settings.

``export_corrections.groovy``'s settings are read from the script itself (:func:`export_settings`), and
:func:`test_export_rule_is_the_scripts` (in ``test_loop.py``) checks that the selection below is the one the
script runs, so the loop test exports exactly what a pathologist's default export holds.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shapely.geometry import mapping, shape

from qpbridge.qupath import PREDICTION_MEASUREMENT

GROOVY = Path(__file__).resolve().parents[1] / "groovy"


def _setting(source: str, name: str) -> str:
    match = re.search(rf"^(?:boolean|String|double) {name} = (.+)$", source, re.M)
    assert match is not None, f"setting {name} not found in the script"
    return match.group(1).strip()


def export_settings() -> dict[str, Any]:
    """The settings block of export_corrections.groovy as shipped (its defaults)."""
    source = (GROOVY / "export_corrections.groovy").read_text()
    return {
        "INCLUDE_DETECTIONS": _setting(source, "INCLUDE_DETECTIONS") == "true",
        "RELEASE_EDITED_PREDICTIONS": _setting(source, "RELEASE_EDITED_PREDICTIONS") == "true",
    }


def released_value() -> float:
    source = (GROOVY / "export_corrections.groovy").read_text()
    match = re.search(r"@Field final double QPBRIDGE_RELEASED_VALUE = ([0-9.]+)d", source)
    assert match is not None
    return float(match.group(1))


@dataclass
class QuPathObject:
    """An object in a QuPath image: what the scripts look at."""

    object_type: str
    class_name: str | None
    color: list[int] | None
    geometry: Any
    measurements: dict[str, float] = field(default_factory=dict)
    edited: bool = False  #: reclassified, reshaped or moved since import (the fingerprint no longer matches)

    @property
    def marked(self) -> bool:  # qpbridgeIsMarked: an untouched prediction
        return self.measurements.get(PREDICTION_MEASUREMENT, -1.0) >= 1.0

    @property
    def is_prediction(self) -> bool:  # qpbridgeIsPrediction
        return PREDICTION_MEASUREMENT in self.measurements


def import_predictions(path: Path) -> list[QuPathObject]:
    """import_predictions.groovy: every object of the file, marked with a fingerprint in [1, 2)."""
    objects = []
    for i, feature in enumerate(json.loads(path.read_text())["features"]):
        props = feature["properties"]
        cls = props.get("classification") or {}
        measurements = dict(props.get("measurements", {}))
        measurements[PREDICTION_MEASUREMENT] = 1.0 + (i % 997) / 1000.0  # qpbridgeMark
        objects.append(QuPathObject(props["objectType"], cls.get("name"), cls.get("color"),
                                    shape(feature["geometry"]), measurements))
    return objects


def export_corrections(objects: list[QuPathObject], folder: Path, base: str, image: dict[str, Any],
                       settings: dict[str, Any] | None = None) -> Path:
    """export_corrections.groovy with ``settings`` (default: the script's own): the release of edited
    predictions, the selection of objects, QuPath's GeoJSON export and the sidecar."""
    settings = settings or export_settings()
    if settings["RELEASE_EDITED_PREDICTIONS"]:
        for obj in objects:
            if obj.marked and obj.edited:
                obj.measurements[PREDICTION_MEASUREMENT] = released_value()
    annotations = [o for o in objects if o.object_type == "annotation"]
    prediction_detections = [o for o in objects if o.object_type != "annotation" and o.is_prediction]
    other_detections = [o for o in objects if o.object_type != "annotation" and not o.is_prediction
                        and settings["INCLUDE_DETECTIONS"]]
    exported = annotations + prediction_detections + other_detections
    features = []
    for obj in exported:
        props: dict[str, Any] = {"objectType": obj.object_type, "measurements": obj.measurements}
        if obj.class_name is not None:
            props["classification"] = {"name": obj.class_name, "color": obj.color or [128, 128, 128]}
        features.append({"type": "Feature", "id": str(uuid.uuid4()), "geometry": mapping(obj.geometry),
                         "properties": props})
    folder.mkdir(parents=True, exist_ok=True)
    geojson = folder / f"{base}.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    sidecar = {
        "format": "qpbridge-corrections-sidecar", "format_version": 2, **image, "geojson": geojson.name,
        "annotations": len(annotations), "detections": len(prediction_detections) + len(other_detections),
        "prediction_detections": len(prediction_detections), "other_detections": len(other_detections),
        "exported": {"annotations": True, "qpbridge_predictions": True,
                     "other_detections": settings["INCLUDE_DETECTIONS"]},
        "untouched_predictions": sum(o.marked for o in exported),
    }
    (folder / f"{base}.json").write_text(json.dumps(sidecar, indent=2))
    return geojson
