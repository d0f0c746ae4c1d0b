"""What training does differently for each model role: its loss, its outputs and its augmentation.

A role's entry in :data:`TRAINING_ROLES` names everything the loop needs to know about it:

- ``roi``: one sigmoid output; :class:`~qpbridge.training.losses.MaskedBCELoss` over the pixels not marked
  ignore (255); a pixel is ROI where its probability reaches the card's threshold; batch 16.
- ``cell``: one softmax channel per class; 0.5 x cross-entropy + 0.5 x Dice
  (:class:`~qpbridge.training.losses.MaskedDiceCELoss`, MONAI's ``DiceCELoss`` split into its parts so that
  ignored pixels are really left out of both); a pixel's class is the most probable one; batch 8.

Both augment with :func:`~qpbridge.training.augment.build_augmentation`. A new role (e.g. ``nuclei``) is one
more entry: its loss (:mod:`qpbridge.training.losses`), its augmentation (:mod:`qpbridge.training.augment`;
targets derived from the label tile, such as instance maps, can be dictionary transforms at its end) and how
its outputs become probabilities and labels; and the role in :data:`qpbridge.cards.ROLES`.

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

from qpbridge.errors import InputError
from qpbridge.training.augment import AUGMENTATION_TEXT, build_augmentation
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
    #: A fresh augmentation pipeline (seeded per tile by the dataset).
    augmentation: Callable[[], Compose]
    #: How the augmentation is named in a card's recipe.
    augmentation_text: str


def _sigmoid(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


def _thresholded(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    return (probs[:, 0] >= threshold).long()


def _most_probable(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    del threshold  # softmax classes: the largest wins
    return probs.argmax(dim=1)


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
        augmentation=build_augmentation,
        augmentation_text=AUGMENTATION_TEXT,
    ),
    "cell": TrainingRole(
        name="cell",
        batch_size=8,
        make_loss=MaskedDiceCELoss,
        loss_text="0.5 CrossEntropy + 0.5 Dice (softmax; ignore 255)",
        probabilities=_softmax,
        labels=_most_probable,
        augmentation=build_augmentation,
        augmentation_text=AUGMENTATION_TEXT,
    ),
}


def training_role(role: str) -> TrainingRole:
    """The :class:`TrainingRole` of a role name, or :class:`InputError` naming the roles there are."""
    if role not in TRAINING_ROLES:
        raise InputError(f"--role must be {' or '.join(repr(r) for r in TRAINING_ROLES)}, got {role!r}")
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
