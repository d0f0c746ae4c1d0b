"""The torch side of a model: building its MONAI U-Net, loading and saving safetensors weights, inference form.

A model is a directory holding ``card.json`` and ``weights.safetensors``; the card (its fields, validation and
the registry that finds models by name) is :mod:`qpbridge.cards`, which imports no torch. Its names are
re-exported here (``from qpbridge.models import ModelCard`` works). Weights are only ever read with
``safetensors``: pickled checkpoints (``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) can run code when loaded and are
refused.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from qpbridge.atomic import atomic_write_bytes
from qpbridge.cards import (
    BLENDS,
    CARD_FILE,
    CARD_FORMAT,
    COLOR_SPACES,
    DEFAULT_INTENDED_USE,
    EXAMPLE_INTENDED_USE,
    NETWORKS,
    PICKLE_SUFFIXES,
    ROLES,
    UNET_ARGUMENTS,
    WEIGHTS_FILE,
    Architecture,
    CardClass,
    ModelCard,
    ModelEntry,
    card_from_dict,
    compact_json,
    default_architecture,
    example_card,
    list_models,
    load_card,
    model_search_dirs,
    parse_color,
    refuse_pickle,
    resolve_model_path,
    validate_card,
)
from qpbridge.errors import InputError, ModelError, OutputError

__all__ = [
    # the torch side (this module)
    "LoadedModel",
    "build_network",
    "fold_batch_norm",
    "inference_network",
    "load_model",
    "load_weights",
    "save_model",
    "sha256_file",
    "state_dict_for_saving",
    # the card side, re-exported from qpbridge.cards
    "BLENDS",
    "CARD_FILE",
    "CARD_FORMAT",
    "COLOR_SPACES",
    "DEFAULT_INTENDED_USE",
    "EXAMPLE_INTENDED_USE",
    "NETWORKS",
    "PICKLE_SUFFIXES",
    "ROLES",
    "UNET_ARGUMENTS",
    "WEIGHTS_FILE",
    "Architecture",
    "CardClass",
    "ModelCard",
    "ModelEntry",
    "card_from_dict",
    "compact_json",
    "default_architecture",
    "example_card",
    "list_models",
    "load_card",
    "model_search_dirs",
    "parse_color",
    "refuse_pickle",
    "resolve_model_path",
    "validate_card",
]


# --------------------------------------------------------------------------------------------- networks
def build_network(architecture: Architecture) -> nn.Module:
    """The (randomly initialised) network a card's architecture describes.

    Examples
    --------
    >>> net = build_network(default_architecture("cell", 4, channels=(4, 8)))
    >>> net(torch.zeros(1, 3, 16, 16)).shape
    torch.Size([1, 4, 16, 16])
    """
    from monai.networks.nets import UNet

    if architecture.network not in NETWORKS:
        raise ModelError(f"unknown network {architecture.network!r}: qpbridge builds {', '.join(NETWORKS)}")
    try:
        return UNet(**architecture.args)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot build {architecture.network} from {architecture.args}: {exc}") from None


def _fold_into(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> bool:
    if bn.running_mean is None or bn.running_var is None:
        return False
    with torch.no_grad():
        scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(
            bn.running_var + bn.eps
        )
        shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        if isinstance(conv, nn.Conv2d):
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
        elif isinstance(conv, nn.ConvTranspose2d) and conv.groups == 1:
            conv.weight.mul_(scale.view(1, -1, 1, 1))
        else:
            return False
        old_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (old_bias - bn.running_mean) * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)
    return True


def fold_batch_norm(network: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``network`` in eval mode with every BatchNorm folded into the convolution before it.

    MONAI's ``Convolution`` blocks are ``conv`` followed by ``adn`` (norm, dropout, activation); when the norm
    comes first (the default ``adn_ordering="NDA"``) and is a BatchNorm, its running statistics and affine
    parameters are folded into the convolution's weights and bias and the norm becomes ``Identity``. The output
    is the same (up to float rounding) and inference skips one memory pass per layer. Norms that cannot be
    folded (instance norm, other orderings) are kept.

    Returns
    -------
    (network, n_folded)

    Examples
    --------
    >>> net = build_network(default_architecture("cell", 2, channels=(4, 8))).eval()
    >>> folded, n = fold_batch_norm(net)
    >>> n, bool(torch.allclose(net(torch.ones(1, 3, 8, 8)), folded(torch.ones(1, 3, 8, 8)), atol=1e-5))
    (3, True)
    """
    folded = copy.deepcopy(network).eval()
    count = 0
    for module in folded.modules():
        conv = getattr(module, "conv", None)
        adn = getattr(module, "adn", None)
        if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or not isinstance(adn, nn.Sequential):
            continue
        children = list(adn.named_children())
        if not children or children[0][0] != "N" or not isinstance(children[0][1], nn.modules.batchnorm._BatchNorm):
            continue
        if _fold_into(conv, children[0][1]):
            adn.N = nn.Identity()
            count += 1
    for param in folded.parameters():
        param.requires_grad_(False)
    return folded, count


