"""Every user-facing failure of qpbridge is a :class:`QpbridgeError`.

The library raises these with the bad value and what to do about it; the CLI turns
them into one readable line and a non-zero exit code (never a traceback).
"""

from __future__ import annotations

__all__ = ["FormatError", "GeoJSONError", "InputError", "ModelError", "OutputError", "QpbridgeError", "SlideError"]


class QpbridgeError(Exception):
    """Base class of every failure that qpbridge reports to a user."""

    exit_code: int = 1


class InputError(QpbridgeError):
    """A bad value or option given by the user (a path that is missing, a non-positive um/px...)."""

    exit_code = 2


class SlideError(QpbridgeError):
    """A slide that cannot be opened, has no pixel size, or whose pixels cannot be read."""


class GeoJSONError(QpbridgeError):
    """A GeoJSON file that cannot be read or written as QuPath expects."""


class ModelError(QpbridgeError):
    """A model card or weights file that is missing, malformed, or does not match."""


class OutputError(QpbridgeError):
    """An output that cannot be written (missing or read-only folder, existing file without --overwrite)."""


class FormatError(GeoJSONError):
    """An annotation file of another format (ASAP XML, ImageScope XML, DSA JSON, a label image) that cannot be
    read or written; a :class:`GeoJSONError` so that code reading "annotations" catches both alike."""
