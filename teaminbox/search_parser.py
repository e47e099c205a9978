"""The search box's query language (Gmail's operators), parsed to a small tree.

Pure: no Django, no clock. Dates stay as written (a day, or an age like ``7d``); the
executor (``teaminbox.search``) resolves them in the app's time zone.

Grammar (as in Gmail, OR binds tighter than the implicit AND)::

    query   := and
    and     := or+                      (also "AND" between, ignored)
    or      := unary ("OR" unary)*
    unary   := "-" unary | "(" and ")" | term
    term    := word | "quoted phrase" | operator:value | operator:"quoted value"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta


class SearchSyntaxError(ValueError):
    """A query the parser refuses; ``str()`` is a sentence for the person who typed it."""


# --- the tree -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """Words anywhere in the message (a phrase keeps its words in order)."""

    text: str
    phrase: bool = False


@dataclass(frozen=True)
class Header:
    """``from:`` ``to:`` ``cc:`` ``subject:`` ``filename:`` ``note:``: text in one place."""

    field: str
    text: str


@dataclass(frozen=True)
class State:
    """``is:``: unread, read, replied, unreplied, flagged, deleted."""

    state: str


@dataclass(frozen=True)
class HasAttachment:
    pass


@dataclass(frozen=True)
class Size:
    """``larger:`` (op ``>``) or ``smaller:`` (op ``<``), in bytes."""

    op: str
    size: int


@dataclass(frozen=True)
class When:
    """``before:`` ``after:`` ``on:``: a calendar day, or an age (``after:7d``)."""

    op: str
    day: date | None = None
    age: timedelta | None = None


@dataclass(frozen=True)
class In:
    """``in:``: a folder name, or ``trash``, ``junk``, ``anywhere``, ``inbox``."""

    folder: str


@dataclass(frozen=True)
class Assignee:
    """``assignee:me|none|NAME``."""

    who: str


@dataclass(frozen=True)
class Status:
    status: str


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Text | Header | State | HasAttachment | Size | When | In | Assignee | Status | Not | And | Or


# --- operators and their values -------------------------------------------------------------

STATES = ("unread", "read", "replied", "unreplied", "flagged", "deleted")
STATUSES = ("open", "pending", "closed")
HEADER_FIELDS = ("from", "to", "cc", "subject", "filename", "note")
OPERATORS = (
    *HEADER_FIELDS,
    "is", "has", "larger", "smaller", "before", "after", "on", "in", "assignee", "status",
)  # fmt: skip

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DAY = re.compile(r"^(\d{4})[-/](\d{1,2})[-/](\d{1,2})$")
_AGE = re.compile(r"^(\d+)([dwmy])$", re.IGNORECASE)
_AGE_DAYS = {"d": 1, "w": 7, "m": 30, "y": 365}


def _operator(name: str, value: str) -> Node:
    shown = f"{name}:{value}"
    if value == "":
        raise SearchSyntaxError(f"“{name}:” needs a value right after the colon.")
    if name in HEADER_FIELDS:
        return Header(name, value)
    lowered = value.lower()
    if name == "is":
        if lowered not in STATES:
            raise SearchSyntaxError(f"“{shown}” is not a state: use is:{', is:'.join(STATES)}.")
        return State(lowered)
    if name == "has":
        if lowered not in ("attachment", "attachments"):
            raise SearchSyntaxError(f"“{shown}” is not known: has:attachment is.")
        return HasAttachment()
    if name in ("larger", "smaller"):
        match = _SIZE.match(value)
        if not match:
            raise SearchSyntaxError(
                f"“{shown}” is not a size: write a number with K, M or G, like {name}:5M."
            )
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
        return Size(">" if name == "larger" else "<", size)
    if name in ("before", "after", "on"):
        return _when(name, value)
    if name == "in":
        return In(lowered)
    if name == "assignee":
        return Assignee(lowered if lowered in ("me", "none") else value)
    if lowered not in STATUSES:  # status
        raise SearchSyntaxError(f"“{shown}” is not a status: use open, pending or closed.")
    return Status(lowered)


def _when(name: str, value: str) -> When:
    shown = f"{name}:{value}"
    day = _DAY.match(value)
    if day:
        try:
            return When(name, day=date(*(int(part) for part in day.groups())))
        except ValueError:
            raise SearchSyntaxError(f"“{shown}”: there is no such day.") from None
    age = _AGE.match(value)
    if age and name != "on":
        days = int(age.group(1)) * _AGE_DAYS[age.group(2).lower()]
        return When(name, age=timedelta(days=days))
    if age:
        raise SearchSyntaxError(f"“{shown}”: on: takes a day, like on:2026-03-31.")
    raise SearchSyntaxError(
        f"“{shown}” is not a date: write a day like {name}:2026-03-31 "
        f"or an age like {name}:7d (d, w, m or y)."
    )


# --- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<phrase>-?"[^"]*"?)
  | (?P<op>-?[A-Za-z]+:"[^"]*"?)
  | (?P<word>[^\s()"]+)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # open, close, not, or, and, term
    node: Node | None = None
    negated: bool = False


def _term(raw: str) -> _Token:
    negated = raw.startswith("-") and len(raw) > 1
    body = raw[1:] if negated else raw
    if body.startswith('"'):
        if len(body) < 2 or not body.endswith('"'):
            raise SearchSyntaxError(f"The quote in “{raw}” is not closed.")
        return _Token("term", Text(body[1:-1], phrase=True), negated)
    name, colon, value = body.partition(":")
    if colon and name.lower() in OPERATORS:
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise SearchSyntaxError(f"The quote in “{raw}” is not closed.")
            value = value[1:-1]
        return _Token("term", _operator(name.lower(), value), negated)
    return _Token("term", Text(body), negated)  # "Re:" or a URL: words, not an operator


def tokenize(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(query):
        match = _TOKEN.match(query, position)
        if match is None:  # only a lone quote is left unmatched
            raise SearchSyntaxError("A quote is not closed.")
        position = match.end()
        kind = match.lastgroup
        text = match.group()
        if kind == "space":
            continue
        if kind in ("open", "close"):
            tokens.append(_Token(str(kind)))
        elif text in ("OR", "|"):
            tokens.append(_Token("or"))
        elif text == "AND":
            tokens.append(_Token("and"))
        elif text == "-" and query.startswith("(", position):
            tokens.append(_Token("not"))
        elif text == "-":
            raise SearchSyntaxError("A “-” must be followed by what to leave out, like -invoice.")
        else:
            tokens.append(_term(text))
    return tokens


# --- parser ---------------------------------------------------------------------------------


_SHOWN = {"or": "OR", "and": "AND", "close": ")"}


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def parse_and(self, *, inside: bool) -> Node:
        items: list[Node] = []
        while (token := self.peek()) is not None:
            if token.kind == "close":
                if not inside:
                    raise SearchSyntaxError("A “)” has no matching “(”.")
                break
            if token.kind == "and":
                self.at += 1
                if not items or self.peek() is None:
                    raise SearchSyntaxError("“AND” needs something on both sides.")
                continue
            items.append(self.parse_or())
        if not items:
            raise SearchSyntaxError("“()” is empty: put words inside the brackets.")
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_or(self) -> Node:
        token = self.peek()
        if token is not None and token.kind == "or":
            raise SearchSyntaxError("“OR” needs something on both sides.")
        items = [self.parse_unary()]
        while (token := self.peek()) is not None and token.kind == "or":
            self.at += 1
            following = self.peek()
            if following is None or following.kind in ("or", "and", "close"):
                raise SearchSyntaxError("“OR” needs something on both sides.")
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_unary(self) -> Node:
        token = self.tokens[self.at]
        self.at += 1
        if token.kind == "not":
            if self.peek() is None:
                raise SearchSyntaxError("A “-” must be followed by what to leave out.")
            return Not(self.parse_unary())
        if token.kind in ("or", "and", "close"):
            raise SearchSyntaxError(f"“{_SHOWN[token.kind]}” cannot come there.")
        if token.kind == "open":
            inner = self.parse_and(inside=True)
            closing = self.peek()
            if closing is None:
                raise SearchSyntaxError("A “(” is not closed.")
            self.at += 1
            return inner
        assert token.node is not None
        return Not(token.node) if token.negated else token.node


def parse(query: str) -> Node | None:
    """The tree of a query; None for an empty one. Raises SearchSyntaxError."""
    tokens = tokenize(query)
    if not tokens:
        return None
    return _Parser(tokens).parse_and(inside=False)
