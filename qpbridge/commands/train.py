"""``qpbridge train DATASET... -o MODEL_DIR --role roi|cell|nuclei``: train a U-Net on tile datasets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from qpbridge.commands._common import err_console, reported_errors, warn
from qpbridge.commands._options import DEVICE_HELP
from qpbridge.errors import InputError

if TYPE_CHECKING:  # the library (and torch) is imported when the command runs, not at CLI start-up
    from qpbridge.training import EpochRecord


class _RichProgress:
    """Draws :func:`qpbridge.training.train_model`'s progress on stderr: a step bar, a line per epoch.

    The bar appears once training starts (not while datasets are checked), and is stopped by :meth:`close`.
    """

    def __init__(self) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.progress = Progress(*columns, console=err_console, transient=False)
        self.task: TaskID | None = None

    def on_start(self, total_steps: int, start_step: int, steps_per_epoch: int) -> None:
        if start_step:
            err_console.print(f"resuming at step {start_step} of {total_steps}", highlight=False)
        self.progress.start()
        self.task = self.progress.add_task("training", total=total_steps, completed=start_step, loss="")

    def on_step(self, step: int, loss: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=step, loss=f"loss {loss:.4f}")

    def on_epoch(self, record: EpochRecord) -> None:
        parts = [f"epoch {record.epoch} (step {record.step}): train loss {record.train_loss:.4f}"]
        if record.val_loss is not None:
            parts.append(f"val loss {record.val_loss:.4f}")
        if record.val_aji is not None:
            parts.append(f"val AJI {record.val_aji:.4f}")
        if record.val_dice is not None:
            parts.append(f"val Dice {record.val_dice:.4f}")
        if record.val_pq is not None:
            parts.append(f"val PQ {record.val_pq:.4f}")
        err_console.print(", ".join(parts) + ("  [best]" if record.is_best else ""), highlight=False, markup=False)

    def on_message(self, text: str) -> None:
        err_console.print(f"warning: {text}", highlight=False, markup=False)

    def close(self) -> None:
        self.progress.stop()


def _parse_channels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise InputError(f"--channels {text!r} is not a comma-separated list of integers, e.g. 16,32,64,128") from None


def _parse_slides(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _summary(result: object) -> str:
    """``best step N (epoch E)`` and the model's validation scores."""
    from qpbridge.training import TrainResult

    assert isinstance(result, TrainResult)
    metrics, card = result.card.metrics, result.card
    summary = f"best step {result.best_step} (epoch {result.best_epoch})"
    aji, dice = metrics.get("aji"), metrics.get("mean_dice_foreground")
    if isinstance(aji, float) and math.isfinite(aji) and card.nuclei is not None:
        summary += (f", validation AJI {aji:.4f}, Dice {metrics['dice']:.4f}, PQ {metrics['pq']:.4f} "
                    f"(foreground_threshold {card.nuclei.foreground_threshold}, "
                    f"marker_threshold {card.nuclei.marker_threshold})")  # fmt: skip
    elif isinstance(dice, float) and math.isfinite(dice):
        summary += f", validation Dice {dice:.4f}"
    return summary


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command(
        "train",
        help=(
            "Train a roi, cell or nuclei U-Net on tile datasets written by `qpbridge masks`, and write a model "
            "directory (card.json, weights.safetensors, training_log.json, checkpoint/).\n\n"
            "Defaults follow the seed recipe: Adam lr 1e-4 constant; roi: batch 16, BCE; cell: batch 8, "
            "0.5 CE + 0.5 Dice; nuclei: batch 8, 0.5 CE + 0.5 Dice over background/nucleus/boundary targets made "
            "from the instance tiles, the best validation AJI kept, then the card's post-processing thresholds "
            "tuned on the validation tiles; label 255 ignored; validation split by slide; the best validation "
            "point is kept.\n\n"
            "Examples:\n\n"
            "  qpbridge train tiles/ -o models/my-cell --role cell --epochs 30\n\n"
            "  qpbridge train tiles/ more-tiles/ -o models/tuned --role cell --init-from deepbatch-synth-cell\n\n"
            "  qpbridge train tiles/ -o models/my-cell --role cell --epochs 60 --resume\n\n"
            "  qpbridge train nuclei-tiles/ -o models/my-nuclei --role nuclei --steps 3000 --lr 1e-3 "
            "--lr-schedule cosine --val-slides S1,S2 --val-every 250"
        ),
    )
    def train_cmd(
        datasets: list[Path] = typer.Argument(..., metavar="DATASET_DIR...", help="Tile datasets (qpbridge masks)."),
        out_dir: Path = typer.Option(..., "-o", "--output", help="Model directory to write."),
        role: str = typer.Option(..., "--role", help="roi (low-magnification regions), cell or nuclei."),
        name: str | None = typer.Option(None, "--name", help="Model name in the card (default: the directory's)."),
        epochs: int | None = typer.Option(None, "--epochs", help="Epochs in all (default 20)."),
        steps: int | None = typer.Option(None, "--steps", help="Optimizer steps in all, instead of --epochs."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Tiles per step (roi 16, cell 8)."),
        lr: float | None = typer.Option(None, "--lr", help="Adam learning rate (1e-4)."),
        lr_schedule: str | None = typer.Option(
            None, "--lr-schedule", help="constant (default) or cosine (from --lr down to 0 at the last step)."),
        val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of slides kept for validation."),
        val_slides: str | None = typer.Option(
            None, "--val-slides", help="Validate on these slides (ids, comma-separated) instead of --val-fraction."),
        val_every: int | None = typer.Option(
            None, "--val-every", help="Validate every N steps (default: after every epoch)."),
        init_from: str | None = typer.Option(None, "--init-from", help="Fine-tune this model (name or path)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run checkpointed in the -o directory."),
        device: str = typer.Option("cpu", "--device", help=DEVICE_HELP + "."),
        seed: int = typer.Option(0, "--seed", help="Seed of the split, weights, order and augmentation."),
        color_space: str | None = typer.Option(None, "--color-space", help="RGB (default), HSV, YCrCb or LAB."),
        num_workers: int = typer.Option(0, "--num-workers", help="Tile-loading worker processes."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch (default: all usable)."),
        channels: str | None = typer.Option(None, "--channels", help="U-Net channels, e.g. 16,32,64,128."),
        augment: bool = typer.Option(True, "--augment/--no-augment", help="Flip/rotate/stain-jitter tiles."),
        license_: str | None = typer.Option(None, "--license", help="Licence written into the card."),
        intended_use: str | None = typer.Option(None, "--intended-use", help="Intended use written into the card."),
        domain: str | None = typer.Option(
            None, "--domain", help="What the tiles come from, written into the card: real (H&E slides) or synthetic "
                                   "(qpbridge synth) [default: unknown; with --init-from, the parent's]."),
    ) -> None:
        with reported_errors():
            from qpbridge.training import TrainConfig, train_model

            config = TrainConfig(
                role=role, name=name, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                val_fraction=val_fraction, init_from=init_from, resume=resume, device=device, seed=seed,
                color_space=color_space, num_workers=num_workers, threads=threads, channels=_parse_channels(channels),
                augment=augment, license=license_, intended_use=intended_use, domain=domain,
                lr_schedule=lr_schedule, val_slides=_parse_slides(val_slides), val_every=val_every,
            )
            progress = _RichProgress()
            try:
                result = train_model(datasets, out_dir, config, progress=progress)
            finally:
                progress.close()
            summary = _summary(result)
            if not result.card.metrics:
                warn("no validation tiles: the model is the last step's weights, with no validation metrics")
            typer.echo(f"model written to {result.out_dir}: {result.steps} steps, {summary}, "
                       f"{result.wall_time_s:.1f} s")
