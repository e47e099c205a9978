"""The first page after login: the mailboxes, or what to do when there are none."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from mailsync.models import Mailbox
from teaminbox.models import Membership
from tests.support.personas import PASSWORD

pytestmark = pytest.mark.django_db


def logged_in(user: User) -> Client:
    client = Client()
    assert client.login(username=user.get_username(), password=PASSWORD)
    return client


def test_it_points_an_administrator_without_mailboxes_to_the_add_form(charlie):
    root = User.objects.create_superuser("root", "root@example.test", PASSWORD)
    add_form = reverse("admin:mailsync_mailbox_add")

    as_admin = logged_in(root).get(reverse("home")).content.decode()
    as_user = logged_in(charlie).get(reverse("home")).content.decode()

    assert f'href="{add_form}"' in as_admin
    assert "manage.py addmailbox support" in as_admin
    assert "Ask an administrator" not in as_admin
    assert "Ask an administrator" in as_user
    assert add_form not in as_user


def test_it_says_a_pop3_mailbox_is_not_synced(alice):
    pop3 = Mailbox(name="legacy", protocol="pop3", host="pop.example.test", port=995)
    pop3.set_password("secret")
    pop3.save()
    imap = Mailbox(name="support", host="imap.example.test", port=993)
    imap.set_password("secret")
    imap.save()
    for mailbox in (pop3, imap):
        Membership.objects.create(user=alice, mailbox=mailbox, role=Membership.Role.AGENT)
    client = logged_in(alice)

    home = client.get(reverse("home")).content.decode()
    status = client.get(reverse("sync_status", kwargs={"mailbox": "legacy"})).content.decode()

    sentence = "Not synced: POP3 sync is not available yet"
    assert home.count(sentence) == 1  # the IMAP mailbox is just not synced yet
    assert sentence in status
