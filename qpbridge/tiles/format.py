"""The tile dataset format (``qpbridge-tiles/1``): what ``qpbridge masks`` writes and ``qpbridge train`` reads.

A tile dataset is a folder::

    DIR/dataset.json    format, mpp, tile_px, stride_px, ignore_label, role, classes, slides, qpbridge_version
    DIR/manifest.csv    slide,image,mask,x0_px,y0_px,mpp,tile_px,count_<label>...,count_ignore
    DIR/images/<slide>_<x0>_<y0>.png, DIR/masks/<slide>_<x0>_<y0>.png    (x0, y0: level-0 pixels)
    DIR/qa/<slide>_label_mask.tiff      whole-slide label mask at a coarse um/px (QA; palette TIFF pyramid)

Images are RGB PNGs, masks single-channel label PNGs (mode L) with 255 = ignore. The writer is
:mod:`qpbridge.tiles.write`, the reader :mod:`qpbridge.tiles.read`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DATASET_FILE", "DATASET_FORMAT", "MANIFEST_FILE", "manifest_header"]

#: ``dataset.json``'s ``format``.
DATASET_FORMAT = "qpbridge-tiles/1"
#: The dataset's description, written last.
DATASET_FILE = "dataset.json"
#: One row per tile.
MANIFEST_FILE = "manifest.csv"


def manifest_header(labels: Sequence[int]) -> list[str]:
    """The columns of ``manifest.csv`` for a dataset of these class labels.

    Examples
    --------
    >>> manifest_header([0, 1])[-3:]
    ['count_0', 'count_1', 'count_ignore']
    """
    return [
        "slide",
        "image",
        "mask",
        "x0_px",
        "y0_px",
        "mpp",
        "tile_px",
        *[f"count_{lab}" for lab in labels],
        "count_ignore",
    ]
