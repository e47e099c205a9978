"""parse_envelope's fast path (mailsync.engine.mime_envelope) against the implementation it
replaced, kept here as ``reference_envelope``: the same ParsedEnvelope for the corpus, generated
mail, hostile input, hand-written tricky header blocks and fuzzed ones. Then the helpers that were
made faster, each against what it replaced."""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from benchmarks.corpus import generate
from mailsync.engine import mime_charsets, mime_envelope, mime_headers
from mailsync.engine.mime import (
    _HEADER_END,
    MAX_HEADER_BLOCK,
    ParsedAddress,
    ParsedEnvelope,
    parse_envelope,
)
from mailsync.engine.mime_headers import (
    _SURROGATES,
    _UTF7_RUN,
    _address_from_parts,
    _looks_clean,
    _msgids,
    _plain_ascii,
    _raw_headers_s,
    _split_address,
    _split_list,
    decode_words,
)
from tests.engine.test_mime import HOSTILE_INPUTS, PATHOLOGICAL_HEADERS

# --------------------------------------------------------------------------- the reference
# parse_envelope and the helpers it called before the fast path, as they were (commit ab10782),
# but for the names imported above, which did not change.

_POLICY_MAX = 4000
_HEADER_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def _old_clean(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATES.sub("\ufffd", text)
    return text


def _old_clean_header(text: str) -> str:
    text = _old_clean(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    text = _HEADER_CONTROLS.sub("", text.replace("\t", " "))
    return text.strip()


def _old_unsurrogate(value: str, hint: str | None = None) -> str:
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


def _old_raw_header(msg: email.message.Message, name: str) -> str | None:
    found = _raw_headers_s(msg, name)
    return _old_unsurrogate(found[0]) if found else None


def _old_unstructured(
    msg: email.message.Message, name: str, notices: list[str], hint: str | None
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
                return _old_clean_header(text)
        except Exception:
            pass
    where = f"The {name.capitalize()} header"
    return _old_clean_header(decode_words(raw, notices, where, hint))


def _old_addresses(
    msg: email.message.Message, name: str, hint: str | None
) -> tuple[ParsedAddress, ...]:
    raws = _raw_headers_s(msg, name)
    if not raws:
        return ()
    if all(_plain_ascii(r) and "=?" not in r for r in raws):
        try:
            found = []
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
        except Exception:
            pass
    result = []
    try:
        if sum(len(r) for r in raws) > _POLICY_MAX * 4:
            raise ValueError("too long for getaddresses")
        pairs = email.utils.getaddresses(raws)
    except Exception:
        pairs = [_split_address(chunk) for raw in raws for chunk in _split_list(raw)]
    for display, addr in pairs:
        parsed = _address_from_parts(
            decode_words(display, hint=hint), decode_words(addr, hint=hint)
        )
        if parsed is not None:
            result.append(parsed)
    return tuple(result)


def _old_date(msg: email.message.Message) -> datetime | None:
    raw = _old_raw_header(msg, "date")
    if not raw:
        return None
    try:
        parts = email.utils.parsedate_tz(_old_clean_header(raw))
        if parts is None:
            return None
        year = parts[0]
        if year < 100:
            year += 2000 if year < 50 else 1900
        naive = datetime(year, *parts[1:6])
        offset = parts[9]
        tz = UTC if offset is None else timezone(timedelta(seconds=offset))
        return naive.replace(tzinfo=tz)
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def _old_message_id(msg: email.message.Message) -> str:
    raw = _old_raw_header(msg, "message-id")
    if not raw:
        return ""
    ids = _msgids(raw)
    if ids:
        return ids[0]
    return _old_clean_header(raw).strip("<> ")[:998]


def _old_charset_hint(msg: email.message.Message) -> str | None:
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


_OLD_HEADER_END = re.compile(rb"\r?\n\r?\n")


def reference_envelope(raw: bytes | bytearray) -> ParsedEnvelope:
    """parse_envelope before the fast path: the feed parser, then getaddresses."""
    try:
        data = bytes(raw[:MAX_HEADER_BLOCK])
        end = _OLD_HEADER_END.search(data)
        block = data[: end.end()] if end else data
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            block, headersonly=True
        )
        hint = _old_charset_hint(msg)
        senders = _old_addresses(msg, "from", hint) or _old_addresses(msg, "sender", hint)
        in_reply_to = _msgids(_old_raw_header(msg, "in-reply-to"))
        references = [_old_unsurrogate(v) for v in _raw_headers_s(msg, "references")]
        return ParsedEnvelope(
            subject=_old_unstructured(msg, "subject", [], hint),
            sender=senders[0] if senders else None,
            to=_old_addresses(msg, "to", hint),
            cc=_old_addresses(msg, "cc", hint),
            date=_old_date(msg),
            message_id=_old_message_id(msg),
            in_reply_to=in_reply_to[0] if in_reply_to else "",
            references=_msgids(" ".join(references)),
        )
    except Exception:
        return ParsedEnvelope("", None, (), (), None, "", "", ())


def _differences(inputs: list[bytes]) -> list[tuple[bytes, ParsedEnvelope, ParsedEnvelope]]:
    found = []
    for raw in inputs:
        expected, got = reference_envelope(raw), parse_envelope(raw)
        if got != expected:
            found.append((raw[:300], expected, got))
    return found


# --------------------------------------------------------------------------- the inputs

TRICKY_HEADERS: list[bytes] = [
    # line ends and folding
    b"Subject: folded\r\n over\r\n\tlines\r\nFrom: a@example.com\r\n\r\nbody",
    b"Subject: folded\n over\n\tlines\nFrom: a@example.com\n\nbody",
    b"Subject: mixed\r\n line ends\nTo: b@example.com\r\n\nbody",
    b"Subject: bare\rCR\r\nFrom: a@example.com\r\n\r\n",
    b"Subject: x\rFrom: a@example.com\r\r\rbody",
    b"Subject: trailing blank continuation\r\n \r\nFrom: a@example.com\r\n\r\n",
    b"Subject:\r\n only a continuation\r\n\r\n",
    b"Subject: \t \r\n\r\n",
    b"Subject:\r\n\r\n",
    b'To: a@example.com,\r\n b@example.com,\r\n\t"C, D" <c@example.com>\r\n\r\n',
    b"Subject: tabs\tinside\t\r\nTo:\tx@example.com\r\n\r\n",
    b"Subject: last line without a line end",
    b"Subject: only one line end\n",
    b"Subject: x\r\nX-Long: " + b"y" * 5000 + b"\r\n\r\n",
    # duplicates and case
    b"Subject: first\r\nSubject: second\r\nFROM: a@example.com\r\nfrom: b@example.com\r\n\r\n",
    b"To: a@example.com\r\nCc: b@example.com\r\nTO: c@example.com\r\ncc: d@example.com\r\n\r\n",
    b"References: <r1@x>\r\nReferences: <r2@x>\r\n <r3@x>\r\nIn-Reply-To: <p@x>\r\n\r\n",
    b"Message-ID: <a@x>\r\nMessage-Id: <b@x>\r\n\r\n",
    # empty and odd values
    b"From:\r\nTo: \r\nCc:   \r\nSubject:\r\nDate:\r\nMessage-ID:\r\n\r\n",
    b"From: <>\r\nTo: ,,\r\nCc: a@example.com, , b@example.com,\r\n\r\n",
    b"To: a@example.com, \r\n\r\n",
    b"Message-ID: no brackets here\r\nIn-Reply-To: x@y z@w\r\n\r\n",
    b"Message-ID: <\r\n\r\n",
    # 8-bit, encoded words, charsets
    "Subject: Grüße\r\nFrom: Jürgen <j@example.com>\r\n\r\n".encode(),
    b"Subject: Gr\xfc\xdfe\r\nFrom: J\xfcrgen <j@example.com>\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\n",
    b"Subject: =?utf-8?B?Y2Fmww==?=\r\n =?utf-8?B?qQ==?= au lait\r\n\r\n",
    b'From: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\nTo: "=?utf-8?q?a=2C_b?=" <x@y.z>\r\n\r\n',
    b"Subject: =?x-unknown?q?abc?=\r\nFrom: =?NONE?B?QQ==?= <a@b.c>\r\n\r\n",
    b"Subject: +AGUAdQByAG8-\r\nContent-Type: text/plain; charset=utf-7\r\n\r\n",
    b"Subject: \x1b$B$3$s$K$A$O\x1b(B\r\n\r\n",
    b'Content-Type: text/plain;\r\n charset="utf-8"\r\nSubject: caf\xc3\xa9\r\n\r\n',
    b"Content-Type: text/plain; charset*=utf-8''x\r\nSubject: \xe9\r\n\r\n",
    b"Content-Type: text/plain; char\xe9set=koi8-r\r\nSubject: \xe9\r\n\r\n",
    b'Content-Type: multipart/mixed; boundary="x"; charset=windows-1252\r\nSubject: \x80\r\n\r\n',
    b"Subject: nul\x00byte\r\nFrom: a\x00@example.com\r\n\r\n",
    b"Subject: controls \x01\x7f\x0b\x0c\r\n\r\n",
    # address shapes
    b'From: "Smith, John" <john@example.com>\r\n\r\n',
    b'From: "Smith, John (Sales)" <john@example.com>, plain@example.com\r\n\r\n',
    b"From: John Smith <john@example.com> (a comment)\r\n\r\n",
    b"From: john@example.com (John Smith)\r\n\r\n",
    b'From: J. R. "Bob" Dobbs <bob@example.com>\r\n\r\n',
    b'From: "Esc\\"aped" <e@example.com>\r\n\r\n',
    b"From: <@route.example:a@example.com>\r\n\r\n",
    b"From: a@[127.0.0.1]\r\n\r\n",
    b"From: a @ example . com\r\n\r\n",
    b"From: a@example.com b@example.com\r\n\r\n",
    b"From: Only A Name\r\n\r\n",
    b"From: <a@example.com\r\n\r\n",
    b"From: a@b@c\r\n\r\n",
    b"To: undisclosed-recipients:;\r\n\r\n",
    b'Cc: Group: a@x.example, "B" <b@x.example>;\r\n\r\n',
    b"Sender: s@example.com\r\n\r\n",
    b"From: \r\nSender: Sender Name <s@example.com>\r\n\r\n",
    b"To: " + b", ".join(b"u%d@example.com" % i for i in range(400)) + b"\r\n\r\n",
    # dates
    b"Date: Thu, 02 Nov 2023 09:03:33 +0000\r\n\r\n",
    b"Date: 2 Nov 2023 09:03:33 -0530\r\n\r\n",
    b"Date: Thu, 02 Nov 2023 09:03:33 -0000\r\n\r\n",
    b"Date: Thu, 02 Nov 2023 09:03:33 +0000 (UTC)\r\n\r\n",
    b"Date: Thu, 02 Nov 23 09:03 GMT\r\n\r\n",
    b"Date: Thu, 31 Feb 2023 09:03:33 +0000\r\n\r\n",
    b"Date: Thu, 02 Nov 2023 25:03:33 +9999\r\n\r\n",
    b"Date: thu, 02 nov 2023 09:03:33 +0100\r\n\r\n",
    b"Date: Thursday, 02-Nov-23 09:03:33 EST\r\n\r\n",
    b"Date: not a date\r\n\r\n",
    # structure the fast path leaves to the feed parser
    b"From sender@example.com Thu Nov  2 09:03:33 2023\r\nSubject: mbox\r\n\r\n",
    b"Subject: x\r\nFrom nobody\r\nFrom: a@example.com\r\n\r\n",
    b"Subject: x\r\nFrom late\r\n",
    b" leading continuation\r\nSubject: x\r\n\r\n",
    b": no name\r\nSubject: x\r\n\r\n",
    b"Subject: x\r\n: no name\r\n continued\r\nTo: a@example.com\r\n\r\n",
    b"Subject : space before the colon\r\nTo: a@example.com\r\n\r\n",
    b"Subject: no separator\r\nthis is the body\r\nTo: a@example.com\r\n",
    b"Subject: no separator\nbody: looks like a header\n",
    b"\r\nSubject: empty first line\r\n\r\n",
    b"\n\nSubject: x",
    b"S\xfcbject: 8-bit name\r\nTo: a@example.com\r\n\r\n",
    b"Subject: x\r\n\x0bTo: a@example.com\r\n\r\n",
    b"Subject: x\r\n\x0cTo: a@example.com\r\n\r\n",
    b"Subject: x\r\n\r\nTo: body@example.com\r\n",
    b"Subject: x\r\n \r\n\r\nbody",
    b"Subject: x\n\r\nbody",
    b"Subject: x\r\n\nbody",
    # sizes
    b"Subject: " + b"x" * (MAX_HEADER_BLOCK + 10) + b"\r\n\r\nbody",
    b"Subject: x\r\nReferences: " + b"<r@x>\r\n " * 200_000 + b"\r\n\r\nbody",
    b"To: " + b"a@b, " * 10_000 + b"\r\n\r\n",
    b"Subject: big body\r\n\r\n" + b"A" * 2_000_000,
]


def _fuzzed_blocks(count: int, seed: int) -> Iterator[bytes]:
    """Header blocks assembled at random from good and bad pieces, so that both paths and the
    point where one hands over to the other are exercised."""
    rng = random.Random(seed)
    names = [
        *("Subject", "subject", "SUBJECT", "From", "from", "Sender", "To", "to", "Cc", "CC"),
        *("Date", "Message-ID", "message-id", "In-Reply-To", "References", "Content-Type"),
        *("X-Mailer", "Received", "Subject ", "From ", "", "S\xfcbject", "To\t", "Re:ply"),
    ]
    values = [
        *("", " ", "plain", "Kwame King <kwame@example.com>", "a@example.com, b@example.com"),
        *('"King, K." <k@example.com>', "(comment) x@example.com", "undisclosed-recipients:;"),
        *("=?utf-8?b?SsO2cmc=?= <j@example.com>", "=?iso-8859-1?q?caf=E9?=", "caf\xe9"),
        *("Gr\xc3\xbc\xc3\x9fe", "<id@example.com>", "<a@x> <b@x>", "Thu, 02 Nov 2023 09:03:33"),
        *("Thu, 02 Nov 2023 09:03:33 +0100", "text/plain; charset=utf-8", "text/plain;"),
        *("multipart/mixed; boundary=x", "text/plain; charset=utf-7", "+AGUAdQ-", "a\x00b"),
        *('"unterminated <x@y>', "<@r:a@b>", "a@b, , c@d,", "\\", "x\x1b$Bx"),
    ]
    line_ends = ["\r\n"] * 6 + ["\n"] * 3 + ["\r", ""]
    for _ in range(count):
        lines = []
        if rng.random() < 0.05:
            lines.append(rng.choice(["From a@b Thu Nov 2 2023", " lead", ":", "", "body"]))
        for _ in range(rng.randint(0, 8)):
            colon = rng.choice([": ", ":", ":\t", ":  ", " : "])
            lines.append(rng.choice(names) + colon + rng.choice(values))
            while rng.random() < 0.2:
                lines.append(rng.choice([" ", "\t", "  "]) + rng.choice(values))
        end = rng.choice(line_ends)
        text = "".join(
            line + (end if rng.random() < 0.95 else rng.choice(line_ends)) for line in lines
        )
        text += rng.choice(["", end, end + "body", "body without separator" + end])
        yield text.encode("latin-1")


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("raw", TRICKY_HEADERS, ids=range(len(TRICKY_HEADERS)))
def test_it_matches_the_old_parser_on_tricky_headers(raw: bytes) -> None:
    assert parse_envelope(raw) == reference_envelope(raw)


@pytest.mark.parametrize("raw", [*HOSTILE_INPUTS, *PATHOLOGICAL_HEADERS])
def test_it_matches_the_old_parser_on_hostile_input(raw: bytes) -> None:
    assert parse_envelope(raw) == reference_envelope(raw)


def test_it_matches_the_old_parser_on_bytearrays_and_memoryviews() -> None:
    raw = TRICKY_HEADERS[0]
    assert parse_envelope(bytearray(raw)) == reference_envelope(raw)
    assert parse_envelope(memoryview(raw)) == reference_envelope(raw)  # type: ignore[arg-type]


def test_it_matches_the_old_parser_on_fuzzed_header_blocks() -> None:
    assert _differences(list(_fuzzed_blocks(20_000, seed=20251129))) == []


def test_it_matches_the_old_parser_on_generated_mail() -> None:
    assert _differences(list(generate(20_000))) == []


def _variants(raw: bytes) -> list[bytes]:
    """The message, its header block alone, and both with the other kind of line end."""
    end = raw.find(b"\n\n") if b"\r\n\r\n" not in raw else raw.find(b"\r\n\r\n")
    header = raw[: end + 2] if end >= 0 else raw
    out = []
    for text in (raw, header):
        lf = text.replace(b"\r\n", b"\n")
        out += [text, lf, lf.replace(b"\n", b"\r\n")]
    return out


def test_it_matches_the_old_parser_on_the_corpus(corpus_dir: Path) -> None:
    files = sorted(corpus_dir.rglob("*.eml"))
    assert len(files) >= 195
    inputs = [variant for path in files for variant in _variants(path.read_bytes())]
    assert _differences(inputs) == []


# --------------------------------------------------------------------------- the fast path is taken


def test_it_reads_generated_mail_without_the_feed_parser_or_getaddresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the slow path was taken")

    messages = list(generate(300))
    expected = [reference_envelope(raw) for raw in messages]
    monkeypatch.setattr(email.parser.BytesParser, "parsebytes", refuse)
    monkeypatch.setattr(email.utils, "getaddresses", refuse)
    assert [parse_envelope(raw) for raw in messages] == expected


def test_it_hands_unusual_blocks_to_the_feed_parser() -> None:
    assert mime_envelope._split_simply(b"Subject: x\r\nTo: a@b\r\n\r\n") is not None
    for block in (
        b"From a@b Thu Nov 2 2023\r\nSubject: x\r\n\r\n",
        b" leading\r\nSubject: x\r\n\r\n",
        b"Subject: x\rTo: a@b\r\n\r\n",
        b"Subject: x\r\nbody\r\n",
        b"Subject: x\r\n\r\nTo: a@b\r\n",
        b"",
    ):
        assert mime_envelope._split_simply(block) is None, block


# --------------------------------------------------------------------------- the helpers


def _header_values() -> list[str]:
    """Every raw header value of the tricky, hostile and fuzzed blocks and some generated mail."""
    blocks = [*TRICKY_HEADERS, *HOSTILE_INPUTS, *_fuzzed_blocks(3000, seed=7), *generate(500)]
    values = []
    for raw in blocks:
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            raw[:20_000], headersonly=True
        )
        values += [str(value) for _, value in msg.raw_items()]
    return values


def test_clean_header_and_unsurrogate_return_what_they_did() -> None:
    samples = [*_header_values(), "", " ", "\t", "a\x00b", "\udce9", "x\u2028y", " \u3000 "]
    for value in samples:
        assert mime_headers._clean_header(value) == _old_clean_header(value), value
        for hint in (None, "utf-8", "utf-7", "windows-1252", "bogus"):
            expected = _old_unsurrogate(value, hint)
            assert mime_headers._unsurrogate(value, hint) == expected, (value, hint)


def test_declared_charset_returns_what_the_charset_hint_did() -> None:
    samples = [v for v in _header_values() if "charset" in v.lower() or "/" in v]
    samples += [
        "text/plain; CHARSET=utf-8",
        'text/plain; charset="koi8-r"',
        "text/plain; char\udce9set=koi8-r",
    ]
    for value in samples:
        view = email.message.Message()
        view["content-type"] = value
        expected = _old_charset_hint(view)
        try:
            got = mime_headers._declared_charset(mime_headers._FOLD.sub("", value))
        except Exception:
            got = None
        assert got == expected, value


def _address_lists(rng: random.Random) -> Iterator[list[str]]:
    words = ["John", "J.", '"Smith, J"', '""', '"a (b) <c> @:;"', "=?utf-8?b?SsO2cmc=?=", "O'Neil"]
    locals_ = ["a", "a.b", ".a", "a..b", "o'neil", "x+y", "=?x?="]
    domains = ["b", "b.c", "b.", ".b", "ex-ample.com"]
    blanks = ["", " ", "  ", "\t", " \t"]
    pieces = [*'a@<>, "():;\\[]\xe9', "\r\n "]
    for _ in range(50_000):
        members = []
        for _ in range(rng.randint(1, 4)):
            blank = rng.choice(blanks)
            address = rng.choice(locals_) + "@" + rng.choice(domains)
            kind = rng.random()
            if kind < 0.3:
                members.append(blank + address + rng.choice(blanks))
            elif kind < 0.85:
                phrase = rng.choice(blanks).join(rng.choices(words, k=rng.randint(0, 3)))
                members.append(f"{blank}{phrase}{rng.choice(blanks)}<{address}>{blank}")
            elif kind < 0.95:
                members.append("".join(rng.choices(pieces, k=rng.randint(0, 10))))
            else:
                members.append(blank)
        yield [",".join(members)] if rng.random() < 0.6 else members


def test_getaddresses_returns_what_the_stdlib_does(monkeypatch: pytest.MonkeyPatch) -> None:
    stdlib = email.utils.getaddresses
    slow: list[list[str]] = []

    def counted(raws: list[str]) -> list[tuple[str, str]]:
        slow.append(raws)
        return stdlib(raws)

    monkeypatch.setattr(email.utils, "getaddresses", counted)
    lists = list(_address_lists(random.Random(20251129)))
    for raws in lists:
        assert mime_headers._getaddresses(raws) == stdlib(raws), raws
    assert 0 < len(slow) < len(lists) / 2  # both paths were taken, the fast one more often


def test_header_end_is_found_where_it_was() -> None:
    rng = random.Random(3)
    for _ in range(50_000):
        data = bytes(rng.choices(b"\r\na ", k=rng.randint(0, 12)))
        limit = rng.randint(0, 14)
        old = _OLD_HEADER_END.search(data[:limit])
        new = _HEADER_END.search(data, 0, limit)
        assert (old and old.end()) == (new and new.end()), (data, limit)
