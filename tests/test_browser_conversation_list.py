"""The conversation list in a real Chromium, against a real Dovecot: one row per
conversation, the sidebar's counts, and bulk actions by mouse whose effect reaches the
database and, for flags, the server (the outbox push is run directly: no worker here)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import pytest
from playwright.sync_api import Page, expect

from mailsync.engine.flags import DELETED, SEEN
from mailsync.models import Conversation, Folder, Message
from mailsync.runner import push_folder_changes, sync_mailbox
from teaminbox.models import Membership
from tests.browser import save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def mail(
    subject: str,
    *,
    sender: str,
    to: str = "support@example.test",
    minutes: int = 0,
    body: str = "Hello, I have a question about my order.",
    reply_to: EmailMessage | None = None,
    attachment: bool = False,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject if reply_to is None else f"Re: {subject}"
    message["Date"] = format_datetime(START + timedelta(minutes=minutes))
    message["Message-ID"] = make_msgid(domain="example.org")
    if reply_to is not None:
        message["In-Reply-To"] = reply_to["Message-ID"]
        message["References"] = reply_to["Message-ID"]
    message.set_content(body)
    if attachment:
        message.add_attachment(b"%PDF-1.4\n", maintype="application", subtype="pdf",
                               filename="invoice.pdf")  # fmt: skip
    return message


def has_class(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")


def list_url(live_server, mailbox, **query: str) -> str:
    suffix = "&".join(f"{key}={value}" for key, value in query.items())
    return f"{live_server.url}/m/{mailbox.name}/" + (f"?{suffix}" if suffix else "")


def row_of(page: Page, conversation: Conversation):
    return page.locator(f'[data-conversation-row][data-conversation-id="{conversation.pk}"]')


def sidebar_count(page: Page, view: str) -> str:
    return page.locator(f'#sidebar [data-view="{view}"] [data-count]').inner_text()


def push_mailbox(mailbox) -> None:
    """Run the outbox push for every folder of the mailbox, as the worker would."""
    for folder in Folder.objects.filter(mailbox=mailbox):
        push_folder_changes(folder.pk)


def click_bulk(page: Page, name: str) -> None:
    """Press a bulk button and wait for htmx to swap the list in (no page load)."""
    page.evaluate("window.__sameDocument = true")
    old = page.locator("#bulk-form").element_handle()
    page.locator("[data-bulk-bar]").get_by_role("button", name=name, exact=True).click()
    page.wait_for_function("el => !el.isConnected", arg=old)
    assert page.evaluate("window.__sameDocument") is True, "the action reloaded the page"


@pytest.fixture
def threads(shared_mailbox, mail_user):
    """Dana's thread of three (her question, the team's answer, her follow-up), Eli's
    question with an attachment, and Fay's question that the team answered last."""
    team = f"Support <{shared_mailbox.email_address}>"
    dana = mail("Where is my parcel?", sender="Dana Customer <dana@example.org>")
    answer = mail("Where is my parcel?", sender=team,
                  to="dana@example.org", minutes=30, reply_to=dana,
                  body="It left our warehouse today.")  # fmt: skip
    follow_up = mail("Where is my parcel?", sender="Dana Customer <dana@example.org>",
                     minutes=60, reply_to=answer, body="Still nothing arrived, sorry!")  # fmt: skip
    eli = mail("Invoice 2025-03", sender="eli@example.com", minutes=10, attachment=True)
    fay = mail("Password reset", sender="Fay <fay@example.org>", minutes=5)
    fay_answer = mail("Password reset", sender=team, to="fay@example.org", minutes=20,
                      reply_to=fay, body="Done, try again.")  # fmt: skip
    for message, flags in [(dana, [SEEN]), (answer, [SEEN]), (follow_up, []), (eli, []),
                           (fay, [SEEN]), (fay_answer, [SEEN])]:  # fmt: skip
        mail_user.append(bytes(message), flags=flags)
    sync_mailbox(shared_mailbox)
    by_subject = {
        c.subject.removeprefix("Re: "): c
        for c in Conversation.objects.filter(mailbox=shared_mailbox)
    }
    assert len(by_subject) == 3, by_subject
    return by_subject


