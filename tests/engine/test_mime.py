"""Unit tests for mailsync.engine.mime (pure Python: no database, no Dovecot)."""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path

import pytest

from mailsync.engine.mime import ParsedAddress, ParsedMessage, parse_message, search_text
from tests.support.corpus import corpus_files, corpus_path

CORPUS_FILES = corpus_files()


def _ids(path: Path) -> str:
    return str(path.relative_to(path.parents[len(path.parts) - 1])).split("corpus/mime/")[-1]


def _assert_sane(parsed: ParsedMessage) -> None:
    assert isinstance(parsed.subject, str)
    assert "\n" not in parsed.subject and "\x00" not in parsed.subject
    assert parsed.sender is None or isinstance(parsed.sender, ParsedAddress)
    for addr in (*parsed.to, *parsed.cc, *parsed.reply_to):
        assert isinstance(addr.display(), str)
        assert addr.address == "" or "@" in addr.address
    assert parsed.date is None or (
        isinstance(parsed.date, datetime) and parsed.date.tzinfo is not None
    )
    assert "<" not in parsed.message_id and ">" not in parsed.message_id
    for text in (parsed.text, parsed.html, parsed.subject, *parsed.notices):
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogates: PostgreSQL must accept it
    for att in parsed.attachments:
        assert att.filename and "/" not in att.filename and "\\" not in att.filename
        assert att.filename.encode("utf-8") and "\x00" not in att.filename
        assert att.content_type == att.content_type.lower() and "/" in att.content_type
        assert isinstance(att.payload, bytes)
        assert "<" not in att.content_id
    assert not parsed.shown_raw or parsed.notices
    assert isinstance(search_text(parsed), str)


def test_it_finds_the_corpus() -> None:
    path = corpus_path()
    assert len(list(path.rglob("*.eml"))) >= 195


@pytest.mark.corpus
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.as_posix().split("corpus/mime/")[-1])
def test_it_parses_every_corpus_message_without_raising(path: Path) -> None:
    _assert_sane(parse_message(path.read_bytes()))


def _corpus(rel: str) -> bytes:
    return (corpus_path() / rel).read_bytes()


@pytest.mark.corpus
def test_it_reports_notices_for_only_a_minority_of_the_corpus() -> None:
    parsed = [parse_message(p.read_bytes()) for p in corpus_files()]
    assert sum(1 for p in parsed if p.notices) < len(parsed) // 4
    assert sum(1 for p in parsed if p.shown_raw) <= 10


# --- specific behaviours -------------------------------------------------------------------------

RFC2231 = b"""From: a@example.com
To: b@example.com
Subject: files
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX"

--XX
Content-Type: text/plain; charset=utf-8

see attached
--XX
Content-Type: application/pdf
Content-Disposition: attachment;
 filename*0*=utf-8''R%C3%A9sum%C3%A9%20de;
 filename*1*=%20l%27ann%C3%A9e.pdf
Content-Transfer-Encoding: base64

JVBERi0=
--XX
Content-Type: application/octet-stream; name="=?utf-8?q?na=C3=AFve?= ../../etc/passwd"
Content-Transfer-Encoding: base64

AAEC
--XX--
"""


def test_it_decodes_rfc2231_filenames_with_continuations() -> None:
    parsed = parse_message(RFC2231)
    assert parsed.text == "see attached"
    pdf = parsed.attachments[0]
    assert pdf.filename == "Résumé de l'année.pdf"
    assert pdf.content_type == "application/pdf"
    assert pdf.payload == b"%PDF-"


def test_it_strips_path_separators_from_filenames() -> None:
    other = parse_message(RFC2231).attachments[1]
    assert other.filename == "passwd"


def test_it_decodes_a_koi8_r_encoded_word_filename_from_the_corpus() -> None:
    parsed = parse_message(_corpus("mime4j/mimetools-testmsgs/russian.eml"))
    assert parsed.attachments[0].filename == "Список.doc"


def test_it_generates_a_name_for_unnamed_attachments() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nhi\n"
        b"--b\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--b--\n"
    )
    att = parse_message(raw).attachments[0]
    assert att.filename == "attachment-2.png"
    assert att.payload.startswith(b"\x89PNG")


