"""Model cards and the model registry, without torch: what a model is, how its card is checked, where it is found.

A model is a directory ``models/<name>/`` holding ``card.json`` (this module's :class:`ModelCard`) and the
weights it names (``weights.safetensors``, checked against the card's sha256 when loaded by
:func:`qpbridge.models.load_model`). Models are found by name in the registry, searched in this order:

1. every directory of ``$QPBRIDGE_MODELS`` (separated by ``os.pathsep``),
2. the user directory ``$XDG_DATA_HOME/qpbridge/models`` (``~/.local/share/qpbridge/models``),
3. the ``models/`` directory at the top of the qpbridge source tree (the models shipped with qpbridge, for a
   source checkout or an editable install),
4. ``<prefix>/share/qpbridge/models``, where a plain ``pip install`` puts the shipped models (``data-files`` in
   ``pyproject.toml``): the environment's data directory, and the prefix the package itself lies under,

or by a path to a model directory or its card. Pickled checkpoints (``.pt``, ``.pth``, ``.ckpt``, ``.pkl``)
can run code when loaded and are refused.

This module imports neither torch nor MONAI, so that commands that only read cards (``qpbridge masks
--model``, ``qpbridge models``) start fast; the network and its weights are :mod:`qpbridge.models`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qpbridge.classes import DEEPBATCH_CLASSES, ROI_CLASS, ClassInfo
from qpbridge.errors import InputError, ModelError

__all__ = [
    "Architecture",
    "BLENDS",
    "CARD_FILE",
    "CARD_FORMAT",
    "COLOR_SPACES",
    "CardClass",
    "DEFAULT_INTENDED_USE",
    "EXAMPLE_INTENDED_USE",
    "ModelCard",
    "ModelEntry",
    "NETWORKS",
    "NUCLEI_CHANNELS",
    "NUCLEUS_CLASSES",
    "NucleiParams",
    "PICKLE_SUFFIXES",
    "REPRESENTATIONS",
    "ROLES",
    "UNET_ARGUMENTS",
    "WEIGHTS_FILE",
    "card_from_dict",
    "compact_json",
    "default_architecture",
    "example_card",
    "list_models",
    "load_card",
    "model_search_dirs",
    "parse_color",
    "refuse_pickle",
    "resolve_model_path",
    "validate_card",
]

#: The ``format`` value of the cards this version writes and reads.
CARD_FORMAT = "qpbridge-model/1"
#: The card's file name inside a model directory.
CARD_FILE = "card.json"
#: The weights' file name inside a model directory written by :func:`qpbridge.models.save_model`.
WEIGHTS_FILE = "weights.safetensors"
#: Networks a card may name (the full import path, or its last part).
NETWORKS: tuple[str, ...] = ("monai.networks.nets.UNet",)
ROLES: tuple[str, ...] = ("roi", "cell", "nuclei")
BLENDS: tuple[str, ...] = ("gaussian", "constant")
#: File endings of pickled PyTorch checkpoints, which are never loaded.
PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
#: Keyword arguments of ``monai.networks.nets.UNet`` (MONAI 1.4-1.6), the ones a card's ``architecture.args``
#: may give. Kept here so that checking a card needs no torch; a test compares it with MONAI's signature.
UNET_ARGUMENTS: tuple[str, ...] = (
    "spatial_dims",
    "in_channels",
    "out_channels",
    "channels",
    "strides",
    "kernel_size",
    "up_kernel_size",
    "num_res_units",
    "act",
    "norm",
    "dropout",
    "bias",
    "adn_ordering",
)
#: Colour spaces a model card may name (:mod:`qpbridge.preprocess` converts each).
COLOR_SPACES: tuple[str, ...] = ("RGB", "HSV", "YCrCb", "LAB")
#: Intended use written into a card that does not say (a newly trained model, unless ``--intended-use``).
DEFAULT_INTENDED_USE = "research and demonstration; not for diagnosis"
#: Intended use of the example cards built in code (random or synthetic-trained weights).
EXAMPLE_INTENDED_USE = "synthetic data, demonstration and testing, not for diagnosis"

_REQUIRED_FIELDS: tuple[str, ...] = (
    "name",
    "role",
    "architecture",
    "classes",
    "label0",
    "mpp",
    "tile_px",
    "overlap_frac",
    "blend",
    "normalization",
    "color_space",
    "license",
    "intended_use",
    "weights",
)
_OPTIONAL_FIELDS: tuple[str, ...] = ("format", "description", "threshold", "training", "metrics", "domain", "nuclei")

#: What a model was trained on: ``synthetic`` (``qpbridge synth`` slides: demonstration only; ``predict`` says so
#: at run time), ``real`` (real H&E), ``unknown`` (a card that does not say).
DOMAINS: tuple[str, ...] = ("synthetic", "real", "unknown")
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------------- the card
#: What a nuclei model's output channels are: ``contour``, the classes of :data:`NUCLEUS_CLASSES` (see
#: :mod:`qpbridge.nuclei.postprocess`).
REPRESENTATIONS: tuple[str, ...] = ("contour",)

#: The classes of a nuclei model of the contour representation: (label, name, colour).
NUCLEUS_CLASSES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (0, "Background", (200, 200, 200)),
    (1, "Nucleus", (40, 40, 160)),
    (2, "Nucleus boundary", (160, 160, 230)),
)


@dataclass(frozen=True)
class NucleiParams:
    """How a nuclei model's outputs become nuclei (the ``nuclei`` section of its card).

    Attributes
    ----------
    representation
        What the output channels are (:data:`REPRESENTATIONS`): ``contour``, the three classes of
        :data:`NUCLEUS_CLASSES`.
    boundary_px
        Width of the boundary band of the training targets, in the model's pixels (:func:`contour_targets`).
    foreground_threshold, marker_threshold
        A pixel is nucleus where 1 - P(background) reaches the first; watershed markers are where P(interior)
        reaches the second.
    min_area_um2, min_marker_um2
        Nuclei and markers smaller than these are dropped (a marker dropped lets its nucleus be flooded from a
        neighbour's, or stand alone).
    """

    representation: str = "contour"
    boundary_px: int = 2
    foreground_threshold: float = 0.5
    marker_threshold: float = 0.5
    min_area_um2: float = 8.0
    min_marker_um2: float = 0.5

    def check(self, where: str = "nuclei") -> NucleiParams:
        """Raise :class:`InputError` naming the bad field; return ``self``."""
        if self.representation not in REPRESENTATIONS:
            raise InputError(f"{where}.representation must be one of {', '.join(REPRESENTATIONS)}, "
                             f"got {self.representation!r}")
        whole = isinstance(self.boundary_px, int) and not isinstance(self.boundary_px, bool)
        if not whole or not 1 <= self.boundary_px <= 16:
            raise InputError(f"{where}.boundary_px must be a whole number of pixels in 1-16, got {self.boundary_px!r}")
        for name in ("foreground_threshold", "marker_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise InputError(f"{where}.{name} must be a probability in (0, 1), got {value!r}")
        for name in ("min_area_um2", "min_marker_um2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{where}.{name} must be >= 0 um^2, got {value!r}")
        return self

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "nuclei") -> NucleiParams:
        """From a card's ``nuclei`` object: unknown keys are an error, missing ones take the defaults."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InputError(f"{where} has unknown keys {unknown}: it takes {', '.join(sorted(known))}")
        return cls(**dict(raw)).check(where)

    def to_dict(self) -> dict[str, Any]:
        """The card's ``nuclei`` object."""
        return asdict(self)


@dataclass(frozen=True)
class CardClass:
    """One output class of a model: label in masks, QuPath class name, colour, and whether predict emits it."""

    label: int
    name: str
    color: tuple[int, int, int]
    emit: bool
    aliases: tuple[str, ...] = ()

    def info(self) -> ClassInfo:
        """This class as a :class:`qpbridge.classes.ClassInfo`."""
        return ClassInfo(self.label, self.name, self.color)


@dataclass(frozen=True)
class Architecture:
    """The network (``monai.networks.nets.UNet``) and the keyword arguments that build it."""

    network: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to run a model and to judge it: the parsed, validated ``card.json``.

    Build one with :func:`load_card` (validated) or directly (then :func:`validate_card` checks it).
    """

    name: str
    role: str
    architecture: Architecture
    classes: tuple[CardClass, ...]
    label0: str
    mpp: float
    tile_px: int
    overlap_frac: float
    blend: str
    norm_mean: tuple[float, float, float]
    norm_std: tuple[float, float, float]
    color_space: str
    license: str
    intended_use: str
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    threshold: float | None = None
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    domain: str = "unknown"  #: training domain, one of :data:`DOMAINS`
    #: a nuclei model's post-processing (its ``nuclei`` section); None for the other roles
    nuclei: NucleiParams | None = None

    @property
    def out_channels(self) -> int:
        """Channels of the network output (1 for a sigmoid ROI model)."""
        return int(self.architecture.args["out_channels"])

    def class_infos(self) -> tuple[ClassInfo, ...]:
        """The classes as :class:`qpbridge.classes.ClassInfo`, by label."""
        return tuple(c.info() for c in self.classes)

    def class_map(self) -> dict[str, int]:
        """QuPath class name (and every alias) -> label.

        Examples
        --------
        >>> card = example_card("roi")
        >>> card.class_map()["Invasive carcinoma"], card.class_map()["ROI"]
        (1, 1)
        """
        mapping: dict[str, int] = {}
        for cls in self.classes:
            mapping[cls.name] = cls.label
            for alias in cls.aliases:
                mapping.setdefault(alias, cls.label)
        return mapping

    def to_dict(self) -> dict[str, Any]:
        """The card as the JSON object written to ``card.json``."""
        out: dict[str, Any] = {
            "format": CARD_FORMAT,
            "name": self.name,
            "role": self.role,
            "description": self.description,
            "intended_use": self.intended_use,
            "domain": self.domain,
            "license": self.license,
            "architecture": {"network": self.architecture.network, "args": _jsonable(self.architecture.args)},
            "classes": [
                {"label": c.label, "name": c.name, "color": list(c.color), "emit": c.emit, "aliases": list(c.aliases)}
                for c in self.classes
            ],
            "label0": self.label0,
            "mpp": self.mpp,
            "tile_px": self.tile_px,
            "overlap_frac": self.overlap_frac,
            "blend": self.blend,
            "color_space": self.color_space,
            "normalization": {"mean": list(self.norm_mean), "std": list(self.norm_std)},
            "threshold": self.threshold,
            "weights": {"file": self.weights_file, "sha256": self.weights_sha256},
            "training": _jsonable(self.training),
            "metrics": _jsonable(self.metrics),
        }
        if self.nuclei is not None:
            out["nuclei"] = self.nuclei.to_dict()
        return out

    def to_json(self) -> str:
        """The card as indented JSON text (what :func:`qpbridge.models.save_model` writes).

        Examples
        --------
        >>> json.loads(example_card("cell").to_json())["role"]
        'cell'
        """
        return compact_json(self.to_dict())


_NUMBER_LIST = re.compile(r"\[\s+(-?[0-9.eE+-]+(?:,\s+-?[0-9.eE+-]+)*)\s+\]")


def compact_json(value: Any) -> str:
    """Indented JSON with lists of numbers kept on one line (``"color": [96, 168, 96]``).

    Examples
    --------
    >>> print(compact_json({"color": [1, 2, 3]}))
    {
      "color": [1, 2, 3]
    }
    <BLANKLINE>
    """
    text = json.dumps(value, indent=2, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(p.strip() for p in m.group(1).split(",")) + "]", text) + "\n"


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively (so that a card round-trips through JSON unchanged)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- validation
class _Fields:
    """Reads the fields of one card object, raising one clear :class:`ModelError` line per problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, value: Any, expected: str) -> ModelError:
        shown = json.dumps(value) if _json_ok(value) else repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return ModelError(f"model card {self.source}: field '{where}' is {shown}; expected {expected}")

    def missing(self, where: str, expected: str) -> ModelError:
        return ModelError(f"model card {self.source}: missing field '{where}' ({expected})")

    def get(self, obj: Mapping[str, Any], key: str, where: str, expected: str) -> Any:
        if key not in obj:
            raise self.missing(where, expected)
        return obj[key]

    def text(self, value: Any, where: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise self.fail(where, value, "a non-empty string" if not allow_empty else "a string")
        return value

    def choice(self, value: Any, where: str, choices: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.fail(where, value, "one of " + ", ".join(repr(c) for c in choices))
        return value

    def integer(self, value: Any, where: str, *, minimum: int, maximum: int | None = None) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if ok and maximum is not None:
            ok = value <= maximum
        if not ok:
            span = f"an integer >= {minimum}" if maximum is None else f"an integer {minimum}-{maximum}"
            raise self.fail(where, value, span)
        return int(value)

    def number(
        self,
        value: Any,
        where: str,
        expected: str,
        *,
        low: float,
        high: float = math.inf,
        low_open: bool = True,
        high_open: bool = True,
    ) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.fail(where, value, expected)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise self.fail(where, value, expected)
        return float(value)

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, value, "true or false")
        return value

    def obj(self, value: Any, where: str, expected: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, value, expected)
        return value

    def triple(self, value: Any, where: str, *, positive: bool) -> tuple[float, float, float]:
        expected = "a list of 3 numbers" + (" > 0" if positive else "")
        if not isinstance(value, list) or len(value) != 3:
            raise self.fail(where, value, expected)
        out = []
        for i, item in enumerate(value):
            out.append(self.number(item, f"{where}[{i}]", expected, low=0.0 if positive else -math.inf))
        return out[0], out[1], out[2]


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def parse_color(value: Any, where: str = "color", source: str = "?") -> tuple[int, int, int]:
    """A class colour from ``[r, g, b]`` (integers 0-255) or ``"#rrggbb"``; anything else is a ModelError.

    Examples
    --------
    >>> parse_color("#ffd700"), parse_color([96, 168, 96])
    ((255, 215, 0), (96, 168, 96))
    """
    if isinstance(value, str) and _HEX_COLOR.match(value):
        return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return int(value[0]), int(value[1]), int(value[2])
    raise _Fields(source).fail(
        where, value, "a class colour as [r, g, b] with integers 0-255 or '#rrggbb' (unknown class colour format)"
    )


def _parse_architecture(raw: Any, f: _Fields) -> Architecture:
    arch = f.obj(raw, "architecture", 'an object {"network": ..., "args": {...}}')
    network = f.get(arch, "network", "architecture.network", "the network, e.g. 'monai.networks.nets.UNet'")
    if isinstance(network, str) and "." not in network:
        network = next((n for n in NETWORKS if n.rsplit(".", 1)[1] == network), network)
    network = f.choice(network, "architecture.network", NETWORKS)
    args = f.obj(
        f.get(arch, "args", "architecture.args", "the network's keyword arguments"),
        "architecture.args",
        "an object of the network's keyword arguments",
    )
    allowed = set(UNET_ARGUMENTS)  # the one network today
    for key in args:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise f.fail(
                f"architecture.args.{key}", args[key], f"a keyword of {network}: {', '.join(sorted(allowed))}" + hint
            )
    for key in ("spatial_dims", "in_channels", "out_channels", "channels", "strides"):
        f.get(args, key, f"architecture.args.{key}", f"a required argument of {network}")
    if args["spatial_dims"] != 2:
        raise f.fail("architecture.args.spatial_dims", args["spatial_dims"], "2 (slides are 2-D)")
    if args["in_channels"] != 3:
        raise f.fail("architecture.args.in_channels", args["in_channels"], "3 (RGB-derived input)")
    f.integer(args["out_channels"], "architecture.args.out_channels", minimum=1)
    channels, strides = args["channels"], args["strides"]
    if (
        not isinstance(channels, list)
        or len(channels) < 2
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
    ):
        raise f.fail("architecture.args.channels", channels, "a list of at least 2 positive integers")
    if (
        not isinstance(strides, list)
        or len(strides) != len(channels) - 1
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in strides)
    ):
        raise f.fail(
            "architecture.args.strides",
            strides,
            f"a list of {len(channels) - 1} positive integers (one less than channels)",
        )
    if "num_res_units" in args:
        f.integer(args["num_res_units"], "architecture.args.num_res_units", minimum=0)
    return Architecture(network, dict(args))


