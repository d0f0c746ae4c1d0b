"""Keeping a long run's memory flat: process-wide settings and handing freed memory back to the system.

Two things made ``predict``'s peak memory grow with the slide even though every array is per block:

- glibc keeps freed memory of big temporary arrays (block reads, network inputs and outputs) in its heaps, and
  fragmentation lets those heaps creep up block after block; :func:`release_freed_memory` (glibc's
  ``malloc_trim``) returns it after each block, at a cost of about a millisecond;
- oneDNN, which runs torch's convolutions on the CPU, caches one compiled primitive per layer and input shape,
  1,024 of each kind by default; windows fitted to ROI pieces come in many shapes, so the caches grew by
  ~150 MB over an 80,000 x 60,000 slide. :data:`CACHE_ENV` caps them (set before torch is imported: the
  ``qpbridge`` command does it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from functools import cache
from typing import Any

#: Environment defaults for oneDNN's primitive caches (the user's own settings win).
CACHE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128", "LRU_CACHE_CAPACITY": "128"}


def set_cache_defaults() -> None:
    """Cap oneDNN's primitive caches unless the user set them; effective only before torch is imported."""
    for key, value in CACHE_ENV.items():
        os.environ.setdefault(key, value)


@cache
def _malloc_trim() -> Callable[[int], Any] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim: Callable[[int], Any] = libc.malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


def release_freed_memory() -> bool:
    """Return freed heap memory to the system (glibc ``malloc_trim``); False where there is no such call.

    >>> release_freed_memory() in (True, False)
    True
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
