"""Training the ROI and cell U-Nets on tile datasets written by ``qpbridge masks``.

The seed recipe (the defaults):

- ``roi``: one sigmoid output, ``BCEWithLogitsLoss`` over the pixels not marked ignore (255), Adam lr 1e-4,
  batch 16.
- ``cell``: one softmax channel per class, 0.5 x cross-entropy + 0.5 x Dice (MONAI's ``DiceCELoss`` split into
  its parts so that ignored pixels are really left out of both), Adam lr 1e-4, batch 8.
- MONAI dictionary transforms for augmentation: flips, 90 degree rotations (image and mask), and on the image
  only a small jitter in haematoxylin-eosin-DAB space and a contrast (gamma) change.
- Train and validation tiles are split by slide (the manifest's ``slide`` column); with a single slide the
  split falls back to tiles, with a warning. Validation after every epoch; the best epoch (mean foreground
  Dice, else lowest validation loss) is the model written.
- Everything random is seeded: the network's initial weights by the seed, each epoch's tile order and each
  tile's augmentation by (seed, epoch, position). A resumed run continues the same sequence.

The checkpoint (``MODEL_DIR/checkpoint/``) holds the current and best weights and the optimizer state as
safetensors and the rest as JSON (no pickle); ``state.json`` is written last and names the files, so an
interrupted checkpoint is never half-read.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform
from torch import nn

from qpbridge.classes import DEEPBATCH_CLASSES, IGNORE_LABEL, ClassInfo
from qpbridge.device import resolve_device, usable_cpu_count
from qpbridge.errors import InputError, ModelError, OutputError
from qpbridge.metrics import ConfusionAccumulator, SegmentationMetrics
from qpbridge.models import (
    CARD_FILE,
    DEFAULT_INTENDED_USE,
    CardClass,
    ModelCard,
    atomic_write_bytes,
    build_network,
    card_from_dict,
    default_architecture,
    load_model,
    save_model,
    state_dict_for_saving,
)
from qpbridge.preprocess import channel_statistics, check_color_space, normalize_rgb01
from qpbridge.tiles import DATASET_FORMAT, TileDataset, TileRecord, read_tile, read_tile_dataset, split_tiles

CHECKPOINT_DIR = "checkpoint"
TRAINING_LOG = "training_log.json"
DEFAULT_EPOCHS = 20
DEFAULT_BATCH = {"roi": 16, "cell": 8}
DEFAULT_LR = 1e-4
#: Licence written into a newly trained card unless given (its intended use: models.DEFAULT_INTENDED_USE).
DEFAULT_LICENSE = "same terms as the training data (set this before sharing the model)"
#: Tiles used to compute a new card's normalisation statistics.
NORMALIZATION_TILES = 64
#: Decoded tiles kept in memory (single-process loading) up to this many bytes.
CACHE_BYTES = 1 << 30
#: Relative difference of um/px between datasets (or dataset and model) that is still "the same".
MPP_TOLERANCE = 0.05


def _combine_datasets(datasets: Sequence[TileDataset], role: str) -> tuple[tuple[ClassInfo, ...], float, int]:
    """Check that the datasets agree (role, classes, um/px, tile size); return those."""
    if not datasets:
        raise InputError("no tile datasets given: pass one or more folders written by qpbridge masks")
    first = datasets[0]
    for ds in datasets:
        if ds.role != role:
            raise InputError(
                f"tile dataset {ds.path} is a {ds.role} dataset but --role is {role}: "
                f"give {role} tiles (qpbridge masks --role {role}) or --role {ds.role}"
            )
        if [(c.label, c.name) for c in ds.classes] != [(c.label, c.name) for c in first.classes]:
            raise InputError(
                f"tile datasets disagree on classes: {first.path} has "
                f"{[(c.label, c.name) for c in first.classes]}, {ds.path} has "
                f"{[(c.label, c.name) for c in ds.classes]}"
            )
        if abs(ds.mpp - first.mpp) > MPP_TOLERANCE * first.mpp:
            raise InputError(
                f"tile datasets disagree on um/px: {first.path} is at {first.mpp}, {ds.path} at "
                f"{ds.mpp}: export all tiles at one --mpp"
            )
        if ds.tile_px != first.tile_px:
            raise InputError(
                f"tile datasets disagree on tile size: {first.path} has {first.tile_px} px tiles, "
                f"{ds.path} has {ds.tile_px} px: export all tiles with one --tile-px"
            )
    if not any(ds.tiles for ds in datasets):
        raise InputError("the tile datasets hold no usable tiles (all are missing or entirely ignored)")
    return first.classes, first.mpp, first.tile_px


# --------------------------------------------------------------------------------------------- augmentation
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


def build_augmentation() -> Any:
    """The training augmentation: MONAI dictionary transforms over ``{"image": 3HW float, "label": 1HW}``.

    Flips and 90 degree rotations move image and label together (exactly, no interpolation); the stain
    jitter and the gamma change touch the image only.
    """
    from monai.transforms import Compose, RandAdjustContrastd, RandFlipd, RandRotate90d

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


class TileTorchDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Tiles as ``(image 3HW float32 in [0, 1], label HW int64)``, keyed by ``(index, augmentation seed)``."""

    def __init__(self, tiles: Sequence[TileRecord], tile_px: int, augment: bool, cache: bool) -> None:
        self.tiles = list(tiles)
        self.tile_px = tile_px
        self.augment = build_augmentation() if augment else None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.tiles)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The tile's uint8 RGB (HW3) and label (HW) arrays."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        pair = read_tile(self.tiles[index], self.tile_px)
        if self._cache is not None:
            self._cache[index] = pair
        return pair

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = (key, 0) if isinstance(key, int) else key
        image_np, mask_np = self.load(int(index))
        image = torch.from_numpy(image_np.copy()).permute(2, 0, 1).to(torch.float32) / 255.0
        label = torch.from_numpy(mask_np.astype(np.int64))[None]
        if self.augment is not None:
            from monai.utils import convert_to_tensor

            self.augment.set_random_state(seed=int(seed))
            out = self.augment({"image": image, "label": label})
            image = convert_to_tensor(out["image"], track_meta=False, dtype=torch.float32)
            label = convert_to_tensor(out["label"], track_meta=False, dtype=torch.int64)
        return image.contiguous(), label[0].contiguous()


