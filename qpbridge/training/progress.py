"""What a run reports while it goes: a record per validation point, and the listener that receives them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["EpochRecord", "SilentProgress", "TrainProgress"]


@dataclass(frozen=True)
class EpochRecord:
    """One validation point: after an epoch (or at the last step)."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float | None
    val_dice: float | None
    is_best: bool
    wall_time_s: float
    val_metrics: dict[str, Any] | None = None
    val_aji: float | None = None  #: nuclei: pooled AJI of the validation tiles
    val_pq: float | None = None  #: nuclei: pooled panoptic quality

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


class TrainProgress(Protocol):
    """What :func:`train_model` reports while it runs (the CLI draws a progress bar from it)."""

    def on_start(self, total_steps: int, start_step: int, steps_per_epoch: int) -> None: ...  # noqa: D102

    def on_step(self, step: int, loss: float) -> None: ...  # noqa: D102

    def on_epoch(self, record: EpochRecord) -> None: ...  # noqa: D102

    def on_message(self, text: str) -> None: ...  # noqa: D102


class SilentProgress:
    """A :class:`TrainProgress` that reports nothing."""

    def on_start(self, total_steps: int, start_step: int, steps_per_epoch: int) -> None:  # noqa: D102
        pass

    def on_step(self, step: int, loss: float) -> None:  # noqa: D102
        pass

    def on_epoch(self, record: EpochRecord) -> None:  # noqa: D102
        pass

    def on_message(self, text: str) -> None:  # noqa: D102
        pass
