"""Who may see what: members see their mailboxes, everyone else gets 404."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from mailsync.models import Attachment, Message
from mailsync.runner import sync_mailbox
from tests.support.mail import INVOICE_WITH_ATTACHMENT, client_for, receive

pytestmark = pytest.mark.django_db


@pytest.fixture
def synced_message(shared_mailbox, mail_user):
    return receive(mail_user, shared_mailbox, INVOICE_WITH_ATTACHMENT)


def urls_of(message: Message) -> dict[str, str]:
    mailbox = message.folder.mailbox.name
    attachment = Attachment.objects.get(message=message, filename="invoice.pdf")
    return {
        "inbox": reverse("inbox", kwargs={"mailbox": mailbox}),
        "message": reverse("message", kwargs={"mailbox": mailbox, "message_id": message.pk}),
        "body": reverse("message_body", kwargs={"mailbox": mailbox, "message_id": message.pk}),
        "attachment": reverse(
            "attachment",
            kwargs={"mailbox": mailbox, "message_id": message.pk, "attachment_id": attachment.pk},
        ),
    }


def test_it_shows_members_the_list_the_message_and_the_attachment(synced_message, bob):
    client = client_for(bob)
    urls = urls_of(synced_message)

    assert b"Invoice attached" in client.get(urls["inbox"]).content
    assert b"See attachment." in client.get(urls["message"]).content
    download = client.get(urls["attachment"])
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == b"%PDF-1.4\n"  # type: ignore[attr-defined]
    assert "attachment" in download["Content-Disposition"]


def test_it_answers_404_to_a_non_member_everywhere(synced_message, charlie):
    client = client_for(charlie)
    urls = urls_of(synced_message)

    for name, url in urls.items():
        assert client.get(url).status_code == 404, name
    flag_url = reverse(
        "flag_action",
        kwargs={"mailbox": synced_message.folder.mailbox.name, "message_id": synced_message.pk},
    )
    assert client.post(flag_url, {"action": "read"}).status_code == 404
    synced_message.refresh_from_db()
    assert not synced_message.seen
    assert not synced_message.flag_changes.exists()


def test_it_sends_anonymous_visitors_to_the_login_page(synced_message):
    response = Client().get(urls_of(synced_message)["inbox"])
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_it_refuses_flag_changes_from_a_viewer(synced_message, charlie):
    from teaminbox.models import Membership

    Membership.objects.create(
        user=charlie, mailbox=synced_message.folder.mailbox, role=Membership.Role.VIEWER
    )
    client = client_for(charlie)
    flag_url = reverse(
        "flag_action",
        kwargs={"mailbox": synced_message.folder.mailbox.name, "message_id": synced_message.pk},
    )

    assert client.get(urls_of(synced_message)["message"]).status_code == 200
    assert client.post(flag_url, {"action": "read"}).status_code == 403
    assert not synced_message.flag_changes.exists()


def test_it_rejects_an_unknown_flag_action(synced_message, bob):
    flag_url = reverse(
        "flag_action",
        kwargs={"mailbox": synced_message.folder.mailbox.name, "message_id": synced_message.pk},
    )
    response = client_for(bob).post(flag_url, {"action": "<script>"})
    assert response.status_code == 400
    assert b"<script>" not in response.content


def test_the_sync_status_endpoint_reports_progress_and_ends_the_polling_when_done(
    synced_message, bob
):
    mailbox = synced_message.folder.mailbox
    url = reverse("sync_status", kwargs={"mailbox": mailbox.name})
    client = client_for(bob)
    mailbox.sync_status = mailbox.SyncStatus.SYNCING
    mailbox.save()
    synced_message.folder.__class__.objects.filter(pk=synced_message.folder_id).update(
        sync_fetched=150, sync_total=1000
    )

    running = client.get(url)
    assert b"INBOX: 150 of 1000" in running.content
    assert b'hx-trigger="every 2s"' in running.content
    assert "HX-Trigger" not in running

    mailbox.sync_status = mailbox.SyncStatus.OK
    mailbox.save()
    done = client.get(url)
    assert b"every 2s" not in done.content
    assert done["HX-Trigger"] == "mailbox-synced"


def test_the_sync_status_of_a_mailbox_is_404_for_a_non_member(synced_message, charlie):
    url = reverse("sync_status", kwargs={"mailbox": synced_message.folder.mailbox.name})
    assert client_for(charlie).get(url).status_code == 404


def test_the_body_frame_allows_remote_images_only_when_asked(shared_mailbox, mail_user, bob):
    raw = (
        b"From: news@example.org\r\nSubject: Pictures\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p>Look</p><img src="https://images.example.org/logo.png">\r\n'
    )
    mail_user.append(raw)
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(subject="Pictures")
    url = reverse("message_body", kwargs={"mailbox": "support", "message_id": message.pk})
    client = client_for(bob)

    blocked = client.get(url)
    assert b"images.example.org" not in blocked.content
    assert "https:" not in blocked["Content-Security-Policy"]

    shown = client.get(url + "?images=1")
    assert b"https://images.example.org/logo.png" in shown.content
    assert "img-src 'self' data: https:" in shown["Content-Security-Policy"]
    assert "script-src" not in shown["Content-Security-Policy"]  # default-src 'none' holds


def test_every_page_sends_a_strict_policy_and_refuses_to_be_framed(synced_message, bob):
    from django.contrib.auth.models import User

    client = client_for(bob)
    urls = urls_of(synced_message)
    root = User.objects.create_superuser("root", "root@example.test", "x")
    admin_client = Client()
    admin_client.force_login(root)
    pages = {
        "login": Client().get(reverse("login")),
        "admin login": Client().get(reverse("admin:login")),
        "home": client.get(reverse("home")),
        "inbox": client.get(urls["inbox"]),
        "message": client.get(urls["message"]),
        "not found": client.get("/no-such-page/"),
        "admin": admin_client.get(reverse("admin:index")),
    }
    for name, page in pages.items():
        policy = page["Content-Security-Policy"]
        assert "default-src 'self'" in policy, name
        assert "frame-ancestors 'none'" in policy, name
        assert "unsafe" not in policy, name
        assert page["X-Frame-Options"] == "DENY", name

    # The body frame keeps its own policy, framed by our message page only.
    body = client.get(urls["body"])
    assert body["Content-Security-Policy"].startswith("default-src 'none'")
    assert "frame-ancestors 'self'" in body["Content-Security-Policy"]
    assert body["X-Frame-Options"] == "SAMEORIGIN"
    attachment = client.get(urls["attachment"])
    assert attachment["Content-Security-Policy"] == "default-src 'none'; sandbox"


def test_the_error_pages_need_no_inline_style_or_script():
    from django.template.loader import render_to_string

    for template in ("500.html", "404.html", "registration/locked_out.html"):
        html = render_to_string(template)
        assert "<style" not in html, template
        assert "style=" not in html, template
        assert "<script>" not in html, template
