"""QuPath class names: derived classes, the reserved patterns, and the one rule that matches a name to a table.

Everything in qpbridge that maps a QuPath class name to something (a training label in ``qpbridge masks``
and ``evaluate``, a compared class in ``qpbridge diff``) goes through :class:`ClassMatcher`, so that a name
means the same everywhere. See ``docs/qupath-geojson.md`` ("Classes").

Derived classes
    QuPath writes a derived class ("Tumor: Positive") as ``{"names": ["Tumor", "Positive"]}`` and shows it
    as ``"Tumor: Positive"``; a classification string ``"Tumor: Positive"`` is read as that derived class.
    :func:`split_class_name` and :func:`join_class_names` convert between the two forms.

Unclassified
    An object without a class is looked up by the name :data:`UNCLASSIFIED` (``"Unclassified"``).

Reserved patterns (``fnmatch``, any letter case)
    :data:`DEFAULT_REGION_PATTERNS` (``"Region*"``, QuPath's built-in class for "the area I reviewed") mark
    the reviewed area; :data:`DEFAULT_IGNORE_PATTERNS` (``"Ignore*"``, QuPath's built-in "ignore" class,
    and ``"Pen mark*"``/``"Pen"``, what qpbridge's synthetic slides and pathologists call pen strokes) mark
    pixels that are never trained on.

The matching rule (:meth:`ClassMatcher.match`)
    The most specific name first: the full name, exactly, then in any letter case; then, for a derived
    class, its first part (``"Tumor: Positive"`` -> ``"Tumor"``), exactly, then in any letter case; then the
    patterns, in the order given, on the full name and then on the first part. Where two table entries differ
    only in letter case, the first one wins a case-insensitive match.

Examples
--------
>>> matcher = ClassMatcher({"Tumor": 3, "tumor: positive": 1}, [("Region*", -1)])
>>> matcher.match("Tumor: Positive"), matcher.match("TUMOR: Negative"), matcher.match("region 2")
(1, 3, -1)
>>> matcher.match("Stroma") is None
True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "DEFAULT_REGION_PATTERNS",
    "RESERVED_PATTERNS",
    "UNCLASSIFIED",
    "ClassMatcher",
    "class_name_candidates",
    "join_class_names",
    "matches_pattern",
    "split_class_name",
]

V = TypeVar("V")

#: The name unclassified objects are looked up by (and counted under).
UNCLASSIFIED = "Unclassified"
#: QuPath's convention for "the area I reviewed": classes named "Region*" (e.g. "Region*", "Region 1").
DEFAULT_REGION_PATTERNS: tuple[str, ...] = ("Region*",)
#: Classes whose pixels are never trained on: QuPath's "Ignore*" and pen strokes.
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = ("Ignore*", "Pen mark*", "Pen")
#: Both, the classes that are no tissue class (``qpbridge diff`` leaves them out).
RESERVED_PATTERNS: tuple[str, ...] = DEFAULT_REGION_PATTERNS + DEFAULT_IGNORE_PATTERNS


def split_class_name(class_name: str) -> list[str]:
    """The parts of a derived class (``"Tumor: Positive"`` -> ``["Tumor", "Positive"]``); one part otherwise.

    A name is derived when every part between the ``:`` is non-empty; ``"Tumor:"`` stays one name.

    Examples
    --------
    >>> split_class_name("Tumor: Positive"), split_class_name("Stroma"), split_class_name("Tumor:")
    (['Tumor', 'Positive'], ['Stroma'], ['Tumor:'])
    """
    parts = [part.strip() for part in class_name.split(":")]
    return parts if len(parts) > 1 and all(parts) else [class_name]


def join_class_names(names: Iterable[object]) -> str | None:
    """The name QuPath shows for the parts of a classification (``["Tumor", "Positive"]`` -> ``"Tumor: Positive"``).

    Empty parts are left out; ``None`` when nothing is left (unclassified).

    Examples
    --------
    >>> join_class_names(["Tumor", " Positive "]), join_class_names(["", " "])
    ('Tumor: Positive', None)
    """
    parts = [str(name).strip() for name in names]
    return ": ".join(part for part in parts if part) or None


def class_name_candidates(class_name: str | None) -> tuple[str, ...]:
    """The names a class is looked up by, most specific first: the name, then the first part of a derived class.

    ``None`` (unclassified) is looked up as :data:`UNCLASSIFIED`.

    Examples
    --------
    >>> class_name_candidates(" Tumor: Positive"), class_name_candidates(None)
    (('Tumor: Positive', 'Tumor'), ('Unclassified',))
    """
    name = UNCLASSIFIED if class_name is None else class_name.strip()
    first = name.split(":", 1)[0].strip()
    return (name, first) if first and first != name else (name,)


def matches_pattern(class_name: str, patterns: Iterable[str]) -> bool:
    """Whether a class name matches one of the ``fnmatch`` patterns, in any letter case.

    Examples
    --------
    >>> matches_pattern("region 3", DEFAULT_REGION_PATTERNS), matches_pattern("Penumbra", DEFAULT_IGNORE_PATTERNS)
    (True, False)
    """
    folded = class_name.casefold()
    return any(fnmatch.fnmatchcase(folded, pattern.casefold()) for pattern in patterns)


class ClassMatcher(Generic[V]):
    """A table of QuPath class names, and ``fnmatch`` patterns, looked up by the rule of the module docstring.

    Parameters
    ----------
    names
        Class name -> value (exact names; matched exactly, then in any letter case).
    patterns
        ``(pattern, value)`` pairs tried, in order, when no name matches.

    Examples
    --------
    >>> matcher = ClassMatcher({"Benign": 1, "Tissue": 0}, [("Ignore*", 255)])
    >>> [matcher.match(n) for n in ("benign", "Benign: Positive", "Ignore me", None)]
    [1, 1, 255, None]
    """

    def __init__(self, names: Mapping[str, V], patterns: Iterable[tuple[str, V]] = ()) -> None:
        self._names: dict[str, V] = dict(names)
        self._folded: dict[str, V] = {}
        for name, value in self._names.items():
            self._folded.setdefault(name.casefold(), value)
        self._patterns: list[tuple[str, V]] = [(pattern.casefold(), value) for pattern, value in patterns]

    def match(self, class_name: str | None) -> V | None:
        """The value of a QuPath class name (``None``: unclassified), or ``None`` when nothing matches."""
        candidates = class_name_candidates(class_name)
        for candidate in candidates:
            if candidate in self._names:
                return self._names[candidate]
            folded = candidate.casefold()
            if folded in self._folded:
                return self._folded[folded]
        for candidate in candidates:
            folded = candidate.casefold()
            for pattern, value in self._patterns:
                if fnmatch.fnmatchcase(folded, pattern):
                    return value
        return None
