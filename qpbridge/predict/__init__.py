"""``predict``: the DeepBatch cascade over whole slides, as a package of its stages.

=================  ===========================================================================================
``config``         :class:`PredictConfig` (+ its check), :class:`PredictSummary`, the ``Progress`` callback
``pipeline``       the composer: models -> tissue -> ROI -> cells -> GeoJSON writer -> meta; the batch over many
                   slides (:func:`predict_slides`), :func:`is_finished`, the run id
``roi``            the ROI U-Net over tissue -> ROI polygons; :class:`~qpbridge.predict.roi.RoiGate`
``cells``          the cell stage: class regions, their mean probability, heat-map tiles
``regions``        planning fitted and grid windows over the gate's pieces (numpy/scipy only)
``sampling``       nearest-neighbour sampling between grids (tissue mask -> block, labels -> overlay)
``segmenter``      :class:`~qpbridge.predict.segmenter.BlockSegmenter`: device, precision, layout, batching
``overlay``        the thumbnail overlay
``rasters``        ``--labels`` / ``--probabilities``: pyramidal OME-TIFFs at the cell model's um/px, block by block
``distributed``    many slides on Dask (``--workers``, ``--scheduler``): one task per slide, the run summary
=================  ===========================================================================================

Importing this package does not import torch: the composer (and with it torch) loads on first use of
:func:`predict_slide`, :func:`predict_slides` or :func:`is_finished`, so ``regions`` and ``sampling`` stay
importable without it.

Example
-------
>>> from qpbridge.predict import PredictConfig, predict_slide
>>> summary = predict_slide("slide.svs", "slide.geojson", PredictConfig(heatmap=True))   # doctest: +SKIP
>>> summary.features_by_class                                                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qpbridge.predict.config import PredictConfig, PredictSummary, Progress

if TYPE_CHECKING:
    from qpbridge.predict.pipeline import BatchSummary, SlideOutcome, is_finished, predict_slide, predict_slides

__all__ = [
    "BatchSummary",
    "PredictConfig",
    "PredictSummary",
    "Progress",
    "SlideOutcome",
    "is_finished",
    "predict_slide",
    "predict_slides",
]

_FROM_PIPELINE = ("BatchSummary", "SlideOutcome", "is_finished", "predict_slide", "predict_slides")


def __getattr__(name: str) -> Any:
    """The composer's names, imported on first use (it imports torch)."""
    if name in _FROM_PIPELINE:
        from qpbridge.predict import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
