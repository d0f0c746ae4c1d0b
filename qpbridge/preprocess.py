"""Pixels -> network input: colour space conversion and normalisation, shared by train and predict.

Training and prediction must feed a network exactly the same numbers, so both go through
:func:`normalize_rgb01`; :func:`to_network_input` is its entry point for uint8 RGB tiles (the form
slides are read in). Every conversion is vectorised torch arithmetic on NCHW tensors (CPU or GPU):

- ``RGB``: the 0-1 scaled values themselves.
- ``HSV``: hue, saturation, value, each in [0, 1] (the definition of ``skimage.color.rgb2hsv``).
- ``YCrCb``: ITU-R BT.601 luma and the two chroma channels offset by 0.5, each in [0, 1]
  (OpenCV's ``COLOR_RGB2YCrCb`` on float images).
- ``LAB``: CIE L*a*b* of sRGB under illuminant D65, 2 degree observer: L* in [0, 100],
  a* and b* roughly in [-128, 127] (the definition of ``skimage.color.rgb2lab``).

The card's ``normalization`` (``mean`` and ``std``, one per channel) is then applied to the converted values:
``(value - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import torch

from qpbridge.cards import COLOR_SPACES  # the names a card may give; each is converted here
from qpbridge.errors import InputError

__all__ = [
    "CardPreprocessing",
    "channel_statistics",
    "check_color_space",
    "convert_color",
    "normalize_rgb01",
    "to_network_input",
]

# sRGB (linear) -> CIE XYZ, D65 (IEC 61966-2-1), and the D65 2-degree reference white.
_XYZ_FROM_LINEAR_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)


class CardPreprocessing(Protocol):
    """What preprocessing needs from a model card (:class:`qpbridge.models.ModelCard` has it)."""

    @property
    def color_space(self) -> str: ...  # noqa: D102

    @property
    def norm_mean(self) -> tuple[float, float, float]: ...  # noqa: D102

    @property
    def norm_std(self) -> tuple[float, float, float]: ...  # noqa: D102


def check_color_space(name: str) -> str:
    """Return the canonical spelling of a colour space name (case-insensitive), or raise :class:`InputError`.

    Examples
    --------
    >>> check_color_space("lab")
    'LAB'
    """
    for canonical in COLOR_SPACES:
        if name.lower() == canonical.lower():
            return canonical
    raise InputError(f"unknown colour space {name!r}: use one of {', '.join(COLOR_SPACES)}")


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    red, green, blue = x[:, 0], x[:, 1], x[:, 2]
    value = x.max(dim=1).values
    delta = value - x.min(dim=1).values
    has_chroma = delta > 0
    safe_delta = torch.where(has_chroma, delta, torch.ones_like(delta))
    # When two channels share the maximum, blue wins over green wins over red (as in skimage).
    hue = torch.where(
        blue == value,
        4.0 + (red - green) / safe_delta,
        torch.where(green == value, 2.0 + (blue - red) / safe_delta, (green - blue) / safe_delta),
    )
    hue = torch.remainder(hue / 6.0, 1.0)
    hue = torch.where(has_chroma, hue, torch.zeros_like(hue))
    safe_value = torch.where(value > 0, value, torch.ones_like(value))
    saturation = torch.where(has_chroma, delta / safe_value, torch.zeros_like(delta))
    return torch.stack([hue, saturation, value], dim=1)


def _rgb_to_ycrcb(x: torch.Tensor) -> torch.Tensor:
    red, green, blue = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    chroma_red = (red - luma) * 0.713 + 0.5
    chroma_blue = (blue - luma) * 0.564 + 0.5
    return torch.stack([luma, chroma_red, chroma_blue], dim=1)


def _rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    matrix = torch.tensor(_XYZ_FROM_LINEAR_RGB, dtype=x.dtype, device=x.device)
    white = torch.tensor(_D65_WHITE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,njhw->nihw", matrix, linear) / white
    f = torch.where(xyz > 0.008856, torch.pow(xyz.clamp_min(0.008856), 1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def convert_color(rgb01: torch.Tensor, color_space: str) -> torch.Tensor:
    """Convert float RGB in [0, 1] (NCHW) to ``color_space`` (see the module docstring for the ranges).

    Examples
    --------
    >>> white = torch.ones(1, 3, 1, 1)
    >>> [round(v, 2) + 0.0 for v in convert_color(white, "LAB").flatten().tolist()]
    [100.0, 0.0, 0.0]
    """
    space = check_color_space(color_space)
    if rgb01.ndim != 4 or rgb01.shape[1] != 3:
        raise InputError(f"expected an N x 3 x H x W RGB tensor, got shape {tuple(rgb01.shape)}")
    if space == "RGB":
        return rgb01
    if space == "HSV":
        return _rgb_to_hsv(rgb01)
    if space == "YCrCb":
        return _rgb_to_ycrcb(rgb01)
    return _rgb_to_lab(rgb01)


def normalize_rgb01(rgb01: torch.Tensor, color_space: str, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The network input for float RGB in [0, 1] (NCHW): colour conversion, then ``(x - mean) / std``.

    Training calls this on augmented batches; :func:`to_network_input` calls it on uint8 tiles.

    Examples
    --------
    >>> x = torch.full((1, 3, 2, 2), 0.5)
    >>> normalize_rgb01(x, "RGB", [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]).abs().max().item()
    0.0
    """
    converted = convert_color(rgb01, color_space)
    mean_t = torch.as_tensor(tuple(mean), dtype=converted.dtype, device=converted.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(tuple(std), dtype=converted.dtype, device=converted.device).view(1, 3, 1, 1)
    return (converted - mean_t) / std_t


def to_network_input(
    rgb: np.ndarray | torch.Tensor, card: CardPreprocessing, *, device: str | torch.device | None = None
) -> torch.Tensor:
    """Float32 NCHW network input for uint8 RGB tiles in NHWC (or one HWC tile) layout.

    Parameters
    ----------
    rgb
        uint8 RGB pixels, ``N x H x W x 3`` or ``H x W x 3`` (numpy or torch).
    card
        The model card (its ``color_space``, ``norm_mean`` and ``norm_std`` are used).
    device
        Where the result lives; default: where ``rgb`` is (CPU for numpy).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> card = SimpleNamespace(color_space="RGB", norm_mean=(0.0, 0.0, 0.0), norm_std=(1.0, 1.0, 1.0))
    >>> tile = np.full((4, 4, 3), 255, dtype=np.uint8)
    >>> to_network_input(tile, card).shape, float(to_network_input(tile, card).max())
    (torch.Size([1, 3, 4, 4]), 1.0)
    """
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)) if isinstance(rgb, np.ndarray) else rgb
    if tensor.dtype != torch.uint8:
        raise InputError(f"expected uint8 RGB pixels, got {tensor.dtype}")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise InputError(f"expected N x H x W x 3 RGB pixels, got shape {tuple(tensor.shape)}")
    if device is not None:
        tensor = tensor.to(device)
    nchw = tensor.permute(0, 3, 1, 2)
    if check_color_space(card.color_space) == "RGB":
        # One pass to float NCHW, then (x / 255 - mean) / std as one multiply-add in place (blocks are large).
        out = nchw.to(torch.float32, memory_format=torch.contiguous_format)
        std = torch.tensor(tuple(card.norm_std), dtype=torch.float32, device=out.device).view(1, 3, 1, 1)
        mean = torch.tensor(tuple(card.norm_mean), dtype=torch.float32, device=out.device).view(1, 3, 1, 1)
        return out.mul_(1.0 / (255.0 * std)).sub_(mean / std)
    rgb01 = nchw.to(torch.float32) / 255.0
    return normalize_rgb01(rgb01, card.color_space, card.norm_mean, card.norm_std).contiguous()


def channel_statistics(
    batches: Iterable[torch.Tensor], color_space: str
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of float RGB-in-[0, 1] batches after colour conversion.

    Used to fill a new model card's ``normalization`` from its training tiles. A channel with no spread
    gets a standard deviation of 1 (so normalising never divides by zero).

    Examples
    --------
    >>> mean, std = channel_statistics([torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)], "RGB")
    >>> mean, std
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for batch in batches:
        converted = convert_color(batch, color_space).to(torch.float64)
        total += converted.sum(dim=(0, 2, 3)).cpu()
        total_sq += (converted**2).sum(dim=(0, 2, 3)).cpu()
        count += converted.shape[0] * converted.shape[2] * converted.shape[3]
    if count == 0:
        raise InputError("no pixels to compute normalisation statistics from")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return _triple(mean), _triple(std)


def _triple(values: torch.Tensor) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
