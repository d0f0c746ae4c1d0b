"""qpbridge: deep-learning segmentations of whole-slide images into QuPath, and corrections back into training.

The public API, by step of the loop (each name is imported from its module on first use, so ``import qpbridge``
stays light: torch loads only with the functions that run networks):

=================================  ==========================================================================
slides and tissue                  :func:`open_slide`, :func:`detect_tissue`, :func:`write_synthetic_slide`
predict (the DeepBatch cascade)    :func:`predict_slide`, :func:`predict_slides`, :class:`PredictConfig`
QuPath GeoJSON                     :class:`Feature`, :func:`read_geojson`, :func:`write_geojson`,
                                   :func:`validate_geojson`, :func:`read_project`
other annotation formats           :func:`read_annotations`, :func:`convert_annotations`
the way back                       :func:`diff_files`, :func:`build_tile_dataset`, :func:`train_model`
models                             :func:`load_model`, :func:`load_card`, :func:`list_models`
scores                             :func:`evaluate_geojson`, :func:`instance_scores`
=================================  ==========================================================================

Every failure a user can cause is a :class:`QpbridgeError` (see :mod:`qpbridge.errors`).

>>> import qpbridge
>>> qpbridge.PredictConfig().object_type
'annotation'
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from qpbridge.errors import QpbridgeError

try:
    __version__ = version("qpbridge")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: Public name -> the module that owns it.
_PUBLIC: dict[str, str] = {
    "open_slide": "qpbridge.slide",
    "detect_tissue": "qpbridge.tissue",
    "write_synthetic_slide": "qpbridge.synth",
    "predict_slide": "qpbridge.predict",
    "predict_slides": "qpbridge.predict",
    "PredictConfig": "qpbridge.predict",
    "Feature": "qpbridge.qupath",
    "read_geojson": "qpbridge.qupath",
    "write_geojson": "qpbridge.qupath",
    "validate_geojson": "qpbridge.qupath",
    "read_project": "qpbridge.qupath",
    "read_annotations": "qpbridge.formats",
    "convert_annotations": "qpbridge.formats",
    "diff_files": "qpbridge.diff",
    "build_tile_dataset": "qpbridge.tiles",
    "train_model": "qpbridge.training",
    "load_model": "qpbridge.models",
    "load_card": "qpbridge.cards",
    "list_models": "qpbridge.cards",
    "evaluate_geojson": "qpbridge.metrics",
    "instance_scores": "qpbridge.instance_metrics",
}

__all__ = [
    "QpbridgeError",
    "__version__",
    "Feature",
    "PredictConfig",
    "build_tile_dataset",
    "convert_annotations",
    "detect_tissue",
    "diff_files",
    "evaluate_geojson",
    "instance_scores",
    "list_models",
    "load_card",
    "load_model",
    "open_slide",
    "predict_slide",
    "predict_slides",
    "read_annotations",
    "read_geojson",
    "read_project",
    "train_model",
    "validate_geojson",
    "write_geojson",
    "write_synthetic_slide",
]

if TYPE_CHECKING:
    from qpbridge.cards import list_models, load_card
    from qpbridge.diff import diff_files
    from qpbridge.formats import convert_annotations, read_annotations
    from qpbridge.instance_metrics import instance_scores
    from qpbridge.metrics import evaluate_geojson
    from qpbridge.models import load_model
    from qpbridge.predict import PredictConfig, predict_slide, predict_slides
    from qpbridge.qupath import Feature, read_geojson, read_project, validate_geojson, write_geojson
    from qpbridge.slide import open_slide
    from qpbridge.synth import write_synthetic_slide
    from qpbridge.tiles import build_tile_dataset
    from qpbridge.tissue import detect_tissue
    from qpbridge.training import train_model


def __getattr__(name: str) -> Any:
    """The public names, imported from their modules on first use."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'qpbridge' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
