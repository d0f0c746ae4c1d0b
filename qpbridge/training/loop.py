"""The training run: tile datasets in, a model directory out (:func:`train_model`, ``qpbridge train``).

The seed recipe (the defaults; each role's loss, batch and augmentation are :mod:`qpbridge.training.roles`):

- Adam, lr 1e-4 (constant, or ``cosine`` down to 0 at the last step); MONAI dictionary transforms for
  augmentation (:mod:`qpbridge.training.augment`).
- Train and validation tiles are split by slide (the manifest's ``slide`` column, or the slides named by
  ``val_slides``); with a single slide the split falls back to tiles, with a warning. Validation after every
  epoch (or every ``val_every`` steps); the best validation point (nuclei: pooled AJI; else mean foreground
  Dice, else lowest validation loss) is the model written. A nuclei model's post-processing thresholds are
  then tuned on the validation tiles (:mod:`qpbridge.training.nuclei`).
- Everything random is seeded: the network's initial weights by the seed, each epoch's tile order and each
  tile's augmentation by (seed, epoch, position). A resumed run continues the same sequence.

A run reads and checks the datasets, starts (a new network, a fine-tuned one, or the checkpoint it resumes:
:mod:`qpbridge.training.checkpoint`), trains epoch by epoch (validating and checkpointing after each), then
writes the best weights with their card (:mod:`qpbridge.training.card`) and ``training_log.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from qpbridge.atomic import atomic_write_bytes
from qpbridge.cards import CARD_FILE, ModelCard, NucleiParams, card_from_dict
from qpbridge.classes import IGNORE_LABEL, ClassInfo
from qpbridge.device import resolve_device, usable_cpu_count
from qpbridge.errors import InputError, OutputError
from qpbridge.metrics import ConfusionAccumulator, SegmentationMetrics
from qpbridge.models import build_network, load_model, save_model, state_dict_for_saving
from qpbridge.preprocess import check_color_space, normalize_rgb01
from qpbridge.tiles import DATASET_FORMAT, Split, TileDataset, TileRecord, read_tile_dataset, split_tiles
from qpbridge.training.card import check_init_classes, device_name, new_card, normalization, versions
from qpbridge.training.checkpoint import CHECKPOINT_DIR, Checkpoint, finite
from qpbridge.training.config import DEFAULT_EPOCHS, DEFAULT_LR, Recipe, TrainConfig, command_line, learning_rate
from qpbridge.training.data import CACHE_BYTES, TileTorchDataset, collate, combine_datasets, epoch_batches
from qpbridge.training.nuclei import NucleiPredictions, nuclei_metrics, tune_thresholds
from qpbridge.training.progress import EpochRecord, SilentProgress, TrainProgress
from qpbridge.training.roles import TrainingRole, training_role

__all__ = ["TRAINING_LOG", "TrainResult", "train_model"]

TRAINING_LOG = "training_log.json"

_Batches = DataLoader[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainResult:
    """What a run produced: the model written, its history and the warnings given."""

    out_dir: Path
    card: ModelCard
    steps: int
    best_step: int
    best_epoch: int
    step_losses: list[float]
    epochs: list[EpochRecord]
    warnings: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0

    @property
    def first_loss(self) -> float:
        """The first step's training loss of the whole run (resumed runs included)."""
        return self.step_losses[0]

    @property
    def last_loss(self) -> float:
        """The last step's training loss."""
        return self.step_losses[-1]


# --------------------------------------------------------------------------------------------- the run's parts
@dataclass(frozen=True)
class _Data:
    """The tile datasets of a run, checked to agree, and their tiles in order."""

    datasets: list[TileDataset]
    classes: tuple[ClassInfo, ...]
    mpp: float
    tile_px: int
    tiles: list[TileRecord]


@dataclass(frozen=True)
class _Saved:
    """A checkpoint being resumed: its state, weights and optimizer state, and its recipe and card."""

    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    best: dict[str, torch.Tensor]
    recipe: Recipe
    card: ModelCard


@dataclass(frozen=True)
class _Start:
    """The card and network a run starts from, and the model it was fine-tuned from (if any)."""

    card: ModelCard
    network: nn.Module
    init_info: dict[str, Any] | None