RELATED = b"""From: a@example.com
Subject: logo
Content-Type: multipart/related; boundary="R"

--R
Content-Type: multipart/alternative; boundary="A"

--A
Content-Type: text/plain

plain version
--A
Content-Type: text/html

<p>html version <img src="cid:Logo@Example"></p>
--A--
--R
Content-Type: image/gif
Content-ID: <logo@example>
Content-Transfer-Encoding: base64

R0lGODlhAQABAAAAACw=
--R
Content-Type: image/gif
Content-ID: <unused@example>
Content-Transfer-Encoding: base64

R0lGODlhAQABAAAAACw=
--R--
"""


def test_it_prefers_text_plain_for_text_and_keeps_the_html() -> None:
    parsed = parse_message(RELATED)
    assert parsed.text == "plain version"
    assert "html version" in parsed.html


def test_it_maps_cid_images_to_inline_attachments() -> None:
    parsed = parse_message(RELATED)
    logo, unused = parsed.attachments
    assert logo.content_id == "logo@example" and logo.inline
    assert unused.content_id == "unused@example" and not unused.inline


def test_it_derives_text_from_html_when_there_is_no_plain_part() -> None:
    raw = b"Content-Type: text/html\n\n<style>p{}</style><p>Hello&nbsp;<b>there</b></p><p>x</p>"
    parsed = parse_message(raw)
    assert parsed.text == "Hello there\n\nx"


def test_it_unpacks_tnef_attachments() -> None:
    parsed = parse_message(_corpus("zimbra/unittest/tnef.eml"))
    names = [a.filename for a in parsed.attachments]
    assert names == ["upload.gif", "upload2.gif"]
    assert all(a.payload.startswith(b"GIF89a") for a in parsed.attachments)


def test_it_replaces_winmail_dat_with_its_body() -> None:
    parsed = parse_message(_corpus("mimekit/tnef/ukr.eml"))
    assert not any(a.filename == "winmail.dat" for a in parsed.attachments)
    assert "шостий" in parsed.text
    assert "<html" in parsed.html.lower()


def test_it_keeps_winmail_dat_with_a_notice_when_it_cannot_be_unpacked() -> None:
    parsed = parse_message(_corpus("hunnysoft-via-zbateson/m4006.eml"))
    assert [a.filename for a in parsed.attachments] == ["winmail.dat"]
    assert any("winmail.dat" in n for n in parsed.notices)


def test_it_keeps_an_attached_message_as_an_eml_attachment() -> None:
    parsed = parse_message(_corpus("cpython/msg_46.eml"))
    eml = [a for a in parsed.attachments if a.content_type == "message/rfc822"]
    assert len(eml) == 1 and eml[0].filename.endswith(".eml")
    inner = parse_message(eml[0].payload)
    assert inner.subject and inner.sender is not None


