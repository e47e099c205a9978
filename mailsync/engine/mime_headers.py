"""Header decoding for :mod:`mailsync.engine.mime`: RFC 2047 encoded words, RFC 2231 parameters,
address lists, dates, message-ids, and the string hygiene every decoded value goes through.

Split from the part walker because headers have their own failure modes (raw 8-bit bytes arriving
as surrogate escapes, stdlib header-parser bugs and quadratic cases) and their own fallback: every
access is guarded, with a fallback to the raw (compat32-style) value and our own decoder. The
envelope path (:mod:`mailsync.engine.mime_envelope`) needs only this module.

Underscore names are private to the ``mailsync.engine.mime*`` modules, which share them; code
elsewhere uses :mod:`mailsync.engine.mime`.
"""

from __future__ import annotations

import binascii
import email
import email.message
import email.utils
import functools
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from mailsync.engine import mime_charsets
from mailsync.engine.mime_types import ParsedAddress

__all__ = ["decode_words", "sanitize_filename"]


# --------------------------------------------------------------------------- string hygiene

_SURROGATES = re.compile("[\ud800-\udfff]")
_HEADER_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_FILENAME_BAD = re.compile("[\x00-\x1f\x7f-\x9f/\\\\\u202a-\u202e\u2066-\u2069\u200e\u200f]")


def _clean(text: str) -> str:
    """No NULs, no lone surrogates (PostgreSQL and UTF-8 encoders reject both)."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATES.sub("\ufffd", text)
    return text


def _clean_header(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text.strip()  # the common case, with nothing below to remove
    text = _clean(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    text = _HEADER_CONTROLS.sub("", text.replace("\t", " "))
    return text.strip()


def _clean_body(text: str) -> str:
    return _clean(text).replace("\r\n", "\n").replace("\r", "\n")


_UTF7_RUN = re.compile(r"\+[A-Za-z0-9/+]{2,}-")


def _unsurrogate(value: str, hint: str | None = None) -> str:
    """Decode raw header text: 8-bit bytes arrive as surrogate escapes; ISO-2022-JP escapes and
    Outlook's raw UTF-7 headers (when the body is UTF-7) arrive as ASCII."""
    if not value.isascii() and _SURROGATES.search(value):  # surrogates are not ASCII
        try:
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return _SURROGATES.sub("\ufffd", value)
        return mime_charsets.decode_8bit(data, hint)
    if "\x1b" in value and ("\x1b$" in value or "\x1b(" in value):
        decoded = mime_charsets.decode(value.encode("latin-1", "replace"), "iso-2022-jp")
        if not decoded.problem:
            return decoded.text
    if hint and _UTF7_RUN.search(value) and mime_charsets.resolve(hint) == "utf-7":  # costly last
        try:
            return value.encode("ascii").decode("utf-7")
        except (UnicodeError, ValueError):
            return value
    return value


# --------------------------------------------------------------------------- RFC 2047

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)(?:\?=|$)")
_LEFTOVER_EW = re.compile(r"=\?[^?\s]+\?[bBqQ]\?")


