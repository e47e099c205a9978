"""The copy in Sent of a reply sent while the IMAP server was down: kept pending, retried by
the sweeper and the "Save to Sent" button, found by Message-ID before any APPEND, and never
a reason to send the mail again. A real SMTP server (aiosmtpd) and the real Dovecot."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from mailsync.engine.flags import SEEN
from mailsync.models import Activity
from teaminbox import delivery
from teaminbox.celery import app
from teaminbox.models import Membership, OutgoingMessage
from teaminbox.services import outgoing as replies
from teaminbox.tasks import sweep_outgoing
from tests.support.mail import client_for, receive
from tests.support.personas import PASSWORD
from tests.support.smtp import (
    QUIET_AUTH_WARNING,
    SMTP_PASSWORD,
    SMTP_USER,
    free_port,
    smtp_server,
)

pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings(QUIET_AUTH_WARNING)]

ORIGINAL = b"""\
From: Carol Customer <carol@example.org>
To: Support <SHARED>
Subject: Where is my refund?
Date: Tue, 03 Dec 2024 10:15:00 +0000
Message-ID: <refund-1@example.org>

Hello, I am still waiting for my refund.
"""

PENDING, SAVED = "pending", "saved"  # OutgoingMessage.SentCopy


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


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Tasks the sweeper enqueues run in this process, as a worker would run them."""
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@contextmanager
def imap_unreachable(mailbox) -> Iterator[None]:
    """The IMAP server is down: the mailbox points at a closed port, SMTP still works."""
    port = mailbox.port
    mailbox.port = free_port()
    mailbox.save()
    try:
        yield
    finally:
        mailbox.port = port
        mailbox.save()


def later(outgoing: OutgoingMessage, *, minutes: int = 61) -> None:
    """Time passes: the copy's backoff (at most an hour) has run out."""
    OutgoingMessage.objects.filter(pk=outgoing.pk).update(
        sent_copy_retry_at=timezone.now() - timedelta(minutes=minutes)
    )


def reply_while_imap_is_down(mailbox, mail_user, actor) -> OutgoingMessage:
    original = receive(mail_user, mailbox, ORIGINAL)
    draft = replies.start_reply(message=original, kind="reply", actor=actor)
    outgoing = replies.send_reply(draft=draft, actor=actor)
    with imap_unreachable(mailbox):
        result = delivery.deliver(outgoing.pk)
    assert result is not None and result.sent and not result.saved_to_sent
    outgoing.refresh_from_db()
    return outgoing


def test_a_reply_sent_while_imap_is_down_goes_out_once_and_its_copy_stays_pending(
    mailbox, mail_user, smtp, bob
):
    outgoing = reply_while_imap_is_down(mailbox, mail_user, bob)

    assert len(smtp.received) == 1
    assert outgoing.state == "sent"
    assert outgoing.sent_copy == PENDING
    assert "connection refused" in outgoing.sent_copy_error
    assert outgoing.sent_copy_retry_at is not None and outgoing.sent_copy_claimed_at is None
    assert mail_user.uids("Sent") == []
    assert Activity.objects.filter(verb="sent_copy_failed").count() == 1


def test_the_sweeper_saves_exactly_one_copy_once_the_server_is_back(
    mailbox, mail_user, smtp, bob, eager_tasks
):
    outgoing = reply_while_imap_is_down(mailbox, mail_user, bob)
    later(outgoing)

    sweep_outgoing.apply()

    [uid] = mail_user.uids("Sent")
    assert mail_user.raw(uid, "Sent") == smtp.received[0].raw
    assert SEEN in mail_user.flags("Sent")[uid]
    outgoing.refresh_from_db()
    assert (outgoing.sent_copy, outgoing.sent_folder, outgoing.sent_uid) == (SAVED, "Sent", uid)
    assert outgoing.sent_copy_error == ""
    saved = Activity.objects.get(verb="sent_copy_saved")
    assert saved.message_id == outgoing.in_reply_to_id
    assert saved.detail["found_in_sent"] is False

    later(outgoing)
    sweep_outgoing.apply()
    assert delivery.save_sent_copy(outgoing.pk, actor=bob) is None

    assert mail_user.uids("Sent") == [uid]
    assert len(smtp.received) == 1
    assert Activity.objects.filter(verb="sent_copy_saved").count() == 1


def test_the_sweeper_keeps_retrying_with_backoff_while_the_server_is_down(
    mailbox, mail_user, smtp, bob, eager_tasks
):
    outgoing = reply_while_imap_is_down(mailbox, mail_user, bob)

    sweep_outgoing.apply()  # the first backoff has not run out: nothing is tried
    outgoing.refresh_from_db()
    assert outgoing.sent_copy_attempts == 1

    with imap_unreachable(mailbox):
        later(outgoing)
        sweep_outgoing.apply()
    outgoing.refresh_from_db()
    assert outgoing.sent_copy == PENDING and outgoing.sent_copy_attempts == 2
    first_wait = timedelta(minutes=5)
    assert outgoing.sent_copy_retry_at is not None
    assert outgoing.sent_copy_retry_at - timezone.now() > first_wait  # it waits longer now
    assert Activity.objects.filter(verb="sent_copy_failed").count() == 1  # not once a retry

    later(outgoing)
    sweep_outgoing.apply()
    assert len(mail_user.uids("Sent")) == 1
    assert len(smtp.received) == 1