def test_it_lists_one_row_per_conversation_with_who_wrote_last_and_the_wait(
    shared_mailbox, threads, bob, live_server, logged_in_page
):
    page = logged_in_page(live_server, bob)
    page.goto(list_url(live_server, shared_mailbox))

    rows = page.locator("[data-conversation-row]")
    expect(rows).to_have_count(3)
    dana = row_of(page, threads["Where is my parcel?"])
    expect(dana.locator(".customer-name")).to_have_text("Dana Customer")
    expect(dana.locator(".subject")).to_have_text("Where is my parcel?")
    expect(dana.locator(".message-count")).to_have_text("3")
    expect(dana.locator(".snippet")).to_contain_text("Dana Customer: Still nothing arrived")
    expect(dana).to_have_class(has_class("unread"))
    expect(dana.locator(".waiting")).to_contain_text("waiting")
    expect(dana.locator("time.when")).to_have_text("Nov 2")
    eli = row_of(page, threads["Invoice 2025-03"])
    expect(eli.locator(".customer-name")).to_have_text("eli@example.com")  # no name: address
    expect(eli.locator(".clip")).to_have_count(1)
    expect(eli.locator(".message-count")).to_have_count(0)
    fay = row_of(page, threads["Password reset"])
    expect(fay.locator(".latest-by.team")).to_be_visible()  # the team wrote last
    expect(fay.locator(".waiting")).to_have_count(0)
    expect(fay).not_to_have_class(has_class("unread"))
    # newest first: Dana's follow-up (60 min), Fay's answer (20), Eli (10)
    ids = rows.evaluate_all("rows => rows.map(r => r.dataset.conversationId)")
    expected = [threads[s].pk for s in ("Where is my parcel?", "Password reset", "Invoice 2025-03")]
    assert ids == [str(pk) for pk in expected]

    page.get_by_role("link", name="Longest waiting").click()
    expect(rows.first).to_have_attribute("data-conversation-id", str(threads["Invoice 2025-03"].pk))
    save_screenshot(page, "conversation-list")


def test_it_keeps_the_sidebar_counts_right_after_assigning_closing_and_snoozing(
    shared_mailbox, threads, alice, bob, live_server, logged_in_page
):
    from teaminbox.services.conversations import (
        assign_conversation,
        set_conversation_status,
        snooze_conversation,
    )

    page = logged_in_page(live_server, bob)
    page.goto(list_url(live_server, shared_mailbox))
    counts = {v: sidebar_count(page, v) for v in ("unassigned", "mine", "open", "closed")}
    assert counts == {"unassigned": "3", "mine": "0", "open": "3", "closed": "0"}

    dana, eli, fay = (
        threads[s] for s in ("Where is my parcel?", "Invoice 2025-03", "Password reset")
    )
    assign_conversation(conversation=dana, assignee=bob, actor=bob)
    assign_conversation(conversation=eli, assignee=alice, actor=alice)
    set_conversation_status(conversation=fay, status="closed", actor=alice)
    page.reload()
    assert [sidebar_count(page, v) for v in ("unassigned", "mine", "others", "open", "closed")] == [
        "0",
        "1",
        "1",
        "2",
        "1",
    ]

    snooze_conversation(conversation=eli, until=datetime.now(UTC) + timedelta(hours=2), actor=alice)
    page.reload()
    assert [sidebar_count(page, v) for v in ("others", "open", "snoozed")] == ["0", "1", "1"]
    page.locator('#sidebar [data-view="snoozed"] a').click()
    expect(page.locator("[data-conversation-row]")).to_have_count(1)
    expect(row_of(page, eli).locator(".status-badge")).to_have_text("snoozed")


