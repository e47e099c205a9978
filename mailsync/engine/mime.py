"""Turn raw RFC 5322 / MIME bytes into a :class:`ParsedMessage`. Pure Python, no Django.

:func:`parse_message` never raises. The stdlib parser (``policy.default``) builds the tree; every
header access and every decode is guarded, with a fallback to the raw (compat32-style) header value
and our own RFC 2047 decoder. See ``IMAP-NOTES.md`` §4 and ``shared/corpus/mime/README.md`` for the
failure modes.

All returned strings are free of NUL characters and lone surrogates (safe for PostgreSQL text).

This module is the public API and the assembly of a message from its pieces:

- :mod:`mailsync.engine.mime_types`: the returned dataclasses (re-exported here);
- :mod:`mailsync.engine.mime_headers`: RFC 2047/2231 decoding, addresses, dates, message-ids;
- :mod:`mailsync.engine.mime_envelope`: the header block alone, split fast, for ``parse_envelope``;
- :mod:`mailsync.engine.mime_large`: large base64 bodies decoded once, outside the parser;
- :mod:`mailsync.engine.mime_parts`: the part walker, bodies, attachments, ``html_to_text``;
- :mod:`mailsync.engine.mime_charsets` and :mod:`mailsync.engine.mime_tnef`: charsets, winmail.dat.

The dependencies run one way: this module imports the others, never the reverse.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from collections.abc import Iterable

from mailsync.engine import mime_charsets
from mailsync.engine.mime_envelope import HeaderIndex, header_fields, read_envelope
from mailsync.engine.mime_headers import (
    _addresses,
    _charset_hint,
    _clean_body,
    _clean_header,
    _date,
    _message_id,
    _msgids,
    _raw_header,
    _raw_headers,
    _unstructured,
    _unsurrogate,
    decode_words,
    more_addresses_than_listed,
    sanitize_filename,
)
from mailsync.engine.mime_large import LARGE_PARSE, parse_large
from mailsync.engine.mime_parts import (
    MAX_MESSAGE_DEPTH,
    MAX_MULTIPART_DEPTH,
    MAX_PARTS,
    _Bodies,
    _finish_attachments,
    _Shared,
    _Walker,
    html_to_text,
)
from mailsync.engine.mime_types import (
    ParsedAddress,
    ParsedAttachment,
    ParsedEnvelope,
    ParsedMessage,
)

__all__ = [
    "MAX_HEADER_BLOCK",
    "MAX_MESSAGE_DEPTH",
    "MAX_MULTIPART_DEPTH",
    "MAX_PARTS",
    "ParsedAddress",
    "ParsedAttachment",
    "ParsedEnvelope",
    "ParsedMessage",
    "decode_words",
    "envelope_of",
    "fallback_message",
    "html_to_text",
    "parse_envelope",
    "parse_message",
    "sanitize_filename",
    "search_text",
]


# --------------------------------------------------------------------------- entry points


def fallback_message(raw: bytes, reason: str) -> ParsedMessage:
    """The message as raw text with a notice: what is shown when parsing failed. The envelope
    comes from the header block alone (``parse_envelope``), which is nearly always readable
    when the body is not (1,000 nested multiparts): the list still shows who sent what."""
    text = _clean_body(mime_charsets.decode_8bit(raw[:10_000_000]))
    envelope = parse_envelope(raw)
    return ParsedMessage(
        subject=envelope.subject,
        sender=envelope.sender,
        to=envelope.to,
        cc=envelope.cc,
        reply_to=(),
        date=envelope.date,
        message_id=envelope.message_id,
        in_reply_to=envelope.in_reply_to,
        references=envelope.references,
        text=text,
        html="",
        attachments=(),
        notices=(f"The message could not be read as MIME ({reason}); the raw message is shown.",),
        shown_raw=True,
    )


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(_clean_header(item), None)
    return tuple(k for k in seen if k)


def _useful_preamble(msg: email.message.Message) -> str:
    """Human text before the first boundary (some DSNs put their only explanation there)."""
    try:
        preamble = msg.preamble or ""
    except Exception:
        return ""
    text = _clean_body(_unsurrogate(preamble)).strip()
    lowered = text.lower()
    if len(text) < 200 and ("mime format" in lowered or "multi-part message" in lowered):
        return ""
    return text


_MIME_HEADER = re.compile(rb"^content-(?:type|disposition)[ \t]*:", re.I | re.M)
_HUGE_MIME_HEADER = 8000


def _has_huge_mime_header(raw: bytes) -> bool:
    """True if some Content-Type/-Disposition header (with its folded lines) is huge: the stdlib's
    policy.default header parser, which the feed parser itself calls, is quadratic on those."""
    for match in _MIME_HEADER.finditer(raw):
        pos = match.end()
        limit = match.start() + _HUGE_MIME_HEADER
        while True:
            newline = raw.find(b"\n", pos, limit)
            if newline < 0:
                if len(raw) >= limit:
                    return True  # the header runs past the limit
                break
            if newline + 1 >= len(raw) or raw[newline + 1] not in b" \t":
                break  # the header ends here
            pos = newline + 1
    return False


_SIMPLER_MODE_AFTER_ERROR = (
    "A header of the message could not be read by the standard parser; "
    "it was read in a simpler mode."
)


def _parse(raw: bytes, *, simple: bool = False) -> ParsedMessage:
    notices: list[str] = []
    if simple or _has_huge_mime_header(raw):
        # compat32 splits parameters simply (linear time); every header is then decoded by our own
        # fallback path, since compat32 returns plain strings.
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        notices.append(
            _SIMPLER_MODE_AFTER_ERROR
            if simple
            else "The message has an oversized MIME header; it was read in a simpler mode."
        )
    else:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    hint = _charset_hint(msg)
    subject = _unstructured(msg, "subject", notices, hint)
    senders = _addresses(msg, "from", hint)
    if not senders:
        senders = _addresses(msg, "sender", hint)
    shared = _Shared()
    walker = _Walker(shared, hint=hint)
    bodies = _Bodies()
    walker.walk(msg, bodies, "", 0)

    text = "\n\n".join(t.strip("\n") for t in bodies.texts if t.strip())
    html = "\n".join(h for h in bodies.htmls if h.strip())
    shown_raw = False
    raw_texts = [t for _, _, t in shared.raw_fallback if t]
    use_raw = not text and not html and bool(raw_texts)
    for where, ctype, raw_text in shared.raw_fallback:
        if not raw_text:
            notices.append(f"{where} says it is {ctype} but contains no parts.")
        elif use_raw:
            notices.append(
                f"{where} says it is {ctype} but its part boundary was not found; "
                "the raw body text is shown."
            )
        else:
            notices.append(
                f"{where} says it is {ctype} but its part boundary was not found; "
                "its raw text was left out."
            )
    if not text and not html:
        inner = bodies.inner_message
        if use_raw:
            text, shown_raw = "\n\n".join(raw_texts), True
        elif preamble := _useful_preamble(msg):
            text = preamble
        elif inner is not None and (inner.texts or inner.htmls):
            text = "\n\n".join(t.strip("\n") for t in inner.texts if t.strip())
            html = "\n".join(h for h in inner.htmls if h.strip())
    if not text and html:
        text = html_to_text(html)
    references = _msgids(" ".join(_raw_headers(msg, "references")))
    in_reply_to = _msgids(_raw_header(msg, "in-reply-to"))
    to, cc = _addresses(msg, "to", hint), _addresses(msg, "cc", hint)
    for label, listed in (("To", to), ("Cc", cc)):
        if more_addresses_than_listed(msg, label.lower(), len(listed)):
            notices.append(
                f"The {label} header lists more than {len(listed)} addresses; "
                f"only the first {len(listed)} are shown."
            )
    return ParsedMessage(
        subject=subject,
        sender=senders[0] if senders else None,
        to=to,
        cc=cc,
        reply_to=_addresses(msg, "reply-to", hint),
        date=_date(msg),
        message_id=_message_id(msg),
        in_reply_to=in_reply_to[0] if in_reply_to else "",
        references=references,
        text=_clean_body(text),
        html=_clean_body(html),
        attachments=_finish_attachments(shared, html),
        notices=_dedupe([*notices, *shared.notices]),
        shown_raw=shown_raw,
    )


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw message bytes. Never raises, for any input."""
    try:
        data = bytes(raw)
    except Exception:
        data = b""
    if len(data) > LARGE_PARSE:
        try:
            return parse_large(data, _parse_or_fallback)
        except Exception:  # MemoryError among others: the ordinary way still reads it
            pass
    return _parse_or_fallback(data)


