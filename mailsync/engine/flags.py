"""IMAP flag vocabulary shared by the engine, the store and the web app."""

from __future__ import annotations

from collections.abc import Iterable

SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"
RECENT = "\\Recent"

SYSTEM_FLAGS: tuple[str, ...] = (SEEN, ANSWERED, FLAGGED, DELETED, DRAFT)
_CANONICAL = {flag.lower(): flag for flag in SYSTEM_FLAGS}


def normalize_flags(flags: Iterable[str | bytes]) -> frozenset[str]:
    """Canonical spelling for system flags (IMAP flags are case-insensitive), keywords kept.

    ``\\Recent`` is session state the server owns (RFC 3501 §2.3.2): it is never stored and
    never written back.
    """
    result: set[str] = set()
    for flag in flags:
        text = flag.decode("utf-8", "replace") if isinstance(flag, bytes) else flag
        if not text:
            continue
        canonical = _CANONICAL.get(text.lower(), text)
        if canonical.lower() == RECENT.lower():
            continue
        result.add(canonical)
    return frozenset(result)


def split_flags(flags: Iterable[str | bytes]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(system flags, sorted keywords) from a server FLAGS list."""
    normalized = normalize_flags(flags)
    system = frozenset(flag for flag in normalized if flag in SYSTEM_FLAGS)
    keywords = tuple(sorted(flag for flag in normalized if flag not in SYSTEM_FLAGS))
    return system, keywords
