"""The envelope (the inbox list's fields) from a message's header block, for
:func:`mailsync.engine.mime.parse_envelope`, which runs once per message of an initial sync.

The result is what parse_envelope returned when it read every header block with the feed parser
into a compat32 message, then with :func:`mailsync.engine.mime.parse_message`'s decoders (that
implementation is kept in tests/engine/test_envelope_fast.py to compare); only faster:

- the stdlib's feed parser cost more than everything else, so :func:`header_fields` cuts header
  blocks of the usual shape itself, into the pairs the feed parser would have stored for the
  envelope's fields, and hands any other block to the feed parser;
- one :class:`HeaderIndex` serves every lookup, instead of a scan of all headers for each;
- address lists, which repeat from message to message, are parsed once (and their common shapes
  without the stdlib's getaddresses, see ``mime_headers._getaddresses``).
"""

from __future__ import annotations

import email.parser
import email.policy
import functools
import re
from collections.abc import Iterable

from mailsync.engine.mime_headers import (
    _FOLD,
    _addresses_from_raws,
    _date_value,
    _declared_charset,
    _message_id_value,
    _msgids,
    _unstructured_compat32,
    _unsurrogate,
)
from mailsync.engine.mime_types import ParsedAddress, ParsedEnvelope

__all__ = ["ENVELOPE_FIELDS", "HeaderIndex", "header_fields", "read_envelope"]


# --------------------------------------------------------------------------- splitting

# The fields read_envelope looks up: the fast path extracts only these.
ENVELOPE_FIELDS = frozenset(
    {"subject", "from", "sender", "to", "cc", "date", "message-id", "in-reply-to", "references"}
    | {"content-type"}  # for the charset hint
)

# A field's first line as the feed parser recognises it: a name of printable ASCII but ':', then
# the colon. So a "From " mbox line or a line starting with ':' is no field. Possessive, so a
# megabyte without a colon fails in linear time.
_NAME = r"[\x21-\x39\x3b-\x7e]++:"
_STARTS_WITH_FIELD = re.compile(_NAME)
# A line (after the first) that is neither a field nor a continuation line (one starting with a
# space or tab), unless it is the empty line that ends the block. Searching from LF to LF is
# cheap; these lines are rare.
_ODD_LINE = re.compile(rf"\n(?!{_NAME}|[ \t]|\r?\n?\Z)")
_BARE_CR = re.compile(r"\r(?!\n)")  # it ends a line for the feed parser, unlike for us
# One wanted field in a block that passed the checks above, found by the LF before it: its name,
# then its value, the rest of the line and every continuation line. The blanks after the colon
# are left out (Compat32.header_source_parse strips them); the folds stay in.
_WANTED_FIELD = re.compile(
    rf"\n({'|'.join(sorted(ENVELOPE_FIELDS))}):[ \t]*+([^\n]*+(?:\n[ \t][^\n]*+)*+)",
    re.IGNORECASE | re.ASCII,
)


def _split_simply(block: bytes) -> list[tuple[str, str]] | None:
    """The envelope fields among the ``(name, value)`` pairs the feed parser (compat32, headers
    only) makes of a header block with fields and continuation lines alone; None for any other
    block: a continuation or ':' line first, a "From " line, a body without the empty line before
    it... whose handling is the feed parser's to decide."""
    text = block.decode("ascii", "surrogateescape")  # as BytesParser decodes it
    if (
        _STARTS_WITH_FIELD.match(text) is None
        or _ODD_LINE.search(text) is not None
        or _BARE_CR.search(text) is not None
    ):
        return None
    # header_source_parse strips the value's line ends at its end only.
    return [(name, value.rstrip("\r\n")) for name, value in _WANTED_FIELD.findall("\n" + text)]


def header_fields(block: bytes) -> Iterable[tuple[str, str]]:
    """The raw ``(name, value)`` pairs of a header block, as a compat32 message stores them;
    perhaps only those in :data:`ENVELOPE_FIELDS`."""
    fields = _split_simply(block)
    if fields is not None:
        return fields
    # compat32 only splits the header block (the header registry of policy.default costs ~0.4 ms
    # per header); every value then goes through our own decoder.
    parser = email.parser.BytesParser(policy=email.policy.compat32)
    return parser.parsebytes(block, headersonly=True).raw_items()


# --------------------------------------------------------------------------- reading


class HeaderIndex:
    """The envelope fields' raw values by lower-cased name, each as compat32 stores it: folds kept,
    8-bit bytes as surrogate escapes. Built once, so each lookup is a dict access."""

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in fields:
            key = name.lower()
            if key in ENVELOPE_FIELDS:
                self._values.setdefault(key, []).append(value)

    def folded(self, name: str) -> list[str]:
        if name not in ENVELOPE_FIELDS:  # the fast path would not have extracted it
            raise KeyError(name)
        return self._values.get(name, [])

    def unfolded(self, name: str) -> list[str]:
        """Without the line breaks of the folds (``mime_headers._raw_headers_s``)."""
        return [_unfold(value) for value in self.folded(name)]

    def first(self, name: str) -> str | None:
        """The first value unfolded, 8-bit bytes decoded (``mime_headers._raw_header``)."""
        values = self.folded(name)
        return _unsurrogate(_unfold(values[0])) if values else None


def _unfold(value: str) -> str:
    return _FOLD.sub("", value) if "\n" in value or "\r" in value else value


def _charset_hint(headers: HeaderIndex) -> str | None:
    content_types = headers.unfolded("content-type")
    try:
        return _declared_charset(content_types[0]) if content_types else None
    except Exception:  # the stdlib's parameter parser
        return None


def _addresses(headers: HeaderIndex, name: str, hint: str | None) -> tuple[ParsedAddress, ...]:
    # compat32 values are plain strings, without the parsed addresses of policy.default.
    raws = headers.unfolded(name)
    if len(raws) == 1 and len(raws[0]) <= _CACHED_ADDRESS_LIST:
        return _cached_addresses(raws[0], hint)
    return _addresses_from_raws(raws, hint) if raws else ()


# A mailbox's From and To values come back again and again: the shared address, the regular
# correspondents. The parsed addresses are immutable, so one result can serve every message; the
# cache is bounded in entries and, by the length limit, in size.
_CACHED_ADDRESS_LIST = 500


@functools.lru_cache(maxsize=2048)
def _cached_addresses(raw: str, hint: str | None) -> tuple[ParsedAddress, ...]:
    return _addresses_from_raws([raw], hint)


def read_envelope(headers: HeaderIndex) -> ParsedEnvelope:
    """The envelope fields, as ``parse_message`` reads them from a compat32 message. May raise."""
    hint = _charset_hint(headers)
    subjects = headers.folded("subject")
    senders = _addresses(headers, "from", hint) or _addresses(headers, "sender", hint)
    in_reply_to = _msgids(headers.first("in-reply-to"))
    references = [_unsurrogate(value) for value in headers.unfolded("references")]
    return ParsedEnvelope(
        subject=_unstructured_compat32(subjects[0], "subject", [], hint) if subjects else "",
        sender=senders[0] if senders else None,
        to=_addresses(headers, "to", hint),
        cc=_addresses(headers, "cc", hint),
        date=_date_value(headers.first("date")),
        message_id=_message_id_value(headers.first("message-id")),
        in_reply_to=in_reply_to[0] if in_reply_to else "",
        references=_msgids(" ".join(references)),
    )
