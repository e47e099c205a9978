"""The conversation page in a real Chromium against a real Dovecot: the thread in order with
notes and history between the messages, the team's controls by mouse and by keyboard (their
effect in the database, and on the server for flags), what a viewer may not do, and how the
page looks on a phone and in dark mode.
"""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page, expect

from mailsync.engine.flags import DELETED, FLAGGED, SEEN
from mailsync.models import Conversation, FlagChange, Message
from mailsync.runner import push_folder_changes, sync_mailbox
from teaminbox.models import Membership, Note, OutgoingMessage
from tests.browser import save_screenshot
from tests.support.personas import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CUSTOMER = "Dana Customer <dana@example.org>"
TALL_HTML = "".join(f"<p>Line {i} of the customer's long HTML message.</p>" for i in range(60))


def mail(
    subject: str,
    *,
    sender: str,
    message_id: str,
    date: str,
    body: str,
    replying_to: list[str] = (),  # type: ignore[assignment]
    html: str | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "support@example.test"
    message["Subject"] = subject
    message["Date"] = date
    message["Message-ID"] = message_id
    if replying_to:
        message["In-Reply-To"] = replying_to[-1]
        message["References"] = " ".join(replying_to)
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return bytes(message)


def long_thread(mail_user, shared_mailbox, bob: User) -> Conversation:
    """Dana writes, the team answers from Outlook, Dana again, bob from the app, and Dana's
    last message is long HTML: five messages in one conversation, all unread."""
    shared = shared_mailbox.email_address
    ids = [f"<thread-{n}@example.org>" for n in range(5)]
    OutgoingMessage.objects.create(
        mailbox=shared_mailbox,
        author=bob,
        kind=OutgoingMessage.Kind.REPLY,
        state=OutgoingMessage.State.SENT,
        message_id=ids[3],
        subject="Re: Parcel never arrived",
    )
    parts = [
        (CUSTOMER, "Tue, 04 Mar 2025 09:00:00 +0000", "My parcel never arrived.", None),
        (shared, "Tue, 04 Mar 2025 10:00:00 +0000", "Sorry! Checking with the courier.", None),
        (CUSTOMER, "Tue, 04 Mar 2025 11:00:00 +0000", "Any news on the courier?", None),
        (shared, "Tue, 04 Mar 2025 12:00:00 +0000", "The courier found it, ships today.", None),
        (CUSTOMER, "Tue, 04 Mar 2025 13:00:00 +0000", "Long plain part.", TALL_HTML),
    ]
    for n, (sender, date, body, html) in enumerate(parts):
        subject = "Parcel never arrived" if n == 0 else "Re: Parcel never arrived"
        mail_user.append(
            mail(
                subject,
                sender=sender,
                message_id=ids[n],
                date=date,
                body=body,
                replying_to=ids[:n],
                html=html,
            )
        )
    sync_mailbox(shared_mailbox)
    conversation = Conversation.objects.get(
        mailbox=shared_mailbox, merged_into=None, messages__message_id__icontains="thread-0"
    )
    assert conversation.messages.count() == 5
    return conversation


def page_url(live_server, conversation: Conversation) -> str:
    return f"{live_server.url}/m/{conversation.mailbox.name}/c/{conversation.pk}/"


def wait_for_toast(page: Page, text: str) -> None:
    expect(page.locator("#toasts")).to_contain_text(text)


def push_all(conversation: Conversation) -> None:
    """The outbox push for each folder of the conversation, as the worker would."""
    for folder_id in set(conversation.messages.values_list("folder_id", flat=True)):
        push_folder_changes(folder_id)
    pending = FlagChange.objects.filter(
        message__conversation=conversation,
        state__in=[FlagChange.State.PENDING, FlagChange.State.SENDING],
    )
    assert not pending.exists()


def test_it_shows_the_thread_in_order_with_older_messages_folded_and_notes_between(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    third = conversation.messages.get(message_id__icontains="thread-2")
    assert third.date is not None
    note = Note.objects.create(conversation=conversation, author=bob, body="Courier ref AB-12")
    # written between the customer's second message and bob's answer
    Note.objects.filter(pk=note.pk).update(created_at=third.date + dt.timedelta(minutes=5))

    page = logged_in_page(live_server, bob)
    page.goto(page_url(live_server, conversation))
    entries = page.locator("#timeline > li.entry")
    kinds = entries.evaluate_all(
        "els => els.filter(e => !e.classList.contains('entry-activity'))"
        ".map(e => e.classList.contains('entry-note') ? 'note'"
        " : e.querySelector('.from').innerText)"
    )
    assert kinds == [
        "Dana Customer <dana@example.org>",
        "the team (Outlook)",
        "Dana Customer <dana@example.org>",
        "note",
        "bob (from the app)",
        "Dana Customer <dana@example.org>",
    ]
    # the note's link-looking text is escaped and plain; a URL in it would be a link
    expect(page.locator(".entry-note .note-body")).to_have_text("Courier ref AB-12")

    # Opening marked everything read (the mailbox's default), so only the latest is open.
    details = page.locator("#timeline details.thread-message")
    expect(details).to_have_count(5)
    assert details.evaluate_all("els => els.map(d => d.open)") == [False] * 4 + [True]
    first = details.nth(0)
    expect(first.locator(".message-detail")).to_be_hidden()
    first.locator("summary").click()
    expect(first.locator("pre.text-body")).to_contain_text("My parcel never arrived.")

    # The HTML body's frame is as tall as its document: no scrollbar inside it.
    frame = page.locator("#timeline iframe.body-frame").last
    expect(frame).to_be_visible()
    page.wait_for_function(
        """f => {
             const doc = f.contentDocument;
             return doc && doc.readyState === 'complete' && doc.body.innerText.includes('Line 59')
               && doc.documentElement.scrollHeight <= doc.documentElement.clientHeight
           }""",
        arg=frame.element_handle(),
    )
    sizes = frame.evaluate("f => [f.clientHeight, f.contentDocument.documentElement.scrollHeight]")
    assert sizes[1] > 600, sizes  # the long message, taller than the old fixed box
    assert abs(sizes[0] - sizes[1]) <= 2, sizes

    # Adding a note puts it last in the timeline, with the history of the assignment.
    page.get_by_label("Add an internal note").fill("Refund if it is not there by Friday")
    page.get_by_role("button", name="Add note").click()
    wait_for_toast(page, "Note added.")
    expect(page.locator("#timeline > li.entry-note")).to_have_count(2)
    after_messages = page.locator("#timeline > li.entry-message ~ li.entry-note")
    expect(after_messages.last).to_contain_text("Refund if it is not there by Friday")
    expect(entries.last).to_contain_text("bob added a note")
    save_screenshot(page, "conversation-long-with-notes")


def test_an_agent_assigns_sets_status_snoozes_and_notes_with_the_mouse(
    shared_mailbox, mail_user, alice, bob, live_server, logged_in_page
):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    page = logged_in_page(live_server, bob)
    page.goto(page_url(live_server, conversation))
    page.evaluate("window.__sameDocument = true")

    page.get_by_label("Assignee").select_option(label="alice")
    page.get_by_role("button", name="Assign", exact=True).click()
    wait_for_toast(page, "Assigned to alice.")
    conversation.refresh_from_db()
    assert conversation.assignee == alice
    expect(page.locator("#workflow .assigned")).to_contain_text("alice")
    # Undo in the toast posts the inverse: nobody again.
    page.locator("#toasts").get_by_role("button", name="Undo").click()
    wait_for_toast(page, "Unassigned.")
    conversation.refresh_from_db()
    assert conversation.assignee is None

    page.get_by_role("button", name="Pending", exact=True).click()
    wait_for_toast(page, "Marked pending.")
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.PENDING

    page.locator("details.menu > summary", has_text="Snooze").click()
    page.get_by_role("button", name="Tomorrow").click()
    wait_for_toast(page, "Snoozed until")
    conversation.refresh_from_db()
    tomorrow = timezone.localtime() + dt.timedelta(days=1)
    assert conversation.snoozed_until is not None
    assert timezone.localtime(conversation.snoozed_until).date() == tomorrow.date()
    expect(page.locator("[data-snoozed]")).to_be_visible()

    # the date picker
    page.locator("details.menu > summary", has_text="Snooze").click()
    later = timezone.localtime() + dt.timedelta(days=3)
    page.get_by_label("Until").fill(later.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Snooze until then").click()
    wait_for_toast(page, f"Snoozed until {later:%a %b} {later.day}, {later:%H:%M}")
    conversation.refresh_from_db()
    assert timezone.localtime(conversation.snoozed_until).date() == later.date()

    page.get_by_label("Add an internal note").fill("See https://example.org/track/1")
    page.get_by_role("button", name="Add note").click()
    wait_for_toast(page, "Note added.")
    assert list(conversation.notes.values_list("body", flat=True)) == [
        "See https://example.org/track/1"
    ]
    link = page.locator(".entry-note .note-body a")
    expect(link).to_have_attribute("href", "https://example.org/track/1")
    assert page.evaluate("window.__sameDocument") is True, "an action reloaded the page"


def test_an_agent_does_it_all_with_the_keyboard_and_flags_reach_dovecot(
    shared_mailbox, mail_user, alice, bob, live_server, logged_in_page
):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    latest = conversation.messages.get(message_id__icontains="thread-4")
    page = logged_in_page(live_server, bob)
    page.goto(page_url(live_server, conversation))
    # Opening it marked it read, on the server too after the push.
    assert not conversation.messages.filter(seen=False).exists()
    push_all(conversation)
    assert SEEN in mail_user.flags()[latest.uid]

    page.keyboard.press("?")
    expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
    expect(page.get_by_role("dialog")).to_contain_text("Reply all")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)

    page.keyboard.press("Shift+U")
    wait_for_toast(page, "Marked unread.")
    assert conversation.messages.filter(seen=False).exists()
    push_all(conversation)
    assert SEEN not in mail_user.flags()[latest.uid]

    page.keyboard.press("Shift+I")
    wait_for_toast(page, "Marked read.")
    assert not conversation.messages.filter(seen=False).exists()
    push_all(conversation)
    assert SEEN in mail_user.flags()[latest.uid]

    page.keyboard.press("s")
    wait_for_toast(page, "Flagged.")
    latest.refresh_from_db()
    assert latest.flagged
    push_all(conversation)
    assert FLAGGED in mail_user.flags()[latest.uid]

    page.keyboard.press("e")
    wait_for_toast(page, "Marked closed.")
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.CLOSED
    page.keyboard.press("z")  # undo: open again
    wait_for_toast(page, "Marked open.")
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.OPEN

    # assign with Tab and the arrow keys, a note typed and sent with Enter on its button
    page.get_by_label("Assignee").focus()
    page.keyboard.press("ArrowDown")  # Me (bob)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    wait_for_toast(page, "Assigned to bob.")
    conversation.refresh_from_db()
    assert conversation.assignee == bob
    page.get_by_label("Add an internal note").focus()
    page.keyboard.type("Typed, not clicked; r and u are letters here")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    wait_for_toast(page, "Note added.")
    assert conversation.notes.get().body == "Typed, not clicked; r and u are letters here"
    # snooze: the menu opens with Enter on its summary, a preset with Enter
    page.locator("details.menu > summary", has_text="Snooze").focus()
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Next week").focus()
    page.keyboard.press("Enter")
    wait_for_toast(page, "Snoozed until")
    conversation.refresh_from_db()
    assert conversation.snoozed_until is not None
    assert conversation.snoozed_until > timezone.now() + dt.timedelta(days=1)

    # # deletes the conversation's messages and goes back to the list
    page.locator("body").focus()
    with page.expect_navigation():
        page.keyboard.press("#")
    assert page.url.rstrip("/").endswith(f"/m/{shared_mailbox.name}")
    push_all(conversation)
    latest.refresh_from_db()
    assert latest.deleted or latest.expunged_at is not None or latest.moving_to_id is None
    server = mail_user.flags()
    assert latest.uid not in server or DELETED in server[latest.uid]


def test_r_opens_the_reply_and_send_and_close_closes_the_conversation(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    page = logged_in_page(live_server, bob)
    page.goto(page_url(live_server, conversation))
    with page.expect_navigation():
        page.keyboard.press("r")
    expect(page.get_by_role("button", name="Send and close")).to_be_visible()
    expect(page.get_by_role("button", name="Send and set pending")).to_be_visible()
    page.locator("textarea").first.fill("It is on its way. Closing this for now.")
    with page.expect_navigation():
        page.get_by_role("button", name="Send and close").click()
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.CLOSED
    sent = OutgoingMessage.objects.exclude(state=OutgoingMessage.State.DRAFT).get(
        body_text__startswith="It is on its way."
    )
    assert sent.author == bob


def test_a_viewer_sees_no_controls_and_every_endpoint_refuses(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    viewer = User.objects.create_user("vera", "vera@example.test", PASSWORD)
    Membership.objects.create(user=viewer, mailbox=shared_mailbox, role=Membership.Role.VIEWER)

    page = logged_in_page(live_server, viewer)
    page.goto(page_url(live_server, conversation))
    expect(page.locator("#timeline details.thread-message")).to_have_count(5)
    expect(page.locator("#workflow form")).to_have_count(0)
    expect(page.locator("[data-shortcut]")).to_have_count(0)
    expect(page.locator(".note-form")).to_have_count(0)
    for key in ["e", "s", "#", "Shift+I", "Shift+U"]:
        page.keyboard.press(key)
    # a viewer's look wrote nothing: still unread, nothing for the server
    assert conversation.messages.filter(seen=False).count() == 5
    assert not FlagChange.objects.filter(message__conversation=conversation).exists()

    client = Client()
    client.force_login(viewer)
    kwargs = {"mailbox": shared_mailbox.name, "conversation_id": conversation.pk}
    posts = {
        "assign": {"assignee": "me"},
        "status": {"status": "closed"},
        "snooze": {"preset": "tomorrow"},
        "note": {"body": "sneaky"},
        "read": {},
        "unread": {},
        "flag": {},
        "delete": {},
    }
    for name, data in posts.items():
        response = client.post(reverse(f"conversation_{name}", kwargs=kwargs), data)
        assert response.status_code == 403, name
    conversation.refresh_from_db()
    assert conversation.assignee is None
    assert conversation.status == Conversation.Status.OPEN
    assert conversation.snoozed_until is None
    assert not conversation.notes.exists()
    assert not FlagChange.objects.filter(message__conversation=conversation).exists()
    assert not Message.objects.filter(conversation=conversation, deleted=True).exists()


def test_it_refuses_bad_input_with_a_sentence(shared_mailbox, mail_user, bob):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    client = Client()
    client.force_login(bob)
    kwargs = {"mailbox": shared_mailbox.name, "conversation_id": conversation.pk}
    cases = [
        ("status", {"status": "done"}, "Unknown status"),
        ("snooze", {"until": "yesterday"}, "Not a date and time"),
        ("snooze", {"until": "2001-01-01T10:00"}, "in the future"),
        ("snooze", {"preset": "someday"}, "Unknown snooze preset"),
        ("note", {"body": "   "}, "needs some text"),
        ("assign", {"assignee": "999999"}, "teammate"),
    ]
    for name, data, sentence in cases:
        response = client.post(reverse(f"conversation_{name}", kwargs=kwargs), data)
        assert response.status_code == 400, (name, data)
        assert sentence in response.content.decode(), (name, response.content)


def test_it_fits_a_phone_and_follows_the_dark_system_theme(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    page = logged_in_page(live_server, bob)
    page.set_viewport_size({"width": 390, "height": 844})
    for url in [page_url(live_server, conversation), f"{live_server.url}/m/{shared_mailbox.name}/"]:
        page.goto(url)
        page.wait_for_load_state("load")
        wide = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert wide <= 0, f"{url} scrolls sideways by {wide}px at 390 px"
    page.goto(page_url(live_server, conversation))
    save_screenshot(page, "conversation-phone-390")

    light = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert light != dark
    red, green, blue = (int(v) for v in dark[dark.index("(") + 1 : -1].split(",")[:3])
    assert red + green + blue < 3 * 60, dark  # a dark background, not just a different one
    ink = page.evaluate("() => getComputedStyle(document.body).color")
    assert sum(int(v) for v in ink[ink.index("(") + 1 : -1].split(",")[:3]) > 3 * 180, ink
    page.set_viewport_size({"width": 1280, "height": 860})
    save_screenshot(page, "conversation-dark")


def test_the_list_keys_move_select_act_and_open(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    for n, subject in enumerate(["Refund please", "Broken lid", "Wrong colour"]):
        mail_user.append(
            mail(
                subject,
                sender=f"Customer {n} <c{n}@example.org>",
                message_id=f"<list-{n}@example.org>",
                date=f"Tue, 04 Mar 2025 1{n}:00:00 +0000",
                body="Hello.",
            )
        )
    sync_mailbox(shared_mailbox)
    by_subject = {
        c.subject: c for c in Conversation.objects.filter(mailbox=shared_mailbox, merged_into=None)
    }
    page = logged_in_page(live_server, bob)
    page.goto(f"{live_server.url}/m/{shared_mailbox.name}/?view=open")
    rows = page.locator("[data-conversation-row]")
    expect(rows).to_have_count(3)
    # newest first: Wrong colour, Broken lid, Refund please
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(page.locator("[data-conversation-row].cursor")).to_contain_text("Broken lid")
    page.keyboard.press("x")
    expect(page.locator('[data-conversation-row].cursor input[name="c"]')).to_be_checked()
    page.keyboard.press("Shift+I")  # read, on the selection
    wait_for_toast(page, "1 conversation")
    assert not Message.objects.filter(conversation=by_subject["Broken lid"], seen=False).exists()
    assert Message.objects.filter(conversation=by_subject["Refund please"], seen=False).exists()

    # The list was redrawn: nothing selected, the cursor still on the same row;
    # e closes the row under the cursor.
    expect(page.locator('input[name="c"]:checked')).to_have_count(0)
    expect(page.locator("[data-conversation-row].cursor")).to_contain_text("Broken lid")
    page.keyboard.press("k")
    cursor_subject = "Wrong colour"
    expect(page.locator("[data-conversation-row].cursor")).to_contain_text(cursor_subject)
    page.evaluate("document.getElementById('toasts').textContent = ''")
    page.keyboard.press("e")
    wait_for_toast(page, "1 conversation")
    closed = Conversation.objects.get(pk=by_subject[cursor_subject].pk)
    assert closed.status == Conversation.Status.CLOSED
    assert (
        Conversation.objects.filter(mailbox=shared_mailbox, status=Conversation.Status.OPEN).count()
        == 2
    )

    # o opens the row under the cursor, u goes back to the list
    page.keyboard.press("j")
    target = page.locator("[data-conversation-row].cursor").get_attribute("data-url")
    with page.expect_navigation():
        page.keyboard.press("o")
    assert target and page.url.endswith(target)
    with page.expect_navigation():
        page.keyboard.press("u")
    expect(page.locator("[data-conversation-row]").first).to_be_visible()
    save_screenshot(page, "list-after-keyboard")
