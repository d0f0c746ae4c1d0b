"""Reading a tile dataset (:mod:`qpbridge.tiles.format`) for training: its tiles, checked, and their split.

:func:`read_tile_dataset` reads ``dataset.json`` and ``manifest.csv`` and checks every tile file exists;
:func:`split_tiles` splits tiles into training and validation by slide; :func:`read_tile` reads one tile's
image and label mask. Nothing here needs torch (``qpbridge.training`` wraps the tiles for it).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qpbridge.cards import ROLES
from qpbridge.classes import IGNORE_LABEL, INSTANCE_IGNORE_LABEL, ClassInfo
from qpbridge.errors import InputError
from qpbridge.tiles.format import DATASET_FILE, DATASET_FORMAT, MANIFEST_FILE

__all__ = ["Split", "TileDataset", "TileRecord", "iter_tiles", "read_tile", "read_tile_dataset", "split_tiles"]


@dataclass(frozen=True)
class TileRecord:
    """One training tile: its image and mask files and the slide it comes from."""

    image: Path
    mask: Path
    slide: str


@dataclass(frozen=True)
class TileDataset:
    """A tile dataset directory (``dataset.json`` + ``manifest.csv``), read and checked."""

    path: Path
    role: str
    mpp: float
    tile_px: int
    ignore_label: int
    classes: tuple[ClassInfo, ...]
    tiles: tuple[TileRecord, ...]
    n_fully_ignored: int = 0

    @property
    def slides(self) -> list[str]:
        """The slide ids of its tiles, sorted."""
        return sorted({t.slide for t in self.tiles})


def _dataset_error(path: Path, message: str) -> InputError:
    return InputError(f"tile dataset {path}: {message}")


def read_tile_dataset(path: str | os.PathLike[str]) -> TileDataset:
    """Read a tile dataset written by ``qpbridge masks`` (see the tile dataset format).

    Tiles whose masks are entirely ``ignore_label`` (``count_ignore`` = all pixels) carry no signal and are left
    out (counted in ``n_fully_ignored``).

    Examples
    --------
    >>> read_tile_dataset("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    qpbridge.errors.InputError: tile dataset /nonexistent: no dataset.json: give a folder written by qpbridge masks
    """
    root = Path(path)
    meta_path = root / DATASET_FILE
    if not meta_path.is_file():
        raise _dataset_error(root, "no dataset.json: give a folder written by qpbridge masks")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _dataset_error(root, f"dataset.json is not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise _dataset_error(root, f"dataset.json format is {found!r}, expected {DATASET_FORMAT!r}")
    role = meta.get("role")
    if role not in ROLES:
        expected = " or ".join(repr(r) for r in ROLES)
        raise _dataset_error(root, f"dataset.json role is {role!r}, expected {expected}")
    mpp, tile_px = meta.get("mpp"), meta.get("tile_px")
    if not isinstance(mpp, (int, float)) or isinstance(mpp, bool) or not mpp > 0:
        raise _dataset_error(root, f"dataset.json mpp is {mpp!r}, expected a number > 0")
    if not isinstance(tile_px, int) or isinstance(tile_px, bool) or tile_px < 8:
        raise _dataset_error(root, f"dataset.json tile_px is {tile_px!r}, expected an integer >= 8")
    expected_ignore = INSTANCE_IGNORE_LABEL if role == "nuclei" else IGNORE_LABEL
    ignore_label = meta.get("ignore_label", expected_ignore)
    if ignore_label != expected_ignore:
        raise _dataset_error(root, f"dataset.json ignore_label is {ignore_label!r}, expected {expected_ignore}")
    classes_raw = meta.get("classes")
    if not isinstance(classes_raw, list) or not classes_raw:
        raise _dataset_error(root, "dataset.json has no classes list")
    classes: list[ClassInfo] = []
    for item in classes_raw:
        try:
            color = tuple(int(v) for v in item["color"])
            classes.append(ClassInfo(int(item["label"]), str(item["name"]), (color[0], color[1], color[2])))
        except (KeyError, TypeError, ValueError, IndexError):
            raise _dataset_error(root, f"dataset.json class {item!r} needs label, name and color [r, g, b]") from None
    classes.sort(key=lambda c: c.label)
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        raise _dataset_error(root, "no manifest.csv")
    tiles: list[TileRecord] = []
    fully_ignored = 0
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing_cols = {"slide", "image", "mask"} - set(reader.fieldnames or [])
        if missing_cols:
            raise _dataset_error(root, f"manifest.csv lacks column(s) {sorted(missing_cols)}")
        for row in reader:
            ignored = row.get("count_ignore")
            if ignored not in (None, "") and int(ignored) >= tile_px * tile_px:
                fully_ignored += 1
                continue
            record = TileRecord(root / row["image"], root / row["mask"], row["slide"])
            for file in (record.image, record.mask):
                if not file.is_file():
                    raise _dataset_error(root, f"manifest.csv names {file}, which does not exist")
            tiles.append(record)
    return TileDataset(
        root, role, float(mpp), int(tile_px), int(ignore_label), tuple(classes), tuple(tiles), fully_ignored
    )


@dataclass(frozen=True)
class Split:
    """Which tiles train and which validate, and how they were chosen."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    by: str  # "slide", "tile" or "none"
    train_slides: tuple[str, ...]
    val_slides: tuple[str, ...]


def split_tiles(
    tiles: Sequence[TileRecord], val_fraction: float, seed: int, val_slides: Sequence[str] | None = None
) -> tuple[Split, list[str]]:
    """Split tiles into training and validation by slide (seeded); by tile when there is a single slide.

    ``val_slides``: these slides validate, all others train (instead of ``val_fraction``); each must be a
    slide of the tiles, and at least one slide must be left to train. Returns the split and any warnings.

    Examples
    --------
    >>> tiles = [TileRecord(Path("i"), Path("m"), s) for s in "aabbccdd"]
    >>> split, _ = split_tiles(tiles, 0.25, seed=0)
    >>> split.by, len(split.val_slides), len(split.val)
    ('slide', 1, 2)
    """
    if val_slides:
        return _split_by_slides(tiles, val_slides), []
    notes: list[str] = []
    n = len(tiles)
    if val_fraction <= 0 or n < 2:
        if val_fraction > 0:
            notes.append("only one tile: training without validation (the last step's weights are kept)")
        return Split(tuple(range(n)), (), "none", tuple(sorted({t.slide for t in tiles})), ()), notes
    slides = sorted({t.slide for t in tiles})
    rng = np.random.default_rng([seed, 7])
    if len(slides) >= 2:
        n_val = min(len(slides) - 1, max(1, round(val_fraction * len(slides))))
        drawn = {slides[i] for i in rng.permutation(len(slides))[:n_val]}
        val = tuple(i for i, t in enumerate(tiles) if t.slide in drawn)
        train = tuple(i for i, t in enumerate(tiles) if t.slide not in drawn)
        return Split(train, val, "slide", tuple(s for s in slides if s not in drawn), tuple(sorted(drawn))), notes
    notes.append(
        f"all tiles come from one slide ({slides[0]}): validation tiles are drawn from the same slide, "
        "so validation scores will be optimistic; add tiles from more slides"
    )
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    order = rng.permutation(n)
    val_set = set(order[:n_val].tolist())
    return Split(
        tuple(i for i in range(n) if i not in val_set), tuple(sorted(val_set)), "tile", tuple(slides), tuple(slides)
    ), notes


#: PIL modes of 16-bit instance masks (nuclei tiles; PNG reads back as I;16 or, with some Pillow versions, I).
_INSTANCE_MODES = ("I;16", "I;16B", "I;16L", "I")


def _split_by_slides(tiles: Sequence[TileRecord], val_slides: Sequence[str]) -> Split:
    slides = sorted({t.slide for t in tiles})
    unknown = sorted(set(val_slides) - set(slides))
    if unknown:
        shown = ", ".join(slides[:8]) + (", ..." if len(slides) > 8 else "")
        raise InputError(f"--val-slides names {', '.join(unknown)}, not among the tiles' slides ({shown})")
    chosen = set(val_slides)
    if chosen >= set(slides):
        raise InputError("--val-slides names every slide of the tiles: leave at least one slide to train on")
    val = tuple(i for i, t in enumerate(tiles) if t.slide in chosen)
    train = tuple(i for i, t in enumerate(tiles) if t.slide not in chosen)
    return Split(train, val, "slide", tuple(s for s in slides if s not in chosen), tuple(sorted(chosen)))


def read_tile(record: TileRecord, tile_px: int, *, instances: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A tile's uint8 RGB image (H x W x 3) and label mask (H x W), checked against the dataset's tile size.

    ``instances``: the mask is a 16-bit instance image (a nuclei dataset: 0 background, one id per nucleus,
    65535 ignore), read as int32; otherwise a class label image (mode L).
    """
    from PIL import Image

    try:
        with Image.open(record.image) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(record.mask) as im:
            if instances:
                if im.mode not in _INSTANCE_MODES:
                    raise InputError(
                        f"tile mask {record.mask} is a {im.mode} image; expected a 16-bit instance image "
                        "(mode I;16) in a nuclei dataset"
                    )
                mask = np.asarray(im).astype(np.int32)
            elif im.mode not in ("L", "P"):
                raise InputError(
                    f"tile mask {record.mask} is a {im.mode} image; expected a single-channel label image (mode L)"
                )
            else:
                mask = np.asarray(im)
    except OSError as exc:
        raise InputError(f"cannot read tile {record.image} / {record.mask}: {exc}") from None
    if image.shape[:2] != (tile_px, tile_px) or mask.shape != (tile_px, tile_px):
        raise InputError(
            f"tile {record.image} is {image.shape[1]} x {image.shape[0]} px with a "
            f"{mask.shape[-1]} x {mask.shape[0]} px mask; the dataset says {tile_px} x {tile_px}"
        )
    return image, mask


def iter_tiles(dataset_dirs: Sequence[str | os.PathLike[str]]) -> Iterator[TileRecord]:
    """Every usable tile of the given datasets (for scripts that inspect training data)."""
    for d in dataset_dirs:
        yield from read_tile_dataset(d).tiles
