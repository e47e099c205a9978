"""Fuzz: mutated corpus messages through parse → store → render.

Each example is a message of ``../shared/corpus/mime`` damaged by one to three mutations
(byte flips, truncation, header lines duplicated or removed, boundary damage, charset labels,
content types and transfer encodings swapped, two messages spliced, NULs and CRs inserted,
hostile HTML from ``../shared/corpus/xss`` spliced into an HTML part or put in a header).
Hypothesis runs derandomized with a fixed number of examples, so every run tries the same
messages in the same time; a failure prints the mutations.

For each: the parser does not fail (no "could not be read as MIME (<exception>)" fallback, no
logged error), the stored bytes are the input's exactly, and the message page and its body
frame answer 200 with nothing a browser could run.

Most examples go through the store the sync uses (``DjangoFolderStore``, as if the server had
sent the bytes), each in a savepoint rolled back afterwards; a few go all the way through the
test Dovecot and ``sync_mailbox``. Both run on PostgreSQL and SQLite (their store paths differ:
COPY versus bulk INSERT).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from mailsync.models import Folder, Message
from mailsync.runner import sync_mailbox
from tests.support.rendered import (
    byte_problems,
    check_stored_and_rendered,
    page_problems,
    parser_problems,
)

pytestmark = pytest.mark.fuzz

# About 35 s on PostgreSQL on a 2-core machine (≈25 s of it CPU: the conversation page is the
# dearest render). Random runs of 3,000 + 200 examples with up to six mutations each found
# nothing these miss.
STORE_EXAMPLES = 300
DOVECOT_EXAMPLES = 40

FUZZ = settings(
    derandomize=True,  # the same examples on every run and machine: CI time is fixed
    database=None,  # no example database written into the checkout
    deadline=None,  # a slow example (a 500 KB corpus message) is not a failure
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the fixtures are set up once per test, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


CHARSET_LABELS = [
    b"utf-8", b"us-ascii", b"iso-8859-1", b"windows-1252", b"iso-2022-jp", b"shift_jis",
    b"euc-kr", b"gb2312", b"gb18030", b"big5", b"koi8-r", b"utf-16", b"utf-16le", b"utf-32",
    b"utf-7", b"ks_c_5601-1987", b"x-unknown", b"unknown-8bit", b"", b'"', b"rot13", b"base64",
    b"hex", b"zlib", b"uu", b"idna", b"punycode", b"unicode_escape", b"mbcs", b"utf-8\x00",
    b"\xff\xfe", b"=?utf-8?q?x?=",
]  # fmt: skip
CONTENT_TYPES = [
    b"text/plain", b"text/html", b"message/rfc822", b"message/delivery-status",
    b"multipart/mixed", b"multipart/alternative", b"multipart/related", b"application/ms-tnef",
    b"application/octet-stream", b"image/png", b"text/calendar", b"text/rfc822-headers",
    b"text", b"/", b"",
]  # fmt: skip
TRANSFER_ENCODINGS = [
    b"base64", b"quoted-printable", b"7bit", b"8bit", b"binary", b"x-uuencode", b"uuencode",
    b"BASE64", b"x-unknown", b"",
]  # fmt: skip
_CONTENT_TYPE = re.compile(rb"^content-type:[ \t]*([^;\r\n]*)", re.I | re.M)
_TRANSFER_ENCODING = re.compile(rb"^content-transfer-encoding:[ \t]*([^;\r\n]*)", re.I | re.M)
_CHARSET = re.compile(rb"""(charset\*?=)("?)[^";\s]*\2""", re.I)
_BOUNDARY = re.compile(rb"""boundary\*?=("?)([^";\r\n]+)\1""", re.I)


# --- mutations -------------------------------------------------------------------------------


class Material:
    """The messages to mutate and the hostile HTML to splice in. (Not a dataclass: hypothesis
    prints a failing test's arguments, and would print a dataclass's 4 MB field by field.)"""

    def __init__(self, corpus: list[bytes], xss: list[bytes]) -> None:
        self.corpus = corpus
        self.xss = xss

    def __repr__(self) -> str:
        return f"Material({len(self.corpus)} corpus messages, {len(self.xss)} xss bodies)"


Mutation = Callable[[st.DrawFn, bytes, Material], bytes]


def _header_end(raw: bytes) -> int:
    match = re.search(rb"\r?\n\r?\n", raw)
    return match.start() if match else len(raw)


def flip_bytes(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    if not raw:
        return raw
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def truncate(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    return raw[: draw(st.integers(0, len(raw)))]


def duplicate_header_line(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    lines = raw[: _header_end(raw)].split(b"\n")
    line = draw(st.sampled_from(lines))
    at = draw(st.integers(0, len(lines)))
    return b"\n".join([*lines[:at], line, *lines[at:]]) + raw[_header_end(raw) :]


def remove_header_line(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    lines = raw[: _header_end(raw)].split(b"\n")
    at = draw(st.integers(0, len(lines) - 1))
    return b"\n".join(lines[:at] + lines[at + 1 :]) + raw[_header_end(raw) :]


def damage_boundary(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    found = [m.group(2) for m in _BOUNDARY.finditer(raw)]
    if not found:
        return raw
    boundary = draw(st.sampled_from(found))
    delimiter = b"--" + boundary
    how = draw(st.sampled_from(["no close", "shortened", "param gone", "closed early", "doubled"]))
    if how == "no close":
        return raw.replace(delimiter + b"--", b"")
    if how == "shortened":
        return raw.replace(delimiter, delimiter[:-1], draw(st.integers(1, 3)))
    if how == "param gone":
        return raw.replace(boundary, b"", 1)
    if how == "closed early":
        return raw.replace(delimiter + b"\r\n", delimiter + b"--\r\n", 1).replace(
            delimiter + b"\n", delimiter + b"--\n", 1
        )
    return raw.replace(delimiter, delimiter + b"\n" + delimiter, 1)


def swap_charset(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    labels = list(_CHARSET.finditer(raw))
    if not labels:
        return raw
    label = labels[draw(st.integers(0, len(labels) - 1))]
    new = label.group(1) + draw(st.sampled_from(CHARSET_LABELS))
    return raw[: label.start()] + new + raw[label.end() :]


def swap_content_type(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    """One part (or the message) claims another type: the parser must cope with an HTML,
    an attached message, a winmail.dat or a multipart that is nothing of the kind."""
    types = list(_CONTENT_TYPE.finditer(raw))
    if not types:
        return raw
    found = types[draw(st.integers(0, len(types) - 1))]
    return raw[: found.start(1)] + draw(st.sampled_from(CONTENT_TYPES)) + raw[found.end(1) :]


def swap_transfer_encoding(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    encodings = list(_TRANSFER_ENCODING.finditer(raw))
    if not encodings:
        return raw
    found = encodings[draw(st.integers(0, len(encodings) - 1))]
    new = draw(st.sampled_from(TRANSFER_ENCODINGS))
    return raw[: found.start(1)] + new + raw[found.end(1) :]


def splice(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    other = draw(st.sampled_from(material.corpus))
    return raw[: draw(st.integers(0, len(raw)))] + other[draw(st.integers(0, len(other))) :]


def insert_nuls_and_crs(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 12))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.sampled_from([b"\x00", b"\r", b"\r\r\n", b"\n\r", b"\x00\r\n"]))
    return bytes(data)


def splice_xss_into_html(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    """Hostile HTML into the message's HTML (at its <body> or <html>); a message without
    one becomes a text/html message of the hostile HTML under its own headers."""
    hostile = draw(st.sampled_from(material.xss))
    lowered = raw.lower()
    at = max(lowered.find(b"<body"), lowered.find(b"<html"))
    if at >= 0 and draw(st.booleans()):
        return raw[:at] + hostile + raw[at:]
    headers = [
        line
        for line in raw[: _header_end(raw)].split(b"\n")
        if line.strip() and not line.lower().startswith((b"content-", b" ", b"\t"))
    ]
    charset = draw(st.sampled_from(CHARSET_LABELS[:6]))
    headers.append(b"Content-Type: text/html; charset=" + charset)
    return b"\n".join(headers) + b"\n\n" + hostile


def hostile_header(draw: st.DrawFn, raw: bytes, material: Material) -> bytes:
    """A line of hostile HTML as the Subject or a display name, as it is or RFC 2047
    encoded (so only the decoded header holds the markup)."""
    lines = [line.strip() for x in material.xss for line in x.splitlines() if b"<" in line]
    markup = draw(st.sampled_from(lines))
    if draw(st.booleans()):
        markup = b"=?utf-8?b?" + base64.b64encode(markup) + b"?="
    field = draw(st.sampled_from([b"Subject: %s", b"From: %s <a@example.com>", b"To: %s <b@x>"]))
    return field % markup + b"\n" + raw


MUTATIONS: list[Mutation] = [
    flip_bytes,
    truncate,
    duplicate_header_line,
    remove_header_line,
    damage_boundary,
    swap_charset,
    swap_content_type,
    swap_transfer_encoding,
    splice,
    insert_nuls_and_crs,
    splice_xss_into_html,
    hostile_header,
]


@st.composite
def mutated_messages(draw: st.DrawFn, material: Material) -> bytes:
    raw = draw(st.sampled_from(material.corpus))
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        raw = mutation(draw, raw, material)
        note(f"after {mutation.__name__}: {len(raw)} bytes")
    return raw


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def material(corpus_dir: Path, xss_dir: Path) -> Material:
    corpus = [p.read_bytes() for p in sorted(corpus_dir.rglob("*.eml"))]
    xss = [p.read_bytes() for p in sorted(xss_dir.rglob("*.txt"))]
    assert corpus and xss, f"no corpus messages under {corpus_dir} or none under {xss_dir}"
    return Material(corpus, xss)


@pytest.fixture
def inbox(shared_mailbox) -> Folder:
    return Folder.objects.create(mailbox=shared_mailbox, name="INBOX", uidvalidity=1)


@pytest.fixture
def bob_client(client, bob):
    client.force_login(bob)
    return client


# --- the tests -------------------------------------------------------------------------------

# Found by this fuzzer (shown raw before: the stdlib's header parser raised IndexError).
CUT_RFC2231_PARAMETER = (
    b"From: a@example.com\nSubject: cut\nContent-Type: text/plain; charset=us-ascii;\n"
    b" title*0*=\"us-ascii'en'\n\nHello there\n"
)
CR_IN_RFC2231_NAME = (
    b"From: a@example.com\nSubject: cr\nContent-Type: multipart/signed; "
    b"micalg*\r=ansi-x3.4-1968''pgp-md5; boundary=x\n\n--x\nContent-Type: text/plain\n\n"
    b"Hello there\n--x--\n"
)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "raw", [CUT_RFC2231_PARAMETER, CR_IN_RFC2231_NAME], ids=["cut-rfc2231", "cr-in-rfc2231"]
)
def test_it_reads_a_message_whose_content_type_parameter_breaks_the_stdlib_parser(
    raw, inbox, bob_client, caplog
):
    message = check_stored_and_rendered(raw, inbox, bob_client, caplog, uid=1).message
    assert not message.shown_raw
    assert message.text_body.strip() == "Hello there"
    assert any("simpler mode" in notice for notice in message.parse_notices)


# Found by this fuzzer: the NUL went into the attachment's content type, PostgreSQL refused
# the row, and extraction failed for the message and the 49 others of its group (the page: 500).
NUL_IN_CONTENT_TYPE = (
    b"From: a@example.com\nSubject: signed\nContent-Type: multipart/mixed; boundary=x\n\n"
    b"--x\nContent-Type: text/plain\n\nHello there\n"
    b'--x\nContent-Type:\x00 application/pdf; name="a.pdf"\nContent-Transfer-Encoding: base64\n\n'
    b"JVBERi0xLjQK\n--x--\n"
)


@pytest.mark.django_db
def test_it_stores_an_attachment_whose_content_type_has_a_nul(inbox, bob_client, caplog):
    stored = check_stored_and_rendered(NUL_IN_CONTENT_TYPE, inbox, bob_client, caplog, uid=1)
    assert stored.message.text_body.strip() == "Hello there"
    assert [(a.filename, a.content_type) for a in stored.attachments] == [
        ("a.pdf", "application/pdf")
    ]


# Found by this fuzzer's charset swap: "unicode_escape" was meant to be refused as a charset
# but codecs spells it "unicode-escape", so a part could make "\\u0041" read as "A".
UNICODE_ESCAPE_LABEL = (
    b"From: a@example.com\nSubject: =?unicode_escape?q?caf\\u00e9?=\n"
    b"Content-Type: text/plain; charset=unicode_escape\n\nPay to \\u0041CME \\x41G\n"
)


@pytest.mark.django_db
def test_it_refuses_python_escape_codecs_as_charsets(inbox, bob_client, caplog):
    message = check_stored_and_rendered(UNICODE_ESCAPE_LABEL, inbox, bob_client, caplog, uid=1)
    assert message.message.text_body.strip() == "Pay to \\u0041CME \\x41G"
    assert "café" not in message.message.subject
    assert any("unknown charset 'unicode_escape'" in n for n in message.message.parse_notices)


@pytest.mark.django_db
@settings(FUZZ, max_examples=STORE_EXAMPLES)
@given(data=st.data())
def test_it_stores_and_renders_mutated_corpus_messages_without_a_crash_or_script(
    data, material, inbox, bob_client, caplog
):
    raw = data.draw(mutated_messages(material), label="raw")
    check_stored_and_rendered(raw, inbox, bob_client, caplog, uid=1)


@pytest.mark.django_db
@settings(FUZZ, max_examples=DOVECOT_EXAMPLES)
@given(data=st.data())
def test_it_syncs_and_renders_mutated_corpus_messages_from_dovecot(
    data, material, shared_mailbox, mail_user, bob_client, caplog
):
    """The whole way: APPEND to the test Dovecot, sync, extract, list, render. Dovecot
    stores what it is given in its own canonical form (CRLF line ends, NUL as 0x80), so
    the stored bytes are compared with what Dovecot serves (BODY[]), not with the input."""
    raw = data.draw(mutated_messages(material), label="raw")
    assume(raw)  # Dovecot refuses to save an empty message
    caplog.clear()
    uid = mail_user.append(raw)
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(folder__mailbox=shared_mailbox, uid=uid)
    inbox_page = bob_client.get(reverse("inbox", args=[shared_mailbox.name]))
    problems = [
        *byte_problems(message, mail_user.raw(uid)),
        *parser_problems(message, caplog),
        *page_problems(bob_client, message),
        *([f"inbox page answered HTTP {inbox_page.status_code}"] * (inbox_page.status_code != 200)),
    ]
    assert not problems, problems
