"""Keeping a long run's memory flat: process-wide settings and handing freed memory back to the system.

Two things made ``predict``'s peak memory grow with the slide even though every array is per block:

- glibc keeps freed memory of big temporary arrays (block reads, network inputs and outputs) in its heaps, and
  fragmentation lets those heaps creep up block after block; :class:`HeapTrimmer` returns it (glibc's
  ``malloc_trim``) once the process has grown by a slack since the last trim;
- oneDNN, which runs torch's convolutions on the CPU, caches one compiled primitive per layer and input shape.
  Windows fitted to ROI pieces once came in hundreds of shapes and the caches grew by ~150 MB over an
  80,000 x 60,000 slide; fitted sides are now rounded to a coarse step (:func:`qpbridge.predict.regions.plan_regions`),
  so that slide needs ~150 shapes, and :data:`CACHE_ENV` pins the caches at 1,024 primitives (oneDNN's
  default). A smaller cap (128 was tried) makes every block prepare its kernels again: 25% slower forwards.
  Set before torch is imported (the ``qpbridge`` command does it); the user's own settings win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from functools import cache
from typing import Any

__all__ = ["CACHE_ENV", "HeapTrimmer", "release_freed_memory", "rss_mb", "set_cache_defaults"]

#: Environment defaults for oneDNN's primitive caches (the user's own settings win).
CACHE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "1024"}


def set_cache_defaults() -> None:
    """Pin oneDNN's primitive caches unless the user set them; effective only before torch is imported."""
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


def rss_mb() -> float | None:
    """This process's resident memory now (MB), from ``/proc/self/statm``; None where there is none."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Call after each block: hands freed heap back (:func:`release_freed_memory`) once the process has grown
    ``slack_mb`` above where the last trim left it.

    Trimming after every block made the next block fault its fresh pages in again: on an 80,000 x 60,000 slide
    it cost 3.6 s of 18 (2-core CPU) and lowered the peak by 6% only (660 vs 700 MB). A slack bounds the growth
    at a fraction of that cost. :meth:`now` trims unconditionally (after a stage that freed a lot). Where the
    resident size cannot be read, every call trims.

    >>> sizes = iter([500.0, 480.0, 530.0, 560.0, 490.0])    # resident MB seen by successive reads
    >>> trimmer = HeapTrimmer(slack_mb=64, rss=lambda: next(sizes), trim=lambda: True)
    >>> [trimmer() for _ in range(3)], trimmer.trims            # trims at 500 (settles at 480), then >= 544
    ([True, False, True], 2)
    """

    def __init__(
        self, slack_mb: float = 256.0, *, rss: Callable[[], float | None] = rss_mb,
        trim: Callable[[], bool] = release_freed_memory,
    ) -> None:
        self.slack_mb = slack_mb
        self._rss = rss
        self._trim = trim
        self._settled_mb: float | None = None
        self.trims = 0

    def __call__(self) -> bool:
        """Trim if due; True when it trimmed."""
        now = self._rss()
        if now is not None and self._settled_mb is not None and now < self._settled_mb + self.slack_mb:
            return False
        return self.now()

    def now(self) -> bool:
        """Trim now; True when it trimmed."""
        if not self._trim():
            return False
        self.trims += 1
        self._settled_mb = self._rss()
        return True
