"""Replies that an outside sender tries to steer: encoded words (RFC 2047) that decode to line
breaks in the subject, names, Message-IDs and file names we prefill or the agent types.

Each test takes what the compose page shows, presses Send as bob would, and reads back the
bytes the SMTP server (aiosmtpd on loopback) received and the copy saved in Sent on the real
Dovecot: the same header lines we write and no others, and each header, decoded as a mail
client decodes it, is exactly the text the page showed.
"""

from __future__ import annotations

import email
import email.policy
from email.charset import Charset
from email.header import decode_header, make_header
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from mailsync.engine.compose import parse_address_list
from teaminbox import delivery
from teaminbox.models import OutgoingMessage
from teaminbox.services import outgoing as replies
from tests.support.mail import client_for, receive
from tests.support.smtp import QUIET_AUTH_WARNING, SMTP_PASSWORD, SMTP_USER, smtp_server

pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings(QUIET_AUTH_WARNING)]

# What a hostile sender wants in our reply: a Reply-To of theirs, a header, an HTML body.
INJECTION = (
    "=?utf-8?q?Invoice=0D=0AReply-To:_attacker=40evil.invalid=0D=0AX-Injected:_yes"
    "=0D=0AContent-Type:_text/html=0D=0A=0D=0A<a_href=3Dhttps://evil.invalid>Pay</a>?="
)
NAME_INJECTION = "=?utf-8?q?Carol=0D=0ABcc:_victim=40example.net=0D=0AX-Injected:_yes?="
FILE_INJECTION = "=?utf-8?q?invoice.pdf=0D=0AX-Injected:_yes=0D=0AContent-Type:_text=2Fhtml?="
ID_INJECTION = "=?utf-8?q?x=0D=0AReply-To:_attacker=40evil.invalid=0D=0AX-Injected:_yes?="
LITERAL = "=?utf-8?q?hello?="  # text that looks encoded; it must arrive as typed
FLATTENED_NAME = "Carol Bcc: victim@example.net X-Injected: yes"

FIRST, PARENT = "<order-1234-1@example.org>", "<order-1234-3@example.org>"
ORIGINAL = """\
From: Carol Customer <carol@example.org>
To: Support <SHARED>
Subject: Order 1234 is late
Date: Tue, 03 Dec 2024 10:15:00 +0000
Message-ID: <order-1234-3@example.org>
References: <order-1234-1@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello team, my order has not arrived.
"""


def encoded(text: str) -> str:
    """``text`` as one encoded word: a client decodes it once and shows ``text``."""
    return Charset("utf-8").header_encode(text)