def _ew_bytes(encoding: str, text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    try:
        if encoding in "bB":
            data = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
            data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data
            return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
        return binascii.a2b_qp(data, header=True)
    except (binascii.Error, ValueError):
        return data


def decode_words(
    value: str, notices: list[str] | None = None, where: str = "", hint: str | None = None
) -> str:
    """Decode RFC 2047 encoded words leniently.

    Adjacent encoded words in the same charset are joined before decoding (words split in the middle
    of a multi-byte character), whitespace between encoded words is dropped, a missing final ``?=``
    and words glued to other text are tolerated, unknown charsets are guessed.
    """
    if "=?" not in value:
        return _unsurrogate(value, hint)
    out: list[str] = []
    buf = bytearray()
    buf_charset: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal buf_charset
        if buf_charset is not None:
            decoded = mime_charsets.decode(bytes(buf), buf_charset)
            out.append(decoded.text)
            if decoded.problem and notices is not None:
                notices.append(f"{where} {decoded.problem}".strip())
            buf.clear()
            buf_charset = None

    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        charset = mime_charsets.normalize_label(match.group(1))
        if between and not (between.isspace() and buf_charset is not None):
            flush()
            out.append(_unsurrogate(between, hint))
        elif between and buf_charset is not None and charset != buf_charset:
            flush()
        if buf_charset is not None and charset != buf_charset:
            flush()
        buf_charset = charset
        buf.extend(_ew_bytes(match.group(2), match.group(3)))
        pos = match.end()
    flush()
    out.append(_unsurrogate(value[pos:], hint))
    return "".join(out)


# --------------------------------------------------------------------------- header access

_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")


def _raw_headers_s(msg: email.message.Message, name: str) -> list[str]:
    """Raw values of a header, unfolded, 8-bit bytes still as surrogate escapes. Never raises."""
    found: list[str] = []
    try:
        lname = name.lower()
        for key, value in msg.raw_items():
            if str(key).lower() == lname:
                found.append(_FOLD.sub("", value if isinstance(value, str) else str(value)))
    except Exception:
        return found
    return found


def _raw_header(msg: email.message.Message, name: str, hint: str | None = None) -> str | None:
    """First raw value of a header, unfolded and with 8-bit bytes decoded."""
    found = _raw_headers_s(msg, name)
    return _unsurrogate(found[0], hint) if found else None


def _raw_headers(msg: email.message.Message, name: str) -> list[str]:
    return [_unsurrogate(v) for v in _raw_headers_s(msg, name)]


def _plain_ascii(value: str) -> bool:
    return (
        len(value) <= _POLICY_MAX
        and value.isascii()
        and "\x1b" not in value
        and not _UTF7_RUN.search(value)
    )


_POLICY_MAX = 4000  # the stdlib structured-header parser is slow (quadratic) on huge headers


def _looks_clean(text: str) -> bool:
    return (
        "\ufffd" not in text
        and "\x1b" not in text
        and not _SURROGATES.search(text)
        and not _LEFTOVER_EW.search(text)
    )


def _unstructured(
    msg: email.message.Message, name: str, notices: list[str], hint: str | None = None
) -> str:
    found = _raw_headers_s(msg, name)
    if not found:
        return ""
    raw = found[0]
    if _plain_ascii(raw) and _charsets_we_decode(raw):
        try:
            value = msg.get(name)
            text = str(value) if value is not None else ""
            if _looks_clean(text):
                return _clean_header(text)
        except Exception:  # stdlib header parser bugs
            pass
    return _decoded_unstructured(raw, name, notices, hint)


def _unstructured_compat32(
    folded: str, name: str, notices: list[str], hint: str | None = None
) -> str:
    """:func:`_unstructured` for a header read in compat32 mode, whose ``get()`` is the raw value
    with its folds (their line breaks become spaces in ``_clean_header``)."""
    raw = _FOLD.sub("", folded)
    if _plain_ascii(raw) and _looks_clean(folded):
        return _clean_header(folded)
    return _decoded_unstructured(raw, name, notices, hint)


def _charsets_we_decode(raw: str) -> bool:
    """True unless an encoded word names a charset ``mime_charsets`` refuses or does not know:
    the stdlib would decode ``=?unicode_escape?q?\\u0041?=`` with that Python codec ("A")."""
    if "=?" not in raw:
        return True
    return all(mime_charsets.resolve(m.group(1)) for m in _ENCODED_WORD.finditer(raw))


def _decoded_unstructured(raw: str, name: str, notices: list[str], hint: str | None) -> str:
    where = f"The {name.capitalize()} header"
    return _clean_header(decode_words(raw, notices, where, hint))


def _address_from_parts(name: str, addr: str) -> ParsedAddress | None:
    name = _clean_header(name[:2000]).strip().strip('"').strip()[:500]
    addr = _clean_header(addr).strip().strip("<>").strip()
    if "@" not in addr or addr.startswith("@") or addr.endswith("@") or " " in addr:
        if addr and not name:
            name = addr
        addr = ""
    if not name and not addr:
        return None
    return ParsedAddress(name=name, address=addr)


def _addresses(
    msg: email.message.Message, name: str, hint: str | None = None
) -> tuple[ParsedAddress, ...]:
    raws = _raw_headers_s(msg, name)
    if not raws:
        return ()
    # The stdlib keeps the spaces between adjacent encoded words in display names, so names with
    # encoded words go through our own decoder.
    if all(_plain_ascii(r) and "=?" not in r for r in raws):
        try:
            found: list[ParsedAddress] = []
            values: list[Any] = list(msg.get_all(name) or [])
            ok = True
            for header in values:
                for item in header.addresses:
                    display = str(item.display_name or "")
                    spec = str(item.addr_spec or "") if item.domain else str(item.username or "")
                    if not (_looks_clean(display) and _looks_clean(spec)):
                        ok = False
                    parsed = _address_from_parts(display, spec)
                    if parsed is not None:
                        found.append(parsed)
            if ok and (found or not any(r.strip() for r in raws)):
                return tuple(found)
        except Exception:  # e.g. 'Group' object has no attribute 'local_part'
            pass
    return _addresses_from_raws(raws, hint)


def _addresses_from_raws(raws: list[str], hint: str | None = None) -> tuple[ParsedAddress, ...]:
    """Addresses from unfolded raw header values, by the stdlib's lenient ``getaddresses``."""
    result: list[ParsedAddress] = []
    try:
        if sum(len(r) for r in raws) > _POLICY_MAX * 4:
            raise ValueError("too long for getaddresses")
        pairs = _getaddresses(raws)
    except Exception:  # RecursionError on huge headers, among others
        pairs = [_split_address(chunk) for raw in raws for chunk in _split_list(raw)]
    for display, addr in pairs:
        parsed = _address_from_parts(
            decode_words(display, hint=hint), decode_words(addr, hint=hint)
        )
        if parsed is not None:
            result.append(parsed)
    return tuple(result)


# The shapes nearly every address list takes, which the stdlib's getaddresses (a character-by-
# character parser, ~9 us per address) returns verbatim: ``addr@host``, ``Name <addr@host>`` and
# ``"Name, Q." <addr@host>``, comma-separated, in printable ASCII without comments, groups, routes,
# domain literals, backslashes or whitespace inside the address. Dots are atom characters here
# because getaddresses joins atoms and dots back as they were written (obs-phrase, RFC 5322 4.1).
# Anything else, including empty list members, goes to getaddresses itself.
_ATOMS = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]++"
_QUOTED = r'"[ !#-\[\]-~]*+"'  # printable ASCII but '"' and '\'
_WORD = rf"(?:{_ATOMS}|{_QUOTED})"
_SIMPLE_ADDRESS = re.compile(  # possessive throughout: linear time on any input
    rf"[ \t]*+(?:(?P<bare>{_ATOMS}@{_ATOMS})"
    rf"|(?P<phrase>{_WORD}(?:[ \t]++{_WORD})*+)?[ \t]*+<(?P<angle>{_ATOMS}@{_ATOMS})>)"
    r"[ \t]*+(?:,|\Z)"
)
_PHRASE_WORD = re.compile(r'"([^"]*)"|([^ \t"]+)')


