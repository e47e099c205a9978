"""Turn raw RFC 5322 / MIME bytes into a :class:`ParsedMessage`. Pure Python, no Django.

:func:`parse_message` never raises. The stdlib parser (``policy.default``) builds the tree; every
header access and every decode is guarded, with a fallback to the raw (compat32-style) header value
and our own RFC 2047 decoder. See ``IMAP-NOTES.md`` §4 and ``shared/corpus/mime/README.md`` for the
failure modes.

All returned strings are free of NUL characters and lone surrogates (safe for PostgreSQL text).
"""

from __future__ import annotations

import binascii
import email
import email.message
import email.policy
import email.utils
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any

from mailsync.engine import mime_charsets
from mailsync.engine.mime_tnef import TnefError
from mailsync.engine.mime_tnef import unpack as unpack_tnef

__all__ = [
    "ParsedAddress",
    "ParsedAttachment",
    "ParsedEnvelope",
    "ParsedMessage",
    "parse_envelope",
    "parse_message",
    "search_text",
]

MAX_MULTIPART_DEPTH = 30
MAX_MESSAGE_DEPTH = 3  # message/rfc822 recursion (body text only)
MAX_PARTS = 2000


@dataclass(frozen=True)
class ParsedAddress:
    name: str  # decoded display name, "" if none
    address: str  # "user@host", "" if unparseable

    def display(self) -> str:
        if self.name and self.address:
            return f"{self.name} <{self.address}>"
        return self.address or self.name


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str  # decoded, sanitized; generated ("attachment-2.bin") when none
    content_type: str  # lowercased "type/subtype"
    payload: bytes
    content_id: str  # without <>, "" if none
    inline: bool  # Content-Disposition inline, or referenced as cid: from the HTML


@dataclass(frozen=True)
class ParsedMessage:
    subject: str
    sender: ParsedAddress | None
    to: tuple[ParsedAddress, ...]
    cc: tuple[ParsedAddress, ...]
    reply_to: tuple[ParsedAddress, ...]
    date: datetime | None
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
    text: str
    html: str
    attachments: tuple[ParsedAttachment, ...]
    notices: tuple[str, ...]
    shown_raw: bool


