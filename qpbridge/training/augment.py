"""Training augmentation: MONAI dictionary transforms over ``{"image": 3HW float in [0, 1], "label": 1HW}``.

MONAI has flips, 90 degree rotations, the zoom and the gamma change; the stain jitter in
haematoxylin-eosin-DAB space (:class:`RandHEDJitterd`) is ours, in MONAI's form (a seeded
``RandomizableTransform`` over dictionary keys). A nuclei tile's label is an instance image; it is augmented
as such (flips and rotations are exact on ids, the zoom is nearest-neighbour) and becomes the model's contour
targets at the end (:class:`ContourTargetsd`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandomizableTransform,
    RandRotate90d,
    RandZoomd,
)

from qpbridge.classes import IGNORE_LABEL, INSTANCE_IGNORE_LABEL
from qpbridge.nuclei.postprocess import contour_targets

__all__ = [
    "AUGMENTATION_TEXT",
    "NUCLEI_AUGMENTATION_TEXT",
    "ContourTargetsd",
    "RandHEDJitterd",
    "build_augmentation",
    "build_nuclei_augmentation",
    "training_targets",
]

#: How :func:`build_augmentation` is described in a model card.
AUGMENTATION_TEXT = "RandFlipd x2, RandRotate90d, HED jitter (5%, 0.02), RandAdjustContrastd"
#: How :func:`build_nuclei_augmentation` is described in a model card.
NUCLEI_AUGMENTATION_TEXT = (
    "RandFlipd x2, RandRotate90d, RandZoomd 0.9-1.1 (nearest for the instances), HED jitter (5%, 0.02), "
    "RandAdjustContrastd; then contour targets"
)


def training_targets(instances: np.ndarray, boundary_px: int) -> np.ndarray:
    """Contour targets (0 background, 1 nucleus, 2 boundary; 255 ignore) of an instance tile (65535 ignore).

    Examples
    --------
    >>> tile = np.zeros((5, 6), np.int32); tile[1:4, 1:4] = 3; tile[:, 5] = INSTANCE_IGNORE_LABEL
    >>> training_targets(tile, 1)[2].tolist()
    [0, 2, 1, 2, 0, 255]
    """
    ignored = instances == INSTANCE_IGNORE_LABEL
    targets = contour_targets(np.where(ignored, 0, instances), boundary_px)
    targets[ignored] = IGNORE_LABEL
    return targets


class ContourTargetsd(MapTransform):
    """Instance labels (``1HW`` ids, 65535 ignore) -> contour targets (``1HW`` int64; 255 ignore)."""

    def __init__(self, keys: str | Sequence[str], boundary_px: int) -> None:
        MapTransform.__init__(self, keys)
        self.boundary_px = int(boundary_px)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace the instance images under ``keys`` by their contour targets."""
        from monai.utils import convert_to_numpy

        out: dict[Hashable, Any] = dict(data)
        for key in self.key_iterator(out):
            instances = np.rint(convert_to_numpy(out[key])).astype(np.int64)
            targets = np.stack([training_targets(plane, self.boundary_px) for plane in instances])
            out[key] = torch.from_numpy(targets.astype(np.int64))
        return out


class RandHEDJitterd(RandomizableTransform, MapTransform):
    """Scale and shift the haematoxylin, eosin and DAB densities of RGB images (CHW, 0-1): H&E stain jitter.

    Each stain's optical density is multiplied by ``U(1 - scale, 1 + scale)`` and shifted by ``U(-shift, shift)``
    (``skimage.color.rgb2hed`` / ``hed2rgb``), a plausible variation between labs and scanners.
    """

    def __init__(self, keys: str | Sequence[str], prob: float = 0.8, scale: float = 0.05, shift: float = 0.02) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.scale, self.shift = scale, shift
        self._alpha = np.ones(3)
        self._beta = np.zeros(3)

    def randomize(self, data: Any = None) -> None:
        """Draw whether to act and the stain factors."""
        super().randomize(None)
        self._alpha = self.R.uniform(1.0 - self.scale, 1.0 + self.scale, 3)
        self._beta = self.R.uniform(-self.shift, self.shift, 3)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Jitter the images under ``keys``."""
        from skimage.color import hed2rgb, rgb2hed

        out: dict[Hashable, Any] = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        for key in self.key_iterator(out):
            image = torch.as_tensor(out[key])
            hwc = image.permute(1, 2, 0).numpy().astype(np.float64)
            hed = rgb2hed(hwc) * self._alpha + self._beta
            rgb = np.clip(hed2rgb(hed), 0.0, 1.0)
            out[key] = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1).contiguous()
        return out


def build_augmentation() -> Compose:
    """The training augmentation: MONAI dictionary transforms over ``{"image": 3HW float, "label": 1HW}``.

    Flips and 90 degree rotations move image and label together (exactly, no interpolation); the stain
    jitter and the gamma change touch the image only.
    """
    both = ("image", "label")
    return Compose(
        [
            RandFlipd(keys=both, prob=0.5, spatial_axis=0),
            RandFlipd(keys=both, prob=0.5, spatial_axis=1),
            RandRotate90d(keys=both, prob=0.5, max_k=3, spatial_axes=(0, 1)),
            RandHEDJitterd(keys="image", prob=0.8, scale=0.05, shift=0.02),
            RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.8, 1.25)),
        ]
    )


def build_nuclei_augmentation(boundary_px: int, augment: bool = True) -> Compose:
    """A nuclei model's training transform: the augmentation of :func:`build_augmentation` plus a scale
    jitter (``RandZoomd`` 0.9-1.1, nearest-neighbour for the instances, reflected at the edges so that the image
    and its instances stay aligned), then :class:`ContourTargetsd`. ``augment=False``: the targets only.
    """
    targets = ContourTargetsd(keys="label", boundary_px=boundary_px)
    if not augment:
        return Compose([targets])
    both = ("image", "label")
    return Compose(
        [
            RandFlipd(keys=both, prob=0.5, spatial_axis=0),
            RandFlipd(keys=both, prob=0.5, spatial_axis=1),
            RandRotate90d(keys=both, prob=0.5, max_k=3, spatial_axes=(0, 1)),
            RandZoomd(
                keys=both, prob=0.5, min_zoom=0.9, max_zoom=1.1, mode=("bilinear", "nearest"),
                padding_mode="reflect", keep_size=True,
            ),
            RandHEDJitterd(keys="image", prob=0.8, scale=0.05, shift=0.02),
            RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.8, 1.25)),
            targets,
        ]
    )  # fmt: skip