def _getaddresses(raws: list[str]) -> list[tuple[str, str]]:
    """``email.utils.getaddresses(raws)``, without its cost for the common shapes."""
    field = ", ".join(raws)  # as getaddresses joins them
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(field):
        match = _SIMPLE_ADDRESS.match(field, pos)
        if match is None:
            return email.utils.getaddresses(raws)
        if match["bare"] is not None:
            pairs.append(("", match["bare"]))
        else:
            # getaddresses joins the phrase's words (quoted strings unquoted) with one space.
            words = _PHRASE_WORD.findall(match["phrase"] or "")
            pairs.append((" ".join(quoted or atom for quoted, atom in words), match["angle"]))
        pos = match.end()
    return pairs


_ANGLE_ADDR = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
_BARE_ADDR = re.compile(r"[^\s<>\"(),;:]+@[^\s<>\"(),;:]+")


# Addresses kept from one header too long for getaddresses (a mass mailing's To of thousands):
# the parse says in a notice that there were more (``more_addresses_than_listed``).
MAX_LISTED_ADDRESSES = 500


def more_addresses_than_listed(msg: email.message.Message, name: str, listed: int) -> bool:
    """True if the ``name`` headers hold more addresses than the ``listed`` ones kept (by their
    commas: a display name's quoted comma can only make this say so too early, never miss)."""
    if listed < MAX_LISTED_ADDRESSES:
        return False
    return sum(raw.count(",") for raw in _raw_headers_s(msg, name)) >= listed


def _split_list(raw: str) -> list[str]:
    """Split an address list on commas outside quotes and angle brackets (no recursion)."""
    chunks: list[str] = []
    current: list[str] = []
    quoted = False
    angle = 0
    for ch in raw[:200_000]:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle += 1
        elif not quoted and ch == ">":
            angle = max(0, angle - 1)
        elif ch == "," and not quoted and not angle:
            chunks.append("".join(current))
            current = []
            continue
        current.append(ch)
    chunks.append("".join(current))
    return [c for c in (c.strip() for c in chunks) if c][:MAX_LISTED_ADDRESSES]


def _split_address(chunk: str) -> tuple[str, str]:
    chunk = chunk[:2000]  # bounds the regex work on hostile headers
    match = _ANGLE_ADDR.search(chunk) or _BARE_ADDR.search(chunk)
    if not match:
        return ("", chunk[:200])
    addr = match.group(1) if match.re is _ANGLE_ADDR else match.group(0)
    name = (chunk[: match.start()] + chunk[match.end() :]).strip().strip('"').strip()
    return (name[:500], addr)


