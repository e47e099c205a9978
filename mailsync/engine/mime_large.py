"""Parsing a message of tens of megabytes without tens of copies of it.

The stdlib parser decodes the whole message to ``str``, keeps it as a list of lines, joins
each part's lines again and then decodes the base64: a 60 MB message cost 624 MB of memory to
extract, enough to get a worker killed. Here the large base64 bodies (attachments, nearly
always) are cut out of the message first and each is decoded once, straight from the raw
bytes; the remaining small message -- headers, text, structure, with a short marker where
each large body was -- goes through the usual parser, and the markers in its attachments
are then swapped for the decoded bytes.

When a marker does not come back as exactly one attachment's payload (a huge base64 text
body, a forwarded message kept whole, a winmail.dat that must be unpacked...), the
message is parsed the ordinary way instead: this path only ever saves memory, it never
changes what a message reads as.
"""

from __future__ import annotations

import binascii
import dataclasses
import re
from collections.abc import Callable

from mailsync.engine.mime_types import ParsedMessage

# Messages above this size take the cutting path; below it the ordinary parse is cheap.
LARGE_PARSE = 4 * 1024 * 1024
# A base64 run worth cutting out: smaller ones stay where they are.
LARGE_RUN = 256 * 1024

# A run of base64 lines (each at least 40 characters, as every encoder writes them) ending
# with the shorter last line and its padding. Possessive: linear on any input.
_BASE64_RUN = re.compile(
    rb"(?:(?<=\n)|\A)(?:[A-Za-z0-9+/]{40,}+={0,2}+\r?+\n)++(?:[A-Za-z0-9+/]++={0,2}+\r?+\n)?+"
)


def _marker(number: int) -> bytes:
    return b"\x00teaminbox large part %d\x00" % number


def parse_large(raw: bytes, parse: Callable[[bytes], ParsedMessage]) -> ParsedMessage:
    """``parse(raw)``, with large base64 bodies decoded once and out of the parser's way."""
    pieces: list[bytes | memoryview] = []
    decoded: dict[bytes, bytes] = {}
    view = memoryview(raw)
    last = 0
    for run in _BASE64_RUN.finditer(raw):
        if run.end() - run.start() < LARGE_RUN:
            continue
        try:
            payload = binascii.a2b_base64(view[run.start() : run.end()])
        except binascii.Error:
            continue  # broken base64: the ordinary parser's recovery decides
        marker = _marker(len(decoded))
        decoded[marker] = payload
        line_end = b"\r\n" if raw[run.end() - 2 : run.end()] == b"\r\n" else b"\n"
        pieces += [view[last : run.start()], binascii.b2a_base64(marker, newline=False), line_end]
        last = run.end()
    if not decoded:
        return parse(raw)
    pieces.append(view[last:])
    small = b"".join(pieces)
    del pieces, view
    parsed = parse(small)
    attachments = []
    found = 0
    for attachment in parsed.attachments:
        original = decoded.get(attachment.payload)
        if original is not None:
            attachment = dataclasses.replace(attachment, payload=original)
            found += 1
        attachments.append(attachment)
    if found != len(decoded) or any(m in parsed.text or m in parsed.html for m in _texts(decoded)):
        del parsed, attachments, decoded
        return parse(raw)  # a marker landed somewhere else: read it the ordinary way
    return dataclasses.replace(parsed, attachments=tuple(attachments))


def _texts(decoded: dict[bytes, bytes]) -> list[str]:
    return [marker.strip(b"\x00").decode() for marker in decoded]