def _parse_or_fallback(data: bytes) -> ParsedMessage:
    try:
        return _parse(data)
    except RecursionError:
        return fallback_message(data, "it is nested too deeply")
    except Exception:
        # The stdlib's policy.default header parser raises IndexError on some damaged
        # parameters (``name*0*="us-ascii'en'`` cut short, a CR inside ``charset*=``), even
        # from inside message_from_bytes: compat32 reads them as plain strings.
        pass
    try:
        return _parse(data, simple=True)
    except RecursionError:
        return fallback_message(data, "it is nested too deeply")
    except Exception as exc:  # the contract is: never raise
        try:
            return fallback_message(data, type(exc).__name__)
        except Exception:
            return fallback_message(b"", type(exc).__name__)


# Where the empty line after the header block ends. (A CR before the first LF would not change
# where; a literal first character lets the regex engine jump from LF to LF.)
_HEADER_END = re.compile(rb"\n\r?\n")
MAX_HEADER_BLOCK = 1_000_000


def parse_envelope(raw: bytes | bytearray) -> ParsedEnvelope:
    """Envelope fields from the header block only, a fraction of a full parse. Never raises;
    the full parse (``parse_message``) later refines them with the body's charset hint."""
    try:
        end = _HEADER_END.search(raw, 0, MAX_HEADER_BLOCK)
        block = bytes(raw[: end.end() if end else MAX_HEADER_BLOCK])  # never a copy of the body
        return read_envelope(HeaderIndex(header_fields(block)))
    except Exception:  # the contract is: never raise; the full parse will say more
        return ParsedEnvelope("", None, (), (), None, "", "", ())


def envelope_of(parsed: ParsedMessage) -> ParsedEnvelope:
    return ParsedEnvelope(
        subject=parsed.subject,
        sender=parsed.sender,
        to=parsed.to,
        cc=parsed.cc,
        date=parsed.date,
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
    )


def search_text(parsed: ParsedMessage) -> str:
    """Subject, addresses, body text and attachment names as one string for full-text search."""
    parts: list[str] = [parsed.subject]
    people = [parsed.sender] if parsed.sender else []
    people += [*parsed.to, *parsed.cc, *parsed.reply_to]
    parts.extend(p.display() for p in people)
    parts.append(parsed.text)
    parts.extend(a.filename for a in parsed.attachments)
    return "\n".join(p for p in parts if p)