# --------------------------------------------------------------------------------------------- losses
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


def make_loss(role: str, n_classes: int) -> nn.Module:
    """The seed recipe's loss for a role."""
    return MaskedBCELoss() if role == "roi" else MaskedDiceCELoss(n_classes)


def probabilities(role: str, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities: sigmoid of the single roi channel, softmax over cell channels."""
    return torch.sigmoid(logits) if role == "roi" else torch.softmax(logits, dim=1)


# --------------------------------------------------------------------------------------------- config
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

    def check(self) -> None:
        """Raise :class:`InputError` for a value out of range."""
        if self.role not in ("roi", "cell"):
            raise InputError(f"--role must be 'roi' or 'cell', got {self.role!r}")
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


# --------------------------------------------------------------------------------------------- progress
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


# --------------------------------------------------------------------------------------------- checkpoints
def _optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_safetensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


class _Checkpoint:
    """``MODEL_DIR/checkpoint/``: weights and optimizer state in safetensors, the rest in ``state.json``."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / CHECKPOINT_DIR

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def save(
        self,
        state: dict[str, Any],
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        best_state: Mapping[str, torch.Tensor],
    ) -> None:
        from safetensors.torch import save

        self.dir.mkdir(parents=True, exist_ok=True)
        step = int(state["step"])
        names = {
            "model": f"model-{step:07d}.safetensors",
            "optimizer": f"optimizer-{step:07d}.safetensors",
            "best": f"best-{int(state['best_step']):07d}.safetensors",
        }
        opt_tensors, opt_meta = _optimizer_to_safetensors(optimizer)
        atomic_write_bytes(self.dir / names["model"], save(state_dict_for_saving(network)))
        atomic_write_bytes(self.dir / names["optimizer"], save(opt_tensors))
        if not (self.dir / names["best"]).is_file():
            atomic_write_bytes(self.dir / names["best"], save({k: v.contiguous() for k, v in best_state.items()}))
        full = _finite(dict(state, files=names, optimizer_meta=opt_meta))
        atomic_write_bytes(self.state_path, (json.dumps(full, indent=1, allow_nan=False) + "\n").encode("utf-8"))
        for old in self.dir.glob("*.safetensors"):
            if old.name not in names.values():
                old.unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
        from safetensors.torch import load_file

        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            files = state["files"]
            model = load_file(str(self.dir / files["model"]))
            optimizer = _optimizer_from_safetensors(
                load_file(str(self.dir / files["optimizer"])), state["optimizer_meta"]
            )
            best = load_file(str(self.dir / files["best"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(
                f"cannot resume from {self.dir}: the checkpoint is incomplete or damaged ({exc}); "
                "start again without --resume into a new -o"
            ) from None
        return state, model, optimizer, best


# --------------------------------------------------------------------------------------------- the card
def _check_init_classes(card: ModelCard, classes: Sequence[ClassInfo], mpp: float) -> None:
    card_names = {c.label: {c.name, *c.aliases} for c in card.classes}
    data = [(c.label, c.name) for c in classes]
    fits = len(classes) == len(card.classes) and all(name in card_names.get(label, set()) for label, name in data)
    if not fits:
        raise ModelError(
            f"cannot fine-tune {card.name!r}: the tiles have classes {data} but the model has "
            f"{[(c.label, c.name) for c in card.classes]}; fine-tuning keeps the model's classes: "
            "export tiles with the model's class names and labels"
        )
    if abs(mpp - card.mpp) > MPP_TOLERANCE * card.mpp:
        raise ModelError(
            f"cannot fine-tune {card.name!r}: the tiles are at {mpp} um/px but the model expects "
            f"{card.mpp} um/px; export tiles at --mpp {card.mpp}"
        )


def _new_card(
    config: TrainConfig,
    name: str,
    classes: Sequence[ClassInfo],
    mpp: float,
    tile_px: int,
    color_space: str,
    norm: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> ModelCard:
    labels = [c.label for c in classes]
    if labels != list(range(len(classes))):
        raise InputError(f"the tiles' class labels are {labels}; a model needs labels 0..{len(classes) - 1}")
    if config.role == "roi" and len(classes) != 2:
        raise InputError(f"a roi model is binary but the tiles have {len(classes)} classes {labels}")
    card_classes = []
    for c in classes:
        aliases: tuple[str, ...] = ()
        if config.role == "roi" and c.label == 1 and c.name == "ROI":
            aliases = tuple(d.name for d in DEEPBATCH_CLASSES if d.label != 0)
        card_classes.append(CardClass(c.label, c.name, c.color, c.label != 0, aliases))
    norm = (_rounded(norm[0]), _rounded(norm[1]))
    what0 = "outside the regions of interest" if config.role == "roi" else "background/normal tissue"
    channels = config.channels or (16, 32, 64, 128)
    return ModelCard(
        name=name,
        role=config.role,
        architecture=default_architecture(config.role, len(classes), channels),
        classes=tuple(card_classes),
        label0=f"{classes[0].name}: {what0}",
        mpp=mpp,
        tile_px=tile_px,
        overlap_frac=0.25,
        blend="gaussian",
        norm_mean=norm[0],
        norm_std=norm[1],
        color_space=color_space,
        license=config.license or DEFAULT_LICENSE,
        intended_use=config.intended_use or DEFAULT_INTENDED_USE,
        weights_sha256="0" * 64,
        threshold=0.5 if config.role == "roi" else None,
    )


def _rounded(values: tuple[float, float, float]) -> tuple[float, float, float]:
    return round(values[0], 6), round(values[1], 6), round(values[2], 6)


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


# --------------------------------------------------------------------------------------------- the loop
def _epoch_batches(n_train: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """Epoch ``epoch``'s batches of (position in the training list, augmentation seed), from the seed alone."""
    rng = np.random.default_rng([seed, 1000 + epoch])
    order = rng.permutation(n_train)
    seeds = rng.integers(0, 2**31 - 1, size=n_train)
    keys = [(int(order[i]), int(seeds[i])) for i in range(n_train)]
    return [keys[i : i + batch_size] for i in range(0, n_train, batch_size)]


def _collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


@dataclass
class _Run:
    """The pieces of a run that the loop and its helpers share."""

    role: str
    n_classes: int
    card: ModelCard
    network: nn.Module
    loss_fn: nn.Module
    device: torch.device
    names: list[str]


def _evaluate(run: _Run, loader: Any) -> tuple[float, SegmentationMetrics]:
    run.network.eval()
    accumulator = ConfusionAccumulator(list(range(run.n_classes)), run.names)
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
            probs = probabilities(run.role, logits)
            pred = (probs[:, 0] >= threshold).long() if run.role == "roi" else probs.argmax(dim=1)
            accumulator.update(pred, labels, probs.transpose(0, 1))
    run.network.train()
    return total / max(count, 1), accumulator.result()


def _jsonable_metrics(metrics: SegmentationMetrics, val_loss: float) -> dict[str, Any]:
    out = metrics.to_dict()
    out["val_loss"] = val_loss
    out["split"] = "validation"
    return out


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
        The run's options (:class:`TrainConfig`); unset values follow the seed recipe.
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
    checkpoint = _Checkpoint(out)
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

    datasets = [read_tile_dataset(d) for d in dirs]
    classes, mpp, tile_px = _combine_datasets(datasets, config.role)
    tiles = [t for ds in datasets for t in ds.tiles]
    skipped = sum(ds.n_fully_ignored for ds in datasets)
    if skipped:
        note(f"{skipped} tile(s) left out: their masks are entirely 'ignore' ({IGNORE_LABEL})")

    saved_state: dict[str, Any] | None = None
    if config.resume:
        saved_state, model_tensors, optimizer_state, best_tensors = checkpoint.load()
        recipe = Recipe(**saved_state["recipe"])
        if recipe.role != config.role:
            raise InputError(f"{out} holds a {recipe.role} run but --role is {config.role}")
        for flag, given, kept in (
            ("--batch-size", config.batch_size, recipe.batch_size),
            ("--lr", config.lr, recipe.lr),
        ):
            if given is not None and given != kept:
                note(f"{flag} {given} ignored: a resumed run keeps its checkpoint's {kept}")
        card = card_from_dict(saved_state["card"], f"{checkpoint.state_path} (card)")
    else:
        recipe = Recipe(
            role=config.role,
            batch_size=config.batch_size or DEFAULT_BATCH[config.role],
            lr=config.lr or DEFAULT_LR,
            seed=config.seed,
            val_fraction=config.val_fraction,
            augment=config.augment,
            loss=(
                "BCEWithLogitsLoss (ignore 255)"
                if config.role == "roi"
                else "0.5 CrossEntropy + 0.5 Dice (softmax; ignore 255)"
            ),
        )
    split, split_notes = split_tiles(tiles, recipe.val_fraction, recipe.seed)
    for text in split_notes:
        note(text)
    train_tiles = [tiles[i] for i in split.train]
    val_tiles = [tiles[i] for i in split.val]
    torch.manual_seed(recipe.seed)
    init_info: dict[str, Any] | None = None
    if not config.resume:
        name = config.name or out.resolve().name
        if config.init_from is not None:
            parent = load_model(config.init_from, role=config.role)
            _check_init_classes(parent.card, classes, mpp)
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
            )
            network = parent.network
            init_info = {"name": parent.card.name, "path": str(parent.path), "sha256": parent.card.weights_sha256}
        else:
            color_space = check_color_space(config.color_space or "RGB")
            loader_ds = TileTorchDataset(train_tiles, tile_px, augment=False, cache=False)
            step_n = max(1, len(train_tiles) // NORMALIZATION_TILES)
            sample = [loader_ds[i][0][None] for i in range(0, len(train_tiles), step_n)][:NORMALIZATION_TILES]
            norm = channel_statistics(sample, color_space)
            card = _new_card(config, name, classes, mpp, tile_px, color_space, norm)
            network = build_network(card.architecture)
    else:
        network = build_network(card.architecture)
        network.load_state_dict(model_tensors)
    factor = math.prod(card.architecture.args["strides"])
    if tile_px % factor:
        raise InputError(
            f"tiles of {tile_px} px do not fit the U-Net (its strides need a multiple of {factor}): "
            f"export tiles with --tile-px a multiple of {factor}"
        )
    network.to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=recipe.lr)
    if config.resume:
        optimizer.load_state_dict(optimizer_state)
    n_classes = len(card.classes)
    run = _Run(
        config.role,
        n_classes,
        card,
        network,
        make_loss(config.role, n_classes).to(device),
        device,
        [c.name for c in card.classes],
    )

    batch_size = recipe.batch_size
    steps_per_epoch = math.ceil(len(train_tiles) / batch_size)
    if config.steps is not None:
        total_steps = config.steps
    elif config.epochs is not None:
        total_steps = config.epochs * steps_per_epoch
    elif saved_state is not None:
        total_steps = int(saved_state["total_steps"])
    else:
        total_steps = DEFAULT_EPOCHS * steps_per_epoch

    step = int(saved_state["step"]) if saved_state else 0
    step_losses: list[float] = list(saved_state["step_losses"]) if saved_state else []
    epochs: list[EpochRecord] = [EpochRecord(**e) for e in saved_state["epochs"]] if saved_state else []
    best_score = float(saved_state["best_score"]) if saved_state else -math.inf
    best_step = int(saved_state["best_step"]) if saved_state else 0
    best_epoch = int(saved_state["best_epoch"]) if saved_state else 0
    best_metrics: dict[str, Any] = dict(saved_state["best_metrics"]) if saved_state else {}
    best_state = best_tensors if config.resume else state_dict_for_saving(network)
    commands = list(saved_state["commands"]) if saved_state else []
    commands.append(command_line(dirs, out, config))
    wall_before = float(saved_state["wall_time_s"]) if saved_state else 0.0
    cpu_before = float(saved_state["cpu_time_s"]) if saved_state else 0.0
    if saved_state and step >= total_steps:
        note(f"the checkpoint is already at step {step} of {total_steps}: writing the model without training")

    train_ds = TileTorchDataset(
        train_tiles,
        tile_px,
        augment=recipe.augment,
        cache=config.num_workers == 0 and len(tiles) * tile_px * tile_px * 4 <= CACHE_BYTES,
    )
    val_ds = TileTorchDataset(
        val_tiles,
        tile_px,
        augment=False,
        cache=config.num_workers == 0 and len(tiles) * tile_px * tile_px * 4 <= CACHE_BYTES,
    )
    pin = device.type == "cuda"
    val_loader = torch.utils.data.DataLoader(
        val_ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=config.num_workers,
        collate_fn=_collate,
        pin_memory=pin,
    )

    def state_dict_now() -> dict[str, Any]:
        return {
            "step": step,
            "total_steps": total_steps,
            "recipe": recipe.to_dict(),
            "card": card.to_dict(),
            "step_losses": step_losses,
            "epochs": [e.to_dict() for e in epochs],
            "best_score": best_score,
            "best_step": best_step,
            "best_epoch": best_epoch,
            "best_metrics": best_metrics,
            "commands": commands,
            "wall_time_s": wall_before + (time.perf_counter() - wall_start),
            "cpu_time_s": cpu_before + (time.process_time() - cpu_start),
            "init_from": init_info,
        }

    previous_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(config.threads or usable_cpu_count())
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    report.on_start(total_steps, step, steps_per_epoch)
    try:
        epoch_losses: list[float] = []
        while step < total_steps:
            epoch = step // steps_per_epoch
            batches = _epoch_batches(len(train_tiles), batch_size, recipe.seed, epoch)[step % steps_per_epoch :]
            batches = batches[: total_steps - step]
            loader = torch.utils.data.DataLoader(
                train_ds, batch_sampler=batches, num_workers=config.num_workers, collate_fn=_collate, pin_memory=pin
            )
            for images, labels in loader:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                inputs = normalize_rgb01(images, card.color_space, card.norm_mean, card.norm_std)
                loss = run.loss_fn(network(inputs), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                value = float(loss.detach())
                step_losses.append(value)
                epoch_losses.append(value)
                report.on_step(step, value)
            if step % steps_per_epoch == 0 or step >= total_steps:
                val_loss: float | None = None
                val_dice: float | None = None
                val_dict: dict[str, Any] | None = None
                if val_tiles:
                    val_loss, val_metrics = _evaluate(run, val_loader)
                    val_dice = (
                        None if math.isnan(val_metrics.mean_dice_foreground) else val_metrics.mean_dice_foreground
                    )
                    val_dict = _jsonable_metrics(val_metrics, val_loss)
                    score = val_dice if val_dice is not None else -val_loss
                else:
                    score = float(step)  # no validation: the latest weights are the best known
                is_best = score > best_score
                if is_best:
                    best_score, best_step, best_epoch = score, step, math.ceil(step / steps_per_epoch)
                    best_state = state_dict_for_saving(network)
                    best_metrics = val_dict or {}
                record = EpochRecord(
                    epoch=math.ceil(step / steps_per_epoch),
                    step=step,
                    train_loss=float(np.mean(epoch_losses)) if epoch_losses else math.nan,
                    val_loss=val_loss,
                    val_dice=val_dice,
                    is_best=is_best,
                    wall_time_s=wall_before + time.perf_counter() - wall_start,
                    val_metrics=val_dict,
                )
                epochs.append(record)
                epoch_losses = []
                report.on_epoch(record)
                checkpoint.save(state_dict_now(), network, optimizer, best_state)
    finally:
        torch.set_num_threads(previous_threads)

    state = state_dict_now()
    if not checkpoint.exists():
        checkpoint.save(state, network, optimizer, best_state)
    final_network = build_network(card.architecture)
    final_network.load_state_dict(best_state)
    training = {
        "data": [
            {
                "path": str(ds.path),
                "format": DATASET_FORMAT,
                "n_tiles": len(ds.tiles),
                "slides": ds.slides,
                "mpp": ds.mpp,
                "tile_px": ds.tile_px,
            }
            for ds in datasets
        ],
        "split": {
            "by": split.by,
            "train_slides": list(split.train_slides),
            "val_slides": list(split.val_slides),
            "n_train_tiles": len(train_tiles),
            "n_val_tiles": len(val_tiles),
        },
        "recipe": {
            **recipe.to_dict(),
            "tile_px": tile_px,
            "steps": step,
            "steps_per_epoch": steps_per_epoch,
            "augmentation": "RandFlipd x2, RandRotate90d, HED jitter (5%, 0.02), RandAdjustContrastd"
            if recipe.augment
            else "none",
        },
        "commands": commands,
        "best_step": best_step,
        "best_epoch": best_epoch,
        "device": _device_name(device),
        "cpu_time_s": round(state["cpu_time_s"], 2),
        "wall_time_s": round(state["wall_time_s"], 2),
        "gpu_time_s": round(state["wall_time_s"], 2) if device.type == "cuda" else None,
        "init_from": init_info,
        "versions": _versions(),
    }
    card = replace(card, training=_finite(training), metrics=_finite(best_metrics))
    written = save_model(out, card, final_network)
    log = {
        "step_losses": step_losses,
        "epochs": [e.to_dict() for e in epochs],
        "warnings": notes,
        "best_step": best_step,
        "commands": commands,
    }
    atomic_write_bytes(out / TRAINING_LOG, (json.dumps(_finite(log), indent=1, allow_nan=False) + "\n").encode("utf-8"))
    return TrainResult(
        out,
        written,
        step,
        best_step,
        best_epoch,
        step_losses,
        epochs,
        notes,
        float(state["wall_time_s"]),
        float(state["cpu_time_s"]),
    )


def _finite(value: Any) -> Any:
    """The value with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({usable_cpu_count()} threads)"


def _versions() -> dict[str, str]:
    import monai

    from qpbridge import __version__

    return {"qpbridge": __version__, "torch": torch.__version__, "monai": monai.__version__}