@dataclass(frozen=True)
class ParsedEnvelope:
    """What the inbox list needs, read from the header block alone (list first, text later)."""

    subject: str
    sender: ParsedAddress | None
    to: tuple[ParsedAddress, ...]
    cc: tuple[ParsedAddress, ...]
    date: datetime | None
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]


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
    text = _clean(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    text = _HEADER_CONTROLS.sub("", text.replace("\t", " "))
    return text.strip()


def _clean_body(text: str) -> str:
    return _clean(text).replace("\r\n", "\n").replace("\r", "\n")


_UTF7_RUN = re.compile(r"\+[A-Za-z0-9/+]{2,}-")


def _unsurrogate(value: str, hint: str | None = None) -> str:
    """Decode raw header text: 8-bit bytes arrive as surrogate escapes; ISO-2022-JP escapes and
    Outlook's raw UTF-7 headers (when the body is UTF-7) arrive as ASCII."""
    if _SURROGATES.search(value):
        try:
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return _SURROGATES.sub("\ufffd", value)
        return mime_charsets.decode_8bit(data, hint)
    if "\x1b" in value and ("\x1b$" in value or "\x1b(" in value):
        decoded = mime_charsets.decode(value.encode("latin-1", "replace"), "iso-2022-jp")
        if not decoded.problem:
            return decoded.text
    if hint and mime_charsets.resolve(hint) == "utf-7" and _UTF7_RUN.search(value):
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
    if _plain_ascii(raw):
        try:
            value = msg.get(name)
            text = str(value) if value is not None else ""
            if _looks_clean(text):
                return _clean_header(text)
        except Exception:  # stdlib header parser bugs
            pass
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
    result: list[ParsedAddress] = []
    try:
        if sum(len(r) for r in raws) > _POLICY_MAX * 4:
            raise ValueError("too long for getaddresses")
        pairs = email.utils.getaddresses(raws)
    except Exception:  # RecursionError on huge headers, among others
        pairs = [_split_address(chunk) for raw in raws for chunk in _split_list(raw)]
    for display, addr in pairs:
        parsed = _address_from_parts(
            decode_words(display, hint=hint), decode_words(addr, hint=hint)
        )
        if parsed is not None:
            result.append(parsed)
    return tuple(result)


_ANGLE_ADDR = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
_BARE_ADDR = re.compile(r"[^\s<>\"(),;:]+@[^\s<>\"(),;:]+")


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
    return [c for c in (c.strip() for c in chunks) if c][:500]


def _split_address(chunk: str) -> tuple[str, str]:
    chunk = chunk[:2000]  # bounds the regex work on hostile headers
    match = _ANGLE_ADDR.search(chunk) or _BARE_ADDR.search(chunk)
    if not match:
        return ("", chunk[:200])
    addr = match.group(1) if match.re is _ANGLE_ADDR else match.group(0)
    name = (chunk[: match.start()] + chunk[match.end() :]).strip().strip('"').strip()
    return (name[:500], addr)


def _date(msg: email.message.Message) -> datetime | None:
    raw = _raw_header(msg, "date")
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
    raw = _raw_header(msg, "message-id")
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


def _content_type(view: email.message.Message) -> str:
    try:
        ctype = view.get_content_type().lower()
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


def _extension(content_type: str) -> str:
    special = {
        "message/rfc822": ".eml",
        "text/plain": ".txt",
        "text/html": ".html",
        "text/calendar": ".ics",
        "image/jpeg": ".jpg",
        "application/ms-tnef": ".dat",
        "message/delivery-status": ".txt",
        "message/disposition-notification": ".txt",
    }
    if content_type in special:
        return special[content_type]
    try:
        ext = mimetypes.guess_extension(content_type, strict=False)
    except Exception:
        ext = None
    return ext or ".bin"


# --------------------------------------------------------------------------- HTML to text


class _TextExtractor(HTMLParser):
    _BLOCK = frozenset(
        [
            "p",
            "div",
            "br",
            "tr",
            "li",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "table",
            "blockquote",
            "pre",
            "hr",
            "dt",
            "dd",
            "ul",
            "ol",
            "section",
        ]
    )
    _SKIP = frozenset(("script", "style", "head", "title", "template", "xml"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip_depth += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(html[:5_000_000])
        parser.close()
    except Exception:
        pass
    text = "".join(parser.parts).replace("\xa0", " ")
    lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --------------------------------------------------------------------------- uuencode

_UU_BEGIN = re.compile(r"^begin(?:-base64)? [0-7]{3,4} (.+)$", re.M)


def _extract_uuencode(text: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Pull `begin 644 name ... end` blocks out of a text body."""
    files: list[tuple[str, bytes]] = []
    if "begin " not in text:
        return text, files
    pieces: list[str] = []
    pos = 0
    for match in _UU_BEGIN.finditer(text):
        if match.start() < pos:
            continue
        end = text.find("\nend", match.end())
        if end < 0:
            break
        data = bytearray()
        for line in text[match.end() : end].strip("\r\n").splitlines():
            if not line.strip() or line.strip() == "`":
                continue
            try:
                data.extend(binascii.a2b_uu(line.encode("latin-1", "replace")))
            except binascii.Error:
                try:  # some encoders pad badly; compute the length from the first char
                    nbytes = (((ord(line[0]) - 32) & 63) * 4 + 5) // 3
                    data.extend(binascii.a2b_uu(line[:nbytes].encode("latin-1", "replace")))
                except (binascii.Error, IndexError, ValueError):
                    break
        files.append((match.group(1).strip(), bytes(data)))
        pieces.append(text[pos : match.start()])
        after = text.find("\n", end + 4)
        pos = len(text) if after < 0 else after + 1
    pieces.append(text[pos:])
    return "".join(pieces), files


# --------------------------------------------------------------------------- tree walk


@dataclass
class _Shared:
    attachments: list[ParsedAttachment] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    raw_fallback: list[tuple[str, str, str]] = field(default_factory=list)  # where, type, text
    locations: dict[int, str] = field(default_factory=dict)  # attachment index -> Content-Location
    parts_seen: int = 0


@dataclass
class _Bodies:
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    inner_message: _Bodies | None = None  # first attached message's bodies


def _payload_bytes(part: email.message.Message, number: str, shared: _Shared) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    try:
        raw = part.get_payload()
    except Exception:
        return b""
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    if isinstance(raw, list):  # message/delivery-status, message/partial, ...: header blocks
        return b"".join(_serialize(m) for m in raw if isinstance(m, email.message.Message))
    shared.notices.append(f"Part {number or '1'} could not be decoded.")
    return b""


def _serialize(msg: email.message.Message) -> bytes:
    try:
        return msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))
    except Exception:
        pass
    try:
        return msg.as_string(policy=email.policy.compat32).encode("utf-8", "surrogateescape")
    except Exception:
        return b""


_DELIMITER = re.compile(r"^--([^\r\n]{1,200}?)[ \t]*\r?$", re.M)
_HEADERISH = re.compile(r"[ \t]*(\r?\n|[A-Za-z0-9-]{1,60}[ \t]*:)")


def _recover_parts(raw: str, view: email.message.Message) -> list[email.message.Message] | None:
    """Re-split a multipart body whose declared boundary was not found (unquoted boundaries with
    '=', a wrong boundary parameter, ...): try the declared one, then delimiter-looking lines."""
    if "--" not in raw:
        return None
    candidates: list[str] = []
    try:
        declared = view.get_boundary()
    except Exception:
        declared = None
    if declared:
        candidates.append(str(declared).strip())
    for match in _DELIMITER.finditer(raw[:200_000]):
        boundary = match.group(1).rstrip()
        boundary = boundary[:-2] if boundary.endswith("--") else boundary
        if boundary and boundary not in candidates:
            candidates.append(boundary)
        if len(candidates) >= 6:
            break
    for boundary in candidates:
        if '"' in boundary or "\\" in boundary or not boundary.strip():
            continue
        start = raw.find("--" + boundary)
        if start < 0:
            continue
        line_end = raw.find("\n", start)
        if line_end < 0 or not _HEADERISH.match(raw, line_end + 1):
            continue
        head = f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        try:
            data = (head + raw).encode("utf-8", "surrogateescape")
            sub = email.message_from_bytes(data, policy=email.policy.default)
            children = sub.get_payload()
        except Exception:
            continue
        if isinstance(children, list) and children:
            return [c for c in children if isinstance(c, email.message.Message)]
    return None


def _charset_hint(msg: email.message.Message) -> str | None:
    """The first declared body charset: used to decode raw 8-bit (and UTF-7) headers."""
    try:
        for index, part in enumerate(msg.walk()):
            if index > 50:
                break
            raw = _raw_headers_s(part, "content-type")
            if raw:
                view = email.message.Message()
                view["content-type"] = _SURROGATES.sub("", raw[0])
                label = view.get_param("charset")
                if isinstance(label, str) and mime_charsets.resolve(label) not in (
                    None,
                    "us-ascii",
                ):
                    return label
    except Exception:
        return None
    return None


class _Walker:
    def __init__(self, shared: _Shared, message_depth: int = 0, hint: str | None = None) -> None:
        self.shared = shared
        self.message_depth = message_depth
        self.hint = hint

    def add_attachment(
        self,
        filename: str,
        content_type: str,
        payload: bytes,
        number: str,
        *,
        content_id: str = "",
        inline: bool = False,
        location: str = "",
        default: str = "",
    ) -> None:
        name = sanitize_filename(filename)
        if not name:
            name = default or f"attachment-{number or '1'}{_extension(content_type)}"
        self.shared.attachments.append(
            ParsedAttachment(
                filename=name,
                content_type=content_type,
                payload=payload,
                content_id=content_id,
                inline=inline,
            )
        )
        if location:
            self.shared.locations[len(self.shared.attachments) - 1] = location

    def text_of(self, part: email.message.Message, view: email.message.Message, number: str) -> str:
        data = _payload_bytes(part, number, self.shared)
        label = _param(view, "charset", "content-type")
        if not label and _content_type(view) == "text/html" and not data.isascii():
            sniff = re.search(
                rb"<meta[^>]{0,200}charset=[\"']?([A-Za-z0-9_\-:.]+)", data[:4096], re.I
            )
            if sniff:
                label = sniff.group(1).decode("ascii", "replace")
        decoded = mime_charsets.decode(data, label)
        if decoded.problem:
            self.shared.notices.append(f"Part {number or '1'} {decoded.problem}")
        return _clean_body(decoded.text)

    def walk(self, part: email.message.Message, bodies: _Bodies, number: str, depth: int) -> None:
        self.shared.parts_seen += 1
        if self.shared.parts_seen > MAX_PARTS:
            if self.shared.parts_seen == MAX_PARTS + 1:
                self.shared.notices.append(f"Only the first {MAX_PARTS} parts were read.")
            return
        view = _param_view(part, self.hint)
        ctype = _content_type(view)
        maintype = ctype.split("/", 1)[0]
        if maintype == "multipart":
            self.walk_multipart(part, view, ctype, bodies, number, depth)
        elif ctype == "message/rfc822" or ctype == "message/global":
            self.walk_message(part, view, bodies, number, depth)
        else:
            self.walk_leaf(part, view, ctype, bodies, number, depth)

    def walk_multipart(
        self,
        part: email.message.Message,
        view: email.message.Message,
        ctype: str,
        bodies: _Bodies,
        number: str,
        depth: int,
    ) -> None:
        try:
            payload: Any = part.get_payload()
        except Exception:
            payload = None
        where = "The message" if not number and depth == 0 else f"Part {number}"
        if not isinstance(payload, list):
            raw = payload if isinstance(payload, str) else ""
            recovered = _recover_parts(raw, view)
            if recovered is None:
                text = _clean_body(_unsurrogate(raw, self.hint)).strip()
                self.shared.raw_fallback.append((where, ctype, text))
                return
            self.shared.notices.append(
                f"{where} has a malformed part boundary; its parts were recovered."
            )
            payload = recovered
        if depth >= MAX_MULTIPART_DEPTH:
            self.shared.notices.append(
                f"Part {number or '1'} is nested too deeply; its contents were skipped."
            )
            return
        prefix = f"{number}." if number else ""
        if ctype == "multipart/alternative":
            options: list[_Bodies] = []
            for index, child in enumerate(payload, 1):
                if isinstance(child, email.message.Message):
                    sub = _Bodies()
                    self.walk(child, sub, f"{prefix}{index}", depth + 1)
                    options.append(sub)
            with_text = [o for o in options if o.texts]
            with_html = [o for o in options if o.htmls]
            if with_text:
                bodies.texts.extend(with_text[0].texts)
            if with_html:
                bodies.htmls.extend(with_html[-1].htmls)
            for option in options:
                if option.inner_message and bodies.inner_message is None:
                    bodies.inner_message = option.inner_message
            return
        for index, child in enumerate(payload, 1):
            if isinstance(child, email.message.Message):
                self.walk(child, bodies, f"{prefix}{index}", depth + 1)

    def walk_message(
        self,
        part: email.message.Message,
        view: email.message.Message,
        bodies: _Bodies,
        number: str,
        depth: int,
    ) -> None:
        try:
            payload: Any = part.get_payload()
        except Exception:
            payload = None
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, email.message.Message):
            data = _payload_bytes(part, number, self.shared)
            self.add_attachment(
                "", "message/rfc822", data, number, default=f"attached-message-{number}.eml"
            )
            return
        data = _serialize(inner)
        filename = _param(view, "filename", "content-disposition") or _param(
            view, "name", "content-type"
        )
        if not filename:
            subject = _unstructured(inner, "subject", [], self.hint)
            filename = f"{subject[:80]}.eml" if sanitize_filename(subject) else ""
        if filename and not filename.lower().endswith((".eml", ".msg")):
            filename += ".eml"
        self.add_attachment(
            filename,
            "message/rfc822",
            data,
            number,
            default=f"attached-message-{number or '1'}.eml",
        )
        if self.message_depth < MAX_MESSAGE_DEPTH and bodies.inner_message is None:
            # Body text only, used when the attached message is the sole content.
            sub_walker = _Walker(_Shared(), self.message_depth + 1, self.hint)
            sub = _Bodies()
            sub_walker.walk(inner, sub, number, depth + 1)
            if not sub.texts and not sub.htmls and sub_walker.shared.raw_fallback:
                sub.texts.extend(t for _, _, t in sub_walker.shared.raw_fallback if t)
            if not sub.texts and not sub.htmls and sub.inner_message is not None:
                sub = sub.inner_message
            bodies.inner_message = sub

    def walk_leaf(
        self,
        part: email.message.Message,
        view: email.message.Message,
        ctype: str,
        bodies: _Bodies,
        number: str,
        depth: int,
    ) -> None:
        disposition = _disposition(view)
        filename = _param(view, "filename", "content-disposition") or _param(
            view, "name", "content-type"
        )
        content_id = _msgids(_raw_header(part, "content-id"))
        cid = content_id[0] if content_id else _clean_header(_raw_header(part, "content-id") or "")
        cid = cid.strip("<>")
        location = _clean_header(_raw_header(part, "content-location") or "")
        is_root = depth == 0
        if ctype in ("text/plain", "text/html") and (
            disposition != "attachment" and (is_root or not filename or disposition == "inline")
        ):
            text = self.text_of(part, view, number)
            if ctype == "text/html":
                bodies.htmls.append(text)
                return
            text, uufiles = _extract_uuencode(text)
            bodies.texts.append(text)
            for uname, udata in uufiles:
                self.add_attachment(uname, _guess_type(uname), udata, number)
            return
        if ctype == "application/ms-tnef" or filename.lower() in ("winmail.dat", "win.dat"):
            data = _payload_bytes(part, number, self.shared)
            if self.unpack_tnef(data, bodies, number):
                return
            self.add_attachment(filename or "winmail.dat", ctype, data, number)
            return
        data = _payload_bytes(part, number, self.shared)
        default = "invite.ics" if ctype == "text/calendar" else ""
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            default = "delivery-status.txt"
        elif ctype == "message/disposition-notification":
            default = "disposition-notification.txt"
        self.add_attachment(
            filename,
            ctype,
            data,
            number,
            content_id=cid,
            inline=disposition == "inline",
            location=location,
            default=default,
        )

    def unpack_tnef(self, data: bytes, bodies: _Bodies, number: str) -> bool:
        try:
            content = unpack_tnef(data)
        except TnefError:
            self.shared.notices.append(
                f"Part {number or '1'} is a winmail.dat (TNEF) file that could not be unpacked; "
                "it is kept as an attachment."
            )
            return False
        except Exception:
            self.shared.notices.append(
                f"Part {number or '1'} is a winmail.dat (TNEF) file that could not be unpacked; "
                "it is kept as an attachment."
            )
            return False
        if not content.files and not content.text and not content.html:
            return False
        for index, item in enumerate(content.files, 1):
            self.add_attachment(
                item.filename, _guess_type(item.filename), item.payload, f"{number}.{index}"
            )
        if content.text:
            bodies.texts.append(_clean_body(content.text))
        if content.html:
            bodies.htmls.append(_clean_body(content.html))
        return True


def _guess_type(filename: str) -> str:
    try:
        guessed, _ = mimetypes.guess_type(filename, strict=False)
    except Exception:
        guessed = None
    return (guessed or "application/octet-stream").lower()


_CID_REF = re.compile(r"""cid:([^"'\s)>]+)""", re.I)


def _finish_attachments(shared: _Shared, html: str) -> tuple[ParsedAttachment, ...]:
    """Mark attachments referenced from the HTML (cid: or Content-Location) as inline."""
    if not html:
        return tuple(shared.attachments)
    from urllib.parse import unquote

    refs = {unquote(m.group(1)).strip("<>").lower() for m in _CID_REF.finditer(html)}
    result: list[ParsedAttachment] = []
    for index, att in enumerate(shared.attachments):
        content_id = att.content_id
        referenced = bool(content_id) and content_id.lower() in refs
        location = shared.locations.get(index, "")
        if not content_id and location and _mentions(html, location):
            # MHTML: no Content-ID, referenced by URL. Expose the location as the content_id so
            # callers can map it (htmlsafe looks relative/URL img srcs up in cid_urls as well).
            content_id, referenced = location, True
        if (referenced and not att.inline) or content_id != att.content_id:
            att = ParsedAttachment(att.filename, att.content_type, att.payload, content_id, True)
        result.append(att)
    return tuple(result)


def _mentions(html: str, location: str) -> bool:
    return f'"{location}"' in html or f"'{location}'" in html or f"={location}" in html


# --------------------------------------------------------------------------- entry points


def _fallback(raw: bytes, reason: str) -> ParsedMessage:
    text = _clean_body(mime_charsets.decode_8bit(raw[:10_000_000]))
    return ParsedMessage(
        subject="",
        sender=None,
        to=(),
        cc=(),
        reply_to=(),
        date=None,
        message_id="",
        in_reply_to="",
        references=(),
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


def _parse(raw: bytes) -> ParsedMessage:
    notices: list[str] = []
    if _has_huge_mime_header(raw):
        # compat32 splits parameters simply (linear time); every header is then decoded by our own
        # fallback path, since compat32 returns plain strings.
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        notices.append("The message has an oversized MIME header; it was read in a simpler mode.")
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
    return ParsedMessage(
        subject=subject,
        sender=senders[0] if senders else None,
        to=_addresses(msg, "to", hint),
        cc=_addresses(msg, "cc", hint),
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
    try:
        return _parse(data)
    except RecursionError:
        return _fallback(data, "it is nested too deeply")
    except Exception as exc:  # the contract is: never raise
        try:
            return _fallback(data, type(exc).__name__)
        except Exception:
            return _fallback(b"", type(exc).__name__)


_HEADER_END = re.compile(rb"\r?\n\r?\n")
MAX_HEADER_BLOCK = 1_000_000


def parse_envelope(raw: bytes | bytearray) -> ParsedEnvelope:
    """Envelope fields from the header block only, a fraction of a full parse. Never raises;
    the full parse (``parse_message``) later refines them with the body's charset hint."""
    try:
        data = bytes(raw[:MAX_HEADER_BLOCK])  # never a copy of a large body
        end = _HEADER_END.search(data)
        block = data[: end.end()] if end else data
        # compat32 only splits the header block (the header registry of policy.default costs
        # ~0.4 ms per header); every value then goes through our own decoder.
        msg = email.message_from_bytes(block, policy=email.policy.compat32)
        hint = _charset_hint(msg)
        senders = _addresses(msg, "from", hint) or _addresses(msg, "sender", hint)
        in_reply_to = _msgids(_raw_header(msg, "in-reply-to"))
        return ParsedEnvelope(
            subject=_unstructured(msg, "subject", [], hint),
            sender=senders[0] if senders else None,
            to=_addresses(msg, "to", hint),
            cc=_addresses(msg, "cc", hint),
            date=_date(msg),
            message_id=_message_id(msg),
            in_reply_to=in_reply_to[0] if in_reply_to else "",
            references=_msgids(" ".join(_raw_headers(msg, "references"))),
        )
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
