"""Replying in a real Chromium: the draft autosaves while bob types, survives a reload, and
the reply reaches a real SMTP server and the real Dovecot."""

from __future__ import annotations

import email
import email.policy
import re
from email.charset import Charset

import pytest
from playwright.sync_api import expect

from mailsync.engine.flags import ANSWERED
from mailsync.models import Message
from mailsync.runner import push_folder_changes, sync_mailbox
from teaminbox import delivery
from teaminbox.models import OutgoingMessage
from tests.browser import save_screenshot
from tests.support.smtp import QUIET_AUTH_WARNING, SMTP_PASSWORD, SMTP_USER, smtp_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings(QUIET_AUTH_WARNING),
]

ORIGINAL = b"""\
From: Carol Customer <carol@example.org>
To: SHARED
Subject: Where is my parcel?
Date: Tue, 03 Dec 2024 10:15:00 +0000
Message-ID: <parcel-1@example.org>

Hello, my parcel has not arrived.
"""


def test_bob_replies_in_the_browser_with_an_autosaved_draft(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    with smtp_server() as smtp:
        shared_mailbox.smtp_host, shared_mailbox.smtp_port = smtp.host, smtp.port
        shared_mailbox.smtp_security, shared_mailbox.smtp_username = "plain", SMTP_USER
        shared_mailbox.set_smtp_password(SMTP_PASSWORD)
        shared_mailbox.save()
        uid = mail_user.append(ORIGINAL.replace(b"SHARED", shared_mailbox.email_address.encode()))
        sync_mailbox(shared_mailbox)
        original = Message.objects.get(uid=uid)
        page = logged_in_page(live_server, bob)

        page.goto(f"{live_server.url}/m/{shared_mailbox.name}/messages/{original.pk}/")
        page.get_by_role("link", name="Reply", exact=True).click()
        expect(page.locator("#id_subject")).to_have_value("Re: Where is my parcel?")
        body = page.locator("#id_body_text")
        body.press("Control+Home")
        with page.expect_response(lambda response: response.url.endswith("/save/")) as saved:
            body.type("It left our warehouse today.")
        assert saved.value.ok
        save_screenshot(page, "screen-compose")
        expect(page.locator("#draft-status")).to_contain_text(re.compile(r"Saved \d\d:\d\d"))

        page.reload()
        expect(page.locator("#id_body_text")).to_have_value(
            re.compile(r"^It left our warehouse today\.")
        )
        page.get_by_role("button", name="Send", exact=True).click()

        expect(page.locator(".flash")).to_contain_text("Reply queued")
        expect(page.locator("#history")).to_contain_text("replied")
        outgoing = OutgoingMessage.objects.get()
        delivery.deliver(outgoing.pk)  # what the worker does with the enqueued task
        push_folder_changes(original.folder_id)

        [arrived] = smtp.received
        assert arrived.parsed().get_content().startswith("It left our warehouse today.")
        assert ANSWERED in mail_user.flags("INBOX")[uid]
        page.reload()
        expect(page.locator(".outgoing-list")).to_contain_text("sent")


# A customer's subject encoded twice: decoded once it is an encoded word whose line breaks
# would add a Reply-To and a header to our reply.
TWICE_ENCODED_SUBJECT = Charset("utf-8").header_encode(
    "=?utf-8?q?Invoice=0D=0AReply-To:_attacker=40evil.invalid=0D=0AX-Injected:_yes?="
)

WRITTEN = ["from", "to", "subject", "date", "message-id", "in-reply-to", "references"]
WRITTEN += ["mime-version", "content-type", "content-transfer-encoding"]


def test_bob_sends_a_reply_to_a_hostile_subject_and_it_arrives_as_the_page_showed_it(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    with smtp_server() as smtp:
        shared_mailbox.smtp_host, shared_mailbox.smtp_port = smtp.host, smtp.port
        shared_mailbox.smtp_security, shared_mailbox.smtp_username = "plain", SMTP_USER
        shared_mailbox.set_smtp_password(SMTP_PASSWORD)
        shared_mailbox.save()
        raw = ORIGINAL.replace(b"SHARED", shared_mailbox.email_address.encode()).replace(
            b"Where is my parcel?", TWICE_ENCODED_SUBJECT.encode()
        )
        uid = mail_user.append(raw)
        sync_mailbox(shared_mailbox)
        original = Message.objects.get(uid=uid)
        page = logged_in_page(live_server, bob)

        page.goto(f"{live_server.url}/m/{shared_mailbox.name}/messages/{original.pk}/")
        page.get_by_role("link", name="Reply", exact=True).click()
        subject = page.locator("#id_subject").input_value()
        to = page.locator("#id_to").input_value()
        assert subject.startswith("Re: Invoice Reply-To: attacker@evil.invalid")
        page.get_by_role("button", name="Send", exact=True).click()

        expect(page.locator(".flash")).to_contain_text("Reply queued")
        delivery.deliver(OutgoingMessage.objects.get().pk)
        [arrived] = smtp.received
        [sent_uid] = mail_user.uids("Sent")
        for copy in (arrived.raw, mail_user.raw(sent_uid, "Sent")):
            sent = email.message_from_bytes(copy, policy=email.policy.default)
            assert sorted(name.lower() for name in sent) == sorted(WRITTEN)
            assert str(sent["Subject"]) == subject
            assert str(sent["To"]) == to == "Carol Customer <carol@example.org>"
        assert arrived.rcpt_tos == ("carol@example.org",)
