"""JSON that only QuPath's lenient Gson parser takes: a parser that reads it as QuPath does, and says what is lenient.

QuPath reads GeoJSON with Gson in lenient mode (``JsonReader.setLenient``): single-quoted strings, unquoted
names and values, ``//``, ``#`` and ``/* */`` comments, ``=``/``=>`` after names, ``;`` between values,
omitted array values (null) and anything after the first value (ignored). Strict parsers, and qpbridge's
other commands, refuse such files; :func:`qpbridge.qupath.validate_geojson` warns about them
(``lenient-json``) and :func:`qpbridge.qupath.fix_geojson` rewrites them as strict JSON.

Examples
--------
>>> parsed = parse_lenient_json("{type: 'FeatureCollection', features: []} // done")
>>> parsed.document.data, parsed.found
({'type': 'FeatureCollection', 'features': []}, {'unquoted names': 1, 'single-quoted strings': 1, 'comments': 1})
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpbridge.errors import GeoJSONError
from qpbridge.qupath.load import JsonDocument, load_json_documents

__all__ = [
    "LenientDocument",
    "load_json_documents_leniently",
    "parse_lenient_json",
    "read_lenient_document",
]

_LENIENT_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n\f]+)
    |(?P<comment>//[^\n]*|\#[^\n]*|/\*.*?\*/)
    |(?P<dq>"(?:[^"\\]|\\.)*")
    |(?P<sq>'(?:[^'\\]|\\.)*')
    |(?P<punct>=>|[{}\[\]:,;=])
    |(?P<literal>[^ \t\r\n\f/\\;\#={}\[\]:,'"]+)""",
    re.X | re.S,
)
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m[1]
        if code[0] == "u" and len(code) == 5:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, body, flags=re.S)


