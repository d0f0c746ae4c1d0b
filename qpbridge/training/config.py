"""What a training run is asked to do (:class:`TrainConfig`), what it resolves that to (:class:`Recipe`), and the
``qpbridge train`` command line that repeats it."""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qpbridge.cards import DOMAINS
from qpbridge.errors import InputError
from qpbridge.preprocess import check_color_space
from qpbridge.training.roles import training_role

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_LR", "LR_SCHEDULES", "Recipe", "TrainConfig", "command_line", "learning_rate"]

DEFAULT_EPOCHS = 20
DEFAULT_LR = 1e-4
#: ``--lr-schedule``: ``constant`` (the seed recipe) or ``cosine`` (from lr down to 0 at the last step).
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """What ``qpbridge train`` was asked to do. ``None`` means: the role's seed recipe (or the checkpoint's)."""

    role: str
    name: str | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    val_fraction: float = 0.2
    init_from: str | None = None
    resume: bool = False
    device: str = "cpu"
    seed: int = 0
    color_space: str | None = None
    num_workers: int = 0
    threads: int | None = None
    channels: tuple[int, ...] | None = None
    augment: bool = True
    license: str | None = None
    intended_use: str | None = None
    domain: str | None = None  #: training domain for the card (synthetic / real); default: unknown, or the parent's
    lr_schedule: str | None = None  #: one of :data:`LR_SCHEDULES`; default constant (or the checkpoint's)
    val_slides: tuple[str, ...] | None = None  #: these slides validate (instead of ``val_fraction``)
    val_every: int | None = None  #: validate every N steps instead of after every epoch

    def check(self) -> None:
        """Raise :class:`InputError` for a value out of range."""
        training_role(self.role)  # a role training knows
        if self.epochs is not None and self.steps is not None:
            raise InputError("give --epochs or --steps, not both")
        if self.epochs is not None and self.epochs < 1:
            raise InputError(f"--epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if self.num_workers < 0:
            raise InputError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.channels is not None and (len(self.channels) < 2 or min(self.channels) < 1):
            raise InputError(f"--channels needs at least 2 positive numbers, got {list(self.channels)}")
        if self.resume and self.init_from is not None:
            raise InputError("--resume continues a run that already knows its start: drop --init-from")
        if self.color_space is not None:
            check_color_space(self.color_space)
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"--lr-schedule must be {' or '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.val_every is not None and self.val_every < 1:
            raise InputError(f"--val-every must be >= 1, got {self.val_every}")
        if self.val_slides is not None and not self.val_slides:
            raise InputError("--val-slides names no slide: give slide ids separated by commas")
        if self.domain is not None and self.domain not in DOMAINS:
            raise InputError(f"--domain must be one of {', '.join(DOMAINS)}, got {self.domain!r}")


@dataclass(frozen=True)
class Recipe:
    """The resolved hyper-parameters of a run (stored in the checkpoint and the card)."""

    role: str
    batch_size: int
    lr: float
    seed: int
    val_fraction: float
    augment: bool
    optimizer: str = "Adam"
    loss: str = ""
    lr_schedule: str = "constant"
    val_slides: list[str] | None = None
    val_every: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def learning_rate(recipe: Recipe, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``.

    Examples
    --------
    >>> r = Recipe("nuclei", 8, 1e-3, 0, 0.2, True, lr_schedule="cosine")
    >>> learning_rate(r, 0, 100), round(learning_rate(r, 50, 100), 6), learning_rate(r, 100, 100)
    (0.001, 0.0005, 0.0)
    """
    if recipe.lr_schedule == "cosine" and total_steps > 0:
        return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return recipe.lr


def command_line(dataset_dirs: Sequence[Path], out_dir: Path, config: TrainConfig) -> str:
    """The ``qpbridge train`` command equivalent to a call of :func:`train_model` (recorded in the card)."""
    parts = ["qpbridge", "train", *[str(d) for d in dataset_dirs], "-o", str(out_dir), "--role", config.role]
    options: list[tuple[str, Any]] = [
        ("--name", config.name),
        ("--epochs", config.epochs),
        ("--steps", config.steps),
        ("--batch-size", config.batch_size),
        ("--lr", config.lr),
        ("--init-from", config.init_from),
        ("--color-space", config.color_space),
        ("--lr-schedule", config.lr_schedule),
        ("--val-slides", ",".join(config.val_slides) if config.val_slides else None),
        ("--val-every", config.val_every),
    ]
    for flag, value in options:
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--val-fraction", str(config.val_fraction), "--seed", str(config.seed), "--device", config.device]
    if config.channels:
        parts += ["--channels", ",".join(str(c) for c in config.channels)]
    if config.resume:
        parts.append("--resume")
    if not config.augment:
        parts.append("--no-augment")
    return shlex.join(parts)
