"""Outgoing mail, pure: subjects, quoting, address lists and the bytes we build."""

from __future__ import annotations

import email
import email.message
import email.policy
from datetime import UTC, datetime
from email.header import decode_header, make_header

import pytest

from mailsync.engine import compose
from mailsync.engine.compose import (
    HeaderError,
    OutgoingAttachment,
    OutgoingMail,
    Recipient,
    build_message,
    forward_subject,
    parse_address_list,
    quote_body,
    references_for,
    reply_subject,
    unique_recipients,
)


def mail(**overrides) -> OutgoingMail:
    fields = {
        "sender": Recipient("Support", "support@example.test"),
        "to": (Recipient("Carol", "carol@example.org"),),
        "cc": (),
        "subject": "Re: Hello",
        "body": "Thanks!\n",
        "message_id": "<abc@example.test>",
        "date": datetime(2024, 12, 3, 10, 0, tzinfo=UTC),
        "in_reply_to": "orig@example.org",
        "references": ("first@example.org", "orig@example.org"),
    }
    fields.update(overrides)
    return OutgoingMail(**fields)  # type: ignore[arg-type]  # test data built as a dict


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Hello", "Re: Hello"),
        ("Re: Hello", "Re: Hello"),
        ("RE: Re: re:Hello", "Re: Hello"),
        ("AW: Hello", "Re: Hello"),
        ("Re[2]: Hello", "Re: Hello"),
        ("Hello\r\n world", "Re: Hello world"),
        ("", "Re:"),
    ],
)
def test_reply_subject_does_not_stack_prefixes(subject, expected):
    assert reply_subject(subject) == expected


def test_forward_subject_adds_fwd_once():
    assert forward_subject("Invoice") == "Fwd: Invoice"
    assert forward_subject("Fwd: Invoice") == "Fwd: Invoice"
    assert forward_subject("FW: Invoice") == "FW: Invoice"


def test_quote_body_prefixes_every_line_and_attributes_it():
    quoted = quote_body("Hi,\n\n> earlier\nbye\n", attribution="On Tue, Carol wrote:")
    assert quoted == "\n\nOn Tue, Carol wrote:\n> Hi,\n>\n>> earlier\n> bye\n"


def test_references_keep_the_first_and_the_newest_when_trimmed():
    chain = [f"m{n}@x.org" for n in range(30)]
    trimmed = references_for("parent@x.org", chain)
    assert len(trimmed) == 20
    assert trimmed[0] == "m0@x.org" and trimmed[-1] == "parent@x.org"
    assert references_for("p@x.org", ["p@x.org"]) == ("p@x.org",)


def test_it_reads_address_lists_people_type():
    got = parse_address_list('"Smith, J" <j@example.org>, b@example.net, Ünal <u@example.com>,')
    assert got == (
        Recipient("Smith, J", "j@example.org"),
        Recipient("", "b@example.net"),
        Recipient("Ünal", "u@example.com"),
    )
    assert parse_address_list(", ".join(r.display() for r in got)) == got
    assert parse_address_list("   ") == ()


@pytest.mark.parametrize(
    "typed",
    [
        "carol",
        "a@b@example.org",
        "alice@example.org)<bob@example.org>",
        "Team: a@example.org;",
        "carol@example.org\r\nBcc: x@example.net",
        "Carol\n <carol@example.org>",
        "carol@localhost",
        "ünal@example.org",
    ],
)
def test_it_refuses_address_lists_it_cannot_read_safely(typed):
    with pytest.raises(HeaderError):
        parse_address_list(typed)


def test_unique_recipients_drops_repeats_and_the_team():
    people = [Recipient("", "A@x.org"), Recipient("A", "a@x.org"), Recipient("", "team@x.org")]
    assert unique_recipients(people, exclude=["TEAM@x.org"]) == (Recipient("", "A@x.org"),)


def test_it_builds_crlf_7bit_mail_with_threading_headers():
    raw = build_message(mail(body="Grüße\n" + "x" * 1200 + "\n"))

    assert raw.isascii() and b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["From"] == "Support <support@example.test>"
    assert parsed["In-Reply-To"] == "<orig@example.org>"
    assert parsed["References"] == "<first@example.org> <orig@example.org>"
    assert parsed["Message-ID"] == "<abc@example.test>"
    assert parsed.get_content().replace("\r\n", "\n").startswith("Grüße\nxxx")


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "Hi\r\nBcc: victim@example.net"},
        {"subject": "Hi\nX-Evil: 1"},
        {"to": (Recipient("Carol\r\nBcc: v@example.net", "carol@example.org"),)},
        {"to": (Recipient("Carol", "carol@example.org\r\nBcc: v@example.net"),)},
        {"in_reply_to": "x@y.org>\r\nBcc: <v@example.net"},
    ],
)
def test_it_never_builds_a_header_with_a_line_break_typed_into_it(overrides):
    with pytest.raises(HeaderError):
        build_message(mail(**overrides))


def test_long_subjects_and_names_are_folded_not_broken():
    raw = build_message(
        mail(
            subject="Re: " + "word " * 60,
            to=(Recipient("A very long name " * 5, "carol@example.org"),),
        )
    )
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == ("Re: " + "word " * 60).strip()


