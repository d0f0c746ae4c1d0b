"""Synthetic H&E-like whole-slide images with known ground truth.

:func:`write_synthetic_slide` writes a pyramidal, JPEG-tiled TIFF that OpenSlide opens as an Aperio
slide (0.25 um/px, 40x), plus its ground truth beside it:

- ``<stem>.truth.geojson``: QuPath annotations in level-0 pixels: "Tissue" outlines, "Pen mark" strokes
  and one annotation per lesion region ("Benign", "In situ carcinoma", "Invasive carcinoma"). "Normal" has
  no feature of its own: it is tissue minus lesions.
- ``<stem>.truth.meta.json``: a ``synth`` record (seed, stain, size, um/px, class areas in um^2, measured
  lesion fraction).
- ``<stem>.nuclei.geojson`` (``nuclei=True`` only): every nucleus whose centre lies in the slide, as a
  "detection" ellipse classified by the region it lies in.

How it works
------------
The layout (tissue pieces, lesion regions, glands, ducts, pen strokes) is drawn once with shapely, in
level-0 pixels, and rounded to 0.01 px: the geometries written to the truth file are the ones the
renderer rasterizes (``rasterio.features.rasterize``, pixel-corner convention, ``all_touched=False``),
so truth and pixels agree exactly. Level 0 is rendered block by block (one tile row high, a few tiles
wide) from optical densities of hematoxylin and eosin (Beer-Lambert), with textures that depend on the
absolute pixel position only (hashed value noise; nuclei generated per fixed grid cell from
``(seed, kind, cell_x, cell_y)``), so tiles join without seams and a seed always gives the same slide.
Each rendered block is box-averaged into the next pyramid level on the fly; lower levels are kept in
temporary raw files (plain reads and writes, no memory map) and written after level 0. Memory is bounded
by a block and a tile row, not by the slide.

The package follows those steps: :mod:`~qpbridge.synth.common` (pixel size, labels, inks),
:mod:`~qpbridge.synth.layout` (the shapes), :mod:`~qpbridge.synth.noise` and :mod:`~qpbridge.synth.render`
(the pixels), :mod:`~qpbridge.synth.pyramid` (the TIFF levels), :mod:`~qpbridge.synth.truth` (the files beside
the slide) and :mod:`~qpbridge.synth.write` (:func:`write_synthetic_slide`, which runs them).

Example
-------
>>> from qpbridge.synth import write_synthetic_slide
>>> result = write_synthetic_slide("/tmp/demo.svs", width_px=4096, height_px=3072, seed=1,
...                                overwrite=True)  # doctest: +SKIP
>>> result.level_count, result.truth_path.name  # doctest: +SKIP
(3, 'demo.truth.geojson')
"""

from qpbridge.synth.common import MIN_SIDE_PX, MPP, OBJECTIVE_POWER
from qpbridge.synth.pyramid import level_dimensions_for
from qpbridge.synth.render import STAIN_NAMES
from qpbridge.synth.truth import SynthResult, synth_paths
from qpbridge.synth.write import write_synthetic_slide

__all__ = [
    "MIN_SIDE_PX",
    "MPP",
    "OBJECTIVE_POWER",
    "STAIN_NAMES",
    "SynthResult",
    "level_dimensions_for",
    "synth_paths",
    "write_synthetic_slide",
]
