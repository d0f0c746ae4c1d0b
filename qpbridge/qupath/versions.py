"""What each QuPath version (0.4, 0.5, 0.6, 0.7) does with each kind of finding, and the verdicts it gives a file.

:data:`ISSUE_EFFECTS` is the one table of what each version does: every finding of
:func:`qpbridge.qupath.validate_geojson` has a rule, and the table says what the rule does in each version:
``ok``, ``note`` (imports as intended, worth a word), ``mangle`` (imports the object, but not as written) or
``reject`` (loses the whole file). QuPath 0.7 reads GeoJSON as 0.6 does (:data:`QUPATH_READS_LIKE`).
``docs/qupath-geojson.md`` shows the table ("What each version does"). From the findings, :func:`verdict_of`
derives one :class:`Verdict` per version:

* *imports it as intended*;
* *imports it but mangles N objects*, saying which and how ("3 MultiPolygons whose parts share an edge
  stay one invalid ROI");
* *rejects the whole file*, saying why and naming the first feature concerned.

Versions are named as ``qpbridge validate --qupath`` takes them (:func:`parse_qupath_versions`: ``0.6``,
``0.5+``, ``0.4-0.5``) and shown as :func:`format_qupath_versions` writes them.

Examples
--------
>>> issue = Issue(3, "error", "touching-parts", "MultiPolygon parts share an edge", "feature 3")
>>> [issue.effect(v).kind for v in QUPATH_VERSIONS]
['mangle', 'mangle', 'ok', 'ok']
>>> verdict_of("0.5", [issue]).text
'imports it but mangles 1 object: 1 MultiPolygon whose parts share an edge stays one invalid ROI'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from qpbridge.errors import InputError

__all__ = [
    "ISSUE_EFFECTS",
    "QUPATH_READS_LIKE",
    "QUPATH_VERSIONS",
    "Effect",
    "EffectKind",
    "Issue",
    "Outcome",
    "Severity",
    "Verdict",
    "check_versions",
    "format_qupath_versions",
    "parse_qupath_versions",
    "verdict_of",
]

Severity = Literal["error", "warning", "note"]
EffectKind = Literal["ok", "note", "mangle", "reject"]
Outcome = Literal["as-intended", "mangles", "rejects"]

# --- what each QuPath version does: the one table -----------------------------------------------------
#: The QuPath versions qpbridge supports, oldest first (the default of ``qpbridge validate --qupath``).
QUPATH_VERSIONS: tuple[str, ...] = ("0.4", "0.5", "0.6", "0.7")

#: Each supported version -> the version whose GeoJSON reading it shares (the columns of :data:`ISSUE_EFFECTS`).
QUPATH_READS_LIKE: dict[str, str] = {"0.4": "0.4", "0.5": "0.5", "0.6": "0.6", "0.7": "0.6"}


class Effect(NamedTuple):
    """What one QuPath version does with one kind of finding.

    ``how`` is, for ``reject``, why (a noun phrase: "an unclosed ring"); for ``mangle`` and ``note``, what
    becomes of the objects, with ``{n}`` their count, ``{s}``/``{v}`` the plural of a noun/verb and
    ``{one|many}`` a choice ("{n} sliver{s} become{v} {an empty object|empty objects}").
    """

    kind: EffectKind
    how: str = ""


_OK = Effect("ok")
_METADATA_04 = Effect("note", "{n} object{s} with metadata lose{v} it (QuPath 0.4 keeps metadata only on TMA cores)")
_REDUCTION = '("Reduction failed, possible invalid input")'


def _every(effect: Effect) -> dict[str, Effect]:
    return {"0.4": effect, "0.5": effect, "0.6": effect}


def _by(v04: Effect = _OK, v05: Effect = _OK, v06: Effect = _OK) -> dict[str, Effect]:
    return {"0.4": v04, "0.5": v05, "0.6": v06}


def _invalid_once_rounded(why: str, how: str) -> dict[str, Effect]:
    """0.6+ reduces the precision to 0.01 px and fails on an invalid result; 0.4/0.5 keep an invalid ROI."""
    return _by(Effect("mangle", how), Effect("mangle", how), Effect("reject", f"{why} {_REDUCTION}"))


#: Rule -> what QuPath 0.4, 0.5 and 0.6 (and 0.7, see :data:`QUPATH_READS_LIKE`) do with such a finding.
#: A rule is an issue code, or a code and a variant in parentheses where one code covers cases that QuPath
#: treats differently. ``docs/qupath-geojson.md`` shows this table ("What each version does").
ISSUE_EFFECTS: dict[str, dict[str, Effect]] = {
    # the file
    "bad-extension": _every(Effect("reject", "a file name QuPath does not import (it reads 0 objects from it)")),
    "not-feature-collection": _every(_OK),
    "nonstandard-numbers": _every(_OK),
    "lenient-json": _every(_OK),
    "empty": _every(_OK),
    # the feature, its type and id
    "not-a-feature": _every(Effect("reject", "an entry that is not a Feature")),
    "bad-properties": _every(Effect("reject", "'properties' that are not an object")),
    "object-type-old-key": _every(_OK),
    "unknown-object-type": _every(
        Effect("mangle", "{n} feature{s} of an object type QuPath does not know become{v} {an annotation|annotations}")
    ),
    "unknown-object-type (annotation)": _every(_OK),
    "object-type-outside-properties": _every(
        Effect("mangle", "{n} feature{s} with 'objectType' outside 'properties' become{v} {an annotation|annotations}")
    ),
    "object-type-outside-properties (annotation)": _every(_OK),
    "non-uuid-id": _every(_OK),
    "duplicate-id": _every(_OK),
    "detection-metadata": _by(
        _METADATA_04, Effect("mangle", "{n} detection{s} with metadata log{v} a stack trace and lose{v} it")
    ),
    "metadata": _by(_METADATA_04),
    # classification
    "bad-classification": _every(Effect("reject", "a classification QuPath cannot read")),
    "classification-no-color": _every(Effect("reject", "a classification object without 'color'")),
    "bad-color": _every(Effect("reject", "a classification colour that is not [r, g, b]")),
    # measurements
    "measurements-list": _every(_OK),
    "bad-measurements": _every(_OK),
    "nonfinite-measurement": _by(
        Effect("reject", 'a measurement written as the string "NaN" or "Infinity" (ClassCastException)')
    ),
    "nonfinite-measurement (token)": _every(_OK),
    "bad-measurement": _every(Effect("reject", "a measurement that is not a number")),
    # geometry
    "null-geometry": _every(Effect("reject", "a null or missing geometry")),
    "nucleus-not-cell": _every(_OK),
    "bad-geometry": _every(Effect("reject", "a geometry of a type GeoJSON does not have")),
    "bad-coordinates": _every(Effect("reject", "coordinates that are not [x, y] positions")),
    "nonfinite-coordinate": _every(Effect("reject", "a NaN or infinite coordinate")),
    "huge-coordinates": _every(_OK),
    "off-image": _every(
        Effect("mangle", "{n} object{s} far outside the image {lies|lie} where it has no pixels (unseen, measuring "
                         "nothing)")
    ),
    "unclosed-ring": _every(Effect("reject", "an unclosed ring")),
    "short-ring": _every(Effect("reject", "a ring of fewer than 4 positions")),
    "geometry-collection": _by(v06=Effect("reject", "a GeometryCollection")),
    "geometry-collection (mixed)": _by(
        Effect("mangle", "{n} GeometryCollection{s} mixing areas, lines or points lose{v} all but the largest kind"),
        Effect("mangle", "{n} GeometryCollection{s} mixing areas, lines or points lose{v} all but the largest kind"),
        Effect("reject", "a GeometryCollection"),
    ),
    "self-touching-ring": _every(_OK),
    "touching-parts": _by(
        Effect("mangle", "{n} MultiPolygon{s} whose parts share an edge stay{v} one invalid ROI"),
        Effect("mangle", "{n} MultiPolygon{s} whose parts share an edge stay{v} one invalid ROI"),
    ),
    "sliver": _by(v06=Effect("mangle", "{n} sliver{s} thinner than 0.01 px become{v} {an empty object|empty objects}")),
    "self-intersection": _invalid_once_rounded(
        "a self-intersecting ring (bow-tie) once rounded to 0.01 px",
        "{n} self-intersecting (bow-tie) polygon{s} stay{v} invalid",
    ),
    "hole-outside-shell": _invalid_once_rounded(
        "a hole outside its shell", "{n} polygon{s} with a hole outside the shell stay{v} invalid"
    ),
    "spike": _invalid_once_rounded(
        "a zero-width spike once rounded to 0.01 px", "{n} polygon{s} with a zero-width spike stay{v} invalid"
    ),
    "overlapping-parts": _invalid_once_rounded(
        "overlapping MultiPolygon parts", "{n} MultiPolygon{s} with overlapping parts stay{v} invalid"
    ),
    "invalid-polygon": _invalid_once_rounded(
        "a polygon invalid once rounded to 0.01 px", "{n} polygon{s} invalid once rounded to 0.01 px stay{v} invalid"
    ),
}

_VERSION = re.compile(r"v?(\d+\.\d+)(?:\.\d+)?")


def parse_qupath_versions(spec: str | None) -> tuple[str, ...]:
    """The QuPath versions named by ``spec``: ``"0.6"``, a range ``"0.5+"`` or ``"0.4-0.5"``; ``None`` = all.

    A patch release stands for its version (``"0.6.1"`` is 0.6). Raises :class:`qpbridge.errors.InputError`
    for a version qpbridge does not support.

    Examples
    --------
    >>> parse_qupath_versions("0.5+"), parse_qupath_versions("0.4-0.5"), parse_qupath_versions("0.6.1")
    (('0.5', '0.6', '0.7'), ('0.4', '0.5'), ('0.6',))
    >>> parse_qupath_versions(None)
    ('0.4', '0.5', '0.6', '0.7')
    """
    if spec is None:
        return QUPATH_VERSIONS
    text = spec.strip()
    bounds: list[str] = []
    if text.endswith("+"):
        parts, open_end = [text[:-1]], True
    else:
        parts, open_end = text.split("-") if text.count("-") == 1 else [text], False
    for part in parts:
        match = _VERSION.fullmatch(part.strip())
        if match is None or match[1] not in QUPATH_VERSIONS:
            raise InputError(
                f"--qupath {spec!r}: qpbridge knows QuPath {', '.join(QUPATH_VERSIONS)}: give one of them "
                "(0.6), a range (0.5+, 0.4-0.5), or leave it out for all"
            )
        bounds.append(match[1])
    first = QUPATH_VERSIONS.index(bounds[0])
    last = len(QUPATH_VERSIONS) - 1 if open_end else QUPATH_VERSIONS.index(bounds[-1])
    if last < first:
        raise InputError(f"--qupath {spec!r}: the range runs backwards: write {bounds[-1]}-{bounds[0]}")
    return QUPATH_VERSIONS[first : last + 1]


def format_qupath_versions(versions: Iterable[str]) -> str:
    """``"0.4-0.7"`` for a run of consecutive versions, ``"0.6"`` for one, ``"0.4, 0.6"`` otherwise.

    Examples
    --------
    >>> format_qupath_versions(("0.6", "0.7")), format_qupath_versions(["0.5"]), format_qupath_versions(["0.4", "0.6"])
    ('0.6-0.7', '0.5', '0.4, 0.6')
    """
    chosen = list(versions)
    positions = [QUPATH_VERSIONS.index(v) for v in chosen]
    if len(chosen) > 1 and positions == list(range(positions[0], positions[0] + len(chosen))):
        return f"{chosen[0]}-{chosen[-1]}"
    return ", ".join(chosen)


def check_versions(versions: Sequence[str]) -> tuple[str, ...]:
    """``versions`` in the order of :data:`QUPATH_VERSIONS`; :class:`qpbridge.errors.InputError` for an unknown one.

    Examples
    --------
    >>> check_versions(["0.6", "0.4"])
    ('0.4', '0.6')
    """
    unknown = [v for v in versions if v not in QUPATH_VERSIONS]
    if unknown or not versions:
        raise InputError(
            f"QuPath versions {list(versions)!r}: qpbridge knows {', '.join(QUPATH_VERSIONS)}: give some of them"
        )
    return tuple(v for v in QUPATH_VERSIONS if v in versions)


def _counted(template: str, n: int) -> str:
    """``template`` with ``{n}``, ``{s}``, ``{v}`` and ``{one|many}`` filled in for ``n`` objects."""
    text = template.replace("{n}", str(n)).replace("{s}", "{|s}").replace("{v}", "{s|}")
    return re.sub(r"\{([^{}|]*)\|([^{}|]*)\}", lambda m: m[1] if n == 1 else m[2], text)


@dataclass
class Issue:
    """One finding: ``index`` is the feature's position in the file (``None`` for the file itself).

    ``rule`` is the key of :data:`ISSUE_EFFECTS` (the code, or the code and a variant); ``severity`` is
    ``"error"`` when a version asked rejects or mangles, ``"warning"`` otherwise, ``"note"`` for notes.
    """

    index: int | None
    severity: Severity
    code: str
    message: str
    feature: str = "file"
    rule: str = ""

    def __post_init__(self) -> None:
        if not self.rule:
            self.rule = self.code

    def effect(self, version: str) -> Effect:
        """What QuPath ``version`` does with this finding."""
        return ISSUE_EFFECTS[self.rule][QUPATH_READS_LIKE[version]]

    def line(self) -> str:
        """``feature 3 (id ..., class 'Tumor'): error: unclosed ring ...``"""
        return f"{self.feature}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class Verdict:
    """What one QuPath version does with a whole file.

    ``outcome`` is ``"as-intended"``, ``"mangles"`` or ``"rejects"``; ``text`` says it in words
    ("rejects the whole file: feature 3 (id ...): an unclosed ring"); ``mangled`` counts the objects
    imported differently than written; ``first`` is the finding that makes the version reject the file.
    """

    version: str
    outcome: Outcome
    text: str
    mangled: int = 0
    first: Issue | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        first = None
        if self.first is not None:
            first = {"index": self.first.index, "code": self.first.code, "feature": self.first.feature}
        return {"outcome": self.outcome, "text": self.text, "mangled": self.mangled, "first": first}


def _phrases(issues: Iterable[Issue], version: str, kind: EffectKind) -> tuple[list[str], int]:
    """The ``how`` phrases of one effect kind, each with its count of objects, and the objects in all."""
    by_how: dict[str, set[Any]] = {}
    for issue in issues:
        effect = issue.effect(version)
        if effect.kind == kind:
            by_how.setdefault(effect.how, set()).add(("file", id(issue)) if issue.index is None else issue.index)
    objects: set[Any] = set().union(*by_how.values()) if by_how else set()
    return [_counted(how, len(ids)) for how, ids in by_how.items()], len(objects)


def verdict_of(version: str, issues: Sequence[Issue], notes: Sequence[Issue] = ()) -> Verdict:
    """What QuPath ``version`` does with a file, derived from its findings (``issues``, then ``notes``).

    The first issue that makes ``version`` reject the file decides (and the features that would fail too are
    counted); else the objects it mangles are counted and said how, and the notes are added.

    Examples
    --------
    >>> unclosed = Issue(2, "error", "unclosed-ring", "unclosed outer ring", "feature 2")
    >>> verdict_of("0.6", [unclosed]).text
    'rejects the whole file: feature 2: an unclosed ring'
    >>> verdict_of("0.6", []).outcome
    'as-intended'
    """
    rejects = [i for i in issues if i.effect(version).kind == "reject"]
    if rejects:
        first = rejects[0]
        why = first.effect(version).how
        where = "" if first.index is None else f"{first.feature}: "
        text = f"rejects the whole file: {where}{why}"
        more = len({i.index for i in rejects if i.index is not None} - {first.index})
        if more:
            text += f" ({more} more feature{'s' * (more != 1)} would fail too)"
        return Verdict(version, "rejects", text, first=first)
    mangles, mangled = _phrases(issues, version, "mangle")
    phrases, _ = _phrases([*issues, *notes], version, "note")
    if mangles:
        text = f"imports it but mangles {mangled} object{'s' * (mangled != 1)}: " + "; ".join(mangles)
    else:
        text = "imports it as intended"
    if phrases:
        text += "; note: " + "; ".join(phrases)
    return Verdict(version, "mangles" if mangles else "as-intended", text, mangled=mangled)