def test_attachments_go_out_base64_with_their_names():
    raw = build_message(
        mail(attachments=(OutgoingAttachment("r\u00e9sum\u00e9.pdf", "application/pdf", b"%PDF"),))
    )
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    [part] = list(parsed.iter_attachments())
    assert part.get_filename() == "résumé.pdf"
    assert part.get_content() == b"%PDF"


# -- encoded words (RFC 2047) in what people type or we prefill ---------------------------

LITERAL = "=?utf-8?q?hello?="  # looks encoded; it is text and must arrive as typed
INJECTION = "=?utf-8?q?Invoice=0D=0AReply-To:_attacker=40evil.invalid=0D=0AX-Injected:_yes?="


def read_back(raw: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def rfc2047_view(raw: bytes, name: str) -> str:
    """The raw header line decoded by ``email.header`` alone, as a lenient client would."""
    head = raw.split(b"\r\n\r\n")[0].decode("ascii").replace("\r\n ", " ")
    [line] = [h for h in head.split("\r\n") if h.lower().startswith(name.lower() + ":")]
    return str(make_header(decode_header(line.split(":", 1)[1].strip())))


@pytest.mark.parametrize(
    "text",
    [
        LITERAL,
        f"Re: {LITERAL} world",
        f"{LITERAL}{LITERAL}",
        f"Grüße {LITERAL} " + "long " * 30,
        "Ünal " * 25 + "=?",
    ],
)
def test_text_that_looks_encoded_arrives_as_typed_in_every_header(text):
    text = text.strip()
    raw = build_message(
        mail(
            subject=text,
            sender=Recipient(text, "support@example.test"),
            to=(Recipient(text, "carol@example.org"), Recipient("Dan", "dan@example.net")),
            cc=(Recipient(text, "erin@example.net"),),
            attachments=(OutgoingAttachment(text + ".pdf", "application/pdf", b"%PDF"),),
        )
    )

    sent = read_back(raw)
    assert str(sent["Subject"]) == rfc2047_view(raw, "Subject") == text
    assert [(a.display_name, a.addr_spec) for a in sent["To"].addresses] == [
        (text, "carol@example.org"),
        ("Dan", "dan@example.net"),
    ]
    assert [a.display_name for a in sent["Cc"].addresses] == [text]
    assert [a.display_name for a in sent["From"].addresses] == [text]
    [part] = list(sent.iter_attachments())
    assert part.get_filename() == text + ".pdf"
    threading = ["Date", "Message-ID", "In-Reply-To", "References"]
    assert sorted(sent.keys()) == sorted(
        ["From", "To", "Cc", "Subject", *threading, "MIME-Version", "Content-Type"]
    )
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": f"Re: {INJECTION}"},
        {"subject": "=?utf-16be?b?AA0ACg==?="},  # CR LF in another charset
        {"subject": "Hi=?utf-8?q?=0A?=there"},  # inside a word: lenient clients decode it
        {"to": (Recipient(INJECTION, "carol@example.org"),)},
        {"cc": (Recipient(f"Dan {INJECTION}", "dan@example.net"),)},
        {"sender": Recipient(INJECTION, "support@example.test")},
        {"attachments": (OutgoingAttachment(INJECTION, "application/pdf", b"%PDF"),)},
        {"in_reply_to": f"{INJECTION}@example.org"},
        {"references": ("first@example.org", f"{INJECTION}@example.org")},
    ],
)
def test_it_never_builds_a_header_whose_encoded_words_decode_to_a_line_break(overrides):
    with pytest.raises(HeaderError):
        build_message(mail(**overrides))


def test_prefilled_text_is_decoded_and_flattened_only_when_it_would_decode_to_line_breaks():
    assert reply_subject(INJECTION) == (
        "Re: Invoice Reply-To: attacker@evil.invalid X-Injected: yes"
    )
    assert forward_subject(f"Fwd: {INJECTION}").startswith("Fwd: Invoice Reply-To:")
    assert reply_subject(LITERAL) == f"Re: {LITERAL}"


def test_names_typed_in_address_lists_are_read_as_typed_and_checked_once_decoded():
    assert parse_address_list(f'{LITERAL} <a@example.org>, "{LITERAL}, Q." <b@example.org>') == (
        Recipient(LITERAL, "a@example.org"),
        Recipient(f"{LITERAL}, Q.", "b@example.org"),
    )
    for typed in [f"{INJECTION} <a@example.org>", f'"{INJECTION}" <a@example.org>']:
        with pytest.raises(HeaderError, match="encoded words"):
            parse_address_list(typed, "To")


def test_references_leave_out_ids_that_cannot_be_written_back_as_they_came():
    chain = ["first@example.org", f"{INJECTION}@example.org", "a b@example.org", "x>@y.org"]
    assert references_for("parent@example.org", chain) == (
        "first@example.org",
        "parent@example.org",
    )
    assert references_for(f"{INJECTION}@example.org", ["first@example.org"]) == (
        "first@example.org",
    )


def test_bytes_that_do_not_read_back_as_meant_are_never_returned(monkeypatch):
    def smuggle(name, text):
        return f"{text}\r\nBcc: victim@example.net"

    monkeypatch.setattr(compose, "_text_lines", smuggle)

    with pytest.raises(HeaderError, match="would not arrive as written"):
        build_message(mail(subject="Hello"))
