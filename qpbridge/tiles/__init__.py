"""Training tiles: a slide and its QuPath objects -> a tile dataset (``qpbridge masks``) -> tiles for training.

The package follows the data: :mod:`~qpbridge.tiles.config` (what ``masks`` is asked to do),
:mod:`~qpbridge.tiles.grid` (the tiles of a slide and their label masks), :mod:`~qpbridge.tiles.write` (the
build: keep, sample and write tiles), :mod:`~qpbridge.tiles.qa` (the whole-slide QA label mask),
:mod:`~qpbridge.tiles.format` (the folder both sides agree on, ``qpbridge-tiles/1``) and
:mod:`~qpbridge.tiles.read` (reading it back, and the train/validation split). Nothing here imports torch.

Example
-------
>>> from qpbridge.tiles import MaskConfig, build_tile_dataset, read_tile_dataset
>>> build_tile_dataset("slide.svs", "slide.geojson", "tiles/", MaskConfig(mpp=0.5))  # doctest: +SKIP
>>> len(read_tile_dataset("tiles/").tiles)                                            # doctest: +SKIP
1312
"""

from qpbridge.tiles.config import (
    DEFAULT_BLOCK_PX,
    DEFAULT_MPP,
    DEFAULT_QA_MPP,
    DEFAULT_TILE_PX,
    MaskConfig,
    load_card_config,
)
from qpbridge.tiles.format import DATASET_FILE, DATASET_FORMAT, MANIFEST_FILE, manifest_header
from qpbridge.tiles.grid import label_mask_for_window, tile_starts
from qpbridge.tiles.qa import legend, write_label_mask_tiff
from qpbridge.tiles.read import Split, TileDataset, TileRecord, iter_tiles, read_tile, read_tile_dataset, split_tiles
from qpbridge.tiles.write import DatasetSummary, Progress, build_tile_dataset

__all__ = [
    "DATASET_FILE",
    "DATASET_FORMAT",
    "DEFAULT_BLOCK_PX",
    "DEFAULT_MPP",
    "DEFAULT_QA_MPP",
    "DEFAULT_TILE_PX",
    "MANIFEST_FILE",
    "DatasetSummary",
    "MaskConfig",
    "Progress",
    "Split",
    "TileDataset",
    "TileRecord",
    "build_tile_dataset",
    "iter_tiles",
    "label_mask_for_window",
    "legend",
    "load_card_config",
    "manifest_header",
    "read_tile",
    "read_tile_dataset",
    "split_tiles",
    "tile_starts",
    "write_label_mask_tiff",
]
