"""In a real Chromium: a reply sent while the IMAP server was down shows that its copy is
not in Sent yet, and "Save to Sent" files it in place (htmx), once."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from teaminbox import delivery
from teaminbox.services import outgoing as replies
from tests.support.mail import receive
from tests.support.smtp import QUIET_AUTH_WARNING, SMTP_PASSWORD, SMTP_USER, smtp_server
from tests.test_sent_copy import ORIGINAL, imap_unreachable

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings(QUIET_AUTH_WARNING),
]


def test_bob_saves_a_pending_copy_to_sent_from_the_message_page(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    with smtp_server() as smtp:
        shared_mailbox.smtp_host, shared_mailbox.smtp_port = smtp.host, smtp.port
        shared_mailbox.smtp_security, shared_mailbox.smtp_username = "plain", SMTP_USER
        shared_mailbox.set_smtp_password(SMTP_PASSWORD)
        shared_mailbox.save()
        original = receive(mail_user, shared_mailbox, ORIGINAL)
        draft = replies.start_reply(message=original, kind="reply", actor=bob)
        outgoing = replies.send_reply(draft=draft, actor=bob)
        with imap_unreachable(shared_mailbox):
            delivery.deliver(outgoing.pk)
        message_url = f"{live_server.url}/m/{shared_mailbox.name}/messages/{original.pk}/"
        page = logged_in_page(live_server, bob)

        page.goto(message_url)
        pending = page.locator(".sent-copy-pending")
        expect(pending).to_contain_text("Sent, but not yet saved to Sent: ")
        expect(pending).to_contain_text("connection refused")
        with page.expect_response(lambda r: r.url.endswith("/sent-copy/")) as answer:
            pending.get_by_role("button", name="Save to Sent").click()

        assert answer.value.ok and answer.value.request.headers.get("hx-request") == "true"
        expect(page.locator("#reply-area .notice")).to_have_text("Saved to Sent.")
        expect(page.locator(".sent-copy-pending")).to_have_count(0)
        assert page.url == message_url  # swapped in place, no navigation
        assert len(mail_user.uids("Sent")) == 1
        assert len(smtp.received) == 1
        page.reload()
        expect(page.locator("#reply-area")).not_to_contain_text("not yet saved to Sent")
        expect(page.locator("#history")).to_contain_text("the copy of the reply was saved to Sent")
