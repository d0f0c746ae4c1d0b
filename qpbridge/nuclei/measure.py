"""Measurements of every nucleus of a block at once, named as QuPath's own cell detection names them.

Names (:data:`MEASUREMENT_NAMES`) are those of QuPath's built-in cell detection (Analyze > Cell detection >
Cell detection, ``WatershedCellDetection``), from QuPath's source:
``qupath-core-processing/src/main/java/qupath/imagej/detect/cells/ObjectMeasurements.java``
(``addShapeStatistics``: ``prefix + "Area"``, ``"Perimeter"``, ``"Circularity"``, ``"Max caliper"``,
``"Min caliper"``, ``"Eccentricity"``, with ``prefix = "Nucleus: "``; its polygon overload adds
``"Solidity"``) and ``.../detect/cells/WatershedCellDetection.java`` (``"Nucleus: " + stain.getName() +
" OD" + " mean"`` for the H&E stains ``"Hematoxylin"`` and ``"Eosin"``). QuPath writes these names without a
unit but reports the values calibrated (um, um^2) when the pixel size is known, and so do we: areas in
um^2, lengths in um. (QuPath's *other* measurement family, ``qupath/lib/analysis/features/
ObjectMeasurements.java`` used by Analyze > Add shape features, StarDist and InstanSeg, puts the unit in the
name with the micro sign U+00B5 and ``^2`` -- ``"Nucleus: Area µm^2"``, ``"Nucleus: Length µm"`` --
but has no perimeter, eccentricity, calipers or OD names; we do not mix the two families.)

Definitions (all from the instance image and the RGB block, vectorized over the block with
``np.bincount``; no per-nucleus loop over pixels):

- **Area** (um^2): pixel count x ``mpp**2`` (the area of the nucleus's pixel outline).
- **Perimeter** (um): the length of the outline through the midpoints of the nucleus's pixel edges (the
  marching-squares contour of its mask, i.e. the pixel outline with every corner cut at 45 degrees:
  1 per straight unit step, sqrt(2)/2 per corner) x ``mpp``. It is neither the staircase length, which
  overestimates a round outline by ~4/pi, nor skimage's weighted ``perimeter``, nor the length of the
  simplified outline that is written; it is the length of the first corner-cutting pass of
  :func:`~qpbridge.nuclei.simplify_outlines`, before any simplification.
- **Circularity**: ``4 pi A / P^2`` of that midpoint outline (``A`` its area), clipped to ``[0, 1]``.
- **Solidity**: area of the midpoint outline / area of its convex hull (1 for a convex nucleus).
- **Max caliper**, **Min caliper** (um): largest and smallest width of the midpoint outline over all
  directions (the Feret diameters of its convex hull).
- **Eccentricity**: ``sqrt(1 - l_min / l_max)`` of the eigenvalues of the covariance of the nucleus's
  area (pixels as unit squares, so one pixel is a circle, 0; a line of ``n`` pixels ``sqrt(1 - 1/n^2)``).
- **Hematoxylin OD mean**, **Eosin OD mean**: mean over the nucleus's pixels of the colour deconvolution
  of QuPath's default H&E stains (``StainVector`` defaults Hematoxylin ``(0.65, 0.70, 0.29)``, Eosin
  ``(0.2159, 0.8012, 0.5581)``, residual = their cross product, background 255;
  ``OD = max(0, -log10(max(v, 1) / 255))`` as in ``ColorDeconvolutionHelper.makeOD``).

Every value is finite for every nucleus, one pixel or a one-pixel-wide line included.

Example
-------
>>> import numpy as np
>>> labels = np.zeros((6, 6), np.int32)
>>> labels[1:5, 1:5] = 3
>>> rgb = np.full((6, 6, 3), 255, np.uint8)
>>> table = measure_nuclei(labels, rgb, mpp=0.5)
>>> table.ids.tolist(), table.column(AREA).tolist(), table.column(PERIMETER).round(3).tolist()
([3], [4.0], [7.414])
>>> table.column(HEMATOXYLIN_OD_MEAN).tolist()   # white: no stain
[0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely

from qpbridge.errors import InputError
from qpbridge.nuclei.instances import check_instance_labels, clean_instances

__all__ = [
    "AREA",
    "CIRCULARITY",
    "ECCENTRICITY",
    "EOSIN_OD_MEAN",
    "HEMATOXYLIN_OD_MEAN",
    "HE_STAINS",
    "MAX_CALIPER",
    "MEASUREMENT_NAMES",
    "MIN_CALIPER",
    "PERIMETER",
    "SOLIDITY",
    "MeasurementTable",
    "he_optical_density",
    "measure_nuclei",
]

AREA = "Nucleus: Area"
PERIMETER = "Nucleus: Perimeter"
CIRCULARITY = "Nucleus: Circularity"
SOLIDITY = "Nucleus: Solidity"
MAX_CALIPER = "Nucleus: Max caliper"
MIN_CALIPER = "Nucleus: Min caliper"
ECCENTRICITY = "Nucleus: Eccentricity"
HEMATOXYLIN_OD_MEAN = "Nucleus: Hematoxylin OD mean"
EOSIN_OD_MEAN = "Nucleus: Eosin OD mean"

#: Every measurement :func:`measure_nuclei` makes, in QuPath's order (shape, then stains).
MEASUREMENT_NAMES = (
    AREA,
    PERIMETER,
    CIRCULARITY,
    SOLIDITY,
    MAX_CALIPER,
    MIN_CALIPER,
    ECCENTRICITY,
    HEMATOXYLIN_OD_MEAN,
    EOSIN_OD_MEAN,
)

#: QuPath's default H&E stain vectors (qupath-core ``qupath/lib/color/StainVector.java``), RGB optical densities.
HE_STAINS = {"Hematoxylin": (0.65, 0.70, 0.29), "Eosin": (0.2159, 0.8012, 0.5581)}

_HALF_DIAGONAL = math.sqrt(0.5)
_CALIPER_CHUNK = 1 << 20  # hull vertex pairs per chunk of the caliper computation


@dataclass(frozen=True)
class MeasurementTable:
    """Measurements of nuclei: one row per id, one column per name.

    Attributes
    ----------
    ids : numpy.ndarray
        ``(n,)`` int64 nucleus ids (the instance image's), increasing.
    names : tuple of str
        Column names (QuPath measurement names).
    values : numpy.ndarray
        ``(n, len(names))`` float64, all finite.

    Example
    -------
    >>> t = MeasurementTable(np.array([4, 9]), ("Nucleus: Area",), np.array([[12.3456], [7.0]]))
    >>> t.records(significant_digits=3)
    [{'Nucleus: Area': 12.3}, {'Nucleus: Area': 7.0}]
    """

    ids: npt.NDArray[np.int64]
    names: tuple[str, ...]
    values: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.values.shape != (self.ids.shape[0], len(self.names)):
            expected = (self.ids.shape[0], len(self.names))
            raise ValueError(f"values {self.values.shape} must be (ids, names) = {expected}")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def column(self, name: str) -> npt.NDArray[np.float64]:
        """One measurement for every nucleus."""
        try:
            return self.values[:, self.names.index(name)]
        except ValueError:
            raise InputError(f"no measurement {name!r}: the table has {', '.join(self.names)}") from None

    def rows_for(self, ids: npt.ArrayLike) -> MeasurementTable:
        """The rows of these ids, in the order given (e.g. the ids of the nuclei a block owns)."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self.ids, wanted)
        found = (pos < self.ids.size) & (self.ids[np.minimum(pos, max(self.ids.size - 1, 0))] == wanted)
        if not found.all():
            raise InputError(f"ids {wanted[~found][:5].tolist()} are not in the measurement table")
        return MeasurementTable(wanted, self.names, self.values[pos])

    def records(self, significant_digits: int | None = 4) -> list[dict[str, float]]:
        """One ``{name: value}`` dict per nucleus, e.g. for :class:`qpbridge.qupath.Feature` measurements.

        ``significant_digits`` rounds every value (4: ``123.4``, ``0.8571``), which keeps the written
        GeoJSON small (QuPath itself stores measurements as 32-bit floats, ~7 digits); ``None`` keeps them.
        """
        values = self.values
        if significant_digits is not None:
            if significant_digits < 1:
                raise InputError(f"significant_digits must be >= 1, got {significant_digits}")
            values = _round_significant(values, significant_digits)
        return [dict(zip(self.names, row, strict=True)) for row in values.tolist()]


def _round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Round each value to ``digits`` significant digits (vectorized; zeros stay zero)."""
    magnitude = np.floor(np.log10(np.abs(values), out=np.zeros_like(values), where=values != 0))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


def he_optical_density(rgb: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Hematoxylin and eosin optical densities of an RGB image, as QuPath deconvolves its default H&E stains.

    Example
    -------
    >>> h, e = he_optical_density(np.array([[[255, 255, 255], [60, 40, 160]]], np.uint8))  # white, purple
    >>> h.round(3).tolist(), e.round(3).tolist()
    ([[0.0, 1.029]], [[0.0, 0.004]])
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"an RGB block must be (rows, cols, 3), got shape {arr.shape}")
    stains = _optical_density(arr.reshape(-1, 3)) @ _HE_INVERSE[:, :2]
    stains = stains.reshape(*arr.shape[:2], 2)
    return stains[..., 0], stains[..., 1]


def _he_inverse() -> np.ndarray:
    """Inverse of QuPath's H&E stain matrix (rows: hematoxylin, eosin, residual = their cross product)."""
    h = np.asarray(HE_STAINS["Hematoxylin"], np.float64)
    e = np.asarray(HE_STAINS["Eosin"], np.float64)
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    residual = np.cross(h, e)
    residual /= np.linalg.norm(residual)
    return np.linalg.inv(np.stack([h, e, residual]))  # OD row vector @ inverse = stain amounts


_HE_INVERSE = _he_inverse()
_OD_LUT = np.maximum(0.0, -np.log10(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0))


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    """``max(0, -log10(max(v, 1) / 255))`` per channel (a lookup table for 8-bit input, as QuPath does)."""
    if rgb.dtype == np.uint8:
        return _OD_LUT[rgb]
    return np.maximum(0.0, -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0))


