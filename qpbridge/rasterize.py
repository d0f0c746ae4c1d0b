"""QuPath objects -> label masks for any window (``rasterio.features.rasterize``; no torch, no openslide).

This is the way back from QuPath to training: the corrected GeoJSON becomes a mask whose pixels hold class
labels (``0 .. n-1``) or :data:`~qpbridge.classes.IGNORE_LABEL` (255, "do not train on this pixel").

Coordinates
-----------
Geometries are in level-0 pixels (QuPath's GeoJSON). A mask window is described by its shape and one
:class:`affine.Affine` that maps *mask pixel corners* to level-0 coordinates (the Affine of
:meth:`qpbridge.slide.Slide.affine_at`, the same one :mod:`qpbridge.vectorize` hands to
``rasterio.features.shapes``). A pixel gets a geometry's label when its **centre** lies inside the geometry
(``all_touched=False``), so masks -> polygons -> masks is lossless.

Class names -> labels (:class:`ClassMap`)
-----------------------------------------
A QuPath class name is looked up by the one matching rule of :class:`qpbridge.qupath.classes.ClassMatcher`
(``qpbridge diff`` and ``evaluate`` use the same), in this order:

1. the map of names (a model card's classes and aliases, or the DeepBatch classes; ``"Tissue"`` and
   ``"Normal"`` mean label 0 unless the card says otherwise; ``--class``/``--class-map`` overrides on top):
   the full name exactly, then ignoring case, then (for a derived class ``"Tumor: Positive"``) its first
   part ``"Tumor"`` exactly, then ignoring case;
2. the *region* patterns (default ``"Region*"``): such objects mark the reviewed area, they carry no label;
3. the *ignore* patterns (default ``"Ignore*"``, ``"Pen mark*"``, ``"Pen"``): label 255;
4. otherwise the class is unknown: one :class:`~qpbridge.errors.InputError` lists every unknown class with
   its object count and how to map it, unless ``ignore_unknown=True`` (then those objects are skipped and
   counted). Unclassified objects go by the name ``"Unclassified"``.

A map value is a label, ``255``/``"ignore"``, ``"region"`` (reviewed-area marker) or ``"skip"`` (drop);
:func:`parse_class_map` reads the ``--class-map`` grammar that ``masks`` and ``evaluate`` share.

Overlaps
--------
``overlap="priority"`` (default): objects are painted in increasing label order, so where objects overlap
the higher label wins (``Invasive carcinoma`` 3 beats ``In situ`` 2 beats ``Benign`` 1 beats ``Normal`` 0);
``priority=`` gives another order. ``overlap="later-wins"``: objects are painted in file order, the later
one wins. In both modes ignore (255) objects are painted last: a pixel marked "ignore" is never trained on.

Reviewed area
-------------
``reviewed="region"`` (default): pixels outside every region object (class ``Region*``) are 255; inside,
pixels that no labelled object covers get ``fill_label`` (0, normal/background). When the file holds no
region object, everything counts as reviewed (as ``"all"``; :attr:`LabelRasterizer.reviewed_effective`
says so). ``reviewed="all"``: every uncovered pixel is ``fill_label``. ``reviewed="annotated"``: every pixel
that no labelled object covers is 255 (only drawn areas are trusted).

Example
-------
>>> from affine import Affine
>>> from shapely import box
>>> mask = rasterize_shapes([(box(0, 0, 8, 8), 1), (box(4, 4, 16, 16), 3)], (4, 4), Affine.scale(4))
>>> mask.tolist()
[[1, 1, 0, 0], [1, 3, 3, 3], [0, 3, 3, 3], [0, 3, 3, 3]]
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize as _rio_rasterize

from qpbridge.classes import DEEPBATCH_CLASSES, IGNORE_LABEL, ROI_CLASS, ClassInfo
from qpbridge.errors import InputError, QpbridgeError
from qpbridge.qupath.classes import DEFAULT_IGNORE_PATTERNS, DEFAULT_REGION_PATTERNS, UNCLASSIFIED, ClassMatcher
from qpbridge.qupath.objects import object_role
from qpbridge.tiling import apply_affine

if TYPE_CHECKING:
    from qpbridge.cards import ModelCard

__all__ = [
    "OVERLAP_MODES",
    "REGION",
    "REVIEWED_MODES",
    "SKIP",
    "ClassMap",
    "LabelRasterizer",
    "RasterizeReport",
    "parse_class_map",
    "parse_class_option",
    "polygon_dicts",
    "rasterize_features",
    "rasterize_shapes",
]

#: Map value of a class whose objects mark the reviewed area (no label of their own).
REGION = -1
#: Map value of a class whose objects are dropped.
SKIP = -2

Overlap = Literal["priority", "later-wins"]
Reviewed = Literal["region", "all", "annotated"]
OVERLAP_MODES: tuple[str, ...] = ("priority", "later-wins")
REVIEWED_MODES: tuple[str, ...] = ("region", "all", "annotated")

#: Geometries with more vertices than this are clipped to the window (plus a margin) before rasterizing.
_CLIP_MIN_VERTICES = 512
_POLYGON, _MULTIPOLYGON, _COLLECTION = 3, 6, 7


def _value_text(value: int) -> str:
    return {REGION: "region", SKIP: "skip", IGNORE_LABEL: "ignore"}.get(value, str(value))


# --------------------------------------------------------------------------------------------- class map
@dataclass(frozen=True)
class ClassMap:
    """QuPath class names -> training labels, with the training classes themselves.

    Attributes
    ----------
    classes
        The training classes (label, name, colour), by label; what ``dataset.json`` lists.
    names
        QuPath class name -> label, :data:`~qpbridge.classes.IGNORE_LABEL`, :data:`REGION` or :data:`SKIP`.
    region_patterns, ignore_patterns
        ``fnmatch`` patterns (case-insensitive) tried after ``names`` (see the module docstring).
    role
        ``"cell"`` or ``"roi"``, written to ``dataset.json``.

    Example
    -------
    >>> cmap = ClassMap.deepbatch().with_overrides({"Tumor": 3, "Stroma": "ignore"})
    >>> cmap.lookup("Tumor: Positive"), cmap.lookup("stroma"), cmap.lookup("Tissue"), cmap.lookup("Region 2")
    (3, 255, 0, -1)
    >>> cmap.lookup("Necrosis") is None
    True
    """

    classes: tuple[ClassInfo, ...]
    names: Mapping[str, int]
    region_patterns: tuple[str, ...] = DEFAULT_REGION_PATTERNS
    ignore_patterns: tuple[str, ...] = DEFAULT_IGNORE_PATTERNS
    role: str = "cell"
    _matcher: ClassMatcher[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        labels = [c.label for c in self.classes]
        distinct = len(set(labels)) == len(labels)
        if not labels or not distinct or not all(0 <= lab < IGNORE_LABEL for lab in labels):
            raise InputError(f"class labels must be distinct numbers 0-254, got {labels}")
        object.__setattr__(self, "classes", tuple(sorted(self.classes, key=lambda c: c.label)))
        valid = set(labels) | {IGNORE_LABEL, REGION, SKIP}
        for name, value in self.names.items():
            if value not in valid:
                raise InputError(
                    f"class {name!r} is mapped to {value}, which is not a class here "
                    f"({self.describe_labels()}): map it to one of those labels, 'ignore', 'region' or 'skip'"
                )
        patterns = [(p, REGION) for p in self.region_patterns] + [(p, IGNORE_LABEL) for p in self.ignore_patterns]
        object.__setattr__(self, "_matcher", ClassMatcher(self.names, patterns))

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_classes(
        cls, classes: Sequence[ClassInfo], aliases: Mapping[str, int] | None = None, role: str = "cell"
    ) -> ClassMap:
        """A map from class infos: each class by its name, plus ``aliases``, plus "Tissue"/"Normal" -> 0.

        >>> ClassMap.from_classes([ClassInfo(0, "Background", (0, 0, 0)), ClassInfo(1, "ROI", (9, 9, 9))],
        ...                       role="roi").lookup("Normal")
        0
        """
        names: dict[str, int] = {c.name: c.label for c in classes}
        for alias, label in (aliases or {}).items():
            names.setdefault(alias, label)
        if any(c.label == 0 for c in classes):
            names.setdefault("Tissue", 0)
            names.setdefault("Normal", 0)
        if role == "cell":
            # The ROI model's regions, exported back from QuPath beside the corrections, are no tissue class.
            names.setdefault(ROI_CLASS.name, SKIP)
        return cls(tuple(classes), names, role=role)

    @classmethod
    def deepbatch(cls) -> ClassMap:
        """The DeepBatch cell classes (0 Normal, 1 Benign, 2 In situ carcinoma, 3 Invasive carcinoma)."""
        return cls.from_classes(DEEPBATCH_CLASSES, role="cell")

    @classmethod
    def roi(cls) -> ClassMap:
        """The ROI classes (0 Background; 1 ROI, which every DeepBatch lesion class maps to).

        >>> ClassMap.roi().lookup("In situ carcinoma"), ClassMap.roi().lookup("Tissue")
        (1, 0)
        """
        background = ClassInfo(0, "Background", (0, 0, 0))
        aliases = {c.name: ROI_CLASS.label for c in DEEPBATCH_CLASSES if c.label != 0}
        return cls.from_classes((background, ROI_CLASS), aliases, role="roi")

    @classmethod
    def from_card(cls, card: ModelCard) -> ClassMap:
        """The classes and aliases of a model card (:class:`qpbridge.cards.ModelCard`), and its role."""
        infos: list[ClassInfo] = []
        aliases: dict[str, int] = {}
        for item in card.classes:
            r, g, b = (int(v) for v in item.color)
            infos.append(ClassInfo(int(item.label), str(item.name), (r, g, b)))
            for alias in item.aliases:
                aliases.setdefault(str(alias), int(item.label))
        return cls.from_classes(infos, aliases, role=card.role)

    def with_overrides(self, overrides: Mapping[str, int | str]) -> ClassMap:
        """A copy where ``overrides`` (name -> label, ``"ignore"``, ``"region"``, ``"skip"``) replace entries.

        >>> ClassMap.deepbatch().with_overrides({"Invasive carcinoma": "skip"}).lookup("Invasive carcinoma")
        -2
        """
        names = dict(self.names)
        for name, raw in overrides.items():
            # Drop case variants of the same name so the override wins whatever case the file uses.
            for existing in [n for n in names if n.casefold() == name.casefold()]:
                del names[existing]
            names[name] = self.parse_value(raw, f"class {name!r}")
        return ClassMap(self.classes, names, self.region_patterns, self.ignore_patterns, self.role)

    def with_patterns(self, *, region: Sequence[str] | None = None, ignore: Sequence[str] | None = None) -> ClassMap:
        """A copy with other region and/or ignore patterns."""
        return ClassMap(
            self.classes,
            dict(self.names),
            tuple(region) if region is not None else self.region_patterns,
            tuple(ignore) if ignore is not None else self.ignore_patterns,
            self.role,
        )

    # -- lookups -----------------------------------------------------------------------------------
    @property
    def labels(self) -> tuple[int, ...]:
        """The training labels, ascending."""
        return tuple(c.label for c in self.classes)

    def describe_labels(self) -> str:
        """``"0 Normal, 1 Benign, ..."`` for messages."""
        return ", ".join(f"{c.label} {c.name}" for c in self.classes)

    def parse_value(self, raw: int | str, what: str) -> int:
        """A map value from a label number or ``ignore``/``region``/``skip`` (case-insensitive)."""
        if isinstance(raw, bool):
            raw = str(raw)
        if isinstance(raw, str):
            text = raw.strip()
            keyword = {"ignore": IGNORE_LABEL, "region": REGION, "skip": SKIP}.get(text.lower())
            if keyword is not None:
                return keyword
            try:
                raw = int(text)
            except ValueError:
                named = [c.label for c in self.classes if c.name.casefold() == text.casefold()]
                if named:
                    return named[0]
                raise InputError(
                    f"{what}: {raw!r} is not a label: give a number ({self.describe_labels()}), "
                    "a class name, 'ignore', 'region' or 'skip'"
                ) from None
        if raw not in self.labels and raw != IGNORE_LABEL:
            raise InputError(
                f"{what}: label {raw} is not a class here ({self.describe_labels()}): "
                "use one of those labels, 'ignore' (255), 'region' or 'skip'"
            )
        return int(raw)

    def lookup(self, class_name: str | None) -> int | None:
        """The map value of a QuPath class name (``None`` = unclassified), or ``None`` when it is unknown.

        The rule is :meth:`qpbridge.qupath.classes.ClassMatcher.match` over :attr:`names`, then the region
        patterns, then the ignore patterns.
        """
        return self._matcher.match(class_name)

    def to_json(self) -> list[dict[str, Any]]:
        """The classes as ``dataset.json`` lists them."""
        return [{"label": c.label, "name": c.name, "color": list(c.color)} for c in self.classes]


def parse_class_option(text: str) -> tuple[str, str]:
    """Split one ``--class "NAME=VALUE"`` option into ``(NAME, VALUE)``.

    >>> parse_class_option("Tumor: Positive=3")
    ('Tumor: Positive', '3')
    """
    name, sep, value = text.rpartition("=")
    if not sep or not name.strip() or not value.strip():
        raise InputError(f'--class {text!r} is not NAME=LABEL: write e.g. --class "Tumor=3" or --class "Stroma=ignore"')
    return name.strip(), value.strip()


#: Endings of a ``--class-map`` file (YAML needs PyYAML).
_CLASS_MAP_FILE_SUFFIXES = (".json", ".yaml", ".yml")
_CLASS_MAP_EXAMPLE = '{"Tumor": 3, "Stroma": "ignore"}'


def parse_class_map(spec: str | os.PathLike[str]) -> dict[str, int | str]:
    """QuPath class name -> value, from one ``--class-map`` (the grammar ``masks``, ``evaluate`` and ``diff`` share).

    A value is a label number, ``"ignore"``, ``"region"``, ``"skip"`` or a class name (what
    :meth:`ClassMap.with_overrides` takes); digits become numbers. ``spec`` is, tried in this order:

    1. an existing file, JSON (YAML with PyYAML): an object ``{"QuPath name": value}``, or a ``dataset.json``
       or model ``card.json`` (its ``classes`` list: each class's name and aliases -> its label);
    2. ``NAME=VALUE`` pairs separated by commas (``"Normal=0,Benign=1,Stroma=ignore"``; the last ``=`` of a
       pair splits it, so names may hold ``:``);
    3. a registered model name or model folder: its card's classes and aliases.

    Raises
    ------
    InputError
        A ``.json``/``.yaml`` file that does not exist, a file that is not such an object or list, a pair
        without ``=``, or a name that is none of the above.

    Examples
    --------
    >>> parse_class_map("Normal=0, Benign=1,Tumor: Positive=3,Stroma=ignore")
    {'Normal': 0, 'Benign': 1, 'Tumor: Positive': 3, 'Stroma': 'ignore'}
    """
    text = os.fspath(spec).strip()
    path = Path(text).expanduser()
    if path.is_file():
        return _class_map_from_data(_load_class_map_data(path), f"class map {path}")
    if path.suffix.lower() in _CLASS_MAP_FILE_SUFFIXES:
        raise InputError(f"class map not found: {path}: give a JSON file like {_CLASS_MAP_EXAMPLE}")
    if "=" in text:
        mapping: dict[str, int | str] = {}
        for part in text.split(","):
            name, sep, value = part.rpartition("=")
            if not sep or not name.strip() or not value.strip():
                raise InputError(
                    f"--class-map entry {part.strip()!r} is not NAME=LABEL (e.g. 'Benign=1' or 'Stroma=ignore')"
                )
            mapping[name.strip()] = _class_value(value)
        return mapping
    from qpbridge.models import load_card, resolve_model_path

    try:
        card_map = load_card(resolve_model_path(text)).class_map()
    except QpbridgeError:
        raise InputError(
            f"--class-map {text!r} is neither NAME=LABEL pairs, a JSON file, nor a known model name "
            "(see `qpbridge models list`)"
        ) from None
    return dict(card_map)


def _class_value(raw: int | str) -> int | str:
    if isinstance(raw, int):
        return raw
    text = raw.strip()
    return int(text) if text.isdigit() else text


def _load_class_map_data(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise InputError(
                f"{path} is YAML but PyYAML is not installed: write the class map as JSON "
                '({"Tumor": 3}) or install pyyaml'
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"class map {path} is not valid YAML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"class map {path} is not valid JSON ({exc.msg} at line {exc.lineno}): "
            f"write an object like {_CLASS_MAP_EXAMPLE}"
        ) from None


def _class_map_from_data(data: Any, what: str) -> dict[str, int | str]:
    if isinstance(data, dict) and isinstance(data.get("classes"), list):  # dataset.json or card.json
        mapping: dict[str, int | str] = {}
        for entry in data["classes"]:
            label = entry.get("label") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or type(label) is not int:
                raise InputError(f"{what}: a class entry {entry!r} lacks a name and an integer label")
            mapping[entry["name"]] = label
            for alias in entry.get("aliases") or []:
                mapping.setdefault(str(alias), label)
        return mapping
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, str)) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise InputError(
            f"{what} must be an object of QuPath class name -> label number or "
            f"'ignore'/'region'/'skip' (e.g. {_CLASS_MAP_EXAMPLE}), or a dataset.json/card.json 'classes' list"
        )
    return {k: _class_value(v) for k, v in data.items()}


# --------------------------------------------------------------------------------------------- geometry
def polygon_dicts(geoms: Sequence[Any] | np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
    """GeoJSON-like Polygon dicts of every polygon part of ``geoms`` (vectorized), and each part's owner.

    MultiPolygons and GeometryCollections are split into their polygon parts (what ``rasterize`` does with
    them anyway); other parts (points, lines) and empty geometries give nothing. Dicts built from
    coordinate lists are what ``rasterio.features.rasterize`` reads fastest.

    >>> from shapely import box, MultiPolygon
    >>> dicts, owner = polygon_dicts([box(0, 0, 1, 1), MultiPolygon([box(2, 2, 3, 3), box(4, 4, 5, 5)])])
    >>> len(dicts), owner.tolist(), dicts[0]["type"]
    (3, [0, 1, 1], 'Polygon')
    """
    arr = np.asarray(geoms, dtype=object)
    if arr.size == 0:
        return [], np.zeros(0, dtype=np.int64)
    parts, owner = shapely.get_parts(arr, return_index=True)
    keep = shapely.get_type_id(parts) == _POLYGON
    if not keep.all():  # collections nested one level: flatten once more
        nested = shapely.get_type_id(parts) == _MULTIPOLYGON
        if nested.any():
            sub, sub_owner = shapely.get_parts(parts[nested], return_index=True)
            parts = np.concatenate([parts[~nested], sub])
            owner = np.concatenate([owner[~nested], owner[nested][sub_owner]])
            order = np.argsort(owner, kind="stable")
            parts, owner = parts[order], owner[order]
        keep = (shapely.get_type_id(parts) == _POLYGON) & ~shapely.is_empty(parts)
    parts, owner = parts[keep], owner[keep]
    if parts.size == 0:
        return [], owner
    rings, ring_owner = shapely.get_rings(parts, return_index=True)
    coords, coord_owner = shapely.get_coordinates(rings, return_index=True)
    ring_ends = np.cumsum(np.bincount(coord_owner, minlength=len(rings))).tolist()
    part_ring_ends = np.cumsum(np.bincount(ring_owner, minlength=len(parts))).tolist()
    xy = coords.tolist()
    dicts: list[dict[str, Any]] = []
    ring = 0
    start = 0
    for part_end in part_ring_ends:
        ring_lists = []
        while ring < part_end:
            end = ring_ends[ring]
            ring_lists.append(xy[start:end])
            start = end
            ring += 1
        dicts.append({"type": "Polygon", "coordinates": ring_lists})
    return dicts, owner


def _window_box(shape_hw: tuple[int, int], affine: Affine) -> tuple[float, float, float, float]:
    """Level-0 bounding box of a window of ``shape_hw`` pixels under ``affine``."""
    height, width = shape_hw
    corners = [apply_affine(affine, x, y) for x, y in ((0, 0), (width, 0), (0, height), (width, height))]
    xs = [c[0] for c in corners]
    ys = [c[1] for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _check_shape(shape_hw: tuple[int, int]) -> tuple[int, int]:
    if len(shape_hw) != 2 or min(int(shape_hw[0]), int(shape_hw[1])) <= 0:
        raise InputError(f"mask shape must be (height, width) with both > 0, got {shape_hw}")
    return int(shape_hw[0]), int(shape_hw[1])


def rasterize_shapes(
    shapes: Iterable[tuple[Any, int]],
    shape_hw: tuple[int, int],
    affine: Affine,
    *,
    fill: int = 0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Paint ``(geometry, label)`` pairs into a uint8 mask, in order (a later shape wins where they overlap).

    Parameters
    ----------
    shapes
        Shapely geometries or GeoJSON-like dicts in level-0 pixels, with their label (0-255).
        Only polygon parts are painted (points and lines are left out).
    shape_hw
        ``(height, width)`` of the mask.
    affine
        Mask pixel corners -> level-0 coordinates (e.g. ``Slide.affine_at(mpp, x_px, y_px)``).
    fill
        Value of pixels no shape covers.
    out
        Paint into this uint8 array (of ``shape_hw``) instead of a new one; ``fill`` is then not applied.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of ``shape_hw``: a pixel holds the label of the last shape whose interior contains
        the pixel's centre.

    Example
    -------
    >>> from shapely import box
    >>> rasterize_shapes([(box(1, 1, 3, 2), 7)], (3, 4), Affine.identity()).tolist()
    [[0, 0, 0, 0], [0, 7, 7, 0], [0, 0, 0, 0]]
    """
    height, width = _check_shape(shape_hw)
    if out is None:
        out = np.full((height, width), fill, dtype=np.uint8)
    elif out.shape != (height, width) or out.dtype != np.uint8:
        raise InputError(f"out must be a uint8 array of shape {(height, width)}, got {out.dtype} {out.shape}")
    pairs = list(shapes)
    for _, value in pairs:
        if not 0 <= int(value) <= 255:
            raise InputError(f"labels must be 0-255 to fit a uint8 mask, got {value}")
    shapely_positions = [i for i, (geom, _) in enumerate(pairs) if not isinstance(geom, Mapping)]
    geoms = np.empty(len(shapely_positions), dtype=object)
    geoms[:] = [pairs[i][0] for i in shapely_positions]
    dicts, owner = polygon_dicts(geoms)
    by_position: dict[int, list[dict[str, Any]]] = {}
    for d, o in zip(dicts, owner.tolist(), strict=True):
        by_position.setdefault(shapely_positions[o], []).append(d)
    for position, (geom, _) in enumerate(pairs):
        if isinstance(geom, Mapping) and geom.get("type") in ("Polygon", "MultiPolygon"):
            by_position[position] = [dict(geom)]
    items = [(d, int(pairs[p][1])) for p in sorted(by_position) for d in by_position[p]]
    if items:
        _rio_rasterize(items, out=out, transform=affine, all_touched=False)
    return out


# --------------------------------------------------------------------------------------------- features
@dataclass
class RasterizeReport:
    """What a :class:`LabelRasterizer` made of its features."""

    painted: dict[str, int] = field(default_factory=dict)  #: class name -> objects painted
    regions: int = 0  #: reviewed-area objects
    skipped_unknown: dict[str, int] = field(default_factory=dict)  #: class -> objects (ignore_unknown)
    skipped_by_map: dict[str, int] = field(default_factory=dict)  #: class -> objects mapped to "skip"
    skipped_not_area: int = 0  #: points, lines, empty geometries
    #: object type -> objects that are not class regions (heat-map tiles, cells, TMA cores: never labels)
    skipped_by_type: dict[str, int] = field(default_factory=dict)
    #: nuclei tiles: region objects that are no nuclei (:func:`qpbridge.qupath.objects.is_nucleus`)
    skipped_not_nuclei: int = 0
    reviewed_effective: str = "all"

    def notes(self) -> list[str]:
        """Human-readable lines about what was left out."""
        lines = []
        if self.skipped_unknown:
            listing = ", ".join(f"{n!r} ({c})" for n, c in sorted(self.skipped_unknown.items()))
            lines.append(f"skipped objects of unknown classes (--ignore-unknown): {listing}")
        if self.skipped_by_map:
            listing = ", ".join(f"{n!r} ({c})" for n, c in sorted(self.skipped_by_map.items()))
            lines.append(f"skipped objects mapped to 'skip': {listing}")
        if self.skipped_not_area:
            lines.append(f"skipped {self.skipped_not_area} objects without an area (points, lines, empty)")
        if self.skipped_by_type:
            listing = ", ".join(f"{n} ({c})" for n, c in sorted(self.skipped_by_type.items()))
            lines.append(f"skipped objects that are not class regions: {listing}")
        if self.skipped_not_nuclei:
            lines.append(
                f"skipped {self.skipped_not_nuclei} objects that are no nuclei: qpbridge's predicted class regions "
                "and objects larger than 400 um^2 (nuclei are detections with Nucleus: measurements, cells, and "
                "smaller drawn objects)"
            )
        return lines


class LabelRasterizer:
    """QuPath features prepared once (class lookup, paint order, STRtree) to rasterize any window fast.

    Parameters
    ----------
    features
        Objects with ``geometry`` (shapely, level-0 px) and ``class_name`` (``qpbridge.qupath.Feature``), or
        ``(geometry, class_name)`` pairs. Features that are not class regions
        (:func:`qpbridge.qupath.objects.object_role`: heat-map tiles, nuclei) are skipped and counted.
    class_map
        Class names -> labels (see :class:`ClassMap`).
    overlap, reviewed, priority, fill_label
        See the module docstring. ``priority`` lists labels from lowest to highest precedence (default:
        ascending labels); labels it leaves out come first.
    ignore_unknown
        Skip objects of unknown classes (counted in :attr:`report`) instead of raising :class:`InputError`.
    source
        Name of the input for messages (e.g. the GeoJSON path).

    Example
    -------
    >>> from shapely import box
    >>> feats = [(box(0, 0, 4, 4), "Region*"), (box(1, 1, 3, 3), "Benign"),
    ...          (box(2, 2, 6, 6), "Invasive carcinoma")]
    >>> lr = LabelRasterizer(feats, ClassMap.deepbatch())
    >>> lr.window((5, 5), Affine.identity()).tolist()
    [[0, 0, 0, 0, 255], [0, 1, 1, 0, 255], [0, 1, 3, 3, 255], [0, 0, 3, 3, 255], [255, 255, 255, 255, 255]]
    """

    def __init__(
        self,
        features: Iterable[Any],
        class_map: ClassMap,
        *,
        overlap: str = "priority",
        reviewed: str = "region",
        ignore_unknown: bool = False,
        priority: Sequence[int] | None = None,
        fill_label: int = 0,
        source: str = "the GeoJSON",
    ) -> None:
        if overlap not in OVERLAP_MODES:
            raise InputError(f"--overlap must be one of {', '.join(OVERLAP_MODES)}, got {overlap!r}")
        if reviewed not in REVIEWED_MODES:
            raise InputError(f"--reviewed must be one of {', '.join(REVIEWED_MODES)}, got {reviewed!r}")
        if fill_label not in class_map.labels:
            raise InputError(f"fill label {fill_label} is not a class ({class_map.describe_labels()})")
        self.class_map = class_map
        self.overlap = overlap
        self.reviewed = reviewed
        self.fill_label = fill_label
        self.report = RasterizeReport()

        rank = self._ranks(class_map, priority)
        paint: list[tuple[tuple[int, int], Any, int]] = []
        regions: list[Any] = []
        unknown: dict[str, int] = {}
        for position, item in enumerate(features):
            otype = getattr(item, "object_type", None)
            if otype is not None and object_role(otype, getattr(item, "measurements", None)) != "region":
                kind = "nucleus" if object_role(otype, getattr(item, "measurements", None)) == "nucleus" else otype
                self.report.skipped_by_type[kind] = self.report.skipped_by_type.get(kind, 0) + 1
                continue
            geom, class_name = (item.geometry, item.class_name) if hasattr(item, "geometry") else item
            shown = UNCLASSIFIED if class_name is None else str(class_name)
            value = class_map.lookup(class_name)
            if value is None:
                unknown[shown] = unknown.get(shown, 0) + 1
                continue
            if value == SKIP:
                self.report.skipped_by_map[shown] = self.report.skipped_by_map.get(shown, 0) + 1
                continue
            if (
                geom is None
                or shapely.is_empty(geom)
                or shapely.get_type_id(geom) not in (_POLYGON, _MULTIPOLYGON, _COLLECTION)
                or shapely.area(geom) <= 0
            ):
                self.report.skipped_not_area += 1
                continue
            if value == REGION:
                regions.append(geom)
                self.report.regions += 1
                continue
            order = getattr(item, "source_index", None)
            order = position if order is None else int(order)
            key = (rank[value], order) if overlap == "priority" else (int(value == IGNORE_LABEL), order)
            paint.append((key, geom, value))
            self.report.painted[shown] = self.report.painted.get(shown, 0) + 1
        if unknown and not ignore_unknown:
            listing = ", ".join(
                f"{name!r} ({count} object{'s' if count != 1 else ''})"
                for name, count in sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            example = next(iter(sorted(unknown)))
            raise InputError(
                f"unknown QuPath classes in {source}: {listing}. Map each to a label with "
                f'--class "{example}=LABEL" (labels: {class_map.describe_labels()}; or =ignore, =region, '
                "=skip), or with --class-map FILE.json, or leave them out with --ignore-unknown"
            )
        self.report.skipped_unknown = unknown
        paint.sort(key=lambda t: t[0])
        self._geoms = np.empty(len(paint), dtype=object)
        self._geoms[:] = [g for _, g, _ in paint]
        self._values = np.asarray([v for _, _, v in paint], dtype=np.uint8)
        self._nverts = shapely.get_num_coordinates(self._geoms) if len(paint) else np.zeros(0, np.int64)
        self._tree = shapely.STRtree(self._geoms)
        self._regions = np.empty(len(regions), dtype=object)
        self._regions[:] = regions
        self._region_nverts = shapely.get_num_coordinates(self._regions) if regions else np.zeros(0, np.int64)
        self._region_tree = shapely.STRtree(self._regions)
        if reviewed == "region":
            self.reviewed_effective = "region" if regions else "all"
        else:
            self.reviewed_effective = reviewed
        self.report.reviewed_effective = self.reviewed_effective

    @staticmethod
    def _ranks(class_map: ClassMap, priority: Sequence[int] | None) -> dict[int, int]:
        labels = list(class_map.labels)
        if priority is None:
            order = labels
        else:
            bad = [p for p in priority if p not in labels]
            if bad:
                raise InputError(f"priority lists labels {bad} that are not classes ({class_map.describe_labels()})")
            order = [lab for lab in labels if lab not in priority] + list(priority)
        rank = {lab: i for i, lab in enumerate(order)}
        rank[IGNORE_LABEL] = len(order)  # ignore objects always last: they win
        return rank

    # -- queries -----------------------------------------------------------------------------------
    def bounds(self) -> tuple[float, float, float, float] | None:
        """Level-0 bounds (xmin, ymin, xmax, ymax) of everything painted, or None when nothing is."""
        if not len(self._geoms):
            return None
        xmin, ymin, xmax, ymax = shapely.total_bounds(self._geoms)
        return float(xmin), float(ymin), float(xmax), float(ymax)

    def painted(self) -> tuple[np.ndarray, np.ndarray]:
        """The objects that carry a label, in paint order, and their labels (255: ignore objects)."""
        return self._geoms.copy(), self._values.copy()

    @property
    def n_painted(self) -> int:
        """Objects that carry a label (or ignore)."""
        return len(self._geoms)

    @property
    def n_regions(self) -> int:
        """Reviewed-area objects."""
        return len(self._regions)

    @property
    def uncovered_label(self) -> int:
        """What pixels that no labelled object covers get inside the reviewed area."""
        return IGNORE_LABEL if self.reviewed_effective == "annotated" else self.fill_label

    def window(self, shape_hw: tuple[int, int], affine: Affine) -> np.ndarray:
        """The label mask of one window: ``shape_hw`` pixels whose corners ``affine`` maps to level 0.

        Returns a ``uint8`` array: class labels, and 255 for ignore objects and unreviewed pixels.
        """
        height, width = _check_shape(shape_hw)
        box = _window_box((height, width), affine)
        mask = np.full((height, width), self.uncovered_label, dtype=np.uint8)
        self._paint(mask, affine, box, self._tree, self._geoms, self._nverts, self._values)
        if self.reviewed_effective == "region":
            reviewed = np.zeros((height, width), dtype=np.uint8)
            ones = np.ones(len(self._regions), dtype=np.uint8)
            self._paint(reviewed, affine, box, self._region_tree, self._regions, self._region_nverts, ones)
            mask[reviewed == 0] = IGNORE_LABEL
        return mask

    @classmethod
    def _paint(
        cls,
        out: np.ndarray,
        affine: Affine,
        box: tuple[float, float, float, float],
        tree: shapely.STRtree,
        geoms: np.ndarray,
        nverts: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Rasterize, in paint order, the geometries whose bounds meet the window ``box`` into ``out``."""
        if geoms.size == 0:
            return
        idx = np.sort(tree.query(shapely.box(*box)))
        if idx.size == 0:
            return
        dicts, owner = polygon_dicts(cls._clip_big(geoms[idx], nverts[idx], box, affine))
        if dicts:
            shapes = list(zip(dicts, values[idx][owner].tolist(), strict=True))
            _rio_rasterize(shapes, out=out, transform=affine, all_touched=False)

    @staticmethod
    def _clip_big(
        geoms: np.ndarray, nverts: np.ndarray, box: tuple[float, float, float, float], affine: Affine
    ) -> np.ndarray:
        """Clip many-vertex geometries to the window box grown by a pixel (exact at pixel centres)."""
        big = nverts > _CLIP_MIN_VERTICES
        if not big.any():
            return geoms
        x0, y0, x1, y1 = box
        margin = max(abs(affine.a) + abs(affine.b), abs(affine.d) + abs(affine.e))
        out = geoms.copy()
        out[big] = shapely.clip_by_rect(geoms[big], x0 - margin, y0 - margin, x1 + margin, y1 + margin)
        return out


def rasterize_features(
    features: Iterable[Any],
    shape_hw: tuple[int, int],
    affine: Affine,
    *,
    class_map: ClassMap | None = None,
    fill: int = 0,
    overlap: str = "priority",
    reviewed: str = "all",
    ignore_unknown: bool = False,
) -> np.ndarray:
    """Rasterize QuPath features, or ``(geometry, label)`` pairs, into one uint8 label mask.

    With ``(geometry, int)`` pairs the shapes are painted in the order given (later wins) over ``fill``.
    With features (objects with ``geometry`` and ``class_name``) or ``(geometry, "class name")`` pairs,
    class names go through ``class_map`` (default :meth:`ClassMap.deepbatch`) and the overlap/reviewed rules
    of :class:`LabelRasterizer` apply (``fill`` is then the label of uncovered reviewed pixels). For many
    windows over the same features build one :class:`LabelRasterizer` and call its ``window`` instead.

    Example
    -------
    >>> from shapely import box
    >>> rasterize_features([(box(0, 0, 2, 2), "Benign"), (box(1, 1, 3, 3), "In situ carcinoma")], (3, 3),
    ...                    Affine.identity()).tolist()
    [[1, 1, 0], [1, 2, 2], [0, 2, 2]]
    """
    items = list(features)
    numeric = all(
        isinstance(it, tuple) and len(it) == 2 and isinstance(it[1], (int, np.integer)) and not isinstance(it[1], bool)
        for it in items
    )
    if numeric:
        return rasterize_shapes(items, shape_hw, affine, fill=fill)
    rasterizer = LabelRasterizer(
        items,
        class_map or ClassMap.deepbatch(),
        overlap=overlap,
        reviewed=reviewed,
        ignore_unknown=ignore_unknown,
        fill_label=fill,
    )
    return rasterizer.window(shape_hw, affine)