def test_it_marks_read_assigns_closes_and_deletes_a_selection_by_mouse(
    shared_mailbox, threads, mail_user, bob, live_server, logged_in_page
):
    dana, eli, fay = (
        threads[s] for s in ("Where is my parcel?", "Invoice 2025-03", "Password reset")
    )
    page = logged_in_page(live_server, bob)
    page.goto(list_url(live_server, shared_mailbox))

    row_of(page, dana).locator("input[name=c]").check()
    row_of(page, eli).locator("input[name=c]").check()
    expect(page.locator("[data-selected-count]")).to_have_text("2 selected")
    save_screenshot(page, "conversation-list-selection")
    click_bulk(page, "Mark read")
    expect(page.locator("#toasts")).to_contain_text("Marked 2 conversations read.")
    expect(row_of(page, dana)).not_to_have_class(has_class("unread"))
    assert not Message.objects.filter(conversation__in=[dana, eli], seen=False).exists()
    push_mailbox(shared_mailbox)
    assert all(SEEN in flags for flags in mail_user.flags().values())

    # shift-click: the first box, then the last with shift, selects the range
    page.locator("input[name=c]").first.click()
    page.locator("input[name=c]").last.click(modifiers=["Shift"])
    expect(page.locator("input[name=c]:checked")).to_have_count(3)
    page.locator("#bulk-assignee").select_option(label="me")
    click_bulk(page, "Assign")
    expect(page.locator("#toasts")).to_contain_text("Assigned 3 conversations to you.")
    assert set(Conversation.objects.filter(mailbox=shared_mailbox).values_list(
        "assignee__username", flat=True)) == {"bob"}  # fmt: skip
    expect(page.locator("#sidebar [data-view=mine] [data-count]")).to_have_text("3")

    row_of(page, fay).locator("input[name=c]").check()
    click_bulk(page, "Close")
    expect(page.locator("#toasts")).to_contain_text("Closed 1 conversation.")
    fay.refresh_from_db()
    assert fay.status == Conversation.Status.CLOSED
    expect(row_of(page, fay)).to_have_count(0)  # no longer open: it left "All open"
    expect(page.locator("#sidebar [data-view=closed] [data-count]")).to_have_text("1")
    page.locator("#toasts").get_by_role("button", name="Undo").click()  # the toast's Undo
    expect(row_of(page, fay)).to_have_count(1)
    fay.refresh_from_db()
    assert fay.status == Conversation.Status.OPEN
    expect(page.locator("#sidebar [data-view=closed] [data-count]")).to_have_text("0")

    row_of(page, eli).locator("input[name=c]").check()
    click_bulk(page, "Delete")
    assert not Message.objects.filter(conversation=eli, deleted=False, expunged_at=None).exists()
    push_mailbox(shared_mailbox)
    eli_uid = Message.objects.get(conversation=eli, folder__name="INBOX").uid
    assert DELETED in mail_user.flags()[eli_uid]
    expect(row_of(page, eli)).to_have_count(0)


