"""The card a run writes: a new model's card from its tiles, the checks of a fine-tuned model's card against
them, and the record of how the model was trained."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qpbridge.cards import (
    DEFAULT_INTENDED_USE,
    NUCLEUS_CLASSES,
    CardClass,
    ModelCard,
    NucleiParams,
    default_architecture,
)
from qpbridge.classes import DEEPBATCH_CLASSES, ClassInfo
from qpbridge.device import usable_cpu_count
from qpbridge.errors import InputError, ModelError
from qpbridge.preprocess import channel_statistics
from qpbridge.tiles import TileRecord
from qpbridge.training.config import TrainConfig
from qpbridge.training.data import MPP_TOLERANCE, TileTorchDataset

__all__ = [
    "DEFAULT_LICENSE",
    "NORMALIZATION_TILES",
    "check_init_classes",
    "device_name",
    "new_card",
    "normalization",
    "versions",
]

#: Licence written into a newly trained card unless given (its intended use: cards.DEFAULT_INTENDED_USE).
DEFAULT_LICENSE = "same terms as the training data (set this before sharing the model)"
#: Tiles used to compute a new card's normalisation statistics.
NORMALIZATION_TILES = 64


def check_init_classes(card: ModelCard, classes: Sequence[ClassInfo], mpp: float) -> None:
    """Refuse to fine-tune ``card``'s model on tiles of other classes or another um/px (:class:`ModelError`)."""
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


def new_card(
    config: TrainConfig,
    name: str,
    classes: Sequence[ClassInfo],
    mpp: float,
    tile_px: int,
    color_space: str,
    norm: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> ModelCard:
    """The card of a model trained from scratch on tiles of ``classes`` at ``mpp`` (weights not yet written).

    Label 0 is not emitted; a roi model is binary and its ROI class answers to the DeepBatch lesion names too;
    a nuclei model has the contour classes (:data:`~qpbridge.cards.NUCLEUS_CLASSES`, only Nucleus emitted) and
    the default post-processing (:class:`~qpbridge.cards.NucleiParams`, tuned at the end of training).
    """
    labels = [c.label for c in classes]
    if labels != list(range(len(classes))):
        raise InputError(f"the tiles' class labels are {labels}; a model needs labels 0..{len(classes) - 1}")
    if config.role == "roi" and len(classes) != 2:
        raise InputError(f"a roi model is binary but the tiles have {len(classes)} classes {labels}")
    if config.role == "nuclei" and [(c.label, c.name) for c in classes] != [(c[0], c[1]) for c in NUCLEUS_CLASSES]:
        raise InputError(
            f"nuclei tiles have the classes {[(c[0], c[1]) for c in NUCLEUS_CLASSES]}, these have "
            f"{[(c.label, c.name) for c in classes]}: export them with qpbridge masks --role nuclei"
        )
    card_classes = []
    for c in classes:
        aliases: tuple[str, ...] = ()
        if config.role == "roi" and c.label == 1 and c.name == "ROI":
            aliases = tuple(d.name for d in DEEPBATCH_CLASSES if d.label != 0)
        emit = c.label == 1 if config.role == "nuclei" else c.label != 0
        card_classes.append(CardClass(c.label, c.name, c.color, emit, aliases))
    norm = (_rounded(norm[0]), _rounded(norm[1]))
    what0 = {"roi": "outside the regions of interest", "nuclei": "no nucleus"}.get(
        config.role, "background/normal tissue"
    )
    channels = config.channels  # None: the role's default (qpbridge.cards.default_architecture)
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
        domain=config.domain or "unknown",
        weights_sha256="0" * 64,
        threshold=0.5 if config.role == "roi" else None,
        nuclei=NucleiParams() if config.role == "nuclei" else None,
    )


def normalization(
    tiles: Sequence[TileRecord], tile_px: int, color_space: str, instances: bool = False
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std in ``color_space`` of up to :data:`NORMALIZATION_TILES` tiles, evenly spaced."""
    dataset = TileTorchDataset(tiles, tile_px, instances=instances)
    step_n = max(1, len(tiles) // NORMALIZATION_TILES)
    sample = [dataset[i][0][None] for i in range(0, len(tiles), step_n)][:NORMALIZATION_TILES]
    return channel_statistics(sample, color_space)


def _rounded(values: tuple[float, float, float]) -> tuple[float, float, float]:
    return round(values[0], 6), round(values[1], 6), round(values[2], 6)


def device_name(device: torch.device) -> str:
    """The device as the card records it: the GPU's name, or the CPU threads used."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({usable_cpu_count()} threads)"


def versions() -> dict[str, str]:
    """The versions of qpbridge, torch and MONAI (recorded in the card)."""
    import monai

    from qpbridge import __version__

    return {"qpbridge": __version__, "torch": torch.__version__, "monai": monai.__version__}