def test_it_shows_the_attached_message_body_when_it_is_the_sole_content() -> None:
    raw = (
        b"Subject: fwd\nContent-Type: message/rfc822\n\n"
        b"Subject: inner\nFrom: x@example.com\n\nthe inner body\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "the inner body"
    assert parsed.attachments[0].filename == "inner.eml"


def test_it_notes_an_unknown_charset() -> None:
    raw = b"Subject: x\nContent-Type: text/plain; charset=x-foo\n\ncaf\xe9 cr\xe8me br\xfbl\xe9e\n"
    parsed = parse_message(raw)
    assert "café" in parsed.text or "\ufffd" in parsed.text or parsed.text
    assert any("unknown charset 'x-foo'" in n for n in parsed.notices)


def test_it_decodes_ks_c_5601_gb2312_and_iso_8859_8_i() -> None:
    raw = (
        b"Subject: =?ks_c_5601-1987?B?x9Gx2w==?= =?gb2312?B?1tDOxA==?=\n"
        b"Content-Type: text/plain; charset=iso-8859-8-i\n\n\xf9\xec\xe5\xed\n"
    )
    parsed = parse_message(raw)
    assert parsed.subject == "한글中文"
    assert parsed.text == "שלום"
    assert parsed.notices == ()


def test_it_decodes_raw_8bit_headers_as_utf8_then_windows_1252() -> None:
    raw = "Subject: Grüße\nFrom: Jürgen <j@example.com>\n\nx".encode()
    assert parse_message(raw).subject == "Grüße"
    latin = b"Subject: Gr\xfc\xdfe\nFrom: J\xfcrgen <j@example.com>\n\nx"
    parsed = parse_message(latin)
    assert parsed.subject == "Grüße"
    assert parsed.sender == ParsedAddress("Jürgen", "j@example.com")


def test_it_joins_encoded_words_split_inside_a_character() -> None:
    # "é" (C3 A9) split across two encoded words: b"caf\xc3" + b"\xa9".
    raw = b"Subject: =?utf-8?B?Y2Fmww==?=\n =?utf-8?B?qQ==?= au lait\n\nx"
    assert parse_message(raw).subject == "café au lait"


def test_it_reads_ids_dates_and_groups() -> None:
    raw = (
        b"Message-ID: <abc@[127.0.0.1]>\nIn-Reply-To: <p1@x> <p2@x>\n"
        b"References: <r1@x>\n <r2@x>\nDate: Tue, 1 Jul 2003 10:52:37\n"
        b'To: undisclosed-recipients:;\nCc: Group: a@x.example, "B" <b@x.example>;\n\nbody'
    )
    parsed = parse_message(raw)
    assert parsed.message_id == "abc@[127.0.0.1]"
    assert parsed.in_reply_to == "p1@x"
    assert parsed.references == ("r1@x", "r2@x")
    assert parsed.date is not None and parsed.date.utcoffset() is not None
    assert parsed.to == ()
    assert [a.address for a in parsed.cc] == ["a@x.example", "b@x.example"]


def test_it_reports_a_missing_boundary_and_shows_the_raw_body() -> None:
    raw = b"Subject: x\nContent-Type: multipart/mixed; boundary=nope\n\njust some text\n"
    parsed = parse_message(raw)
    assert parsed.shown_raw
    assert parsed.text == "just some text"
    assert any("boundary" in n for n in parsed.notices)


def test_it_extracts_uuencoded_files_from_text_bodies() -> None:
    raw = b"Subject: uu\n\nhere it is\nbegin 644 hi.txt\n#:&DA\n`\nend\nbye\n"
    parsed = parse_message(raw)
    assert [(a.filename, a.payload) for a in parsed.attachments] == [("hi.txt", b"hi!")]
    assert "begin 644" not in parsed.text and "bye" in parsed.text


HOSTILE_INPUTS = [
    b"",
    b"\x00\xff" * 1000,
    b"Subject: only headers",
    b"Subject: x\n\n" + b"A" * 2_000_000,
    b"A" * 2_000_000,
    b'To: "\n\n',
    b"Message-ID: <[abc]>\n\n",
    b"Content-Type: text/plain; name*=utf-8''\n\n",
    b"Content-Type: multipart/mixed; boundary=a\n\n" + b"--a\nContent-Type: multipart/mixed; "
    b"boundary=a\n\n" * 200,
    b"Content-Type: text/plain; charset=rot13\n\nuryyb",
    b"Content-Type: text/plain; charset=unknown-8bit\n\n\x00\x01\x02\xff\xfe",
    b"Content-Transfer-Encoding: base64\n\n!!!!====",
    b"Subject: =?utf-8?b?\n\n",
    b"From: " + b"a" * 50_000 + b"@" + b"," * 50_000 + b"\n\n",
]


@pytest.mark.parametrize("raw", HOSTILE_INPUTS)
def test_it_never_raises_on_hostile_input(raw: bytes) -> None:
    _assert_sane(parse_message(raw))


PATHOLOGICAL_HEADERS = [
    b'Content-Type: text/plain; name="' + b"=?utf-8?q?a?= " * 30_000 + b'"\n\nbody',
    b"From: " + b"a" * 50_000 + b"@" + b"," * 50_000 + b"\n\nbody",
    b"To: " + b"=?utf-8?Q?date=3E2017?=\t" * 5_000 + b"\n\nbody",
]


@pytest.mark.parametrize("raw", PATHOLOGICAL_HEADERS)
def test_it_stays_fast_on_pathological_headers(raw: bytes) -> None:
    started = time.perf_counter()
    parsed = parse_message(raw)
    assert time.perf_counter() - started < 3
    assert parsed.text == "body"


def test_it_never_raises_on_random_bytes() -> None:
    rng = random.Random(20240501)
    alphabet = b'\x00\r\n\t :;=?"<>@-abcXYZ\xff\xe9'
    header = b"Content-Type: multipart/mixed; boundary=x\n\n--x\n"
    for _ in range(200):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
        _assert_sane(parse_message(body))
        _assert_sane(parse_message(header + body))


def test_it_builds_search_text_from_subject_people_body_and_filenames() -> None:
    parsed = parse_message(RFC2231)
    text = search_text(parsed)
    for expected in ("files", "a@example.com", "b@example.com", "see attached", "Résumé"):
        assert expected in text
