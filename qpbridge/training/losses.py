"""Losses that leave out the ignore label (255) exactly: nothing is learned from pixels nobody labelled.

Each takes the network's logits (``B x C x H x W``) and the target labels (``B x H x W``) as the tiles hold
them; a role's loss is chosen in :mod:`qpbridge.training.roles`.
"""

from __future__ import annotations

import torch
from torch import nn

from qpbridge.classes import IGNORE_LABEL

__all__ = ["MaskedBCELoss", "MaskedDiceCELoss"]


class MaskedBCELoss(nn.Module):
    """Binary cross-entropy with logits over the pixels whose label is not ``ignore_label``.

    The logits are ``B x 1 x H x W``; the target ``B x H x W`` labels (1 = positive, anything else but the
    ignore label = negative). Mean over the kept pixels.
    """

    def __init__(self, ignore_label: int = IGNORE_LABEL, positive_label: int = 1) -> None:
        super().__init__()
        self.ignore_label = ignore_label
        self.positive_label = positive_label
        self.bce = nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of a batch."""
        valid = (target != self.ignore_label).to(logits.dtype)
        positive = (target == self.positive_label).to(logits.dtype)
        per_pixel = self.bce(logits[:, 0], positive)
        return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


class MaskedDiceCELoss(nn.Module):
    """``lambda_ce`` x cross-entropy + ``lambda_dice`` x soft Dice over softmax outputs, ignoring a label.

    Equal to MONAI's ``DiceCELoss(softmax=True, to_onehot_y=True)`` when nothing is ignored. Ignored pixels
    are removed from both parts: cross-entropy by ``ignore_index``, Dice by MONAI's ``MaskedDiceLoss`` over
    a one-hot target built here (the mask zeroes both the probabilities and the one-hot target there).
    """

    def __init__(
        self, n_classes: int, ignore_label: int = IGNORE_LABEL, lambda_ce: float = 0.5, lambda_dice: float = 0.5
    ) -> None:
        super().__init__()
        from monai.losses import MaskedDiceLoss

        self.n_classes = n_classes
        self.ignore_label = ignore_label
        self.lambda_ce, self.lambda_dice = lambda_ce, lambda_dice
        self.dice = MaskedDiceLoss(softmax=True, to_onehot_y=False)
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_label)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of a batch: logits ``B x C x H x W``, target labels ``B x H x W``."""
        valid = target != self.ignore_label
        if not bool(valid.any()):
            return logits.sum() * 0.0
        safe = torch.where(valid, target, torch.zeros_like(target))
        one_hot = nn.functional.one_hot(safe, self.n_classes).permute(0, 3, 1, 2).to(logits.dtype)
        dice = self.dice(logits, one_hot, mask=valid[:, None].to(logits.dtype))
        ce = self.ce(logits, target)
        return self.lambda_ce * ce + self.lambda_dice * dice
