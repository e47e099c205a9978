"""A staff change that never reaches the server says so: in the message's history and in
the admin's outbox list."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from mailsync.models import Activity, FlagChange, Message
from mailsync.runner import push_folder_changes, sync_mailbox
from tests.support.mail import client_for
from tests.support.personas import PASSWORD
from tests.test_sync import make_mail

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db) -> Client:
    User.objects.create_superuser("root", "root@example.test", PASSWORD)
    client = Client()
    assert client.login(username="root", password=PASSWORD)
    return client


def refused_change(shared_mailbox, mail_user, bob) -> FlagChange:
    """A keyword Dovecot answers BAD to (it slipped past the service's checks somehow),
    pushed until the outbox gives up on it."""
    uid = mail_user.append(make_mail("Refused"))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(uid=uid)
    change = FlagChange.objects.create(
        message=message, folder=message.folder, uidvalidity=message.uidvalidity,
        uid=message.uid, flag="bad(keyword", add=True, actor=bob,
    )  # fmt: skip
    for _ in range(3):
        push_folder_changes(message.folder_id)
    change.refresh_from_db()
    assert change.state == FlagChange.State.FAILED
    return change


def test_a_change_the_server_refuses_is_in_the_messages_history(shared_mailbox, mail_user, bob):
    change = refused_change(shared_mailbox, mail_user, bob)

    entry = Activity.objects.get(message=change.message, verb="push_failed")
    assert entry.actor == bob
    assert entry.detail["flag"] == "bad(keyword"
    assert "refused it 3 times" in entry.detail["error"]
    page = client_for(bob).get(
        reverse("message", kwargs={"mailbox": shared_mailbox.name, "message_id": change.message_id})
    )
    assert page.status_code == 200
    # what was refused and why, not "bob push failed"
    history = page.content.decode().split('id="history"')[1]
    assert "setting bad(keyword was refused by the server:" in history
    assert "refused it 3 times" in history


def test_the_admins_outbox_list_shows_what_failed_and_why(
    shared_mailbox, mail_user, bob, admin_client
):
    change = refused_change(shared_mailbox, mail_user, bob)
    Message.objects.filter(pk=change.message_id).update(subject="Order 4711")

    page = admin_client.get(
        reverse("admin:mailsync_flagchange_changelist"), {"state__exact": "failed"}
    )

    assert page.status_code == 200
    text = page.content.decode()
    assert "+bad(keyword" in text
    assert "Order 4711" in text
    assert "the server refused it 3 times" in text
