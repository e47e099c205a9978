"""A small parser for the FETCH responses the engine asks for, in the shape imaplib hands
them over: a list of lines, where a line that announced a literal comes as a tuple
``(line, literal bytes)`` and the rest of that response follows as further items.

Why not imapclient's parser: its lexer walks every response character by character in
Python, which cost more than a third of an initial sync (≈0.2 ms per message). Here a
regular expression takes the short response lines a token at a time and literals (the
message bytes) are never scanned. Anything this parser does not understand raises
``FetchParseError`` and the caller falls back to imapclient's parser, so odd servers keep
working.

Values: numbers as int, atoms and strings as bytes, NIL as None, lists as tuples; keys
upper-cased (``b"BODY[]"``, ``b"RFC822.SIZE"``). MODSEQ's ``(123)`` stays a 1-tuple, as
imapclient gives it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

from imapclient.response_parser import gen_parsed_response

from mailsync.engine.flags import normalize_flags
from mailsync.engine.imap.data import FlagState

log = logging.getLogger(__name__)

FetchItems = dict[bytes, Any]

# One token: "(" | ")" | a quoted string | a literal marker at the end of a line | an atom.
# An atom may carry a section in brackets with spaces inside (``BODY[HEADER.FIELDS (A B)]``)
# and a partial offset (``BODY[]<0>``).
_TOKEN = re.compile(
    rb"""[ ]*(?:
        (?P<open>\()
      | (?P<close>\))
      | "(?P<quoted>(?:[^"\\\r\n]|\\.)*)"
      | \{(?P<literal>\d+)\}\Z
      | (?P<atom>[^ ()"\[\]{}\r\n]+(?:\[[^\]\r\n]*\](?:<\d+>)?)?)
    )""",
    re.VERBOSE,
)
_QUOTED_ESCAPE = re.compile(rb"\\(.)")


class FetchParseError(ValueError):
    """The response is not in the shape this parser reads."""


def parse_fetch_responses(
    data: Sequence[bytes | tuple[bytes, bytes]],
) -> list[tuple[int, FetchItems]]:
    """``[(sequence number, {item: value})]`` in the order the server sent them."""
    try:
        return _parse_flat(data)
    except FetchParseError:
        return _parse_tokens(data)


# The shape of nearly every answer to the engine's FETCHes: ``KEY value`` pairs whose
# values are numbers, NIL, plain quoted strings or flat lists, and at most one literal,
# last. One regular expression per pair reads those; anything else goes to the tokenizer.
_RESPONSE_WITH_LITERAL = re.compile(rb"(\d+) \((.*?) ?([^ ()\"{}]+) \{\d+\}\Z", re.DOTALL)
_RESPONSE = re.compile(rb"(\d+) \((.*)\)\Z", re.DOTALL)
_PAIR = re.compile(
    rb"""([^ ()"{}]+)[ ](?:
        (?P<number>\d+)
      | \((?P<list>[^()"{}\r\n]*)\)
      | "(?P<quoted>[^"\\\r\n]*)"
      | (?P<nil>NIL)
    )(?:[ ]|\Z)""",
    re.VERBOSE | re.IGNORECASE,
)


def _parse_flat(data: Sequence[bytes | tuple[bytes, bytes]]) -> list[tuple[int, FetchItems]]:
    responses: list[tuple[int, FetchItems]] = []
    position = 0
    while position < len(data):
        item = data[position]
        position += 1
        if isinstance(item, tuple):
            line, literal = item
            match = _RESPONSE_WITH_LITERAL.match(line)
            if match is None or position >= len(data) or data[position] != b")":
                raise FetchParseError("not a flat response")
            position += 1
            items = _flat_pairs(match.group(2))
            items[match.group(3).upper()] = literal
        else:
            match = _RESPONSE.match(item)
            if match is None:
                raise FetchParseError("not a flat response")
            items = _flat_pairs(match.group(2))
        responses.append((int(match.group(1)), items))
    return responses


def _flat_pairs(text: bytes) -> FetchItems:
    items: FetchItems = {}
    at = 0
    while at < len(text):
        pair = _PAIR.match(text, at)
        if pair is None:
            raise FetchParseError("not a flat response")
        at = pair.end()
        if pair.group("number") is not None:
            value: Any = int(pair.group("number"))
        elif pair.group("list") is not None:
            value = tuple(int(a) if a.isdigit() else a for a in pair.group("list").split())
        elif pair.group("quoted") is not None:
            value = pair.group("quoted")
        else:
            value = None
        items[pair.group(1).upper()] = value
    return items


def _parse_tokens(data: Sequence[bytes | tuple[bytes, bytes]]) -> list[tuple[int, FetchItems]]:
    tokens = _tokens(data)
    responses: list[tuple[int, FetchItems]] = []
    for token in tokens:
        if not (isinstance(token, bytes) and token.isdigit()):
            raise FetchParseError(f"expected a sequence number, got {token!r}")
        if next(tokens, None) is not _OPEN:
            raise FetchParseError("expected '(' after the sequence number")
        values = _list(tokens)
        if len(values) % 2:
            raise FetchParseError("a FETCH item without a value")
        items: FetchItems = {}
        for i in range(0, len(values), 2):
            key = values[i]
            if not isinstance(key, bytes):
                raise FetchParseError(f"a FETCH item name that is not an atom: {key!r}")
            items[key.upper()] = values[i + 1]
        responses.append((int(token), items))
    return responses


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_OPEN = _Marker("(")
_CLOSE = _Marker(")")


class _String:
    """A literal's or a quoted string's bytes, kept apart from atoms so that ``"123"`` or
    ``{3}NIL`` is never read as a number or as NIL."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _tokens(data: Sequence[bytes | tuple[bytes, bytes]]) -> Iterator[Any]:
    for item in data:
        if isinstance(item, tuple):
            line, literal = item
            yield from _line_tokens(line, literal_follows=True)
            yield _String(literal)
        elif isinstance(item, bytes):
            yield from _line_tokens(item, literal_follows=False)
        elif item is not None:
            raise FetchParseError(f"unexpected item {type(item).__name__}")


def _line_tokens(line: bytes, *, literal_follows: bool) -> Iterator[Any]:
    position = 0
    end = len(line.rstrip(b" "))
    announced = False
    while position < end:
        match = _TOKEN.match(line, position)
        if match is None or match.end() == position:
            raise FetchParseError(f"cannot read {line[position : position + 40]!r}")
        position = match.end()
        kind = match.lastgroup
        if kind == "open":
            yield _OPEN
        elif kind == "close":
            yield _CLOSE
        elif kind == "quoted":
            yield _String(_QUOTED_ESCAPE.sub(rb"\1", match.group("quoted")))
        elif kind == "literal":
            announced = True
        else:
            yield match.group("atom")
    if announced != literal_follows:
        raise FetchParseError("a literal marker where none was read, or none where one was")


def _list(tokens: Iterator[Any]) -> list[Any]:
    """The values up to the ``)`` that closes the list just opened."""
    values: list[Any] = []
    for token in tokens:
        if token is _CLOSE:
            return values
        if token is _OPEN:
            values.append(tuple(_list(tokens)))
        elif isinstance(token, _String):
            values.append(token.data)
        elif token.isdigit():
            values.append(int(token))
        elif token.upper() == b"NIL":
            values.append(None)
        else:
            values.append(token)
    raise FetchParseError("a list that is never closed")


def fetch_items(data: list[Any]) -> list[dict[bytes, Any]]:
    """The item dicts of FETCH responses: our own parser, else imapclient's (slower, but
    it has seen every server's quirks)."""
    try:
        return [items for _, items in parse_fetch_responses(data)]
    except FetchParseError as exc:
        log.debug("FETCH response left to imapclient's parser: %s", exc)
    found: list[dict[bytes, Any]] = []
    parsed = gen_parsed_response(data)
    while True:
        try:
            next(parsed)  # sequence number
            attributes = next(parsed)
        except StopIteration:
            return found
        if isinstance(attributes, tuple):
            found.append(
                {
                    _atom_text(attributes[i]).upper().encode(): attributes[i + 1]
                    for i in range(0, len(attributes) - 1, 2)
                }
            )


# Untagged responses that mean the held folder changed beyond flags (or in a way the held


def flag_state(uid: int, data: dict[bytes, Any]) -> FlagState:
    modseq_value = data.get(b"MODSEQ")  # imapclient gives "(123)" as a 1-tuple
    if isinstance(modseq_value, tuple):
        modseq_value = modseq_value[0] if modseq_value else None
    modseq = int(modseq_value) if modseq_value is not None else None
    return FlagState(uid=uid, flags=normalize_flags(data.get(b"FLAGS", ())), modseq=modseq)


def _atom_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
