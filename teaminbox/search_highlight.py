"""Highlighting the words a search found: escaped text with <mark> around matching words.

Words are compared after ``mailsync.search_index.normalise``, so ``fevrier`` marks
``février``; everything else is escaped, so a subject holding markup stays text."""

from __future__ import annotations

import re

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from mailsync.search_index import normalise

_WORD = re.compile(r"\w+")
SNIPPET_CHARS = 180


def highlight(text: str, terms: list[str]) -> SafeString:
    """``text`` escaped, each word whose normalised form is one of ``terms`` in <mark>."""
    wanted = set(terms)
    pieces: list[str] = []
    position = 0
    for match in _WORD.finditer(text):
        if wanted and normalise(match.group()) in wanted:
            pieces.append(escape(text[position : match.start()]))
            pieces.append(f"<mark>{escape(match.group())}</mark>")
            position = match.end()
    pieces.append(escape(text[position:]))
    return mark_safe("".join(pieces))  # every piece of text went through escape()


def snippet(text: str, terms: list[str]) -> SafeString:
    """A stretch of ``text`` around the first matching word (else its start), highlighted."""
    flat = " ".join(text.split())
    wanted = set(terms)
    start = 0
    for match in _WORD.finditer(flat):
        if normalise(match.group()) in wanted:
            start = max(0, match.start() - 40)
            break
    if start:
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < start + 20 else start
    piece = flat[start : start + SNIPPET_CHARS]
    prefix = "…" if start else ""
    suffix = "…" if start + SNIPPET_CHARS < len(flat) else ""
    return mark_safe(prefix + highlight(piece, terms) + suffix)  # highlight() escaped it
