"""Large messages read with their big base64 bodies cut out first (mime_large) read exactly
as the ordinary parse reads them; where the cutting cannot be undone, the ordinary parse
is what runs."""

from __future__ import annotations

import base64
import os
from email.message import EmailMessage

import pytest

from mailsync.engine import mime, mime_large
from mailsync.engine.mime import _parse_or_fallback, parse_message


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same code paths with kilobytes instead of megabytes, to keep the tests quick."""
    monkeypatch.setattr(mime, "LARGE_PARSE", 64 * 1024)
    monkeypatch.setattr(mime_large, "LARGE_RUN", 16 * 1024)


def with_attachments(*parts: tuple[bytes, str, str]) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Ann <ann@example.org>"
    message["To"] = "support@example.test"
    message["Subject"] = "Logs attached"
    message.set_content("See the attachments.")
    message.add_alternative('<p>Screenshot: <img src="cid:shot@x"></p>', subtype="html")
    for payload, filename, ctype in parts:
        maintype, subtype = ctype.split("/")
        message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return message


def test_attachments_come_back_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = bytes(
        with_attachments(
            (os.urandom(300_000), "dump.bin", "application/octet-stream"),
            (os.urandom(100_000), "photo.jpg", "image/jpeg"),
            (b"small", "note.txt", "text/plain"),
        )
    )
    calls: list[int] = []
    real = mime._parse_or_fallback

    def counting(data: bytes) -> mime.ParsedMessage:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(mime, "_parse_or_fallback", counting)

    parsed = parse_message(raw)

    assert parsed == _parse_or_fallback(raw)
    assert calls and max(calls) < len(raw) // 10  # the parser saw the small message only
    assert [len(a.payload) for a in parsed.attachments] == [300_000, 100_000, 5]


def test_an_inline_image_referenced_from_html_stays_inline() -> None:
    message = with_attachments()
    html_part = message.get_body(("html",))  # in the multipart/alternative
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(
        os.urandom(200_000), maintype="image", subtype="png", cid="<shot@x>", filename="s.png"
    )
    raw = bytes(message)
    parsed = parse_message(raw)
    assert parsed == _parse_or_fallback(raw)
    assert [(a.content_id, a.inline) for a in parsed.attachments] == [("shot@x", True)]


def test_a_huge_base64_text_body_is_read_the_ordinary_way() -> None:
    text = "line of a long log\n" * 20_000
    raw = (
        b"From: a@example.org\r\nSubject: log\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    )
    parsed = parse_message(raw)
    assert parsed == _parse_or_fallback(raw)
    assert parsed.text.startswith("line of a long log")
    assert "teaminbox large part" not in parsed.text


def test_an_attached_message_with_a_large_attachment() -> None:
    inner = with_attachments((os.urandom(150_000), "inner.bin", "application/octet-stream"))
    outer = EmailMessage()
    outer["From"] = "b@example.org"
    outer["Subject"] = "Fwd"
    outer.set_content("forwarded")
    outer.add_attachment(inner)
    raw = bytes(outer)
    assert parse_message(raw) == _parse_or_fallback(raw)


def test_broken_base64_is_left_to_the_ordinary_parser() -> None:
    body = base64.encodebytes(os.urandom(120_000))
    broken = body[:5000] + b"!!!!\n" + body[5000:]
    raw = (
        b"From: a@example.org\nSubject: x\nMIME-Version: 1.0\n"
        b'Content-Type: application/octet-stream; name="x.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n" + broken
    )
    assert parse_message(raw) == _parse_or_fallback(raw)
