"""What QuPath shows as the image of a slide with ``openslide.bounds-*``: the rule, stated once.

QuPath opens whole-slide files through its OpenSlide server (``OpenslideImageServer``, the same in QuPath
0.4-0.7). When the slide has all four ``openslide.bounds-x``, ``-y``, ``-width`` and ``-height`` properties
(MRXS and some other scanners write them) and each is an integer, that server crops to them:

* the image QuPath shows is ``bounds-width`` x ``bounds-height`` pixels;
* its pixel (0, 0) is level-0 pixel (``bounds-x``, ``bounds-y``) of the file (every tile is read at
  ``x + bounds-x``, ``y + bounds-y``),

so every GeoJSON coordinate QuPath reads or writes is shifted by (``-bounds-x``, ``-bounds-y``) from the
file's level 0. QuPath's ``isCropped`` flag (both sides differ from the slide's) only changes how its
resolution levels are computed and how the image's path is labelled, not the offset or the size. A missing
property, or one that is not an integer, means no crop; so does opening the image with ``--no-crop`` or
through another server (Bio-Formats), which qpbridge cannot know of. See ``docs/qupath-geojson.md``.

:attr:`qpbridge.slide.Slide.qupath_offset_xy_px` and :attr:`~qpbridge.slide.Slide.qupath_size_px` call
:func:`qupath_image_rect`; ``predict`` shifts what it writes by the offset, ``masks`` and ``diff`` shift
back and check against the size.

Examples
--------
>>> props = {"openslide.bounds-x": "2048", "openslide.bounds-y": "14592",
...          "openslide.bounds-width": "100352", "openslide.bounds-height": "168448"}
>>> qupath_image_rect(props, (272128, 294144))
(2048, 14592, 100352, 168448)
>>> qupath_image_rect({}, (272128, 294144))
(0, 0, 272128, 294144)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["BOUNDS_KEYS", "qupath_image_rect"]

#: The OpenSlide properties QuPath's OpenSlide server crops to, in the order x, y, width, height.
BOUNDS_KEYS: tuple[str, str, str, str] = (
    "openslide.bounds-x",
    "openslide.bounds-y",
    "openslide.bounds-width",
    "openslide.bounds-height",
)

#: What Java's ``Integer.parseInt`` accepts (no spaces, no decimal point).
_JAVA_INT = re.compile(r"[+-]?[0-9]+")


def qupath_image_rect(properties: Mapping[str, str], dimensions_px: tuple[int, int]) -> tuple[int, int, int, int]:
    """The level-0 rectangle ``(x, y, width, height)`` that QuPath 0.4-0.7 shows as the image of a slide.

    Parameters
    ----------
    properties
        The slide's OpenSlide properties.
    dimensions_px
        The slide's level-0 ``(width, height)``.

    Returns
    -------
    tuple
        ``(bounds-x, bounds-y, bounds-width, bounds-height)`` when all four are integers, else
        ``(0, 0, width, height)``.

    Examples
    --------
    >>> qupath_image_rect({"openslide.bounds-x": "0", "openslide.bounds-y": "40",
    ...                    "openslide.bounds-width": "1024", "openslide.bounds-height": "600"}, (1024, 768))
    (0, 40, 1024, 600)
    >>> qupath_image_rect({"openslide.bounds-x": "1.5", "openslide.bounds-y": "0",
    ...                    "openslide.bounds-width": "10", "openslide.bounds-height": "10"}, (20, 20))
    (0, 0, 20, 20)
    """
    width, height = (int(v) for v in dimensions_px)
    raw = [properties.get(key) for key in BOUNDS_KEYS]
    if not all(isinstance(v, str) and _JAVA_INT.fullmatch(v) for v in raw):
        return 0, 0, width, height
    x, y, w, h = (int(str(v)) for v in raw)
    return x, y, w, h