class _Clock:
    """Wall and CPU time of the run, a resumed run's earlier time included."""

    def __init__(self, wall_before_s: float, cpu_before_s: float) -> None:
        self.wall_before_s, self.cpu_before_s = wall_before_s, cpu_before_s
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def start(self) -> None:
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def wall_s(self) -> float:
        return self.wall_before_s + (time.perf_counter() - self.wall_start)

    def cpu_s(self) -> float:
        return self.cpu_before_s + (time.process_time() - self.cpu_start)


@dataclass
class _History:
    """Where the run stands: steps, losses, validation points and the best weights (what a checkpoint keeps)."""

    total_steps: int
    commands: list[str]
    best_state: dict[str, torch.Tensor]
    init_info: dict[str, Any] | None = None
    step: int = 0
    step_losses: list[float] = field(default_factory=list)
    epochs: list[EpochRecord] = field(default_factory=list)
    best_score: float = -math.inf
    best_step: int = 0
    best_epoch: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """What the epochs need: the network and its optimizer, loss and role, and where the run is written."""

    role: TrainingRole
    recipe: Recipe
    card: ModelCard
    network: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    device: torch.device
    steps_per_epoch: int
    num_workers: int
    checkpoint: Checkpoint
    clock: _Clock


def _checkpoint_state(run: _Run, history: _History) -> dict[str, Any]:
    return {
        "step": history.step,
        "total_steps": history.total_steps,
        "recipe": run.recipe.to_dict(),
        "card": run.card.to_dict(),
        "step_losses": history.step_losses,
        "epochs": [e.to_dict() for e in history.epochs],
        "best_score": history.best_score,
        "best_step": history.best_step,
        "best_epoch": history.best_epoch,
        "best_metrics": history.best_metrics,
        "commands": history.commands,
        "wall_time_s": run.clock.wall_s(),
        "cpu_time_s": run.clock.cpu_s(),
        "init_from": history.init_info,
    }


# --------------------------------------------------------------------------------------------- the run
def train_model(
    dataset_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    progress: TrainProgress | None = None,
) -> TrainResult:
    """Train a roi or cell U-Net on tile datasets and write a complete model directory.

    Parameters
    ----------
    dataset_dirs
        Tile datasets written by ``qpbridge masks`` (their classes, um/px and tile size must agree).
    out_dir
        The model directory to write: ``card.json``, ``weights.safetensors``, ``training_log.json`` and
        ``checkpoint/`` (for ``resume``).
    config
        The run's options (:class:`~qpbridge.training.config.TrainConfig`); unset values follow the seed recipe.
    progress
        Receives steps, epochs and messages (default: silent).

    Examples
    --------
    >>> result = train_model(["tiles/"], "models/my-cell", TrainConfig(role="cell", epochs=30))  # doctest: +SKIP
    >>> result.card.metrics["mean_dice_foreground"]  # doctest: +SKIP
    """
    config.check()
    report: TrainProgress = progress or SilentProgress()
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        report.on_message(text)

    out = Path(out_dir)
    dirs = [Path(d) for d in dataset_dirs]
    device = resolve_device(config.device)
    checkpoint = Checkpoint(out)
    _check_output(out, config, checkpoint)
    data = _read_data(dirs, config.role, note)
    saved = _resume_from(checkpoint, out, config, note) if config.resume else None
    recipe = saved.recipe if saved is not None else _new_recipe(config)
    split, split_notes = split_tiles(data.tiles, recipe.val_fraction, recipe.seed, recipe.val_slides)
    for text in split_notes:
        note(text)
    train_tiles = [data.tiles[i] for i in split.train]
    val_tiles = [data.tiles[i] for i in split.val]
    torch.manual_seed(recipe.seed)  # before the network is built: the seed decides its initial weights
    start = _resumed_start(saved) if saved is not None else _new_start(config, out, data, train_tiles)
    run = _start_run(config, recipe, start, saved, data.tile_px, len(train_tiles), device, checkpoint)
    history = _start_history(config, saved, start, run, command_line(dirs, out, config))
    if saved is not None and history.step >= history.total_steps:
        note(f"the checkpoint is already at step {history.step} of {history.total_steps}: writing the model "
             "without training")  # fmt: skip
    cache = config.num_workers == 0 and len(data.tiles) * data.tile_px * data.tile_px * 4 <= CACHE_BYTES
    augmentation = run.role.augmentation(run.card, recipe.augment)
    instances = run.role.instances
    train_ds = TileTorchDataset(train_tiles, data.tile_px, augmentation=augmentation, cache=cache, instances=instances)
    val_ds = TileTorchDataset(val_tiles, data.tile_px, cache=cache, instances=instances)
    val_loader = _loader(val_ds, run, batch_size=recipe.batch_size, shuffle=False) if val_tiles else None
    _train_epochs(run, history, train_ds, val_loader, config.threads, report)
    if instances and val_loader is not None:
        _tune_nuclei(run, history, val_loader, data.mpp)
    return _write_model(out, run, history, data, split, notes)