def test_it_acts_on_all_conversations_of_the_view_beyond_the_page(
    shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    mail_user.deliver_bulk(
        bytes(mail(f"Order {n}", sender=f"Customer {n} <c{n}@example.org>", minutes=n))
        for n in range(57)
    )
    sync_mailbox(shared_mailbox)
    page = logged_in_page(live_server, bob)
    page.goto(list_url(live_server, shared_mailbox))
    expect(page.locator("[data-conversation-row]")).to_have_count(50)
    first_page = set(page.locator("[data-conversation-row]").evaluate_all(
        "rows => rows.map(r => r.dataset.conversationId)"))  # fmt: skip
    page.get_by_role("link", name="Older →").click()  # the keyset link, swapped in by htmx
    expect(page.locator("[data-conversation-row]")).to_have_count(7)
    assert "after=" in page.url
    second_page = set(page.locator("[data-conversation-row]").evaluate_all(
        "rows => rows.map(r => r.dataset.conversationId)"))  # fmt: skip
    assert not first_page & second_page and len(first_page | second_page) == 57
    expect(page.get_by_role("link", name="Older →")).to_have_count(0)
    page.get_by_role("link", name="← Newest").click()
    expect(page.locator("[data-conversation-row]")).to_have_count(50)
    expect(page.locator("[data-pick-view-label]")).to_be_hidden()

    page.locator("input[data-pick-page]").check()
    expect(page.locator("input[name=c]:checked")).to_have_count(50)
    page.get_by_text("Select all 57 in this view").click()
    click_bulk(page, "Close")

    assert Conversation.objects.filter(mailbox=shared_mailbox, status="closed").count() == 57
    expect(page.locator(".empty")).to_contain_text("No open conversations")
    expect(page.locator("#sidebar [data-view=closed] [data-count]")).to_have_text("57")


def test_it_gives_a_viewer_no_checkboxes_and_refuses_their_bulk_post(
    shared_mailbox, threads, charlie, live_server, logged_in_page
):
    Membership.objects.create(user=charlie, mailbox=shared_mailbox, role=Membership.Role.VIEWER)
    page = logged_in_page(live_server, charlie)
    page.goto(list_url(live_server, shared_mailbox))
    expect(page.locator("[data-conversation-row]")).to_have_count(3)
    expect(page.locator("input[name=c]")).to_have_count(0)
    expect(page.locator("[data-bulk-bar]")).to_have_count(0)

    token = page.context.cookies()
    csrf = next(c["value"] for c in token if c["name"] == "csrftoken")
    refused = page.request.post(
        f"{live_server.url}/m/{shared_mailbox.name}/bulk",
        form={"action": "status:closed", "c": str(threads["Password reset"].pk)},
        headers={"X-CSRFToken": csrf, "Referer": live_server.url + "/"},
    )
    assert refused.status == 403
    assert not Conversation.objects.filter(status="closed").exists()


def test_it_fits_a_phone_with_customer_subject_and_time_in_every_row(
    shared_mailbox, threads, bob, live_server, logged_in_page
):
    page = logged_in_page(live_server, bob)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(list_url(live_server, shared_mailbox))

    rows = page.locator("[data-conversation-row]")
    expect(rows).to_have_count(3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for i in range(3):
        for part in (".customer-name", ".subject", "time.when"):
            box = rows.nth(i).locator(part).bounding_box()
            assert box is not None and box["width"] > 20, (i, part, box)
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (i, part, box)
    save_screenshot(page, "conversation-list-phone", full_page=False)


def test_it_lists_a_folders_conversations_and_keeps_the_old_message_list(
    shared_mailbox, threads, bob, live_server, logged_in_page
):
    page = logged_in_page(live_server, bob)
    page.goto(list_url(live_server, shared_mailbox, view="folder:INBOX"))
    expect(page.locator("[data-conversation-row]")).to_have_count(3)
    expect(page.locator("#list-title")).to_have_text("INBOX")

    page.goto(list_url(live_server, shared_mailbox, folder="INBOX"))
    expect(page.locator("tr.message-row")).to_have_count(6)


def test_it_closes_a_selection_without_javascript(
    shared_mailbox, threads, bob, live_server, browser
):
    from tests.browser import log_in, new_page
    from tests.support.personas import PASSWORD

    page = new_page(browser, java_script_enabled=False)
    try:
        log_in(page, live_server.url, "bob", PASSWORD)
        page.goto(list_url(live_server, shared_mailbox))
        fay = threads["Password reset"]
        row_of(page, fay).locator("input[name=c]").check()
        page.locator("[data-bulk-bar]").get_by_role("button", name="Close", exact=True).click()
        page.wait_for_url(list_url(live_server, shared_mailbox, view="open", sort="newest"))

        expect(page.locator(".flash")).to_contain_text("Closed 1 conversation.")
        expect(row_of(page, fay)).to_have_count(0)
        fay.refresh_from_db()
        assert fay.status == Conversation.Status.CLOSED
    finally:
        save_screenshot(page, "conversation-list-no-javascript")
        page.context.close()
