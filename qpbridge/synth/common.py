"""What every part of a synthetic slide agrees on: its pixel size, region and structure labels, inks, array types."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from qpbridge.classes import DEEPBATCH_CLASSES

__all__ = [
    "BENIGN",
    "BG",
    "CLASS_COLOR",
    "F32",
    "INKS",
    "INK_NAMES",
    "INSITU",
    "INVASIVE",
    "LESION_NAMES",
    "MIN_SIDE_PX",
    "MPP",
    "NORMAL",
    "OBJECTIVE_POWER",
    "S_BAND",
    "S_CORE",
    "S_GLAND",
    "S_LUMEN",
    "S_NECROSIS",
    "S_NONE",
    "U8",
]

#: Pixel size of level 0 of every synthetic slide, in um/px.
MPP = 0.25
#: Objective magnification written to the slide (``AppMag``).
OBJECTIVE_POWER = 40
#: Minimum width and height of a synthetic slide, in pixels.
MIN_SIDE_PX = 512

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]

# Region labels in the label raster (not the DeepBatch label indices).
BG, NORMAL, BENIGN, INSITU, INVASIVE = 0, 1, 2, 3, 4
LESION_NAMES = {BENIGN: "Benign", INSITU: "In situ carcinoma", INVASIVE: "Invasive carcinoma"}
CLASS_COLOR = {c.name: c.color for c in DEEPBATCH_CLASSES}

# Structure labels (inside lesions).
S_NONE, S_GLAND, S_LUMEN, S_BAND, S_CORE, S_NECROSIS = 0, 1, 2, 3, 4, 5

# Pen inks: optical density per R, G, B (black, blue, green).
INKS: dict[str, tuple[float, float, float]] = {
    "black": (1.55, 1.50, 1.40),
    "blue": (1.70, 0.95, 0.22),
    "green": (1.30, 0.30, 1.05),
}
INK_NAMES = tuple(INKS)