def original_with(**headers: str) -> bytes:
    """ORIGINAL with some header lines replaced (``Reply_To`` is ``Reply-To``)."""
    lines = ORIGINAL.splitlines()
    for name, value in headers.items():
        name = name.replace("_", "-")
        lines = [line for line in lines if not line.startswith(f"{name}:")]
        lines.insert(0, f"{name}: {value}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def smtp():
    with smtp_server() as server:
        yield server


@pytest.fixture
def mailbox(shared_mailbox, smtp):
    shared_mailbox.smtp_host = smtp.host
    shared_mailbox.smtp_port = smtp.port
    shared_mailbox.smtp_security = "plain"
    shared_mailbox.smtp_username = SMTP_USER
    shared_mailbox.set_smtp_password(SMTP_PASSWORD)
    shared_mailbox.save()
    return shared_mailbox


# -- the page as bob sees it -------------------------------------------------------------


class ComposePage(HTMLParser):
    """The values the compose form shows, the From line and the attachments listed."""

    FIELDS = ("to", "cc", "bcc", "subject")

    def __init__(self, html: str) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.sender = ""
        self.attachments: list[str] = []
        self._into: str | None = None
        self._in_attachments = False
        self.feed(html)
        # HTML drops a line break right after <textarea> (Django writes one)
        self.values["body_text"] = self.values.get("body_text", "").removeprefix("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        name = found.get("name") or ""
        if tag == "input" and name in self.FIELDS:
            self.values[name] = found.get("value") or ""
        elif tag == "textarea" and name == "body_text":
            self._into, self.values["body_text"] = "body_text", ""
        elif tag == "div" and found.get("class") == "from-line":
            self._into = "sender"
        elif tag == "li" and self._in_attachments:
            self._into = "attachment"  # its name is the first text in the item
        elif tag == "section" and "compose-attachments" in (found.get("class") or ""):
            self._in_attachments = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("textarea", "div") and self._into in ("body_text", "sender"):
            self._into = None
        elif tag == "section":
            self._in_attachments = False

    def handle_data(self, data: str) -> None:
        if self._into == "body_text":
            self.values["body_text"] += data
        elif self._into == "sender":
            self.sender += data
        elif self._into == "attachment":
            self.attachments.append(data.strip())
            self._into = None


def open_compose(client: Any, mailbox: Any, message: Any, kind: str = "reply") -> str:
    url = reverse("reply", kwargs={"mailbox": mailbox.name, "message_id": message.pk})
    opened = client.get(f"{url}?kind={kind}")
    assert opened.status_code == 302
    return str(opened["Location"])


def shown(client: Any, compose_url: str) -> ComposePage:
    page = client.get(compose_url)
    assert page.status_code == 200
    return ComposePage(page.content.decode())


def press_send(client: Any, compose_url: str, page: ComposePage) -> Any:
    return client.post(compose_url, {**page.values, "send": "1"})


def delivered(mailbox: Any, mail_user: Any, smtp: Any) -> tuple[bytes, bytes]:
    """The bytes the SMTP server received and those saved in Sent on Dovecot."""
    outgoing = OutgoingMessage.objects.get(state=OutgoingMessage.State.QUEUED)
    result = delivery.deliver(outgoing.pk)
    assert result is not None and result.sent
    [arrived] = smtp.received
    [uid] = mail_user.uids("Sent")
    return arrived.raw, mail_user.raw(uid, "Sent")


def people(message: EmailMessage, name: str) -> list[tuple[str, str]]:
    header: Any = message[name]
    return [(a.display_name, a.addr_spec) for a in header.addresses] if header else []


def assert_arrives_as_shown(
    raw: bytes,
    page: ComposePage,
    *,
    without: tuple[str, ...] = (),
    files: tuple[str, ...] = (),
) -> EmailMessage:
    """The headers we write and no others; each one, decoded, is the page's text."""
    sent = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(sent, EmailMessage)
    wanted = {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"}
    wanted |= {"cc"} if page.values["cc"] else set()
    wanted |= {"in-reply-to", "references"}
    wanted |= set() if files else {"content-transfer-encoding"}
    wanted -= set(without)
    assert sorted(name.lower() for name in sent) == sorted(wanted)
    assert "Reply-To" not in sent and "Bcc" not in sent and "X-Injected" not in sent
    assert str(sent["Subject"]) == page.values["subject"]
    # and what a decoder of RFC 2047 alone (email.header, like Thunderbird's) shows
    assert decoded_raw_header(raw, "Subject") == page.values["subject"]
    assert people(sent, "To") == [
        (r.name, r.address) for r in parse_address_list(page.values["to"])
    ]
    assert people(sent, "Cc") == [
        (r.name, r.address) for r in parse_address_list(page.values["cc"])
    ]
    [(from_name, from_address)] = people(sent, "From")
    assert f"{from_name} <{from_address}>" == page.sender.strip()
    text = sent.get_body(preferencelist=("plain",))
    assert text is not None and text.get_content_type() == "text/plain"
    assert text.get_content().replace("\r\n", "\n") == page.values["body_text"].rstrip("\n") + "\n"
    parts = list(sent.iter_parts()) if files else [sent]
    assert [p.get_content_type() for p in parts[1:]] == ["application/pdf"] * len(files)
    assert tuple(p.get_filename() for p in parts[1:]) == files
    return sent


def decoded_raw_header(raw: bytes, name: str) -> str:
    """A header's raw value unfolded and decoded by ``email.header`` (RFC 2047 only)."""
    head = raw.split(b"\r\n\r\n")[0].decode("ascii").replace("\r\n ", " ")
    [line] = [h for h in head.split("\r\n") if h.lower().startswith(name.lower() + ":")]
    return str(make_header(decode_header(line.split(":", 1)[1].strip())))


def test_a_subject_encoded_twice_is_prefilled_as_one_line_and_sent_as_shown(
    mailbox, mail_user, smtp, bob
):
    original = receive(mail_user, mailbox, original_with(Subject=encoded(INJECTION)))
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)

    assert page.values["subject"].startswith("Re: Invoice Reply-To: attacker@evil.invalid")
    assert press_send(client, compose_url, page).status_code == 302
    for raw in delivered(mailbox, mail_user, smtp):
        assert_arrives_as_shown(raw, page)
    assert smtp.received[0].rcpt_tos == ("carol@example.org",)


def test_a_literal_encoded_word_typed_in_the_subject_arrives_as_typed(
    mailbox, mail_user, smtp, bob
):
    original = receive(mail_user, mailbox, original_with())
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)
    page.values["subject"] = f"Re: {LITERAL} and {encoded('Grüße')}"

    assert press_send(client, compose_url, page).status_code == 302
    for raw in delivered(mailbox, mail_user, smtp):
        assert_arrives_as_shown(raw, page)


@pytest.mark.parametrize("field", ["subject", "to", "cc", "bcc"])
def test_typed_text_whose_encoded_words_decode_to_line_breaks_is_a_form_error(
    mailbox, mail_user, smtp, bob, field
):
    original = receive(mail_user, mailbox, original_with())
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)
    hostile = {
        "subject": f"Re: {INJECTION}",
        "to": f"{NAME_INJECTION} <carol@example.org>",
        "cc": f'"{NAME_INJECTION}" <dan@example.net>',
        "bcc": f"{NAME_INJECTION} <boss@example.net>",
    }
    page.values[field] = hostile[field]

    response = press_send(client, compose_url, page)

    assert response.status_code == 400
    assert "also once the encoded words in it" in response.content.decode()
    assert OutgoingMessage.objects.get().state == OutgoingMessage.State.DRAFT
    assert smtp.received == []


