"""Outgoing mail, pure: subjects, quoting, address lists and the bytes we build."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest

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