def _date(msg: email.message.Message) -> datetime | None:
    return _date_value(_raw_header(msg, "date"))


def _date_value(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        parts = email.utils.parsedate_tz(_clean_header(raw))
        if parts is None:
            return None
        year = parts[0]
        if year < 100:  # two-digit years, RFC 5322 4.3
            year += 2000 if year < 50 else 1900
        naive = datetime(year, *parts[1:6])
        offset = parts[9]
        tz = UTC if offset is None else timezone(timedelta(seconds=offset))
        return naive.replace(tzinfo=tz)
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


_MSGID = re.compile(r"<([^<>\s]+)>")


def _msgids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    text = _clean_header(value)
    found = [m.group(1) for m in _MSGID.finditer(text)]
    if not found:
        found = [t.strip("<>,;") for t in text.split() if "@" in t]
    return tuple(f for f in found if f)[:200]


def _message_id(msg: email.message.Message) -> str:
    return _message_id_value(_raw_header(msg, "message-id"))


def _message_id_value(raw: str | None) -> str:
    if not raw:
        return ""
    ids = _msgids(raw)
    if ids:
        return ids[0]
    return _clean_header(raw).strip("<> ")[:998]


# --------------------------------------------------------------------------- parameters


def _param_view(part: email.message.Message, hint: str | None = None) -> email.message.Message:
    """A compat32 message with only this part's Content-Type/-Disposition (robust param parsing)."""
    view = email.message.Message()
    for name in ("content-type", "content-disposition"):
        raw = _raw_header(part, name, hint)
        if raw is not None:
            view[name] = raw
    return view


def _param(view: email.message.Message, name: str, header: str) -> str:
    try:
        value = view.get_param(name, header=header)
    except Exception:
        return ""
    if value is None:
        return ""
    try:
        text = email.utils.collapse_rfc2231_value(value, errors="replace")
    except Exception:
        text = str(value[2] if isinstance(value, tuple) else value)
    return decode_words(_unsurrogate(str(text)))


# Never part of a MIME type (RFC 2045 tokens): a NUL or space the stdlib keeps from a damaged
# header ("Content-Type:\x00 image/png") would make the type unusable and unstorable.
_NOT_IN_CTYPE = re.compile(r"[\x00-\x20\x7f]+")


def _content_type(view: email.message.Message) -> str:
    try:
        ctype = _NOT_IN_CTYPE.sub("", view.get_content_type().lower())
    except Exception:
        return "text/plain"
    if "/" not in ctype:
        return "application/octet-stream"
    return ctype[:100]


def _disposition(view: email.message.Message) -> str:
    try:
        value = view.get_content_disposition()
    except Exception:
        return ""
    return (value or "").lower()


def sanitize_filename(name: str) -> str:
    name = _clean_header(name)
    name = re.split(r"[/\\]", name)[-1]
    name = _FILENAME_BAD.sub("", name).strip().strip(".").strip()
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = stem[: 190 - len(ext)] + dot + ext if dot and len(ext) <= 10 else name[:200]
    return name


# --------------------------------------------------------------------------- charset hint


def _charset_hint(msg: email.message.Message) -> str | None:
    """The first declared body charset: used to decode raw 8-bit (and UTF-7) headers."""
    try:
        for index, part in enumerate(msg.walk()):
            if index > 50:
                break
            raw = _raw_headers_s(part, "content-type")
            if raw:
                label = _declared_charset(raw[0])
                if label is not None:
                    return label
    except Exception:
        return None
    return None


def _declared_charset(content_type: str) -> str | None:
    """The charset parameter of an unfolded raw Content-Type value, unless it is ASCII or unknown.
    May raise (the stdlib's parameter parser)."""
    value = _SURROGATES.sub("", content_type)
    # Most multipart headers name no charset, and the parameter parser costs ~6 us a header.
    if "charset" not in value.lower():
        return None
    if len(value) > _CACHED_CONTENT_TYPE:
        return _charset_param(value)
    return _cached_charset_param(value)


def _charset_param(content_type: str) -> str | None:
    view = email.message.Message()
    view["content-type"] = content_type
    label = view.get_param("charset")
    if isinstance(label, str) and mime_charsets.resolve(label) not in (None, "us-ascii"):
        return label
    return None


# A mailbox repeats a handful of values ("text/plain; charset=utf-8") thousands of times; the
# cache is bounded in entries and, by the length limit, in size.
_CACHED_CONTENT_TYPE = 200
_cached_charset_param = functools.lru_cache(maxsize=512)(_charset_param)
