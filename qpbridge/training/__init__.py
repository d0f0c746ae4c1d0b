"""Training the ROI and cell U-Nets on tile datasets written by ``qpbridge masks`` (``qpbridge train``).

The package follows a run: :mod:`~qpbridge.training.config` (what it is asked to do),
:mod:`~qpbridge.training.data` (tiles as tensors, seeded batches), :mod:`~qpbridge.training.roles` (what each
model role trains with: :mod:`~qpbridge.training.losses` and :mod:`~qpbridge.training.augment`),
:mod:`~qpbridge.training.loop` (:func:`train_model`: prepare or resume, the epochs, the model written),
:mod:`~qpbridge.training.checkpoint`, :mod:`~qpbridge.training.card` and :mod:`~qpbridge.training.progress`.
Reading the tile datasets themselves is :mod:`qpbridge.tiles`.

Example
-------
>>> from qpbridge.training import TrainConfig, train_model
>>> result = train_model(["tiles/"], "models/my-cell", TrainConfig(role="cell", epochs=30))  # doctest: +SKIP
"""

from qpbridge.training.augment import RandHEDJitterd, build_augmentation
from qpbridge.training.checkpoint import CHECKPOINT_DIR
from qpbridge.training.config import DEFAULT_EPOCHS, DEFAULT_LR, Recipe, TrainConfig, command_line
from qpbridge.training.data import TileTorchDataset
from qpbridge.training.loop import TRAINING_LOG, TrainResult, train_model
from qpbridge.training.losses import MaskedBCELoss, MaskedDiceCELoss
from qpbridge.training.progress import EpochRecord, SilentProgress, TrainProgress
from qpbridge.training.roles import TRAINING_ROLES, TrainingRole, make_loss, probabilities, training_role

__all__ = [
    "CHECKPOINT_DIR",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "TRAINING_LOG",
    "TRAINING_ROLES",
    "EpochRecord",
    "MaskedBCELoss",
    "MaskedDiceCELoss",
    "RandHEDJitterd",
    "Recipe",
    "SilentProgress",
    "TileTorchDataset",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingRole",
    "build_augmentation",
    "command_line",
    "make_loss",
    "probabilities",
    "train_model",
    "training_role",
]
