"""The DeepBatch class scheme: label index, QuPath class name and colour.

These are the defaults; a model card may define its own classes (see :mod:`qpbridge.models`).
Label 0 is background/normal tissue; 255 marks pixels to ignore (unreviewed) in training masks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEEPBATCH_CLASSES",
    "IGNORE_LABEL",
    "INSTANCE_IGNORE_LABEL",
    "PEN_CLASS",
    "ROI_CLASS",
    "TISSUE_CLASS",
    "ClassInfo",
]

IGNORE_LABEL = 255
#: "Ignore" in a 16-bit instance mask (nuclei tiles: 0 background, 1..65534 one id per nucleus).
INSTANCE_IGNORE_LABEL = 65535


@dataclass(frozen=True)
class ClassInfo:
    """One class: its label in masks, its QuPath class name and its display colour (r, g, b)."""

    label: int
    name: str
    color: tuple[int, int, int]


#: The four DeepBatch tissue classes of the cell U-Net.
DEEPBATCH_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "Normal", (96, 168, 96)),
    ClassInfo(1, "Benign", (64, 128, 230)),
    ClassInfo(2, "In situ carcinoma", (250, 160, 20)),
    ClassInfo(3, "Invasive carcinoma", (215, 25, 35)),
)

#: The region found by the ROI U-Net.
ROI_CLASS = ClassInfo(1, "ROI", (255, 215, 0))

#: Classes that only the synthetic ground truth uses.
TISSUE_CLASS = ClassInfo(0, "Tissue", (200, 160, 200))
PEN_CLASS = ClassInfo(0, "Pen mark", (30, 30, 30))
