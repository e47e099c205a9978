"""What crosses the IMAP boundary: frozen dataclasses, and the small codecs for UID sets,
COPYUID and INTERNALDATE. Pure Python: no imaplib, no imapclient."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from mailsync.engine.mime_types import ParsedEnvelope

# Each FETCH/STORE names at most this many UIDs, so a command line stays far below
# imaplib's 1,000,000-byte _MAXLINE even with sparse UID sets (django-mailbox #81).
UID_WINDOW = 2000


@dataclass(frozen=True)
class RemoteFolder:
    name: str
    special_use: str  # "\\Sent", ... or ""
    selectable: bool


@dataclass(frozen=True)
class SelectedFolder:
    """The snapshot taken at SELECT; cursors are committed only from these values."""

    name: str
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None
    permanent_flags: frozenset[str]

    @property
    def allows_keywords(self) -> bool:
        return "\\*" in self.permanent_flags


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int
    messages: int
    highestmodseq: int | None


@dataclass(frozen=True)
class FlagState:
    uid: int
    flags: frozenset[str]
    modseq: int | None


@dataclass(frozen=True)
class HeldFolderNews:
    """What a NOOP on a held folder brought: flag changes only, or ``changed`` (anything
    else: sync in full)."""

    changed: bool
    flags: dict[int, FlagState] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    flags: frozenset[str]
    internaldate: datetime | None
    size: int
    raw: bytes | bytearray  # a bytearray for chunked large messages (no second copy)
    modseq: int | None
    # Filled in by the sync's read-ahead thread (``sync.prepared``), so the thread that
    # writes to the database spends its time there; computed on demand otherwise.
    envelope: ParsedEnvelope | None = None
    sha256: str = ""

    def digest(self) -> str:
        return self.sha256 or hashlib.sha256(self.raw).hexdigest()


def uid_windows(uids: Sequence[int], size: int = UID_WINDOW) -> Iterator[list[int]]:
    for start in range(0, len(uids), size):
        yield list(uids[start : start + size])


def copyuid_map(texts: Iterable[str]) -> tuple[int | None, dict[int, int]]:
    """``COPYUID <uidvalidity> <source set> <destination set>`` -> (uidvalidity,
    {source: destination}); the response code may come tagged or untagged."""
    uidvalidity: int | None = None
    mapping: dict[int, int] = {}
    for text in texts:
        match = re.search(r"COPYUID\s+(\d+)\s+([\d:,]+)\s+([\d:,]+)", text)
        if match is None:
            match = re.match(r"\s*(\d+)\s+([\d:,]+)\s+([\d:,]+)", text)
        if match is None:
            continue
        uidvalidity = int(match.group(1))
        sources = parse_uid_set(match.group(2))
        targets = parse_uid_set(match.group(3))
        # RFC 4315: the sets correspond in order, each in ascending UID order.
        mapping.update(zip(sources, targets, strict=False))
    return uidvalidity, mapping


def parse_uid_set(text: str) -> list[int]:
    """``"1:3,7"`` -> [1, 2, 3, 7]. Ranges may be given high:low (RFC 3501 §9)."""
    uids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition(":")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            continue
        if first > last:
            first, last = last, first
        uids.extend(range(first, last + 1))
    return uids


def format_uid_set(uids: Sequence[int]) -> str:
    """Compact ``1:5,9`` form for sorted UIDs."""
    ordered = sorted(set(uids))
    ranges: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        ranges.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = uid
    ranges.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(ranges)


_INTERNALDATE = re.compile(
    r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z"
)
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}


def parse_internaldate(value: Any) -> datetime | None:
    """``"29-Nov-2026 10:00:00 +0100"`` (RFC 3501 date-time) -> an aware datetime; None
    when malformed. By hand: strptime cost more than the rest of a message's FETCH."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    match = _INTERNALDATE.match(text)
    month = _MONTHS.get(match.group(2).lower(), 0) if match else 0
    if match is None or not month:
        return None
    day, _, year, hour, minute, second, sign, off_h, off_m = match.groups()
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        return datetime(
            int(year), month, int(day), int(hour), int(minute), int(second),
            tzinfo=timezone(-offset if sign == "-" else offset),
        )  # fmt: skip
    except ValueError:  # 31-Feb, 25:00, an offset of a day or more
        return None
