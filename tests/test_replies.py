"""Replies from the app, end to end: a real SMTP server on loopback (aiosmtpd) receives
them, the real Dovecot gets the Sent copy and the original's \\Answered."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from mailsync.engine.flags import ANSWERED, SEEN
from mailsync.models import Activity, Message
from mailsync.runner import push_folder_changes
from teaminbox import delivery
from teaminbox.models import Membership, OutgoingMessage
from teaminbox.services import outgoing as replies
from teaminbox.tasks import send_outgoing
from tests.support.mail import INVOICE_WITH_ATTACHMENT, client_for, receive
from tests.support.personas import PASSWORD
from tests.support.smtp import QUIET_AUTH_WARNING, SMTP_PASSWORD, SMTP_USER, smtp_server

pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings(QUIET_AUTH_WARNING)]

ORIGINAL = b"""\
From: Carol Customer <carol@example.org>
To: Support <SHARED>, Dan Colleague <dan@example.net>
Cc: erin@example.net
Subject: Re: Order 1234 is late
Date: Tue, 03 Dec 2024 10:15:00 +0000
Message-ID: <order-1234-3@example.org>
In-Reply-To: <order-1234-2@example.test>
References: <order-1234-1@example.org> <order-1234-2@example.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello team,

my order has not arrived.
> an older quote
"""


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


def queue_reply(message, actor, *, kind="reply", **fields) -> OutgoingMessage:
    draft = replies.start_reply(message=message, kind=kind, actor=actor)
    if fields:
        values = {name: getattr(draft, name) for name in replies.EDITABLE_FIELDS}
        values.update(fields)
        draft = replies.save_draft(draft=draft, actor=actor, **values)
    return replies.send_reply(draft=draft, actor=actor)


def test_it_sends_a_reply_from_the_shared_address_with_threading_headers(
    mailbox, mail_user, smtp, bob
):
    original = receive(mail_user, mailbox, ORIGINAL)

    outgoing = queue_reply(original, bob)
    result = delivery.deliver(outgoing.pk)

    assert result is not None and result.sent
    [arrived] = smtp.received
    assert arrived.authenticated
    assert arrived.mail_from == mailbox.email_address
    assert arrived.rcpt_tos == ("carol@example.org",)
    sent = arrived.parsed()
    assert sent["From"] == f"Support <{mailbox.email_address}>"
    assert sent["To"] == "Carol Customer <carol@example.org>"
    assert sent["Subject"] == "Re: Order 1234 is late"
    assert sent["In-Reply-To"] == "<order-1234-3@example.org>"
    assert sent["References"].split() == [
        "<order-1234-1@example.org>",
        "<order-1234-2@example.test>",
        "<order-1234-3@example.org>",
    ]
    assert sent["Message-ID"] == f"<{outgoing.message_id}>"
    assert sent["Date"]
    text = sent.get_content()
    assert "On Tue, 03 Dec 2024 at " in text and "Carol Customer <carol@example.org> wrote:" in text
    assert "> my order has not arrived." in text
    assert ">> an older quote" in text
    stored = OutgoingMessage.objects.get(pk=outgoing.pk).raw
    assert stored is not None
    assert arrived.raw == stored.read()


def test_it_files_the_exact_bytes_in_sent_and_marks_the_original_answered_on_the_server(
    mailbox, mail_user, smtp, bob
):
    original = receive(mail_user, mailbox, ORIGINAL)

    outgoing = queue_reply(original, bob)
    delivery.deliver(outgoing.pk)
    push_folder_changes(original.folder_id)  # what the worker's push task does on commit

    [sent_uid] = mail_user.uids("Sent")
    assert mail_user.raw(sent_uid, "Sent") == smtp.received[0].raw
    assert SEEN in mail_user.flags("Sent")[sent_uid]
    assert ANSWERED in mail_user.flags("INBOX")[original.uid]
    outgoing.refresh_from_db()
    assert (outgoing.state, outgoing.sent_folder, outgoing.sent_uid) == ("sent", "Sent", sent_uid)
    verbs = set(Activity.objects.filter(message=original).values_list("verb", flat=True))
    assert {"replied", "flag_added"} <= verbs


def test_it_leaves_sent_alone_when_the_server_files_sent_mail_itself(mailbox, mail_user, smtp, bob):
    mailbox.server_saves_sent = True
    mailbox.save()
    original = receive(mail_user, mailbox, ORIGINAL)

    delivery.deliver(queue_reply(original, bob).pk)

    assert len(smtp.received) == 1
    assert mail_user.uids("Sent") == []


def test_it_sends_once_when_the_task_runs_twice(mailbox, mail_user, smtp, bob):
    original = receive(mail_user, mailbox, ORIGINAL)
    outgoing = queue_reply(original, bob)

    send_outgoing.apply(args=(outgoing.pk,))
    send_outgoing.apply(args=(outgoing.pk,))
    assert delivery.deliver(outgoing.pk) is None

    assert len(smtp.received) == 1
    assert len(mail_user.uids("Sent")) == 1
    assert OutgoingMessage.objects.get(pk=outgoing.pk).attempts == 1


def test_it_cannot_queue_the_same_draft_twice(mailbox, mail_user, bob):
    original = receive(mail_user, mailbox, ORIGINAL)
    outgoing = queue_reply(original, bob)

    with pytest.raises(replies.NotADraft):
        replies.send_reply(draft=outgoing, actor=bob)


def test_it_never_resends_a_message_a_crashed_worker_left_sending(mailbox, mail_user, smtp, bob):
    original = receive(mail_user, mailbox, ORIGINAL)
    outgoing = queue_reply(original, bob)
    assert delivery.claim(outgoing.pk)  # ...and the worker died before marking it sent
    OutgoingMessage.objects.filter(pk=outgoing.pk).update(
        claimed_at=timezone.now() - timedelta(hours=1)
    )

    assert delivery.deliver(outgoing.pk) is None
    assert delivery.fail_stale_sending() == 1

    outgoing.refresh_from_db()
    assert outgoing.state == "failed"
    assert "may have been delivered" in outgoing.last_error
    assert smtp.received == []


def test_reply_uses_reply_to_and_reply_all_leaves_out_the_shared_address(mailbox, mail_user, bob):
    original = receive(mail_user, mailbox, ORIGINAL)
    with_reply_to = receive(
        mail_user,
        mailbox,
        ORIGINAL.replace(
            b"Message-ID: <order-1234-3", b"Reply-To: orders@example.org\nMessage-ID: <order-1234-9"
        ),
    )

    reply_all = replies.start_reply(message=original, kind="reply_all", actor=bob)
    reply = replies.start_reply(message=with_reply_to, kind="reply", actor=bob)

    assert reply_all.to == "Carol Customer <carol@example.org>"
    assert reply_all.cc == "Dan Colleague <dan@example.net>, erin@example.net"
    assert mailbox.email_address not in reply_all.to + reply_all.cc
    assert reply.to == "orders@example.org"
    assert reply.subject == "Re: Order 1234 is late"


def test_reply_all_reaches_everyone_but_the_team_itself(mailbox, mail_user, smtp, bob):
    original = receive(mail_user, mailbox, ORIGINAL)

    delivery.deliver(queue_reply(original, bob, kind="reply_all", bcc="boss@example.net").pk)

    [arrived] = smtp.received
    assert set(arrived.rcpt_tos) == {
        "carol@example.org",
        "dan@example.net",
        "erin@example.net",
        "boss@example.net",
    }
    assert "Bcc" not in arrived.parsed()
    assert "boss@example.net" not in arrived.raw.decode()


def test_forward_carries_the_original_attachment(mailbox, mail_user, smtp, bob):
    original = receive(mail_user, mailbox, INVOICE_WITH_ATTACHMENT)

    outgoing = queue_reply(original, bob, kind="forward", to="Partner <partner@example.net>")
    delivery.deliver(outgoing.pk)
    push_folder_changes(original.folder_id)

    [arrived] = smtp.received
    sent = arrived.parsed()
    assert sent["Subject"] == "Fwd: Invoice attached"
    assert sent["To"] == "Partner <partner@example.net>"
    assert "In-Reply-To" not in sent
    [part] = list(sent.iter_attachments())
    assert part.get_filename() == "invoice.pdf"
    assert part.get_content_type() == "application/pdf"
    assert part.get_content() == b"%PDF-1.4\n"
    assert "---------- Forwarded message ----------" in sent.get_body().get_content()
    assert ANSWERED not in mail_user.flags("INBOX")[original.uid]


def test_a_wrong_smtp_password_fails_clearly_and_sends_nothing(mailbox, mail_user, smtp, bob):
    mailbox.set_smtp_password("not-the-password")
    mailbox.save()
    original = receive(mail_user, mailbox, ORIGINAL)
    outgoing = queue_reply(original, bob)

    result = delivery.deliver(outgoing.pk)

    assert result is not None and not result.sent
    outgoing.refresh_from_db()
    assert outgoing.state == "failed"
    assert "login refused" in outgoing.last_error
    assert smtp.received == []
    assert Activity.objects.filter(message=original, verb="reply_failed").exists()
    assert mail_user.uids("Sent") == []
    assert not Message.objects.get(pk=original.pk).answered


def test_it_refuses_plaintext_when_starttls_is_required(mailbox, mail_user, smtp, bob):
    mailbox.smtp_security = "starttls"
    mailbox.save()
    original = receive(mail_user, mailbox, ORIGINAL)
    outgoing = queue_reply(original, bob)

    delivery.deliver(outgoing.pk)

    outgoing.refresh_from_db()
    assert outgoing.state == "failed"
    assert "does not offer STARTTLS" in outgoing.last_error
    assert smtp.received == [] and smtp.sink.auth_attempts == []


# -- the pages ---------------------------------------------------------------------------


def test_it_replies_from_the_page_with_a_flash_and_a_history_entry(
    mailbox, mail_user, smtp, bob, django_capture_on_commit_callbacks
):
    original = receive(mail_user, mailbox, ORIGINAL)
    client = client_for(bob)
    message_url = reverse("message", kwargs={"mailbox": mailbox.name, "message_id": original.pk})
    assert "?kind=reply_all" in client.get(message_url).content.decode()

    opened = client.get(
        reverse("reply", kwargs={"mailbox": mailbox.name, "message_id": original.pk})
        + "?kind=reply"
    )
    assert opened.status_code == 302
    page = client.get(opened["Location"])
    assert "Re: Order 1234 is late" in page.content.decode()
    draft = OutgoingMessage.objects.get()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        sent = client.post(
            opened["Location"],
            {
                "to": draft.to,
                "cc": "",
                "bcc": "",
                "subject": draft.subject,
                "body_text": "We are on it.\n" + draft.body_text,
                "send": "1",
            },
        )
    assert sent.status_code == 302 and sent["Location"] == message_url
    assert callbacks, "delivery is enqueued on commit"
    delivery.deliver(draft.pk)  # what the enqueued task does

    after = client.get(message_url).content.decode()
    assert "Reply queued" in after
    assert "replied" in after and "bob" in after
    assert smtp.received[0].parsed().get_content().startswith("We are on it.")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hello\r\nBcc: victim@example.net"),
        ("subject", "Hello\nX-Injected: yes"),
        ("to", "Carol\r\nBcc: victim@example.net <carol@example.org>"),
        ("to", '"Carol\nBcc: victim@example.net" <carol@example.org>'),
        ("to", "carol@example.org\r\nBcc: victim@example.net"),
        ("cc", "victim@example.net\nX-Injected: yes"),
    ],
)
def test_it_refuses_line_breaks_in_headers_and_sends_nothing(
    mailbox, mail_user, smtp, bob, field, value
):
    original = receive(mail_user, mailbox, ORIGINAL)
    draft = replies.start_reply(message=original, kind="reply", actor=bob)
    form = {name: getattr(draft, name) for name in replies.EDITABLE_FIELDS}
    form[field] = value
    client = client_for(bob)
    url = reverse("compose", kwargs={"mailbox": mailbox.name, "outgoing_id": draft.pk})

    response = client.post(url, {**form, "send": "1"})

    assert response.status_code == 400
    assert "must be one line" in response.content.decode()
    draft.refresh_from_db()
    assert draft.state == "draft"
    assert delivery.deliver(draft.pk) is None  # never queued, so nothing to send
    assert smtp.received == []


def test_it_refuses_addresses_it_cannot_read(mailbox, mail_user, bob):
    original = receive(mail_user, mailbox, ORIGINAL)
    draft = replies.start_reply(message=original, kind="reply", actor=bob)
    for bad in ["carol", "carol@example.org)<bob@example.org>", "a@b@c.org", "Team: a@x.org;"]:
        values = {name: getattr(draft, name) for name in replies.EDITABLE_FIELDS}
        draft = replies.save_draft(draft=draft, actor=bob, **{**values, "to": bad})
        with pytest.raises(replies.ReplyInvalid) as caught:
            replies.send_reply(draft=draft, actor=bob)
        assert "to" in caught.value.errors


def test_drafts_autosave_and_come_back_on_reload(mailbox, mail_user, bob):
    original = receive(mail_user, mailbox, ORIGINAL)
    client = client_for(bob)
    reply_url = (
        reverse("reply", kwargs={"mailbox": mailbox.name, "message_id": original.pk})
        + "?kind=reply"
    )
    compose_url = client.get(reply_url)["Location"]
    draft = OutgoingMessage.objects.get()

    saved = client.post(
        reverse("draft_save", kwargs={"mailbox": mailbox.name, "outgoing_id": draft.pk}),
        {
            "to": draft.to,
            "cc": "",
            "bcc": "",
            "subject": draft.subject,
            "body_text": "Half-written answer",
        },
        headers={"HX-Request": "true"},
    )

    assert saved.status_code == 200
    assert "Saved" in saved.content.decode() and 'id="draft-status"' in saved.content.decode()
    assert client.get(reply_url)["Location"] == compose_url  # the same draft, continued
    assert "Half-written answer" in client.get(compose_url).content.decode()
    assert OutgoingMessage.objects.count() == 1


def test_viewers_may_not_reply_and_strangers_do_not_see_the_mailbox(
    mailbox, mail_user, bob, charlie
):
    original = receive(mail_user, mailbox, ORIGINAL)
    viewer = User.objects.create_user("victor", "victor@example.test", PASSWORD)
    Membership.objects.create(user=viewer, mailbox=mailbox, role=Membership.Role.VIEWER)
    draft = replies.start_reply(message=original, kind="reply", actor=bob)
    reply_url = reverse("reply", kwargs={"mailbox": mailbox.name, "message_id": original.pk})
    compose_url = reverse("compose", kwargs={"mailbox": mailbox.name, "outgoing_id": draft.pk})
    save_url = reverse("draft_save", kwargs={"mailbox": mailbox.name, "outgoing_id": draft.pk})

    assert client_for(viewer).get(reply_url).status_code == 403
    assert client_for(viewer).post(compose_url, {"send": "1"}).status_code == 403
    assert client_for(charlie).get(reply_url).status_code == 404
    assert client_for(charlie).get(compose_url).status_code == 404
    assert client_for(charlie).post(save_url, {"body_text": "x"}).status_code == 404
    assert (
        "?kind=reply"
        not in client_for(viewer)
        .get(reverse("message", kwargs={"mailbox": mailbox.name, "message_id": original.pk}))
        .content.decode()
    )


def test_a_colleague_cannot_edit_someone_elses_draft(mailbox, mail_user, alice, bob):
    original = receive(mail_user, mailbox, ORIGINAL)
    draft = replies.start_reply(message=original, kind="reply", actor=bob)
    save_url = reverse("draft_save", kwargs={"mailbox": mailbox.name, "outgoing_id": draft.pk})

    assert client_for(alice).post(save_url, {"body_text": "mine now"}).status_code == 403
    draft.refresh_from_db()
    assert draft.body_text != "mine now"


def test_received_bytes_parse_as_clean_utf8_7bit_mail(mailbox, mail_user, smtp, bob):
    original = receive(mail_user, mailbox, ORIGINAL)

    outgoing = queue_reply(
        original, bob, subject="Re: Bestellung überfällig", body_text="Grüße aus Köln\n"
    )
    delivery.deliver(outgoing.pk)

    raw = smtp.received[0].raw
    assert raw.isascii()
    sent = email.message_from_bytes(raw, policy=email.policy.default)
    assert sent["Subject"] == "Re: Bestellung überfällig"
    assert b"=0D" not in raw
    assert sent.get_content().replace("\r\n", "\n") == "Grüße aus Köln\n"
