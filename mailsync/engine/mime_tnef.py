"""TNEF (application/ms-tnef, winmail.dat) unpacking for :mod:`mailsync.engine.mime`.

Pure Python, no Django. :func:`unpack` raises :class:`TnefError` on any failure; the caller then
keeps the original winmail.dat as an attachment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailsync.engine.mime_charsets import decode as decode_charset
from mailsync.engine.mime_charsets import decode_8bit


class TnefError(Exception):
    pass


@dataclass(frozen=True)
class TnefFile:
    filename: str  # as found in the TNEF stream, not yet sanitized
    payload: bytes


@dataclass(frozen=True)
class TnefContent:
    files: tuple[TnefFile, ...]
    text: str  # plain body, or text derived from the RTF body; "" if none
    html: str  # HTML body; "" if none


def _to_str(value: object) -> str:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, bytes):
        return decode_8bit(value.rstrip(b"\x00")).replace("\x00", "")
    if isinstance(value, list) and value:
        return _to_str(value[0])
    return ""


def _to_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return value[0]
    return b""


def unpack(data: bytes) -> TnefContent:
    try:
        from tnefparse.tnef import TNEF  # untyped third-party module

        tnef = TNEF(data, do_checksum=False)
    except Exception as exc:  # tnefparse raises many kinds of errors
        raise TnefError(str(exc)) from exc
    files: list[TnefFile] = []
    for att in getattr(tnef, "attachments", []) or []:
        try:
            name = _to_str(att.long_filename()) or _to_str(getattr(att, "_name", b""))
        except Exception:
            name = ""
        payload = _to_bytes(getattr(att, "data", b""))
        if not payload and not name:
            continue
        files.append(TnefFile(name, payload))
    text = _to_str(getattr(tnef, "body", None)).strip()
    html = _to_str(getattr(tnef, "htmlbody", None))
    if not text and not html:
        try:
            rtf = tnef.rtfbody
        except Exception:  # compressed_rtf raises on corrupt data
            rtf = None
        if isinstance(rtf, bytes) and rtf:
            text = rtf_to_text(rtf).strip()
    return TnefContent(tuple(files), text, html)


# --- a deliberately small RTF-to-text converter (enough for Outlook message bodies) -------------

_RTF_TOKEN = re.compile(
    rb"\\([a-zA-Z]{1,32})(-?\d{1,10})? ?|\\'([0-9a-fA-F]{2})|\\(.)|([{}])|[\r\n]+|([^\\{}\r\n]+)",
    re.S,
)
_SKIP_DESTINATIONS = frozenset(
    {
        "fonttbl",
        "colortbl",
        "stylesheet",
        "info",
        "pict",
        "object",
        "header",
        "footer",
        "themedata",
        "datastore",
        "xmlnstbl",
        "listtable",
        "listoverridetable",
        "rsidtbl",
        "generator",
        "latentstyles",
        "filetbl",
        "revtbl",
        "fldinst",
    }
)
_MAX_RTF = 4 * 1024 * 1024


def rtf_to_text(rtf: bytes) -> str:
    """Visible text of an RTF document; HTML-encapsulated RTF yields the HTML's text."""
    out: list[str] = []
    pending: bytearray = bytearray()
    codepage = "cp1252"
    skip = False
    htmlrtf = False
    uc = 1
    to_drop = 0
    stack: list[tuple[bool, int]] = []
    star = False

    def flush() -> None:
        if pending:
            out.append(decode_charset(bytes(pending), codepage).text)
            pending.clear()

    for m in _RTF_TOKEN.finditer(rtf[:_MAX_RTF]):
        word, arg, hexbyte, sym, brace, text = m.groups()
        if brace == b"{":
            stack.append((skip, uc))
            star = False
            continue
        if brace == b"}":
            flush()
            if stack:
                skip, uc = stack.pop()
            continue
        if to_drop and (hexbyte or text):
            if text:
                drop = min(to_drop, len(text))
                to_drop -= drop
                text = text[drop:]
                if not text:
                    continue
            else:
                to_drop -= 1
                continue
        if word is not None:
            name = word.decode("ascii").lower()
            if name in _SKIP_DESTINATIONS or (star and name not in ("htmltag",)):
                skip = True
            star = False
            if name == "ansicpg" and arg:
                codepage = f"cp{int(arg)}"
            elif name == "htmlrtf":
                htmlrtf = arg != b"0"
            elif name == "uc" and arg:
                uc = max(0, min(int(arg), 4))
            elif skip or htmlrtf:
                continue
            elif name in ("par", "line", "row"):
                flush()
                out.append("\n")
            elif name in ("tab", "cell"):
                flush()
                out.append("\t")
            elif name == "u" and arg:
                flush()
                code = int(arg) % 65536
                out.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "\ufffd")
                to_drop = uc
            continue
        if sym is not None:
            if sym == b"*":
                star = True
                skip = True
            elif not (skip or htmlrtf) and sym in (b"\\", b"{", b"}"):
                pending.extend(sym)
            elif not (skip or htmlrtf) and sym == b"~":
                pending.extend(b"\xa0")
            continue
        if skip or htmlrtf:
            continue
        if hexbyte is not None:
            pending.append(int(hexbyte, 16))
        elif text:
            pending.extend(text)
    flush()
    joined = "".join(out).replace("\x00", "")
    return re.sub(r"\n{3,}", "\n\n", joined)