class WorkerKilled(Exception):
    pass


def test_a_copy_appended_before_a_crash_is_found_by_message_id_and_not_appended_again(
    mailbox, mail_user, smtp, bob, eager_tasks, monkeypatch
):
    original = receive(mail_user, mailbox, ORIGINAL)
    draft = replies.start_reply(message=original, kind="reply", actor=bob)
    outgoing = replies.send_reply(draft=draft, actor=bob)

    def killed(*args, **kwargs):
        raise WorkerKilled("the worker died after the APPEND, before recording it")

    with monkeypatch.context() as patch:
        patch.setattr(delivery, "_record_copy_saved", killed)
        with pytest.raises(WorkerKilled):
            delivery.deliver(outgoing.pk)
    [uid] = mail_user.uids("Sent")
    outgoing.refresh_from_db()
    assert outgoing.sent_copy == PENDING and outgoing.sent_uid is None

    sweep_outgoing.apply()  # the dead worker's claim still holds: nothing happens
    assert mail_user.uids("Sent") == [uid]
    OutgoingMessage.objects.filter(pk=outgoing.pk).update(
        sent_copy_claimed_at=timezone.now() - delivery.SENT_COPY_LEASE - timedelta(seconds=1)
    )
    sweep_outgoing.apply()

    assert mail_user.uids("Sent") == [uid]
    outgoing.refresh_from_db()
    assert (outgoing.sent_copy, outgoing.sent_uid) == (SAVED, uid)
    assert Activity.objects.get(verb="sent_copy_saved").detail["found_in_sent"] is True
    assert len(smtp.received) == 1


def test_the_message_page_shows_the_pending_copy_and_save_to_sent_files_it_once(
    mailbox, mail_user, smtp, bob
):
    outgoing = reply_while_imap_is_down(mailbox, mail_user, bob)
    message_url = reverse(
        "message", kwargs={"mailbox": mailbox.name, "message_id": outgoing.in_reply_to_id}
    )
    save_url = reverse("save_to_sent", kwargs={"mailbox": mailbox.name, "outgoing_id": outgoing.pk})
    client = client_for(bob)

    page = client.get(message_url).content.decode()
    assert "Sent, but not yet saved to Sent: " in page
    assert "connection refused" in page
    assert save_url in page

    saved = client.post(save_url, follow=True)  # no JavaScript: a flash on the message page
    assert saved.redirect_chain == [(message_url, 302)]
    assert "Saved to Sent." in saved.content.decode()
    assert "not yet saved to Sent" not in saved.content.decode()
    [uid] = mail_user.uids("Sent")
    assert Activity.objects.get(verb="sent_copy_saved").actor == bob

    again = client.post(save_url, headers={"HX-Request": "true"})
    assert again.status_code == 200
    assert 'id="reply-area"' in again.content.decode()
    assert "The copy is already in Sent." in again.content.decode()
    assert mail_user.uids("Sent") == [uid]
    assert len(smtp.received) == 1


def test_the_button_tries_now_despite_the_backoff_and_says_why_it_failed(
    mailbox, mail_user, smtp, bob
):
    outgoing = reply_while_imap_is_down(mailbox, mail_user, bob)
    save_url = reverse("save_to_sent", kwargs={"mailbox": mailbox.name, "outgoing_id": outgoing.pk})

    with imap_unreachable(mailbox):
        answer = client_for(bob).post(save_url, headers={"HX-Request": "true"})

    assert answer.status_code == 200
    assert "Still not saved to Sent: " in answer.content.decode()
    assert "Save to Sent" in answer.content.decode()
    outgoing.refresh_from_db()
    assert outgoing.sent_copy == PENDING and outgoing.sent_copy_attempts == 2
    assert len(smtp.received) == 1


def test_viewers_may_not_save_to_sent_and_strangers_do_not_see_the_message(
    mailbox, mail_user, smtp, bob, charlie
):
    outgoing = reply_while_imap_is_down(mailbox, mail_user, bob)
    viewer = User.objects.create_user("victor", "victor@example.test", PASSWORD)
    Membership.objects.create(user=viewer, mailbox=mailbox, role=Membership.Role.VIEWER)
    save_url = reverse("save_to_sent", kwargs={"mailbox": mailbox.name, "outgoing_id": outgoing.pk})
    message_url = reverse(
        "message", kwargs={"mailbox": mailbox.name, "message_id": outgoing.in_reply_to_id}
    )

    assert client_for(viewer).post(save_url).status_code == 403
    assert client_for(charlie).post(save_url).status_code == 404
    assert client_for(bob).get(save_url).status_code == 405
    viewer_page = client_for(viewer).get(message_url).content.decode()
    assert "not yet saved to Sent" in viewer_page and save_url not in viewer_page
    outgoing.refresh_from_db()
    assert outgoing.sent_copy == PENDING and outgoing.sent_copy_attempts == 1
    assert mail_user.uids("Sent") == []