def inference_network(card: ModelCard, network: nn.Module) -> nn.Module:
    """The fastest equivalent of a trained network for inference: eval mode, BatchNorm folded, no gradients.

    ``card`` is accepted so that per-architecture choices can be made here as the set of networks grows.
    """
    del card
    folded, _ = fold_batch_norm(network)
    return folded


# --------------------------------------------------------------------------------------------- weights
def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights(
    network: nn.Module,
    weights_path: Path,
    *,
    expected_sha256: str | None,
    source: str,
    device: str | torch.device = "cpu",
) -> None:
    """Check the sha256 of a safetensors file and load it into ``network`` (strictly: every tensor must match)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    refuse_pickle(weights_path)
    if not weights_path.is_file():
        raise ModelError(f"weights file {weights_path} (named by {source}) does not exist")
    if expected_sha256 is not None:
        actual = sha256_file(weights_path)
        if actual != expected_sha256:
            raise ModelError(
                f"weights file {weights_path} has sha256 {actual} but {source} says {expected_sha256}: "
                "the file is damaged or not the one the card describes; re-save or re-download the model"
            )
    try:
        state = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"weights file {weights_path}: not a readable safetensors file ({exc})") from None
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"weights file {weights_path} does not fit the architecture in {source}: "
            f"{len(missing)} tensors missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"weights file {weights_path} does not fit the architecture in {source}: tensor {key} "
                f"has shape {tuple(tensor.shape)}, the network needs {tuple(expected[key].shape)}"
            )
    network.load_state_dict(state, strict=True)


def state_dict_for_saving(network: nn.Module) -> dict[str, torch.Tensor]:
    """The network's tensors, detached, contiguous and on the CPU (what safetensors writes)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}


def save_model(directory: str | os.PathLike[str], card: ModelCard, network: nn.Module) -> ModelCard:
    """Write ``weights.safetensors`` and ``card.json`` (with the weights' sha256) into ``directory``, atomically.

    The weights are written first, then the card; each goes to a temporary file beside its target and is
    renamed into place, so an interrupted save never leaves a card that looks valid next to other weights.
    Returns the card as written.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "tiny"
    >>> card = example_card("cell", channels=(4, 8))
    >>> written = save_model(d, card, build_network(card.architecture))
    >>> load_model(d).card.weights_sha256 == written.weights_sha256
    True
    """
    from safetensors.torch import save

    target = Path(directory)
    try:
        target.mkdir(parents=True, exist_ok=True)
        data = save(state_dict_for_saving(network), metadata={"format": "pt", "qpbridge_card": card.name})
        atomic_write_bytes(target / WEIGHTS_FILE, data)
        written = replace(card, weights_file=WEIGHTS_FILE, weights_sha256=hashlib.sha256(data).hexdigest())
        validate_card(written, str(target / CARD_FILE))
        atomic_write_bytes(target / CARD_FILE, written.to_json().encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write the model to {target}: {exc.strerror or exc}") from None
    return written


@dataclass
class LoadedModel:
    """A model ready to run: its card, its network (eval mode, on the requested device) and its directory."""

    card: ModelCard
    network: nn.Module
    path: Path


def load_model(
    name_or_path: str | os.PathLike[str], *, role: str | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Find a model (registry name or path), validate its card, check and load its weights.

    Parameters
    ----------
    name_or_path
        A registry name (see :func:`model_search_dirs`), a model directory, or the path of its ``card.json``.
    role
        ``"roi"`` or ``"cell"`` to require that role (a cell model given where a roi model is needed fails).
    device
        Where the network's weights go.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "tiny"
    >>> card = save_model(d, example_card("roi", channels=(4, 8)),
    ...                   build_network(example_card("roi", channels=(4, 8)).architecture))
    >>> load_model(d, role="roi").card.role
    'roi'
    """
    if role is not None and role not in ROLES:
        raise InputError(f"unknown model role {role!r}: use 'roi' or 'cell'")
    directory = resolve_model_path(name_or_path)
    card_path = directory / CARD_FILE
    card = load_card(card_path)
    if role is not None and card.role != role:
        raise ModelError(
            f"model {card.name!r} ({card_path}) is a {card.role} model but a {role} model is needed "
            "here; see `qpbridge models list` for the role of each model"
        )
    network = build_network(card.architecture)
    load_weights(
        network,
        directory / card.weights_file,
        expected_sha256=card.weights_sha256,
        source=str(card_path),
        device=device,
    )
    network.to(device).eval()
    return LoadedModel(card, network, directory)