@pytest.mark.parametrize(
    ("header", "field"),
    [("Reply_To", "to"), ("From", "to"), ("Cc", "cc"), ("To", "cc")],
)
def test_a_name_encoded_twice_is_prefilled_as_one_line_and_sent_as_shown(
    mailbox, mail_user, smtp, bob, header, field
):
    hostile = f"{encoded(NAME_INJECTION)} <orders@example.org>"
    if header == "To":
        hostile = f"Support <{mailbox.email_address}>, {hostile}"
    original = receive(mail_user, mailbox, original_with(**{header: hostile}))
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original, kind="reply_all")
    page = shown(client, compose_url)

    assert f'"{FLATTENED_NAME}" <orders@example.org>' in page.values[field]
    assert press_send(client, compose_url, page).status_code == 302
    for raw in delivered(mailbox, mail_user, smtp):
        assert_arrives_as_shown(raw, page)
    assert "victim@example.net" not in smtp.received[0].rcpt_tos


def test_a_literal_encoded_word_typed_in_a_name_arrives_as_typed(mailbox, mail_user, smtp, bob):
    original = receive(mail_user, mailbox, original_with())
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)
    page.values["to"] = f"{LITERAL} <carol@example.org>"
    page.values["cc"] = f'"{LITERAL} Ünal" <u@example.net>'

    assert press_send(client, compose_url, page).status_code == 302
    for raw in delivered(mailbox, mail_user, smtp):
        sent = assert_arrives_as_shown(raw, page)
        assert people(sent, "To") == [(LITERAL, "carol@example.org")]
        assert people(sent, "Cc") == [(f"{LITERAL} Ünal", "u@example.net")]


@pytest.mark.parametrize(
    ("display_name", "shown_as"),
    [(NAME_INJECTION, FLATTENED_NAME), (LITERAL, LITERAL), (encoded(LITERAL), encoded(LITERAL))],
)
def test_the_teams_own_name_in_from_arrives_as_the_page_shows_it(
    mailbox, mail_user, smtp, bob, display_name, shown_as
):
    mailbox.display_name = display_name
    mailbox.save()
    original = receive(mail_user, mailbox, original_with())
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)

    assert page.sender.strip() == f"{shown_as} <{mailbox.email_address}>"
    assert press_send(client, compose_url, page).status_code == 302
    for raw in delivered(mailbox, mail_user, smtp):
        assert_arrives_as_shown(raw, page)


@pytest.mark.parametrize(
    ("header", "in_reply_to", "references"),
    [
        ("Message-ID", None, FIRST),
        ("References", PARENT, f"{FIRST} {PARENT}"),
        ("In-Reply-To", PARENT, PARENT),
    ],
)
def test_message_ids_that_would_decode_to_headers_are_left_out_of_the_thread(
    mailbox, mail_user, smtp, bob, header, in_reply_to, references
):
    hostile = f"<{ID_INJECTION}@evil.invalid>"
    headers = {
        "Message-ID": {"Message_ID": hostile},
        "References": {"References": f"<order-1234-1@example.org> {hostile}"},
        "In-Reply-To": {"References": hostile, "In_Reply_To": hostile},
    }[header]
    original = receive(mail_user, mailbox, original_with(**headers))
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)

    assert press_send(client, compose_url, page).status_code == 302
    for raw in delivered(mailbox, mail_user, smtp):
        without = () if in_reply_to else ("in-reply-to",)
        sent = assert_arrives_as_shown(raw, page, without=without)
        assert sent["In-Reply-To"] == in_reply_to
        assert " ".join(str(sent["References"]).split()) == references