def _check_output(out: Path, config: TrainConfig, checkpoint: Checkpoint) -> None:
    """A new run needs a new (or empty) ``-o``; a resumed one its checkpoint."""
    if config.resume and not checkpoint.exists():
        raise InputError(
            f"nothing to resume in {out}: it has no {CHECKPOINT_DIR}/state.json; start a new run without --resume"
        )
    if not config.resume and ((out / CARD_FILE).exists() or checkpoint.dir.exists()):
        raise OutputError(
            f"{out} already holds a model or a training checkpoint: pass --resume to continue "
            "training it, or choose another -o"
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out} is a file; give a directory for the model")


def _read_data(dirs: Sequence[Path], role: str, note: Callable[[str], None]) -> _Data:
    datasets = [read_tile_dataset(d) for d in dirs]
    classes, mpp, tile_px = combine_datasets(datasets, role)
    skipped = sum(ds.n_fully_ignored for ds in datasets)
    if skipped:
        note(f"{skipped} tile(s) left out: their masks are entirely 'ignore' ({IGNORE_LABEL})")
    return _Data(datasets, classes, mpp, tile_px, [t for ds in datasets for t in ds.tiles])


# --------------------------------------------------------------------------------------------- prepare / resume
def _new_recipe(config: TrainConfig) -> Recipe:
    role = training_role(config.role)
    return Recipe(
        role=config.role,
        batch_size=config.batch_size or role.batch_size,
        lr=config.lr or DEFAULT_LR,
        seed=config.seed,
        val_fraction=config.val_fraction,
        augment=config.augment,
        loss=role.loss_text,
        lr_schedule=config.lr_schedule or "constant",
        val_slides=list(config.val_slides) if config.val_slides else None,
        val_every=config.val_every,
    )


def _resume_from(checkpoint: Checkpoint, out: Path, config: TrainConfig, note: Callable[[str], None]) -> _Saved:
    """The checkpoint's state: its recipe is kept (options that would change it are ignored, with a note)."""
    state, model, optimizer, best = checkpoint.load()
    recipe = Recipe(**state["recipe"])
    if recipe.role != config.role:
        raise InputError(f"{out} holds a {recipe.role} run but --role is {config.role}")
    for flag, given, kept in (("--batch-size", config.batch_size, recipe.batch_size), ("--lr", config.lr, recipe.lr)):
        if given is not None and given != kept:
            note(f"{flag} {given} ignored: a resumed run keeps its checkpoint's {kept}")
    card = card_from_dict(state["card"], f"{checkpoint.state_path} (card)")
    return _Saved(state, model, optimizer, best, recipe, card)


def _resumed_start(saved: _Saved) -> _Start:
    network = build_network(saved.card.architecture)
    network.load_state_dict(saved.model)
    return _Start(saved.card, network, None)


def _new_start(config: TrainConfig, out: Path, data: _Data, train_tiles: Sequence[TileRecord]) -> _Start:
    """A new card and network: fine-tuned from ``--init-from``, else built with the tiles' normalisation."""
    name = config.name or out.resolve().name
    if config.init_from is not None:
        return _fine_tune_start(config, config.init_from, name, data)
    color_space = check_color_space(config.color_space or "RGB")
    norm = normalization(train_tiles, data.tile_px, color_space, training_role(config.role).instances)
    card = new_card(config, name, data.classes, data.mpp, data.tile_px, color_space, norm)
    return _Start(card, build_network(card.architecture), None)


def _fine_tune_start(config: TrainConfig, init_from: str, name: str, data: _Data) -> _Start:
    parent = load_model(init_from, role=config.role)
    check_init_classes(parent.card, data.classes, data.mpp)
    if config.color_space is not None and check_color_space(config.color_space) != parent.card.color_space:
        raise InputError(
            f"--color-space {config.color_space} differs from {parent.card.name!r}'s "
            f"{parent.card.color_space}: fine-tuning keeps the model's colour space"
        )
    card = replace(
        parent.card,
        name=name,
        training={},
        metrics={},
        license=config.license or parent.card.license,
        intended_use=config.intended_use or parent.card.intended_use,
        domain=config.domain or parent.card.domain,
    )
    init_info = {"name": parent.card.name, "path": str(parent.path), "sha256": parent.card.weights_sha256}
    return _Start(card, parent.network, init_info)


