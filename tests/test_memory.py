"""Keeping memory flat: when freed heap is handed back."""

from __future__ import annotations

import sys

import pytest

from qpbridge.memory import HeapTrimmer, rss_mb


def test_trimmer_trims_when_grown_past_the_slack() -> None:
    seen = iter([500.0, 480.0, 530.0, 600.0, 490.0, 520.0, 495.0, 470.0])
    trims: list[int] = []
    trimmer = HeapTrimmer(slack_mb=64, rss=lambda: next(seen), trim=lambda: trims.append(1) is None)
    # 500: first call trims (settles at 480); 530 < 544: no; 600 >= 544: trims (settles at 490);
    # 520 < 554: no; now() trims regardless
    assert [trimmer(), trimmer(), trimmer(), trimmer(), trimmer.now()] == [True, False, True, False, True]
    assert trimmer.trims == len(trims) == 3


def test_trimmer_without_resident_size_trims_every_time() -> None:
    trimmer = HeapTrimmer(slack_mb=64, rss=lambda: None, trim=lambda: True)
    assert [trimmer(), trimmer()] == [True, True] and trimmer.trims == 2


def test_trimmer_without_malloc_trim_does_nothing() -> None:
    trimmer = HeapTrimmer(slack_mb=0, rss=lambda: 100.0, trim=lambda: False)
    assert trimmer() is False and trimmer.trims == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm is Linux's")
def test_resident_size_is_read() -> None:
    size = rss_mb()
    assert size is not None and 10 < size < 100_000