def _lattice_outline(labels: np.ndarray, n_slots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per id (indexed by label value): midpoint-outline length and area change, and the outline's hull candidates.

    Every lattice point (pixel corner) sees a 2 x 2 window of pixels; for each id in the window, the
    number of its pixels there (and whether two sit on a diagonal) gives the piece of the midpoint outline
    through that window: 1 or 3 pixels: a corner cut of length sqrt(2)/2 (area -1/8 or +1/8), 2 side by
    side: a straight unit step, 2 on a diagonal: two cuts. The candidate hull vertices are the two ends
    of each convex cut (the outline's convex vertices are among them).
    """
    padded = np.pad(labels, 1)
    a, b = padded[:-1, :-1], padded[:-1, 1:]
    c, d = padded[1:, :-1], padded[1:, 1:]
    length = np.zeros(n_slots)
    area_change = np.zeros(n_slots)
    hull_xy: list[np.ndarray] = []
    hull_id: list[np.ndarray] = []
    rows, cols = np.nonzero((a != b) | (a != c) | (a != d))  # windows not inside one id (or background)
    wa, wb, wc, wd = a[rows, cols], b[rows, cols], c[rows, cols], d[rows, cols]
    x, y = cols.astype(np.float64), rows.astype(np.float64)  # lattice point of window (r, c) is (c, r)
    for label, first in (
        (wa, wa != 0),
        (wb, (wb != 0) & (wb != wa)),
        (wc, (wc != 0) & (wc != wa) & (wc != wb)),
        (wd, (wd != 0) & (wd != wa) & (wd != wb) & (wd != wc)),
    ):
        sel = np.flatnonzero(first)
        if sel.size == 0:
            continue
        lab = label[sel]
        in_a, in_b, in_c, in_d = wa[sel] == lab, wb[sel] == lab, wc[sel] == lab, wd[sel] == lab
        count = in_a.astype(np.int8) + in_b + in_c + in_d
        diagonal = (count == 2) & ((in_a & in_d) | (in_b & in_c))
        corner = (count == 1) | (count == 3)
        piece = np.select([corner, diagonal, count == 2], [_HALF_DIAGONAL, 2 * _HALF_DIAGONAL, 1.0], 0.0)
        length += np.bincount(lab, weights=piece, minlength=n_slots)
        change = np.select([count == 1, count == 3, diagonal], [-0.125, 0.125, -0.25], 0.0)
        area_change += np.bincount(lab, weights=change, minlength=n_slots)
        # convex cuts: each inside pixel of a 1-pixel or diagonal window, seen from the lattice point
        convex = (count == 1) | diagonal
        for inside, sx, sy in ((in_a, -0.5, -0.5), (in_b, 0.5, -0.5), (in_c, -0.5, 0.5), (in_d, 0.5, 0.5)):
            pick = np.flatnonzero(convex & inside)
            if pick.size == 0:
                continue
            px, py = x[sel][pick], y[sel][pick]
            hull_xy += [np.column_stack([px + sx, py]), np.column_stack([px, py + sy])]
            hull_id += [lab[pick], lab[pick]]
    points = np.concatenate(hull_xy) if hull_xy else np.empty((0, 2))
    owners = np.concatenate(hull_id) if hull_id else np.empty(0, np.int64)
    return length, area_change, points, owners


def _calipers(hulls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max and min caliper (Feret) width of convex polygons, vectorized over padded vertex arrays."""
    n = hulls.size
    coords, owner = shapely.get_coordinates(hulls, return_index=True)
    counts = np.bincount(owner, minlength=n)
    k = int(counts.max()) if n else 0
    max_width, min_width = np.zeros(n), np.zeros(n)
    if k == 0:
        return max_width, min_width
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    chunk = max(1, _CALIPER_CHUNK // (k * k))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        m = hi - lo
        slot = np.arange(k)[None, :]
        valid = slot < counts[lo:hi, None]
        index = starts[lo:hi, None] + np.minimum(slot, counts[lo:hi, None] - 1)  # pad with the last vertex
        pts = coords[index]  # (m, k, 2)
        diff = pts[:, :, None, :] - pts[:, None, :, :]
        max_width[lo:hi] = np.sqrt((diff**2).sum(-1).max(axis=(1, 2)))
        # width across each edge (i, i + 1): the farthest vertex from the edge's line
        nxt = np.where(slot + 1 < counts[lo:hi, None], slot + 1, 0)
        edge = pts[np.arange(m)[:, None], nxt] - pts  # (m, k, 2)
        edge_len = np.hypot(edge[..., 0], edge[..., 1])
        rel = pts[:, None, :, :] - pts[:, :, None, :]  # (m, edge i, vertex j, 2)
        cross = np.abs(edge[:, :, None, 0] * rel[..., 1] - edge[:, :, None, 1] * rel[..., 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            widths = cross.max(axis=2) / edge_len
        widths[~(valid & (edge_len > 0))] = np.inf
        narrowest = widths.min(axis=1)
        min_width[lo:hi] = np.where(np.isfinite(narrowest), narrowest, 0.0)
    return max_width, min_width


def _eccentricity(fg: np.ndarray, lab: np.ndarray, width: int, n_slots: int, safe: np.ndarray) -> np.ndarray:
    """``sqrt(1 - l_min / l_max)`` per id slot, from the second moments of the area of the foreground pixels
    ``fg`` (flat indices into a ``width``-wide image, ``lab`` their ids, ``safe`` the pixel counts, >= 1),
    pixels as unit squares (+ 1/12 per axis)."""
    rows, cols = np.divmod(fg, width)
    mean_x = np.bincount(lab, weights=cols, minlength=n_slots) / safe
    mean_y = np.bincount(lab, weights=rows, minlength=n_slots) / safe
    dx, dy = cols - mean_x[lab], rows - mean_y[lab]
    var_x = np.bincount(lab, weights=dx * dx, minlength=n_slots) / safe + 1 / 12
    var_y = np.bincount(lab, weights=dy * dy, minlength=n_slots) / safe + 1 / 12
    cov_xy = np.bincount(lab, weights=dx * dy, minlength=n_slots) / safe
    half_trace = (var_x + var_y) / 2
    spread = np.sqrt(((var_x - var_y) / 2) ** 2 + cov_xy**2)
    result: np.ndarray = np.sqrt(np.clip(1 - (half_trace - spread) / (half_trace + spread), 0.0, 1.0))
    return result


def measure_nuclei(
    labels: npt.ArrayLike,
    rgb: npt.ArrayLike,
    mpp: float,
    *,
    clean: bool = True,
) -> MeasurementTable:
    """QuPath-named measurements (:data:`MEASUREMENT_NAMES`) of every nucleus of one block.

    Parameters
    ----------
    labels
        ``(H, W)`` instance image in the model's pixel grid (0 background, ids >= 1).
    rgb
        ``(H, W, 3)`` RGB block, 0-255, on the same pixel grid (the model's input, halo included).
    mpp
        Pixel size of ``labels`` in um/px (the model's, not the slide's level 0).
    clean
        Apply :func:`~qpbridge.nuclei.clean_instances` first (largest piece per id, holes filled), so the
        measurements describe the same region as the outline :func:`~qpbridge.nuclei.nuclei_from_labels`
        writes. Pass ``False`` for an image that is already clean.

    Returns
    -------
    MeasurementTable
        One row per id present, ids increasing (the same order as ``nuclei_from_labels``); every value
        finite. See the module docstring for the definitions.

    Example
    -------
    >>> labels = np.zeros((3, 7), np.int32)
    >>> labels[1, 1:6] = 2                                  # a line of 5 pixels
    >>> t = measure_nuclei(labels, np.zeros((3, 7, 3), np.uint8), mpp=1.0)
    >>> t.column(ECCENTRICITY).round(4).tolist(), t.column(SOLIDITY).tolist()
    ([0.9798], [1.0])
    """
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
        raise InputError(f"mpp must be a positive number of um per pixel, got {mpp!r}")
    arr = clean_instances(labels) if clean else check_instance_labels(labels)
    image = np.asarray(rgb)
    if image.shape != (*arr.shape, 3):
        raise InputError(
            f"the RGB block must be (rows, cols, 3) = {(*arr.shape, 3)} to match the instance image, got {image.shape}"
        )
    flat = arr.ravel()
    n_slots = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=n_slots)
    counts[0] = 0
    ids = np.flatnonzero(counts)
    if ids.size == 0:
        return MeasurementTable(np.empty(0, np.int64), MEASUREMENT_NAMES, np.empty((0, len(MEASUREMENT_NAMES))))
    n_px = counts.astype(np.float64)
    safe = np.maximum(n_px, 1.0)

    fg = np.flatnonzero(flat)  # foreground pixels only
    lab = flat[fg]
    eccentricity = _eccentricity(fg, lab, arr.shape[1], n_slots, safe)

    # midpoint outline: length, area, convex hull
    length, area_change, points, owners = _lattice_outline(arr, n_slots)
    outline_area = n_px + area_change
    order = np.argsort(owners, kind="stable")
    pos = np.searchsorted(ids, owners[order])
    hulls = shapely.convex_hull(shapely.multipoints(points[order], indices=pos))
    if hulls.size != ids.size:  # every region has convex corners, the last id included
        raise AssertionError(f"{hulls.size} hulls for {ids.size} nuclei")
    hull_area = shapely.area(hulls)
    max_caliper, min_caliper = _calipers(hulls)

    stains = _optical_density(image.reshape(-1, 3)[fg]) @ _HE_INVERSE[:, :2]
    hema_mean = np.bincount(lab, weights=stains[:, 0], minlength=n_slots) / safe
    eosin_mean = np.bincount(lab, weights=stains[:, 1], minlength=n_slots) / safe

    perimeter = length[ids]
    area = outline_area[ids]
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.where(perimeter > 0, 4 * math.pi * area / perimeter**2, 1.0)
        solidity = np.where(hull_area > 0, area / hull_area, 1.0)
    columns: dict[str, Any] = {
        AREA: n_px[ids] * mpp**2,
        PERIMETER: perimeter * mpp,
        CIRCULARITY: np.clip(circularity, 0.0, 1.0),
        SOLIDITY: np.clip(solidity, 0.0, 1.0),
        MAX_CALIPER: max_caliper * mpp,
        MIN_CALIPER: min_caliper * mpp,
        ECCENTRICITY: eccentricity[ids],
        HEMATOXYLIN_OD_MEAN: hema_mean[ids],
        EOSIN_OD_MEAN: eosin_mean[ids],
    }
    values = np.column_stack([columns[name] for name in MEASUREMENT_NAMES]).astype(np.float64)
    if not np.isfinite(values).all():  # a guard: every formula above is finite by construction
        bad = np.argwhere(~np.isfinite(values))[0]
        raise AssertionError(f"non-finite {MEASUREMENT_NAMES[bad[1]]} for nucleus {ids[bad[0]]}")
    return MeasurementTable(ids.astype(np.int64), MEASUREMENT_NAMES, values)