def _start_run(
    config: TrainConfig,
    recipe: Recipe,
    start: _Start,
    saved: _Saved | None,
    tile_px: int,
    n_train: int,
    device: torch.device,
    checkpoint: Checkpoint,
) -> _Run:
    """The network on its device with its optimizer (a resumed run's state restored) and loss."""
    factor = math.prod(start.card.architecture.args["strides"])
    if tile_px % factor:
        raise InputError(
            f"tiles of {tile_px} px do not fit the U-Net (its strides need a multiple of {factor}): "
            f"export tiles with --tile-px a multiple of {factor}"
        )
    network = start.network
    network.to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=recipe.lr)
    if saved is not None:
        optimizer.load_state_dict(saved.optimizer)
    role = training_role(recipe.role)
    loss_fn = role.make_loss(len(start.card.classes)).to(device)
    clock = _Clock(float(saved.state["wall_time_s"]), float(saved.state["cpu_time_s"])) if saved else _Clock(0.0, 0.0)
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    return _Run(
        role, recipe, start.card, network, optimizer, loss_fn, device, steps_per_epoch, config.num_workers,
        checkpoint, clock,
    )  # fmt: skip


def _start_history(config: TrainConfig, saved: _Saved | None, start: _Start, run: _Run, command: str) -> _History:
    """Step 0 of a new run, or where the checkpoint left off; the run's length in steps."""
    if config.steps is not None:
        total_steps = config.steps
    elif config.epochs is not None:
        total_steps = config.epochs * run.steps_per_epoch
    elif saved is not None:
        total_steps = int(saved.state["total_steps"])
    else:
        total_steps = DEFAULT_EPOCHS * run.steps_per_epoch
    if saved is None:
        return _History(total_steps, [command], state_dict_for_saving(run.network), start.init_info)
    state = saved.state
    return _History(
        total_steps,
        [*state["commands"], command],
        saved.best,
        start.init_info,
        step=int(state["step"]),
        step_losses=list(state["step_losses"]),
        epochs=[EpochRecord(**e) for e in state["epochs"]],
        best_score=float(state["best_score"]),
        best_step=int(state["best_step"]),
        best_epoch=int(state["best_epoch"]),
        best_metrics=dict(state["best_metrics"]),
    )


# --------------------------------------------------------------------------------------------- the epochs
def _loader(dataset: TileTorchDataset, run: _Run, **options: Any) -> _Batches:
    return DataLoader(
        dataset, num_workers=run.num_workers, collate_fn=collate, pin_memory=run.device.type == "cuda", **options
    )


