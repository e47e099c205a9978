"""A deterministic, real-looking mail corpus for the sync benchmark.

`generate(count, seed)` yields ``count`` RFC 5322 messages (CRLF line endings), oldest
first, always the same bytes for the same arguments. What it aims to look like: a support
inbox two years deep --

* a few hundred correspondents, some with non-ASCII names (RFC 2047 encoded words), a few
  mailing lists and notification senders;
* threads: about a third of the messages answer an earlier one (``Re:`` subject,
  In-Reply-To, a growing References chain, the previous text quoted with ``>``);
* Received / DKIM-Signature / ARC-style headers of realistic length;
* text/plain (7bit, 8bit or quoted-printable), multipart/alternative with an HTML part,
  and about 10% multipart/mixed with one or two base64 attachments of incompressible
  (unique, random) bytes -- so content-addressed storage cannot deduplicate them;
* an average size of about 11 KB (see `describe`).

Pure standard library and fast (string assembly from a pre-built pool of sentences, C
codecs for base64 and quoted-printable): 100,000 messages take well under a minute.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

MAILBOX_ADDRESS = "support@example.test"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William "
    "Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew "
    "Lisa Anthony Betty Mark Sandra Paul Ashley Steven Kimberly Andrew Emily Kenneth "
    "Donna Joshua Michelle Kevin Carol Brian Amanda Ahmed Fatima Wei Yuki Priya Arjun "
    "Olga Ivan Sven Ingrid Pieter Anouk Luca Giulia Mateo Sofia Kwame Amara Tomasz "
    "Agnieszka"
)
_FIRST_INTL = ["Jörg", "Zoë", "François", "Łukasz", "Søren", "José", "Çağla", "Björn", "Ana María"]
_LAST = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson "
    "White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright "
    "Scott Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell "
    "Carter Okafor Tanaka Kowalski Jansen Rossi Novak Haddad Mensah Petrov Lindqvist "
    "Dubois"
)
_LAST_INTL = ["Müller", "Ødegaard", "Núñez", "Wójcik", "Strauß", "Gonçalves", "Éluard"]
_DOMAINS = _words(
    "gmail.com outlook.com yahoo.com icloud.com proton.me gmx.de web.de orange.fr "
    "acme-corp.com globex.io initech.net umbrella.co.uk hooli.xyz stark-industries.com "
    "wayne-enterprises.com tyrell.example soylent.example cyberdyne.example"
)
_MAILERS = (
    "Microsoft Outlook 16.0",
    "Apple Mail (2.3774.300.61.1.2)",
    "Mozilla Thunderbird 115.6.0",
    "Roundcube Webmail/1.6.5",
    "K-9 Mail for Android",
    "Evolution 3.46.4-2",
)
_LISTS = (
    ("Acme Status", "status@acme-corp.com", "[Acme Status]"),
    ("GitLab", "gitlab@globex.io", "Re: globex/app"),
    ("Billing", "invoices@initech.net", "Invoice"),
    ("Sentry", "noreply@hooli.xyz", "[hooli] Error:"),
    ("Product News", "news@stark-industries.com", "Product update:"),
)
_WORDS = _words(
    "account access order invoice refund payment delivery shipment tracking number "
    "password reset login error issue problem request ticket update status customer "
    "support team please thanks regards hello hi again attached screenshot file report "
    "week month yesterday today tomorrow morning afternoon urgent quickly soon later "
    "price plan subscription renewal cancel upgrade downgrade trial license seat user "
    "admin settings option feature bug crash slow page button email address phone call "
    "meeting schedule available confirm confirmed received sent missing wrong correct "
    "product service contract agreement terms policy warranty replacement repair return "
    "label package warehouse address billing charge card bank transfer receipt credit the "
    "a an and or but so because when while after before with without from into on at by "
    "for of to in is are was were be been have has had do does did can could would should "
    "will may might must not no yes we you they it this that these those our your their "
    "my his her its there here what which who how why where all any some more most less "
    "new old first last next same other each every both few many much"
)
_INTL_SENTENCES = (
    "Merci beaucoup pour votre réponse rapide, c'est très apprécié.",
    "Vielen Dank für die schnelle Rückmeldung - das Problem besteht weiterhin.",
    "Gracias por la ayuda, ¿podrían enviarme la factura corregida?",
    "Dziękuję, sprawdzę to jutro rano i dam znać.",
    "ありがとうございます。確認してご連絡いたします。",
    "Спасибо, всё работает как надо.",
    "Tack för hjälpen, vi hörs nästa vecka.",
)
_ATTACHMENTS = (
    ("application/pdf", "pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
    ("image/png", "png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ("image/jpeg", "jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "docx",
        b"PK\x03\x04\x14\x00\x06\x00",
    ),
    ("application/zip", "zip", b"PK\x03\x04\x14\x00\x00\x00"),
)
_ATTACHMENT_NAMES = (
    "invoice",
    "screenshot",
    "report",
    "contract",
    "logs",
    "photo",
    "Rechnung_März",
    "relevé",
)


def _encoded_word(text: str) -> str:
    """RFC 2047 ``=?utf-8?b?...?=`` if ``text`` is not ASCII."""
    if text.isascii():
        return text
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


_BASE64_LINE = re.compile(rb"(.{76})")


def _crlf_base64(data: bytes) -> bytes:
    """Base64 in 76-character lines, CRLF-terminated (one regex pass, no Python loop)."""
    encoded = _BASE64_LINE.sub(rb"\1\r\n", base64.b64encode(data))
    return encoded if encoded.endswith(b"\n") else encoded + b"\r\n"


@dataclass
class _Person:
    name: str
    address: str

    def header(self) -> str:
        name = self.name
        if name.isascii():
            return f'"{name}" <{self.address}>' if "," in name else f"{name} <{self.address}>"
        return f"{_encoded_word(name)} <{self.address}>"


@dataclass
class _Thread:
    subject: str
    customer: _Person
    message_ids: list[str] = field(default_factory=list)
    last_text: str = ""


@dataclass
class CorpusStats:
    count: int = 0
    total_bytes: int = 0
    with_attachments: int = 0
    html: int = 0
    replies: int = 0

    @property
    def average_bytes(self) -> float:
        return self.total_bytes / self.count if self.count else 0.0


class _Generator:
    def __init__(self, count: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count = count
        rng = self.rng
        self.people: list[_Person] = []
        for _ in range(400):
            first = rng.choice(_FIRST_INTL) if rng.random() < 0.08 else rng.choice(_FIRST)
            last = rng.choice(_LAST_INTL) if rng.random() < 0.08 else rng.choice(_LAST)
            local = f"{first}.{last}".lower().replace(" ", "")
            local = local.encode("ascii", "ignore").decode() or "user"
            domain = rng.choice(_DOMAINS)
            self.people.append(_Person(f"{first} {last}", f"{local}{rng.randint(1, 99)}@{domain}"))
        self.agents = [
            _Person(name, f"{name.split()[0].lower()}@example.test")
            for name in ("Alice Agent", "Bob Builder", "Carol Support", "Dan Helpdesk")
        ]
        self.sentences = [self._sentence() for _ in range(3000)]
        self.threads: list[_Thread] = []
        # Two years of mail ending "now" (fixed, so the output does not depend on the clock).
        self.end = datetime(2025, 11, 1, 9, 0, tzinfo=UTC)
        self.span = timedelta(days=730)
        self.stats = CorpusStats()

    def _sentence(self) -> str:
        rng = self.rng
        if rng.random() < 0.04:
            return rng.choice(_INTL_SENTENCES)
        words = rng.choices(_WORDS, k=rng.randint(6, 22))
        text = " ".join(words)
        if rng.random() < 0.2:
            text += f" #{rng.randint(10000, 99999)}"
        return text[0].upper() + text[1:] + rng.choice((".", ".", ".", "?", "!"))

    def _paragraphs(self, low: int, high: int) -> list[str]:
        rng = self.rng
        return [
            " ".join(rng.choices(self.sentences, k=rng.randint(2, 6)))
            for _ in range(rng.randint(low, high))
        ]

    @staticmethod
    def _wrap(paragraph: str, width: int = 76) -> list[str]:
        lines = []
        while len(paragraph) > width:
            cut = paragraph.rfind(" ", 0, width + 1)
            if cut <= 0:
                cut = paragraph.find(" ", width)
                if cut < 0:
                    break
            lines.append(paragraph[:cut])
            paragraph = paragraph[cut + 1 :]
        lines.append(paragraph)
        return lines

    def message(self, index: int) -> bytes:
        rng = self.rng
        when = self.end - self.span * (1 - index / max(self.count, 1))
        when += timedelta(seconds=rng.randint(0, 600))
        offset = timezone(timedelta(hours=rng.choice((-8, -5, 0, 0, 1, 1, 2, 5.5, 9))))
        date = format_datetime(when.astimezone(offset))
        message_id = f"<{when:%Y%m%d%H%M%S}.{index:07d}.{rng.getrandbits(40):010x}@"
        kind = rng.random()
        thread: _Thread | None = None
        quoted = ""
        if kind < 0.12:  # notification / mailing list
            list_name, list_address, prefix = rng.choice(_LISTS)
            sender = _Person(list_name, list_address)
            subject = f"{prefix} {' '.join(rng.choices(_WORDS, k=rng.randint(3, 7)))}"
            recipient = _Person("Support", MAILBOX_ADDRESS)
            extra = [
                f"List-Id: <{list_address.split('@')[0]}.{list_address.split('@')[1]}>",
                f"List-Unsubscribe: <https://{list_address.split('@')[1]}/u/"
                f"{rng.getrandbits(64):016x}>, <mailto:unsubscribe@{list_address.split('@')[1]}>",
                "Precedence: bulk",
            ]
            paragraphs = self._paragraphs(3, 9)
            html_wanted = rng.random() < 0.9
        else:
            extra = []
            if self.threads and kind < 0.45:
                thread = rng.choice(self.threads[-300:])
                subject = thread.subject if thread.subject.startswith("Re: ") else ""
                subject = subject or f"Re: {thread.subject}"
                thread.subject = subject
                quoted = thread.last_text
                # Customer and agent take turns; the agent's replies are mail we sent, but a
                # shared INBOX also holds colleagues' replies and CCs.
                if rng.random() < 0.7:
                    sender, recipient = thread.customer, _Person("Support", MAILBOX_ADDRESS)
                else:
                    sender, recipient = rng.choice(self.agents), thread.customer
            else:
                customer = rng.choice(self.people)
                topic = " ".join(rng.choices(_WORDS, k=rng.randint(2, 6)))
                subject = topic[0].upper() + topic[1:]
                if rng.random() < 0.05:
                    subject += " - " + rng.choice(("dringend", "urgente", "très urgent", "至急"))
                thread = _Thread(subject=subject, customer=customer)
                self.threads.append(thread)
                sender, recipient = customer, _Person("Support", MAILBOX_ADDRESS)
            paragraphs = self._paragraphs(1, 7)
            html_wanted = rng.random() < 0.5
        message_id += sender.address.split("@")[1] + ">"

        headers = self._trace_headers(sender, when, date)
        headers += [
            f"Date: {date}",
            f"From: {sender.header()}",
            f"To: {recipient.header()}",
        ]
        if rng.random() < 0.15:
            ccs = rng.sample(self.people, rng.randint(1, 3))
            headers.append("Cc: " + ",\r\n\t".join(p.header() for p in ccs))
        headers.append(f"Subject: {_encoded_word(subject)}")
        headers.append(f"Message-ID: {message_id}")
        if thread is not None and thread.message_ids:
            headers.append(f"In-Reply-To: {thread.message_ids[-1]}")
            refs = thread.message_ids[-10:]
            headers.append("References: " + "\r\n\t".join(refs))
            self.stats.replies += 1
        headers += extra
        headers.append(f"X-Mailer: {rng.choice(_MAILERS)}")
        headers.append("MIME-Version: 1.0")

        greeting = f"Hello {recipient.name.split()[0]},"
        signoff = f"Best regards,\r\n{sender.name}"
        text_lines = [greeting, ""]
        for paragraph in paragraphs:
            text_lines += self._wrap(paragraph)
            text_lines.append("")
        text_lines += [signoff, ""]
        if quoted:
            text_lines.append(f"On {date}, {recipient.name} wrote:")
            text_lines += [f"> {line}" if line else ">" for line in quoted.split("\r\n")[:60]]
        text = "\r\n".join(text_lines) + "\r\n"
        if thread is not None:
            thread.message_ids.append(message_id)
            thread.last_text = "\r\n".join(text_lines[:40])

        text_part = self._text_part(text)
        body_part = text_part
        if html_wanted:
            self.stats.html += 1
            body_part = self._alternative(text_part, self._html(paragraphs, greeting, sender))
        attachments = []
        if rng.random() < 0.10:
            self.stats.with_attachments += 1
            attachments = [self._attachment() for _ in range(1 if rng.random() < 0.8 else 2)]
        if attachments:
            boundary = f"----=_Part_{index}_{rng.getrandbits(48):012x}"
            body = [f"--{boundary}\r\n".encode() + body_part]
            body += [f"--{boundary}\r\n".encode() + part for part in attachments]
            headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
            payload = b"This is a multi-part message in MIME format.\r\n\r\n"
            payload += b"\r\n".join(body) + f"\r\n--{boundary}--\r\n".encode()
        else:
            head, _, payload = body_part.partition(b"\r\n\r\n")
            headers += head.decode().split("\r\n")
        raw = ("\r\n".join(headers) + "\r\n\r\n").encode() + payload
        self.stats.count += 1
        self.stats.total_bytes += len(raw)
        return raw

    def _trace_headers(self, sender: _Person, when: datetime, date: str) -> list[str]:
        rng = self.rng
        domain = sender.address.split("@")[1]
        relay = f"mail-{rng.choice(('eu', 'us', 'ap'))}{rng.randint(1, 40)}.{domain}"
        octets = (
            rng.randint(11, 223),
            rng.randint(0, 255),
            rng.randint(0, 255),
            rng.randint(1, 254),
        )
        ip = ".".join(map(str, octets))
        queue = f"{rng.getrandbits(44):011X}"
        received_at = format_datetime(when + timedelta(seconds=rng.randint(1, 20)))
        dkim = base64.b64encode(rng.randbytes(192)).decode()
        bh = base64.b64encode(rng.randbytes(32)).decode()
        dkim_lines = "\r\n\t ".join(dkim[i : i + 72] for i in range(0, len(dkim), 72))
        return [
            f"Return-Path: <{sender.address}>",
            f"Delivered-To: {MAILBOX_ADDRESS}",
            f"Received: from mx.example.test (localhost [127.0.0.1])\r\n\tby imap.example.test"
            f" (Postfix) with ESMTP id {queue}\r\n\tfor <{MAILBOX_ADDRESS}>; {received_at}",
            f"Received: from {relay} ({relay} [{ip}])\r\n\t(using TLSv1.3 with cipher "
            f"TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\t(No client certificate requested)"
            f"\r\n\tby mx.example.test (Postfix) with ESMTPS id {queue[:8]}\r\n\tfor "
            f"<{MAILBOX_ADDRESS}>; {received_at}",
            f"Authentication-Results: mx.example.test;\r\n\tdkim=pass (2048-bit key) "
            f"header.d={domain} header.i=@{domain} header.b={dkim[:8]};\r\n\tspf=pass "
            f"(mx.example.test: domain of {sender.address} designates {ip} as permitted "
            f"sender) smtp.mailfrom={sender.address};\r\n\tdmarc=pass (p=none dis=none) "
            f"header.from={domain}",
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s2048;"
            f" t={int(when.timestamp())};\r\n\th=from:to:subject:date:message-id:mime-version;"
            f"\r\n\tbh={bh};\r\n\tb={dkim_lines}",
        ]

    def _text_part(self, text: str) -> bytes:
        data = text.encode()
        if data.isascii():
            return b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + data
        if self.rng.random() < 0.5:
            encoded = binascii.b2a_qp(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
            return (
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded
            )
        return (
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + data
        )

    def _html(self, paragraphs: list[str], greeting: str, sender: _Person) -> bytes:
        rng = self.rng
        parts = [
            '<!DOCTYPE html><html><head><meta charset="utf-8"><style>'
            "body{font-family:Segoe UI,Helvetica,Arial,sans-serif;font-size:14px;color:#222}"
            "p{margin:0 0 12px 0}.sig{color:#777;font-size:12px}</style></head><body>",
            f'<div dir="ltr"><p>{greeting}</p>',
        ]
        for paragraph in paragraphs:
            if rng.random() < 0.15:
                parts.append(
                    '<table role="presentation" cellpadding="4" style="border-collapse:'
                    'collapse;border:1px solid #ddd"><tr>'
                    + "".join(f"<td>{w}</td>" for w in rng.choices(_WORDS, k=4))
                    + "</tr></table>"
                )
            parts.append(f"<p>{paragraph}</p>")
        parts.append(
            f'<p class="sig">{sender.name}<br><a href="https://{sender.address.split("@")[1]}'
            f'/">{sender.address.split("@")[1]}</a></p>'
        )
        if rng.random() < 0.3:
            parts.append(
                f'<img src="https://t.{sender.address.split("@")[1]}/o/{rng.getrandbits(64):x}'
                '.gif" width="1" height="1" alt="">'
            )
        parts.append("</div></body></html>")
        data = "\r\n".join(parts).encode()
        encoded = binascii.b2a_qp(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
        return (
            b"Content-Type: text/html; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded
        )

    def _alternative(self, text_part: bytes, html_part: bytes) -> bytes:
        boundary = f"----=_Alt_{self.rng.getrandbits(64):016x}".encode()
        return (
            b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
            b"--" + boundary + b"\r\n" + text_part + b"\r\n"
            b"--" + boundary + b"\r\n" + html_part + b"\r\n"
            b"--" + boundary + b"--\r\n"
        )

    def _attachment(self) -> bytes:
        rng = self.rng
        content_type, ext, magic = rng.choice(_ATTACHMENTS)
        # Skewed sizes: many small, a few large (4 KB .. 300 KB, mean ~ 36 KB).
        size = int(min(300_000, 4_000 + rng.expovariate(1 / 32_000)))
        payload = magic + rng.randbytes(size)
        name = f"{rng.choice(_ATTACHMENT_NAMES)}-{rng.randint(1, 9999)}.{ext}"
        if name.isascii():
            disposition = f'attachment; filename="{name}"'
            ctype = f'{content_type}; name="{name}"'
        else:
            quoted = "".join(
                chr(b) if chr(b).isalnum() or chr(b) in "-._" else f"%{b:02X}"
                for b in name.encode()
            )
            disposition = f"attachment; filename*=utf-8''{quoted}"
            ctype = f'{content_type}; name="{_encoded_word(name)}"'
        return (
            f"Content-Type: {ctype}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode() + _crlf_base64(payload)


def generate(count: int, seed: int = 20251101, stats: CorpusStats | None = None) -> Iterator[bytes]:
    """Yield ``count`` messages, oldest first. Pass ``stats`` to have it filled in."""
    generator = _Generator(count, seed)
    if stats is not None:
        generator.stats = stats
    for index in range(count):
        yield generator.message(index)


def initial_flags(count: int, seed: int = 20251101) -> dict[str, list[int]]:
    """Flag -> 1-based positions (= UIDs on a fresh folder) that start with that flag:
    older mail is mostly read and often answered, the newest few hundred mostly unread."""
    rng = random.Random(seed ^ 0x5EED)
    flags: dict[str, list[int]] = {"\\Seen": [], "\\Answered": [], "\\Flagged": []}
    for position in range(1, count + 1):
        recent = position > count - 300
        if rng.random() < (0.4 if recent else 0.93):
            flags["\\Seen"].append(position)
            if rng.random() < 0.25:
                flags["\\Answered"].append(position)
        if rng.random() < 0.03:
            flags["\\Flagged"].append(position)
    return flags


def describe(count: int = 2000, seed: int = 20251101) -> CorpusStats:
    stats = CorpusStats()
    for _ in generate(count, seed, stats):
        pass
    return stats


if __name__ == "__main__":  # quick look: python -m benchmarks.corpus [count]
    import sys
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    started = time.perf_counter()
    result = describe(n)
    elapsed = time.perf_counter() - started
    print(
        f"{result.count} messages, average {result.average_bytes / 1024:.1f} KiB, "
        f"{result.with_attachments} with attachments, {result.html} with HTML, "
        f"{result.replies} replies; {elapsed:.2f} s"
    )