def _parse_classes(raw: Any, f: _Fields) -> tuple[CardClass, ...]:
    if not isinstance(raw, list) or not raw:
        raise f.fail("classes", raw, "a non-empty list of {label, name, color, emit} objects")
    out: list[CardClass] = []
    for i, item in enumerate(raw):
        where = f"classes[{i}]"
        item = f.obj(item, where, "an object {label, name, color, emit, aliases?}")
        for key in item:
            if key not in ("label", "name", "color", "emit", "aliases"):
                raise f.fail(
                    f"{where}.{key}", item[key], "no such field (a class has label, name, color, emit, aliases)"
                )
        label = f.integer(
            f.get(item, "label", f"{where}.label", "the class label, 0-254"), f"{where}.label", minimum=0, maximum=254
        )
        name = f.text(f.get(item, "name", f"{where}.name", "the QuPath class name"), f"{where}.name")
        color = parse_color(
            f.get(item, "color", f"{where}.color", "[r, g, b] or '#rrggbb'"), f"{where}.color", f.source
        )
        emit = f.boolean(f.get(item, "emit", f"{where}.emit", "whether predict writes polygons of it"), f"{where}.emit")
        aliases_raw = item.get("aliases", [])
        if not isinstance(aliases_raw, list) or not all(isinstance(a, str) and a for a in aliases_raw):
            raise f.fail(f"{where}.aliases", aliases_raw, "a list of QuPath class names")
        out.append(CardClass(label, name, color, emit, tuple(aliases_raw)))
    labels = [c.label for c in out]
    if labels != list(range(len(out))):
        raise f.fail(
            "classes", [c.label for c in out], f"labels 0..{len(out) - 1} in order (label i is output channel i)"
        )
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise f.fail("classes", names, "distinct class names")
    return tuple(out)