class _LenientJson:
    """Gson's lenient reading (``JsonReader.setLenient``), enough to tell what QuPath takes: single-quoted
    strings, unquoted names and values, ``//``, ``#`` and ``/* */`` comments, ``=``/``=>`` after names,
    ``;`` between values, omitted array values (null) and anything after the first value (ignored)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 4 if text.startswith(")]}'") else 0  # Gson's non-execute prefix
        self.found: dict[str, int] = {}  # lenient construct -> line of its first use
        self.nonstandard_numbers = False

    def saw(self, what: str, at: int) -> None:
        self.found.setdefault(what, self.text.count("\n", 0, at) + 1)

    def take(self) -> tuple[str, str, int]:
        while self.pos < len(self.text):
            m = _LENIENT_TOKEN.match(self.text, self.pos)
            if m is None:
                raise ValueError(f"unexpected {self.text[self.pos]!r}")
            self.pos = m.end()
            kind = m.lastgroup or ""
            if kind == "comment":
                self.saw("comments", m.start())
            elif kind != "ws":
                return kind, m[0], m.start()
        raise ValueError("unexpected end of the text")

    def document(self) -> Any:
        value = self.value(self.take())
        try:
            _, _, at = self.take()
        except ValueError:  # the end, or something after the value that is no token at all
            if self.pos < len(self.text):
                self.saw("text after the JSON", self.pos)
        else:
            self.saw("text after the JSON", at)
        return value

    def value(self, token: tuple[str, str, int]) -> Any:
        kind, text, at = token
        if kind == "punct":
            if text == "{":
                return self.object()
            if text == "[":
                return self.array()
            raise ValueError(f"unexpected {text!r}")
        if kind in ("dq", "sq"):
            if kind == "sq":
                self.saw("single-quoted strings", at)
            return _unescape(text[1:-1])
        keyword = text.lower()
        if keyword in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[keyword]
        number = _JSON_NUMBER.fullmatch(text)
        if number is not None:
            return float(text) if number[1] or number[2] else int(text)
        if text in ("NaN", "Infinity", "-Infinity"):
            self.nonstandard_numbers = True
            return float(text)
        self.saw("unquoted values", at)
        return text

    def object(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        kind, text, at = self.take()
        if (kind, text) == ("punct", "}"):
            return out
        while True:
            if kind == "literal":
                self.saw("unquoted names", at)
                name = text
            elif kind in ("dq", "sq"):
                if kind == "sq":
                    self.saw("single-quoted strings", at)
                name = _unescape(text[1:-1])
            else:
                raise ValueError(f"expected a name, got {text!r}")
            _, sep, at = self.take()
            if sep in ("=", "=>"):
                self.saw("'=' after names", at)
            elif sep != ":":
                raise ValueError(f"expected ':', got {sep!r}")
            out[name] = self.value(self.take())
            kind, text, at = self.take()
            if (kind, text) == ("punct", "}"):
                return out
            if kind != "punct" or text not in (",", ";"):
                raise ValueError(f"expected ',' or '}}', got {text!r}")
            if text == ";":
                self.saw("';' between values", at)
            kind, text, at = self.take()

    def array(self) -> list[Any]:
        out: list[Any] = []
        expect_value, after_separator = True, False
        while True:
            token = self.take()
            kind, text, at = token
            separator = kind == "punct" and text in (",", ";")
            if kind == "punct" and text == ";":
                self.saw("';' between values", at)
            if expect_value:
                if (kind, text) == ("punct", "]") and not after_separator:
                    return out
                if separator or (kind, text) == ("punct", "]"):
                    self.saw("omitted array values", at)
                    out.append(None)
                    if not separator:
                        return out
                    after_separator = True
                    continue
                out.append(self.value(token))
                expect_value = False
            elif (kind, text) == ("punct", "]"):
                return out
            elif separator:
                expect_value, after_separator = True, True
            else:
                raise ValueError(f"expected ',' or ']', got {text!r}")


@dataclass
class LenientDocument:
    """A text as QuPath's lenient parser reads it: the document, and each lenient construct -> the line of its
    first use (``{"single-quoted strings": 3}``; empty for strict JSON)."""

    document: JsonDocument
    found: dict[str, int]


def parse_lenient_json(text: str, label: str = "<text>") -> LenientDocument:
    """``text`` parsed as QuPath's lenient Gson parser reads it; ``label`` names the document in messages.

    Raises :class:`ValueError` (or :class:`RecursionError`, nested too deeply) where even that parser fails.

    Examples
    --------
    >>> parse_lenient_json("[1, , NaN]; trailing").document.data
    [1, None, nan]
    >>> parse_lenient_json("{a = 1; b => 2}").found
    {'unquoted names': 1, "'=' after names": 1, "';' between values": 1}
    """
    parser = _LenientJson(text)
    data = parser.document()
    return LenientDocument(JsonDocument(label, data, parser.nonstandard_numbers), parser.found)


def read_lenient_document(path: str | os.PathLike[str]) -> LenientDocument | None:
    """``path`` (plain or gzip) parsed as QuPath's lenient Gson parser reads it, or ``None`` when even that fails.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.geojson"
    >>> _ = p.write_text("{'type': 'FeatureCollection', 'features': []}")
    >>> read_lenient_document(p).found
    {'single-quoted strings': 1}
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return parse_lenient_json(raw.decode("utf-8-sig"), str(path))
    except (OSError, EOFError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def load_json_documents_leniently(path: str | os.PathLike[str]) -> tuple[list[JsonDocument], dict[str, int]]:
    """The JSON documents of ``path`` (:func:`~qpbridge.qupath.load.load_json_documents`) and, for JSON that only
    a lenient parser takes, what is lenient in it (as :attr:`LenientDocument.found`; empty for strict JSON).

    Raises :class:`qpbridge.errors.GeoJSONError` as :func:`~qpbridge.qupath.load.load_json_documents` does when
    even the lenient parser fails (a ``.zip`` is read strictly).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.geojson"
    >>> _ = p.write_text('{"type": "FeatureCollection", "features": []} /* QuPath ignores this */')
    >>> docs, found = load_json_documents_leniently(p)
    >>> docs[0].data["type"], found
    ('FeatureCollection', {'comments': 1})
    """
    path = Path(path)
    try:
        return load_json_documents(path), {}
    except GeoJSONError:
        lenient = None if path.suffix.lower() == ".zip" else read_lenient_document(path)
        if lenient is None:
            raise
        return [lenient.document], lenient.found
