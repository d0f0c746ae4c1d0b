"""Where the networks run: ``--device`` parsed once for every command, and the CPU threads they use.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("tpu")
Traceback (most recent call last):
...
qpbridge.errors.InputError: unknown --device 'tpu': use cpu, cuda, cuda:N or auto
"""

from __future__ import annotations

import os

import torch

from qpbridge.errors import InputError

__all__ = ["configure_threads", "resolve_device", "usable_cpu_count"]


def resolve_device(device: str) -> torch.device:
    """A torch device from ``--device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``), with a clear error if absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or auto")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asked for, but torch sees no CUDA GPU here: use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s) here (cuda:0 ...)")
    return resolved


def usable_cpu_count() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, e.g. under Slurm or taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: :func:`usable_cpu_count`) and return the number."""
    if threads is None:
        threads = usable_cpu_count()
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
