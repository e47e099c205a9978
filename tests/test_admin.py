"""The admin console: mailboxes with write-only credentials, memberships, sync health."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from mailsync.models import Mailbox
from mailsync.runner import sync_mailbox
from teaminbox.models import Membership
from tests.support.personas import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db):
    User.objects.create_superuser("root", "root@example.test", PASSWORD)
    client = Client()
    assert client.login(username="root", password=PASSWORD)
    return client


def test_it_never_shows_a_mailbox_password_back(admin_client, shared_mailbox, mail_user):
    page = admin_client.get(reverse("admin:mailsync_mailbox_change", args=[shared_mailbox.pk]))

    assert page.status_code == 200
    assert mail_user.password.encode() not in page.content
    assert shared_mailbox.password_encrypted.encode() not in page.content
    assert b'name="password"' in page.content  # a write-only field to set a new one


def test_an_admin_adds_a_mailbox_and_its_first_sync_runs(admin_client, mail_user, bob):
    from tests.test_sync import make_mail

    mail_user.append(make_mail("Hello from the admin test"))
    response = admin_client.post(
        reverse("admin:mailsync_mailbox_add"),
        {
            "name": "sales",
            "email_address": mail_user.address,
            "protocol": "imap",
            "security": "plain",
            "host": mail_user.server.host,
            "port": mail_user.server.imap_port,
            "username": mail_user.address,
            "password": mail_user.password,
            "display_name": "Acme Sales",
            "folder_names": "INBOX, Archive",
            "delete_mode": "trash",
            "is_active": "on",
            "smtp_port": 587,
            "smtp_security": "starttls",
            "folders-TOTAL_FORMS": "0",
            "folders-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    mailbox = Mailbox.objects.get(name="sales")
    assert mailbox.get_password() == mail_user.password
    assert mailbox.folder_names == ["INBOX", "Archive"]
    edit_page = admin_client.get(reverse("admin:mailsync_mailbox_change", args=[mailbox.pk]))
    assert b'value="INBOX, Archive"' in edit_page.content
    sync_mailbox(mailbox)
    assert mailbox.folders.get(name="INBOX").messages.count() == 1
    from teaminbox.replies import team_name

    assert team_name(mailbox) == "Acme Sales"

    health = admin_client.get(reverse("admin:mailsync_mailbox_changelist"))
    assert b"In step" in health.content


def test_a_wrong_password_shows_as_a_clear_error_in_the_admin(
    admin_client, make_mailbox, mail_user
):
    from mailsync.engine.errors import AuthenticationFailed

    mailbox = make_mailbox(mail_user, password="wrong")
    with pytest.raises(AuthenticationFailed):
        sync_mailbox(mailbox)

    listing = admin_client.get(reverse("admin:mailsync_mailbox_changelist"))
    assert b"login refused" in listing.content
    assert b"Traceback" not in listing.content


def test_an_admin_grants_access_through_memberships(admin_client, shared_mailbox, charlie):
    response = admin_client.post(
        reverse("admin:teaminbox_membership_add"),
        {"user": charlie.pk, "mailbox": shared_mailbox.pk, "role": "viewer"},
    )
    assert response.status_code == 302
    assert Membership.objects.get(user=charlie).role == "viewer"
