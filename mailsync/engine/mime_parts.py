"""The MIME part walker for :mod:`mailsync.engine.mime`: bodies, attachments, TNEF (winmail.dat),
calendar and delivery-status parts, attached messages (message/rfc822), uuencoded blocks, recovery
of broken multipart boundaries, and :func:`html_to_text`.

Split from the header code along the tree/leaf seam: this module decides what each part *is* (body
text, HTML, attachment, inline image) and how its payload is decoded; header and parameter values
come from :mod:`mailsync.engine.mime_headers`. :mod:`mailsync.engine.mime` runs the walker and
assembles the :class:`~mailsync.engine.mime_types.ParsedMessage`.

Underscore names are private to the ``mailsync.engine.mime*`` modules, which share them; code
elsewhere uses :mod:`mailsync.engine.mime`.
"""

from __future__ import annotations

import binascii
import email
import email.message
import email.policy
import mimetypes
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from mailsync.engine import mime_charsets
from mailsync.engine.mime_headers import (
    _clean_body,
    _clean_header,
    _content_type,
    _disposition,
    _msgids,
    _param,
    _param_view,
    _raw_header,
    _unstructured,
    _unsurrogate,
    sanitize_filename,
)
from mailsync.engine.mime_tnef import TnefError
from mailsync.engine.mime_tnef import unpack as unpack_tnef
from mailsync.engine.mime_types import ParsedAttachment

__all__ = ["MAX_MESSAGE_DEPTH", "MAX_MULTIPART_DEPTH", "MAX_PARTS", "html_to_text"]

MAX_MULTIPART_DEPTH = 30
MAX_MESSAGE_DEPTH = 3  # message/rfc822 recursion (body text only)
MAX_PARTS = 2000


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