def _train_epochs(
    run: _Run,
    history: _History,
    train_ds: TileTorchDataset,
    val_loader: _Batches | None,
    threads: int | None,
    report: TrainProgress,
) -> None:
    """Train to ``history.total_steps``, validating and checkpointing at the end of each epoch (or every
    ``val_every`` steps) and at the last step."""
    previous_threads = torch.get_num_threads()
    if run.device.type == "cpu":
        torch.set_num_threads(threads or usable_cpu_count())
    run.clock.start()
    report.on_start(history.total_steps, history.step, run.steps_per_epoch)
    every = run.recipe.val_every or run.steps_per_epoch
    try:
        epoch_losses: list[float] = []
        while history.step < history.total_steps:
            next_point = min(history.total_steps, (history.step // every + 1) * every)
            epoch_losses += _train_steps(run, history, train_ds, report, next_point)
            if history.step == next_point:
                record = _validation_point(run, history, val_loader, epoch_losses)
                epoch_losses = []
                report.on_epoch(record)
                run.checkpoint.save(_checkpoint_state(run, history), run.network, run.optimizer, history.best_state)
    finally:
        torch.set_num_threads(previous_threads)


def _train_steps(
    run: _Run, history: _History, train_ds: TileTorchDataset, report: TrainProgress, until: int
) -> list[float]:
    """The rest of the current epoch up to step ``until``, one optimizer step per batch; their losses."""
    steps_per_epoch, seed = run.steps_per_epoch, run.recipe.seed
    epoch = history.step // steps_per_epoch
    batches = epoch_batches(len(train_ds), run.recipe.batch_size, seed, epoch)[history.step % steps_per_epoch :]
    batches = batches[: until - history.step]
    losses: list[float] = []
    for images, labels in _loader(train_ds, run, batch_sampler=batches):
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(run.recipe, history.step, history.total_steps)
        images = images.to(run.device, non_blocking=True)
        labels = labels.to(run.device, non_blocking=True)
        inputs = normalize_rgb01(images, run.card.color_space, run.card.norm_mean, run.card.norm_std)
        loss = run.loss_fn(run.network(inputs), labels)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        history.step += 1
        value = float(loss.detach())
        history.step_losses.append(value)
        losses.append(value)
        report.on_step(history.step, value)
    return losses


def _validation_point(
    run: _Run, history: _History, val_loader: _Batches | None, epoch_losses: Sequence[float]
) -> EpochRecord:
    """Validate (when there are validation tiles), keep the weights if they are the best so far, record it."""
    val_loss: float | None = None
    val_dice: float | None = None
    val_dict: dict[str, Any] | None = None
    if val_loader is not None and run.role.instances:
        val_dict = _evaluate_nuclei(run, val_loader)
        val_loss, val_dice, score = val_dict["val_loss"], val_dict["val_dice"], val_dict["val_aji"]
    elif val_loader is not None:
        val_loss, val_metrics = _evaluate(run, val_loader)
        val_dice = None if math.isnan(val_metrics.mean_dice_foreground) else val_metrics.mean_dice_foreground
        val_dict = _jsonable_metrics(val_metrics, val_loss)
        score = val_dice if val_dice is not None else -val_loss
    else:
        score = float(history.step)  # no validation: the latest weights are the best known
    epoch = math.ceil(history.step / run.steps_per_epoch)
    is_best = score > history.best_score
    if is_best:
        history.best_score, history.best_step, history.best_epoch = score, history.step, epoch
        history.best_state = state_dict_for_saving(run.network)
        history.best_metrics = val_dict or {}
    record = EpochRecord(
        epoch=epoch,
        step=history.step,
        train_loss=float(np.mean(epoch_losses)) if epoch_losses else math.nan,
        val_loss=val_loss,
        val_dice=val_dice,
        is_best=is_best,
        wall_time_s=run.clock.wall_s(),
        val_metrics=val_dict,
        val_aji=val_dict.get("val_aji") if val_dict else None,
        val_pq=val_dict.get("val_pq") if val_dict else None,
    )
    history.epochs.append(record)
    return record


def _evaluate(run: _Run, loader: _Batches) -> tuple[float, SegmentationMetrics]:
    run.network.eval()
    n_classes = len(run.card.classes)
    accumulator = ConfusionAccumulator(list(range(n_classes)), [c.name for c in run.card.classes])
    total, count = 0.0, 0
    threshold = run.card.threshold if run.card.threshold is not None else 0.5
    with torch.inference_mode():
        for images, labels in loader:
            images = images.to(run.device, non_blocking=True)
            labels = labels.to(run.device, non_blocking=True)
            inputs = normalize_rgb01(images, run.card.color_space, run.card.norm_mean, run.card.norm_std)
            logits = run.network(inputs)
            total += float(run.loss_fn(logits, labels)) * images.shape[0]
            count += images.shape[0]
            probs = run.role.probabilities(logits)
            accumulator.update(run.role.labels(probs, threshold), labels, probs.transpose(0, 1))
    run.network.train()
    return total / max(count, 1), accumulator.result()


def _nuclei_predictions(run: _Run, loader: _Batches, mpp: float) -> tuple[float, NucleiPredictions]:
    """The validation loss over the tiles' contour targets, and the softmax of each tile with its instances."""
    from qpbridge.training.augment import training_targets

    boundary_px = run.card.nuclei.boundary_px if run.card.nuclei else 2
    run.network.eval()
    total, count = 0.0, 0
    probs: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    with torch.inference_mode():
        for images, instances in loader:
            refs += [x.numpy().astype(np.int32) for x in instances]
            targets = torch.stack([torch.from_numpy(training_targets(r, boundary_px)) for r in refs[count:]])
            images = images.to(run.device, non_blocking=True)
            inputs = normalize_rgb01(images, run.card.color_space, run.card.norm_mean, run.card.norm_std)
            logits = run.network(inputs)
            total += float(run.loss_fn(logits, targets.long().to(run.device))) * images.shape[0]
            count += images.shape[0]
            probs += list(run.role.probabilities(logits).float().cpu().numpy())
    run.network.train()
    return total / max(count, 1), NucleiPredictions(probs, refs, mpp)


def _evaluate_nuclei(run: _Run, loader: _Batches) -> dict[str, Any]:
    """``val_loss`` and the pooled instance scores (``val_aji``, ``val_dice``, ``val_pq``, ...) with the card's
    post-processing."""
    val_loss, predictions = _nuclei_predictions(run, loader, run.card.mpp)
    scores = predictions.scores(run.card.nuclei or NucleiParams())
    return {"val_loss": val_loss, **nuclei_metrics(scores, "val_"), "split": "validation"}


def _tune_nuclei(run: _Run, history: _History, loader: _Batches, mpp: float) -> None:
    """With the best weights, choose the card's foreground and marker thresholds on the validation tiles."""
    run.network.load_state_dict(history.best_state)
    _, predictions = _nuclei_predictions(run, loader, mpp)
    params, scores = tune_thresholds(predictions, run.card.nuclei or NucleiParams())
    run.card = replace(run.card, nuclei=params)
    history.best_metrics = {**history.best_metrics, **nuclei_metrics(scores), "thresholds_tuned_on": "validation"}


def _jsonable_metrics(metrics: SegmentationMetrics, val_loss: float) -> dict[str, Any]:
    out = metrics.to_dict()
    out["val_loss"] = val_loss
    out["split"] = "validation"
    return out


# --------------------------------------------------------------------------------------------- card and log
def _write_model(
    out: Path, run: _Run, history: _History, data: _Data, split: Split, notes: list[str]
) -> TrainResult:
    """Write the best weights with their card, and ``training_log.json``; checkpoint a run that trained no step."""
    state = _checkpoint_state(run, history)
    if not run.checkpoint.exists():
        run.checkpoint.save(state, run.network, run.optimizer, history.best_state)
    final_network = build_network(run.card.architecture)
    final_network.load_state_dict(history.best_state)
    training = _training_record(run, history, data, split, state)
    card = replace(run.card, training=finite(training), metrics=finite(history.best_metrics))
    written = save_model(out, card, final_network)
    log = {
        "step_losses": history.step_losses,
        "epochs": [e.to_dict() for e in history.epochs],
        "warnings": notes,
        "best_step": history.best_step,
        "commands": history.commands,
    }
    atomic_write_bytes(out / TRAINING_LOG, (json.dumps(finite(log), indent=1, allow_nan=False) + "\n").encode("utf-8"))
    return TrainResult(
        out,
        written,
        history.step,
        history.best_step,
        history.best_epoch,
        history.step_losses,
        history.epochs,
        notes,
        float(state["wall_time_s"]),
        float(state["cpu_time_s"]),
    )


def _training_record(run: _Run, history: _History, data: _Data, split: Split, state: dict[str, Any]) -> dict[str, Any]:
    """The card's ``training``: data, split, recipe, commands, best step, device, times, parent, versions."""
    return {
        "data": [
            {
                "path": str(ds.path),
                "format": DATASET_FORMAT,
                "n_tiles": len(ds.tiles),
                "slides": ds.slides,
                "mpp": ds.mpp,
                "tile_px": ds.tile_px,
            }
            for ds in data.datasets
        ],
        "split": {
            "by": split.by,
            "train_slides": list(split.train_slides),
            "val_slides": list(split.val_slides),
            "n_train_tiles": len(split.train),
            "n_val_tiles": len(split.val),
        },
        "recipe": {
            **run.recipe.to_dict(),
            "tile_px": data.tile_px,
            "steps": history.step,
            "steps_per_epoch": run.steps_per_epoch,
            "augmentation": run.role.augmentation_text if run.recipe.augment else "none",
        },
        "commands": history.commands,
        "best_step": history.best_step,
        "best_epoch": history.best_epoch,
        "device": device_name(run.device),
        "cpu_time_s": round(state["cpu_time_s"], 2),
        "wall_time_s": round(state["wall_time_s"], 2),
        "gpu_time_s": round(state["wall_time_s"], 2) if run.device.type == "cuda" else None,
        "init_from": history.init_info,
        "versions": versions(),
    }
