"""The inbox and message pages in a real Chromium, against a real Dovecot.

What bob does in the browser must reach the server: each flag action is read back over IMAP
after the outbox push (run directly here: no worker runs in these tests).
"""

from __future__ import annotations

import re
from email.message import EmailMessage

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Locator, Page, expect

from mailsync.engine.flags import DELETED, SEEN
from mailsync.models import FlagChange, Message
from mailsync.runner import push_folder_changes, sync_mailbox
from teaminbox.models import Membership
from tests.browser import is_loopback_url, save_screenshot
from tests.support.personas import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def make_mail(
    subject: str,
    *,
    sender: str = "Customer <customer@example.org>",
    body: str = "Hello, I have a question about my order.",
    html: str | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "support@example.test"
    message["Subject"] = subject
    message["Date"] = "Tue, 04 Mar 2025 10:15:00 +0000"
    message["Message-ID"] = f"<{abs(hash(subject))}@example.org>"
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return bytes(message)


def inbox_url(live_server, mailbox) -> str:
    return f"{live_server.url}/m/{mailbox.name}/"


def folder_url(live_server, mailbox, folder: str = "INBOX") -> str:
    """The per-message list of one folder (the mailbox's home is the conversation list)."""
    return f"{live_server.url}/m/{mailbox.name}/?folder={folder}"


def message_url(live_server, mailbox, message: Message) -> str:
    return f"{live_server.url}/m/{mailbox.name}/messages/{message.pk}/"


def push(message: Message) -> None:
    """Run the outbox push for the message's folder, as the worker would."""
    push_folder_changes(message.folder_id)
    pending = FlagChange.objects.filter(
        message=message, state__in=[FlagChange.State.PENDING, FlagChange.State.SENDING]
    )
    assert not pending.exists(), list(pending.values("flag", "add", "state"))


def _has_class(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")


def _font_weight(locator: Locator) -> int:
    return int(locator.evaluate("el => getComputedStyle(el).fontWeight"))


def click_and_wait_for_swap(page: Page, button_name: str) -> None:
    """Click a flag button and wait until htmx has swapped #flag-actions (no page load)."""
    page.evaluate("window.__sameDocument = true")
    old = page.locator("#flag-actions").element_handle()
    assert old is not None
    page.get_by_role("button", name=button_name, exact=True).click()
    # outerHTML swap: the old element leaves the DOM when the new one arrives.
    page.wait_for_function("el => !el.isConnected", arg=old)
    assert page.evaluate("window.__sameDocument") is True, "the action reloaded the page"


def test_it_logs_in_through_the_form_and_lands_on_the_only_inbox(
    shared_mailbox, bob, live_server, page
):
    page.goto(f"{live_server.url}/m/{shared_mailbox.name}/")
    page.wait_for_url("**/login/**")
    expect(page.locator("h1")).to_have_text("Log in")
    save_screenshot(page, "screen-login")

    page.fill("#id_username", "bob")
    page.fill("#id_password", "not-the-password")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_be_visible()

    page.fill("#id_username", "bob")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(inbox_url(live_server, shared_mailbox))
    expect(page.locator(".topbar .who")).to_have_text("bob")


def test_it_shows_new_mail_bold_and_writes_read_unread_and_delete_back_to_dovecot(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    uid = mail_user.append(make_mail("Where is my parcel?", sender="Dana <dana@example.org>"))
    mail_user.append(
        make_mail("Invoice 2025-03", sender="Accounts <billing@example.net>"), flags=[SEEN]
    )
    mail_user.append(make_mail("Password reset does not arrive", sender="Eli <eli@example.com>"))
    mail_user.append(
        make_mail("Thanks for the quick help!", sender="Fay <fay@example.org>"), flags=[SEEN]
    )
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(folder__mailbox=shared_mailbox, uid=uid)

    page = logged_in_page(live_server, bob)
    page.goto(folder_url(live_server, shared_mailbox))
    rows = page.locator("tr.message-row")
    expect(rows).to_have_count(4)
    row = page.locator(f'tr.message-row[data-message-id="{message.pk}"]')
    expect(row).to_contain_text("Where is my parcel?")
    expect(row).to_have_class(_has_class("unread"))
    assert _font_weight(row.locator("td.subject")) >= 600
    read_row = page.locator("tr.message-row", has_text="Invoice 2025-03")
    expect(read_row).not_to_have_class(_has_class("unread"))
    assert _font_weight(read_row.locator("td.subject")) < 600
    save_screenshot(page, "screen-inbox")

    row.get_by_role("link", name="Where is my parcel?").click()
    page.wait_for_url(message_url(live_server, shared_mailbox, message))
    expect(page.locator("h1.subject")).to_have_text("Where is my parcel?")
    expect(page.locator("dd.from")).to_contain_text("dana@example.org")
    expect(page.locator("pre.text-body")).to_contain_text("question about my order")
    save_screenshot(page, "screen-message-text")
    # Opening the message fetched nothing that set \Seen on the server.
    assert SEEN not in mail_user.flags()[uid]

    # Mark read: the swap shows the new state and the next action at once.
    click_and_wait_for_swap(page, "Mark read")
    actions = page.locator("#flag-actions")
    expect(actions.get_by_role("button", name="Mark unread")).to_be_visible()
    expect(actions.locator(".badge", has_text="unread")).to_have_count(0)
    # the history gains the entry in the same swap, without a reload
    expect(page.locator("#history li", has_text="bob marked it read")).to_be_visible()
    expect(actions.locator(".badge", has_text="read")).to_be_visible()
    expect(actions.locator(".badge", has_text="sending…")).to_be_visible()
    message.refresh_from_db()
    assert message.seen
    push(message)
    assert SEEN in mail_user.flags()[uid]

    # Mark unread.
    click_and_wait_for_swap(page, "Mark unread")
    expect(actions.get_by_role("button", name="Mark read")).to_be_visible()
    expect(actions.locator(".badge", has_text="unread")).to_be_visible()
    push(message)
    assert SEEN not in mail_user.flags()[uid]

    # Delete: \Deleted is set (flag mode), the message is not expunged.
    click_and_wait_for_swap(page, "Delete")
    expect(actions.get_by_role("button", name="Undelete")).to_be_visible()
    expect(actions.locator(".badge.danger", has_text="deleted")).to_be_visible()
    push(message)
    server_flags = mail_user.flags()
    assert uid in server_flags
    assert DELETED in server_flags[uid]
    assert SEEN not in server_flags[uid]

    # After the push, a reload shows nothing pending and the deleted state.
    page.reload()
    expect(actions.locator(".badge", has_text="sending…")).to_have_count(0)
    expect(actions.locator(".badge.danger", has_text="deleted")).to_be_visible()


def test_it_marks_a_message_read_with_shift_i_and_r_no_longer_does(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    uid = mail_user.append(make_mail("Keyboard user"))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(folder__mailbox=shared_mailbox, uid=uid)

    page = logged_in_page(live_server, bob)
    page.goto(message_url(live_server, shared_mailbox, message))
    expect(page.locator('[data-shortcut="I"]')).to_have_text("Mark read")
    assert page.locator('[data-shortcut="r"]').count() == 0  # r is reply now
    old = page.locator("#flag-actions").element_handle()
    page.keyboard.press("Shift+I")
    page.wait_for_function("el => !el.isConnected", arg=old)
    expect(page.locator('#flag-actions [data-shortcut="U"]')).to_have_text("Mark unread")

    message.refresh_from_db()
    assert message.seen
    push(message)
    assert SEEN in mail_user.flags()[uid]


def test_it_shows_a_viewer_no_action_buttons(
    shared_mailbox, mail_user, live_server, logged_in_page
):
    viewer = User.objects.create_user("vera", "vera@example.test", PASSWORD)
    Membership.objects.create(user=viewer, mailbox=shared_mailbox, role=Membership.Role.VIEWER)
    uid = mail_user.append(make_mail("Read-only eyes"))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(folder__mailbox=shared_mailbox, uid=uid)

    page = logged_in_page(live_server, viewer)
    page.goto(folder_url(live_server, shared_mailbox))
    page.get_by_role("link", name="Read-only eyes").click()
    expect(page.locator("h1.subject")).to_have_text("Read-only eyes")
    expect(page.locator("#flag-actions .badge", has_text="unread")).to_be_visible()
    expect(page.locator("#flag-actions button")).to_have_count(0)
    expect(page.locator("[data-shortcut]")).to_have_count(0)
    # A key press does nothing either.
    page.keyboard.press("r")
    message.refresh_from_db()
    assert not message.seen
    assert not FlagChange.objects.filter(message=message).exists()


def test_it_answers_404_to_someone_who_is_not_a_member(
    shared_mailbox, mail_user, charlie, live_server, logged_in_page
):
    uid = mail_user.append(make_mail("Members only"))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(folder__mailbox=shared_mailbox, uid=uid)

    page = logged_in_page(live_server, charlie)
    response = page.goto(inbox_url(live_server, shared_mailbox))
    assert response is not None
    assert response.status == 404
    expect(page.locator("body")).not_to_contain_text("Members only")
    response = page.goto(message_url(live_server, shared_mailbox, message))
    assert response is not None
    assert response.status == 404
    expect(page.locator("body")).not_to_contain_text("Members only")


HOSTILE_HTML = """\
<p id="greeting">Hello from the <b>HTML</b> part.</p>
<script>window.__pwned = "script"; try { parent.__pwned = "script"; } catch (e) {}</script>
<img src="x" onerror="window.__pwned = 'onerror'; try { parent.__pwned = 'onerror'; } catch (e) {}">
<img src="http://tracker.example.com/open.gif?id=42" alt="tracking pixel">
<img src="https://images.example.net/logo.png" alt="remote logo">
<div style="background-image: url(http://tracker.example.com/bg.gif)">styled</div>
<a href="javascript:parent.__pwned='link'">a javascript: link</a>
"""


def test_it_renders_hostile_html_in_a_sandbox_without_running_it_or_loading_remote_images(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    uid = mail_user.append(make_mail("Newsletter", html=HOSTILE_HTML))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(folder__mailbox=shared_mailbox, uid=uid)
    assert message.html_body

    page = logged_in_page(live_server, bob)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(message_url(live_server, shared_mailbox, message))

    iframe = page.locator("iframe.body-frame")
    sandbox = iframe.get_attribute("sandbox")
    assert sandbox is not None
    assert "allow-scripts" not in sandbox.split()
    body = page.frame_locator("iframe.body-frame").locator("body")
    expect(body.locator("#greeting, p", has_text="Hello from the HTML part.")).to_be_visible()
    expect(body.locator("script")).to_have_count(0)
    expect(page.get_by_text("remote images blocked to protect your privacy")).to_be_visible()
    page.wait_for_load_state("networkidle")
    save_screenshot(page, "screen-message-html")

    assert page.evaluate("typeof window.__pwned") == "undefined"
    frame = iframe.element_handle().content_frame()
    assert frame is not None
    assert frame.evaluate("typeof window.__pwned") == "undefined"
    assert frame.evaluate("document.querySelectorAll('[onerror]').length") == 0
    assert frame.evaluate("document.querySelectorAll('a[href^=\"javascript:\"]').length") == 0
    leaked = [url for url in requests if not is_loopback_url(url)]
    assert leaked == [], f"requests left the machine: {leaked}"
    body_responses = [url for url in requests if "/body/" in url]
    assert body_responses, f"the iframe never loaded its body: {requests}"


def test_a_message_listed_but_not_yet_extracted_shows_its_text_when_opened(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    uid = mail_user.append(make_mail("Fresh from a big import", body="The printer is on fire."))
    sync_mailbox(shared_mailbox, extract=False)  # as the worker lists: text comes later
    message = Message.objects.get(folder__mailbox=shared_mailbox, uid=uid)
    assert message.extracted_at is None and message.text_body == ""

    page = logged_in_page(live_server, bob)
    page.goto(message_url(live_server, shared_mailbox, message))

    expect(page.get_by_text("The printer is on fire.")).to_be_visible()
    expect(page.get_by_text("still being prepared")).to_have_count(0)
    message.refresh_from_db()
    assert message.extracted_at is not None
