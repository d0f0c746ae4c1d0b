"""What training does differently for each model role: its loss, its outputs and its augmentation.

A role's entry in :data:`TRAINING_ROLES` names everything the loop needs to know about it:

- ``roi``: one sigmoid output; :class:`~qpbridge.training.losses.MaskedBCELoss` over the pixels not marked
  ignore (255); a pixel is ROI where its probability reaches the card's threshold; batch 16.
- ``cell``: one softmax channel per class; 0.5 x cross-entropy + 0.5 x Dice
  (:class:`~qpbridge.training.losses.MaskedDiceCELoss`, MONAI's ``DiceCELoss`` split into its parts so that
  ignored pixels are really left out of both); a pixel's class is the most probable one; batch 8.

- ``nuclei``: the tiles hold instance ids (16-bit, 65535 ignore); after augmentation
  (:func:`~qpbridge.training.augment.build_nuclei_augmentation`: also a scale jitter) each tile becomes the
  contour targets (0 background, 1 nucleus, 2 boundary, ``boundary_px`` of the card) and trains with the cell
  loss over those 3 classes; batch 8. Validation scores the watershed's nuclei against the tile's instances
  (AJI, Dice, PQ: :mod:`qpbridge.training.nuclei`).

Roi and cell augment with :func:`~qpbridge.training.augment.build_augmentation`. A new role is one more entry:
its loss (:mod:`qpbridge.training.losses`), its augmentation (:mod:`qpbridge.training.augment`; targets
derived from the label tile are dictionary transforms at its end) and how its outputs become probabilities
and labels; and the role in :data:`qpbridge.cards.ROLES`.

Examples
--------
>>> training_role("cell").batch_size, training_role("roi").loss_text
(8, 'BCEWithLogitsLoss (ignore 255)')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from monai.transforms import Compose
from torch import nn

from qpbridge.cards import ModelCard, NucleiParams
from qpbridge.errors import InputError
from qpbridge.training.augment import (
    AUGMENTATION_TEXT,
    NUCLEI_AUGMENTATION_TEXT,
    build_augmentation,
    build_nuclei_augmentation,
)
from qpbridge.training.losses import MaskedBCELoss, MaskedDiceCELoss

__all__ = ["TRAINING_ROLES", "TrainingRole", "make_loss", "probabilities", "training_role"]


@dataclass(frozen=True)
class TrainingRole:
    """How one model role trains: its default batch, loss, output activation, labels and augmentation."""

    name: str
    #: Tiles per step unless ``--batch-size`` says.
    batch_size: int
    #: The loss for ``n_classes`` classes.
    make_loss: Callable[[int], nn.Module]
    #: How the loss is named in a card's recipe.
    loss_text: str
    #: Logits ``B x C x H x W`` -> class probabilities (same shape).
    probabilities: Callable[[torch.Tensor], torch.Tensor]
    #: Probabilities and the card's threshold -> label per pixel ``B x H x W``.
    labels: Callable[[torch.Tensor, float], torch.Tensor]
    #: A fresh training transform for a card, augmenting or not (seeded per tile by the dataset); None: none.
    augmentation: Callable[[ModelCard, bool], Compose | None]
    #: How the augmentation is named in a card's recipe.
    augmentation_text: str
    #: The tiles hold instance ids (16-bit masks), turned into the targets by the training transform.
    instances: bool = False


def _sigmoid(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


def _thresholded(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    return (probs[:, 0] >= threshold).long()


def _most_probable(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    del threshold  # softmax classes: the largest wins
    return probs.argmax(dim=1)


def _class_augmentation(card: ModelCard, augment: bool) -> Compose | None:
    del card  # the class tiles are the targets
    return build_augmentation() if augment else None


def _nuclei_augmentation(card: ModelCard, augment: bool) -> Compose:
    params = card.nuclei or NucleiParams()
    return build_nuclei_augmentation(params.boundary_px, augment)


def _bce(n_classes: int) -> nn.Module:
    del n_classes  # binary: one sigmoid channel
    return MaskedBCELoss()


TRAINING_ROLES: dict[str, TrainingRole] = {
    "roi": TrainingRole(
        name="roi",
        batch_size=16,
        make_loss=_bce,
        loss_text="BCEWithLogitsLoss (ignore 255)",
        probabilities=_sigmoid,
        labels=_thresholded,
        augmentation=_class_augmentation,
        augmentation_text=AUGMENTATION_TEXT,
    ),
    "cell": TrainingRole(
        name="cell",
        batch_size=8,
        make_loss=MaskedDiceCELoss,
        loss_text="0.5 CrossEntropy + 0.5 Dice (softmax; ignore 255)",
        probabilities=_softmax,
        labels=_most_probable,
        augmentation=_class_augmentation,
        augmentation_text=AUGMENTATION_TEXT,
    ),
    "nuclei": TrainingRole(
        name="nuclei",
        batch_size=8,
        make_loss=MaskedDiceCELoss,
        loss_text="0.5 CrossEntropy + 0.5 Dice (softmax over background/nucleus/boundary; ignore 255)",
        probabilities=_softmax,
        labels=_most_probable,
        augmentation=_nuclei_augmentation,
        augmentation_text=NUCLEI_AUGMENTATION_TEXT,
        instances=True,
    ),
}


def training_role(role: str) -> TrainingRole:
    """The :class:`TrainingRole` of a role name, or :class:`InputError` naming the roles there are."""
    if role not in TRAINING_ROLES:
        names = [repr(r) for r in TRAINING_ROLES]
        raise InputError(f"--role must be {', '.join(names[:-1])} or {names[-1]}, got {role!r}")
    return TRAINING_ROLES[role]


def make_loss(role: str, n_classes: int) -> nn.Module:
    """The seed recipe's loss for a role.

    Examples
    --------
    >>> type(make_loss("cell", 4)).__name__
    'MaskedDiceCELoss'
    """
    return training_role(role).make_loss(n_classes)


def probabilities(role: str, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities: sigmoid of the single roi channel, softmax over cell channels.

    Examples
    --------
    >>> probabilities("roi", torch.zeros(1, 1, 2, 2)).flatten().tolist()
    [0.5, 0.5, 0.5, 0.5]
    """
    return training_role(role).probabilities(logits)
