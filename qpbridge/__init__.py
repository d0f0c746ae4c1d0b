"""qpbridge: deep-learning segmentations of whole-slide images into QuPath, and corrections back into training."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qpbridge")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