def card_from_dict(raw: Any, source: str = "<card>") -> ModelCard:
    """Validate a card's JSON object and build the :class:`ModelCard` (the body of :func:`load_card`).

    Every problem is one :class:`ModelError` line naming ``source``, the field, the bad value and what is expected.

    Examples
    --------
    >>> card_from_dict(example_card("roi").to_dict()).threshold
    0.5
    """
    f = _Fields(source)
    if not isinstance(raw, dict):
        raise ModelError(f"model card {source}: expected a JSON object, got {type(raw).__name__}")
    for key in raw:
        if key not in _REQUIRED_FIELDS and key not in _OPTIONAL_FIELDS:
            close = difflib.get_close_matches(key, _REQUIRED_FIELDS + _OPTIONAL_FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise f.fail(key, raw[key], "no such field" + hint)
    if "format" in raw and raw["format"] != CARD_FORMAT:
        raise f.fail("format", raw["format"], f"'{CARD_FORMAT}' (a card of a newer or foreign format)")
    name = f.text(f.get(raw, "name", "name", "the model's name"), "name")
    role = f.choice(f.get(raw, "role", "role", "'roi' or 'cell'"), "role", ROLES)
    architecture = _parse_architecture(f.get(raw, "architecture", "architecture", "network and args"), f)
    classes = _parse_classes(f.get(raw, "classes", "classes", "the output classes"), f)
    label0 = f.text(f.get(raw, "label0", "label0", "what label 0 means, e.g. 'background/normal tissue'"), "label0")
    mpp = f.number(
        f.get(raw, "mpp", "mpp", "the input um/px, a number > 0"), "mpp", "the input um/px, a number > 0", low=0.0
    )
    tile_px = f.integer(f.get(raw, "tile_px", "tile_px", "the inference window in pixels"), "tile_px", minimum=8)
    overlap_frac = f.number(
        f.get(raw, "overlap_frac", "overlap_frac", "window overlap, 0 <= x < 1"),
        "overlap_frac",
        "a fraction 0 <= x < 1",
        low=0.0,
        high=1.0,
        low_open=False,
    )
    blend = f.choice(f.get(raw, "blend", "blend", "'gaussian' or 'constant'"), "blend", BLENDS)
    norm = f.obj(
        f.get(raw, "normalization", "normalization", '{"mean": [3 numbers], "std": [3 numbers]}'),
        "normalization",
        '{"mean": [3 numbers], "std": [3 numbers]}',
    )
    norm_mean = f.triple(f.get(norm, "mean", "normalization.mean", "3 numbers"), "normalization.mean", positive=False)
    norm_std = f.triple(f.get(norm, "std", "normalization.std", "3 numbers > 0"), "normalization.std", positive=True)
    color_space = f.choice(
        f.get(raw, "color_space", "color_space", "the input colour space"), "color_space", COLOR_SPACES
    )
    license_ = f.text(f.get(raw, "license", "license", "the weights' licence"), "license")
    intended_use = f.text(
        f.get(raw, "intended_use", "intended_use", "what the model is for and not for"), "intended_use"
    )
    weights_file, sha = _parse_weights(f.get(raw, "weights", "weights", '{"file": ..., "sha256": ...}'), f)
    threshold = _parse_threshold(raw.get("threshold"), role, f)
    description = f.text(raw.get("description", ""), "description", allow_empty=True)
    training = f.obj(raw.get("training", {}), "training", "an object")
    metrics = f.obj(raw.get("metrics", {}), "metrics", "an object")
    domain = f.choice(raw.get("domain", "unknown"), "domain", DOMAINS)
    nuclei = _parse_nuclei(raw.get("nuclei"), role, f)
    card = ModelCard(
        name=name,
        role=role,
        architecture=architecture,
        classes=classes,
        label0=label0,
        mpp=mpp,
        tile_px=tile_px,
        overlap_frac=overlap_frac,
        blend=blend,
        norm_mean=norm_mean,
        norm_std=norm_std,
        color_space=color_space,
        license=license_,
        intended_use=intended_use,
        weights_file=weights_file,
        weights_sha256=sha,
        threshold=threshold,
        description=description,
        training=training,
        metrics=metrics,
        domain=domain,
        nuclei=nuclei,
    )
    _check_consistency(card, f)
    return card


def _parse_weights(raw: Any, f: _Fields) -> tuple[str, str]:
    """The weights' file name (a .safetensors file beside the card, never a pickle) and sha256."""
    weights = f.obj(raw, "weights", '{"file": "weights.safetensors", "sha256": "<64 hex digits>"}')
    weights_file = f.text(f.get(weights, "file", "weights.file", "the weights' file name"), "weights.file")
    if weights_file.lower().endswith(PICKLE_SUFFIXES):
        raise ModelError(
            f"model card {f.source}: field 'weights.file' is {weights_file!r}: pickled checkpoints "
            "are not loaded; convert to safetensors"
        )
    if Path(weights_file).name != weights_file or not weights_file.endswith(".safetensors"):
        raise f.fail("weights.file", weights_file, "a .safetensors file name inside the model directory")
    sha = f.get(weights, "sha256", "weights.sha256", "the weights' sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise f.fail("weights.sha256", sha, "64 lower-case hex digits")
    return weights_file, sha


def _parse_threshold(raw: Any, role: str, f: _Fields) -> float | None:
    """A roi model's probability threshold (required); a cell model's is optional."""
    if role == "roi":
        if raw is None:
            raise f.missing("threshold", "a roi model's probability threshold, 0 < x < 1")
        return f.number(raw, "threshold", "a probability 0 < x < 1", low=0.0, high=1.0)
    if raw is not None:
        return f.number(raw, "threshold", "a probability 0 < x < 1, or null", low=0.0, high=1.0)
    return None


def _parse_nuclei(raw: Any, role: str, f: _Fields) -> NucleiParams | None:
    """A nuclei model's ``nuclei`` section (its post-processing); the other roles have none."""
    if role != "nuclei":
        if raw is not None:
            raise f.fail("nuclei", raw, f"no 'nuclei' section for a {role} model (only nuclei models have one)")
        return None
    if raw is None:
        return NucleiParams()
    section = f.obj(raw, "nuclei", "an object of post-processing settings")
    try:
        return NucleiParams.from_dict(section)
    except InputError as exc:
        raise ModelError(f"{f.source}: {exc}") from None


def _check_consistency(card: ModelCard, f: _Fields) -> None:
    n = len(card.classes)
    if card.role == "roi":
        if n != 2:
            raise f.fail("classes", [c.name for c in card.classes], "2 classes for a roi model (0: outside, 1: ROI)")
        if card.out_channels != 1:
            raise f.fail("architecture.args.out_channels", card.out_channels, "1 for a roi model (one sigmoid)")
    elif card.out_channels != n:
        raise f.fail(
            "architecture.args.out_channels",
            card.out_channels,
            f"{n}, the number of classes of a {card.role} model (one softmax channel per class)",
        )
    if card.role == "nuclei" and [(c.label, c.name) for c in card.classes] != [(c[0], c[1]) for c in NUCLEUS_CLASSES]:
        wanted = ", ".join(f"{label} {name}" for label, name, _ in NUCLEUS_CLASSES)
        raise f.fail("classes", [c.name for c in card.classes], f"the classes of the contour representation: {wanted}")
    factor = math.prod(card.architecture.args["strides"])
    if card.tile_px % factor:
        raise f.fail("tile_px", card.tile_px, f"a multiple of {factor} (the product of the U-Net's strides)")


def validate_card(card: ModelCard, source: str = "<card>") -> ModelCard:
    """Check a card built in code by the same rules as :func:`load_card`; returns the re-parsed card."""
    return card_from_dict(json.loads(card.to_json()), source)


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate ``card.json`` (or the card of a model directory).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "card.json").write_text(example_card("cell").to_json())
    >>> load_card(d).classes[3].name
    'Invasive carcinoma'
    """
    card_path = Path(path)
    if card_path.is_dir():
        card_path = card_path / CARD_FILE
    if not card_path.is_file():
        raise ModelError(f"no model card at {card_path}: a model directory holds {CARD_FILE} and its weights")
    try:
        raw = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"model card {card_path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"model card {card_path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    return card_from_dict(raw, str(card_path))


# --------------------------------------------------------------------------------------------- new cards
#: The U-Net of qpbridge's nuclei models: deeper and with two residual units per level (touching nuclei are
#: split by a thin boundary class, which needs the capacity; ~24 GFLOP per megapixel).
NUCLEI_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)


def default_architecture(
    role: str, n_classes: int, channels: Sequence[int] | None = None, num_res_units: int | None = None
) -> Architecture:
    """The architecture of qpbridge's own models: a small, fast MONAI U-Net with batch norm.

    ``UNet(spatial_dims=2, in_channels=3, out_channels=C, channels=(16, 32, 64, 128), strides=(2, 2, 2),
    num_res_units=1, norm="batch")`` (~0.2 M parameters, < 1 MB of weights); ``C`` is 1 for a roi model
    (one sigmoid), else the number of classes. A nuclei model defaults to :data:`NUCLEI_CHANNELS` with two
    residual units.

    Examples
    --------
    >>> default_architecture("roi", 2).args["out_channels"], default_architecture("cell", 4).args["out_channels"]
    (1, 4)
    >>> default_architecture("nuclei", 3).args["channels"], default_architecture("nuclei", 3).args["num_res_units"]
    ([16, 32, 64, 128, 256], 2)
    """
    if role not in ROLES:
        raise InputError(f"unknown model role {role!r}: use {', '.join(repr(r) for r in ROLES)}")
    if channels is None:
        channels = NUCLEI_CHANNELS if role == "nuclei" else (16, 32, 64, 128)
    if num_res_units is None:
        num_res_units = 2 if role == "nuclei" else 1
    if len(channels) < 2:
        raise InputError(f"a U-Net needs at least 2 channel levels, got {list(channels)}")
    return Architecture(
        "monai.networks.nets.UNet",
        {
            "spatial_dims": 2,
            "in_channels": 3,
            "out_channels": 1 if role == "roi" else int(n_classes),
            "channels": [int(c) for c in channels],
            "strides": [2] * (len(channels) - 1),
            "num_res_units": int(num_res_units),
            "norm": "batch",
        },
    )


def example_card(role: str, *, channels: Sequence[int] | None = None, name: str | None = None) -> ModelCard:
    """A complete card with qpbridge's defaults (DeepBatch classes for ``cell``; ROI for ``roi``), no weights.

    Training starts from such a card; tests use it. ``weights_sha256`` is filled in by
    :func:`qpbridge.models.save_model`.
    """
    if role == "roi":
        classes: tuple[CardClass, ...] = (
            CardClass(0, "Background", (200, 200, 200), False),
            CardClass(
                ROI_CLASS.label,
                ROI_CLASS.name,
                ROI_CLASS.color,
                True,
                tuple(c.name for c in DEEPBATCH_CLASSES if c.label != 0),
            ),
        )
        label0, threshold, mpp = "outside the regions of interest", 0.5, 4.0
    elif role == "cell":
        classes = tuple(CardClass(c.label, c.name, c.color, c.label != 0) for c in DEEPBATCH_CLASSES)
        label0, threshold, mpp = "background/normal tissue", None, 0.5
    elif role == "nuclei":
        classes = tuple(CardClass(label, name, color, label == 1) for label, name, color in NUCLEUS_CLASSES)
        label0, threshold, mpp = "no nucleus", None, 0.25
    else:
        raise InputError(f"unknown model role {role!r}: use {', '.join(repr(r) for r in ROLES)}")
    return ModelCard(
        name=name or f"example-{role}",
        role=role,
        architecture=default_architecture(role, len(classes), channels),
        classes=classes,
        label0=label0,
        mpp=mpp,
        tile_px=256,
        overlap_frac=0.25,
        blend="gaussian",
        norm_mean=(0.5, 0.5, 0.5),
        norm_std=(0.25, 0.25, 0.25),
        color_space="RGB",
        license="Apache-2.0",
        intended_use=EXAMPLE_INTENDED_USE,
        weights_sha256="0" * 64,
        threshold=threshold,
        nuclei=NucleiParams() if role == "nuclei" else None,
    )


# --------------------------------------------------------------------------------------------- registry
def refuse_pickle(path: Path) -> None:
    """Raise :class:`ModelError` for a pickled checkpoint's file name (``.pt``, ``.pth``, ``.ckpt``, ...).

    Examples
    --------
    >>> refuse_pickle(Path("weights.safetensors"))
    >>> refuse_pickle(Path("model.pt"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    qpbridge.errors.ModelError: model.pt: pickled checkpoints are not loaded (they can run code); ...
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(
            f"{path}: pickled checkpoints are not loaded (they can run code); convert to safetensors "
            "(safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')) and write a card"
        )


def model_search_dirs() -> list[Path]:
    """Where models are looked up by name, in order (see the module docstring)."""
    dirs = [Path(p).expanduser() for p in os.environ.get("QPBRIDGE_MODELS", "").split(os.pathsep) if p.strip()]
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    dirs.append(Path(data_home) / "qpbridge" / "models")
    here = Path(__file__).resolve()
    dirs.append(here.parents[1] / "models")
    installed = [Path(sysconfig.get_path("data")) / "share" / "qpbridge" / "models"]
    if len(here.parents) > 4:  # <prefix>/lib/pythonX.Y/site-packages/qpbridge/cards.py
        installed.append(here.parents[4] / "share" / "qpbridge" / "models")
    dirs.extend(path for path in dict.fromkeys(installed) if path not in dirs)
    return dirs


@dataclass(frozen=True)
class ModelEntry:
    """One model found in the registry; ``error`` is set (and ``card`` None) when its card is invalid."""

    name: str
    path: Path
    card: ModelCard | None
    error: str | None = None
    shadowed: bool = False


def list_models() -> list[ModelEntry]:
    """Every model directory (one holding ``card.json``) in the search directories, in search order.

    A name found again in a later directory is listed with ``shadowed=True``: lookups by name get the first.
    Weights are not hashed here (that happens on load).
    """
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for directory in model_search_dirs():
        if not directory.is_dir():
            continue
        for sub in sorted(p for p in directory.iterdir() if (p / CARD_FILE).is_file()):
            try:
                card: ModelCard | None = load_card(sub)
                error = None
            except ModelError as exc:
                card, error = None, str(exc)
            entries.append(ModelEntry(sub.name, sub, card, error, shadowed=sub.name in seen))
            seen.add(sub.name)
    return entries


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The model directory for a registry name, a model directory, or a card/weights file path."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        refuse_pickle(path)
    explicit = os.sep in text or (os.altsep is not None and os.altsep in text) or suffix in (".json", ".safetensors")
    if path.is_dir() and ((path / CARD_FILE).is_file() or explicit):
        return path
    if path.is_file():
        if suffix == ".json":
            return path.parent
        if suffix == ".safetensors" and (path.parent / CARD_FILE).is_file():
            return path.parent
        raise ModelError(f"{path} is not a model: give a model directory, its {CARD_FILE}, or a model name")
    if explicit:
        raise ModelError(f"no model at {path}: the path does not exist")
    for directory in model_search_dirs():
        candidate = directory / text
        if (candidate / CARD_FILE).is_file():
            return candidate
    known = sorted({e.name for e in list_models()})
    searched = ", ".join(str(d) for d in model_search_dirs())
    listing = ", ".join(known) if known else "none"
    raise ModelError(
        f"no model named {text!r}: known models: {listing} (searched {searched}; add directories with QPBRIDGE_MODELS)"
    )