@pytest.mark.parametrize("filename", [FILE_INJECTION + ".pdf", LITERAL + ".pdf"])
def test_an_uploaded_file_name_arrives_as_the_page_shows_it(
    mailbox, mail_user, smtp, bob, filename
):
    original = receive(mail_user, mailbox, original_with())
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)
    upload = SimpleUploadedFile(filename, b"%PDF-1.4\n", content_type="application/pdf")
    assert client.post(compose_url, {**page.values, "files": upload}).status_code == 302
    page = shown(client, compose_url)

    [listed] = page.attachments
    assert press_send(client, compose_url, page).status_code == 302
    for raw in delivered(mailbox, mail_user, smtp):
        assert_arrives_as_shown(raw, page, files=(listed,))


def test_a_forwarded_file_name_encoded_twice_arrives_as_the_page_shows_it(
    mailbox, mail_user, smtp, bob
):
    with_attachment = f"""\
From: Carol Customer <carol@example.org>
To: SHARED
Subject: Invoice attached
Message-ID: <invoice-1@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

See attachment.
--b1
Content-Type: application/pdf
Content-Disposition: attachment; filename="{encoded(FILE_INJECTION)}"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b1--
"""
    original = receive(mail_user, mailbox, with_attachment.encode())
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original, kind="forward")
    page = shown(client, compose_url)
    page.values["to"] = "Partner <partner@example.net>"

    [listed] = page.attachments
    assert listed == "invoice.pdf X-Injected: yes Content-Type: text/html"
    assert press_send(client, compose_url, page).status_code == 302
    for raw in delivered(mailbox, mail_user, smtp):
        assert_arrives_as_shown(raw, page, without=("in-reply-to",), files=(listed,))


# -- the form's other fields ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "-1", "0", "one", "99999999999999999999999"])
def test_a_malformed_attachment_id_to_remove_is_a_form_error(mailbox, mail_user, bob, value):
    original = receive(mail_user, mailbox, original_with())
    draft = replies.start_reply(message=original, kind="reply", actor=bob)
    replies.add_attachment(
        draft=draft, filename="a.pdf", content_type="application/pdf", data=b"%PDF", actor=bob
    )
    client = client_for(bob)
    compose_url = reverse("compose", kwargs={"mailbox": mailbox.name, "outgoing_id": draft.pk})
    page = shown(client, compose_url)

    response = client.post(compose_url, {**page.values, "remove_attachment": value})

    assert response.status_code == 400
    assert "Remove: " in response.content.decode()
    assert draft.attachments.count() == 1


def recipients(count: int, start: int = 0) -> str:
    return ", ".join(f"Customer {n} <c{n}@example.org>" for n in range(start, start + count))


def test_it_refuses_more_distinct_recipients_than_max_recipients(mailbox, mail_user, smtp, bob):
    original = receive(mail_user, mailbox, original_with())
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)
    assert (
        "Up to 100 recipients in To, Cc and Bcc together."
        in client.get(compose_url).content.decode()
    )

    # 100 distinct addresses, 30 more repeated across the fields: allowed
    page.values.update(to=recipients(60), cc=recipients(60, 30), bcc=recipients(10, 90))
    page.values["to"] = page.values["to"].replace(
        "Customer 0 <c0@example.org>", "carol@example.org"
    )
    one_more = {**page.values, "bcc": recipients(11, 90), "send": "1"}
    refused = client.post(compose_url, one_more)

    assert refused.status_code == 400
    assert "at most 100 recipients" in refused.content.decode()
    assert "this one has 101" in refused.content.decode()
    assert press_send(client, compose_url, page).status_code == 302
    delivery.deliver(OutgoingMessage.objects.get().pk)
    assert len(smtp.received[0].rcpt_tos) == 100


def test_it_refuses_thousands_of_recipients_without_reading_them_all(mailbox, mail_user, smtp, bob):
    original = receive(mail_user, mailbox, original_with())
    client = client_for(bob)
    compose_url = open_compose(client, mailbox, original)
    page = shown(client, compose_url)
    page.values.update(to=recipients(5000), cc=recipients(3000, 5000))

    response = press_send(client, compose_url, page)

    assert response.status_code == 400
    assert "at most 100 recipients" in response.content.decode()
    assert OutgoingMessage.objects.get().state == OutgoingMessage.State.DRAFT
