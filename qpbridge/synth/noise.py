"""Hashed value noise that depends on absolute pixel positions only, so that blocks join without seams."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpbridge.synth.common import F32

__all__ = ["blur3", "fbm_grid", "fbm_points", "hash2", "hash_key", "noise_grid", "noise_points", "smoothstep", "unit"]

# ---------------------------------------------------------------------------------------------- hashing
_M64 = (1 << 64) - 1


def hash_key(seed: int, *parts: int | str) -> int:
    """A 63-bit key derived from the seed and a field name: stable across runs and platforms."""
    text = ":".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _mix(h: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Finalizer of MurmurHash3 (64-bit): spreads every input bit over the output."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def hash2(key: int, ix: NDArray[Any], iy: NDArray[Any]) -> NDArray[np.uint64]:
    """A 64-bit hash of integer lattice coordinates (broadcast)."""
    with np.errstate(over="ignore"):
        hx = np.asarray(ix).astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        hy = np.asarray(iy).astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        return _mix(hx ^ hy ^ np.uint64(key))


def unit(h: NDArray[np.uint64], salt: int = 0) -> F32:
    """Uniform floats in [0, 1) from hashes; ``salt`` gives independent draws from the same hash."""
    with np.errstate(over="ignore"):
        if salt:
            h = _mix(h + np.uint64((salt * 0x632BE59BD9B4E019) & _M64))
        return ((h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))).astype(np.float32)


def smoothstep(t: NDArray[Any]) -> NDArray[Any]:
    """The cubic ease ``3t^2 - 2t^3`` used to interpolate between lattice values."""
    return t * t * (3.0 - 2.0 * t)


def noise_grid(key: int, x0: int, y0: int, h: int, w: int, scale: float) -> F32:
    """Value noise in [0, 1] over the pixels [x0, x0+w) x [y0, y0+h), feature size ``scale`` px.

    The noise is a function of the absolute pixel position only, so any window of it matches
    :func:`noise_points` and every other window.
    """
    xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) / scale
    ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) / scale
    ix = np.floor(xs).astype(np.int64)
    iy = np.floor(ys).astype(np.int64)
    tx = smoothstep(xs - ix).astype(np.float32)
    ty = smoothstep(ys - iy).astype(np.float32)
    gx = np.arange(ix[0], ix[-1] + 2)
    gy = np.arange(iy[0], iy[-1] + 2)
    lattice = unit(hash2(key, gx[None, :], gy[:, None]))
    ry = iy - gy[0]
    top = lattice[ry]
    rows = top + (lattice[ry + 1] - top) * ty[:, None]
    rx = ix - gx[0]
    left = rows[:, rx]
    out: F32 = left + (rows[:, rx + 1] - left) * tx[None, :]
    return out


def noise_points(key: int, x: NDArray[Any], y: NDArray[Any], scale: float) -> F32:
    """The value noise of :func:`noise_grid` at arbitrary positions (level-0 pixel coordinates)."""
    xs = np.asarray(x, dtype=np.float64) / scale
    ys = np.asarray(y, dtype=np.float64) / scale
    ix = np.floor(xs).astype(np.int64)
    iy = np.floor(ys).astype(np.int64)
    tx = smoothstep(xs - ix).astype(np.float32)
    ty = smoothstep(ys - iy).astype(np.float32)
    v00 = unit(hash2(key, ix, iy))
    v10 = unit(hash2(key, ix + 1, iy))
    v01 = unit(hash2(key, ix, iy + 1))
    v11 = unit(hash2(key, ix + 1, iy + 1))
    top = v00 + (v10 - v00) * tx
    bottom = v01 + (v11 - v01) * tx
    out: F32 = (top + (bottom - top) * ty).astype(np.float32)
    return out


def fbm_grid(key: int, x0: int, y0: int, h: int, w: int, scales: Sequence[float]) -> F32:
    """Sum of value-noise octaves (weights halving), normalised to [0, 1]."""
    total = np.zeros((h, w), np.float32)
    weight_sum = 0.0
    for i, scale in enumerate(scales):
        weight = 0.5**i
        total += np.float32(weight) * noise_grid(key + i, x0, y0, h, w, scale)
        weight_sum += weight
    total *= np.float32(1.0 / weight_sum)
    return total


def fbm_points(key: int, x: NDArray[Any], y: NDArray[Any], scales: Sequence[float]) -> F32:
    """The octave sum of :func:`fbm_grid` at arbitrary positions (level-0 pixel coordinates)."""
    total = np.zeros(np.shape(x), np.float32)
    weight_sum = 0.0
    for i, scale in enumerate(scales):
        weight = 0.5**i
        total += np.float32(weight) * noise_points(key + i, x, y, scale)
        weight_sum += weight
    return (total * np.float32(1.0 / weight_sum)).astype(np.float32)


def blur3(a: NDArray[np.float32]) -> NDArray[np.float32]:
    """3x3 binomial blur of the first two axes, dropping the one-pixel border."""
    rows = a[:-2] + a[2:]
    rows *= np.float32(0.25)
    rows += np.float32(0.5) * a[1:-1]
    out = rows[:, :-2] + rows[:, 2:]
    out *= np.float32(0.25)
    out += np.float32(0.5) * rows[:, 1:-1]
    return out
