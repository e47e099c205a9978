"""The team's work on a conversation (teaminbox.services.conversations) and the summaries
the conversation list reads (mailsync.conversations.refresh_summaries), against Dovecot:
bob is an agent of the support mailbox, dana a viewer; carol is the customer."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from mailsync.conversations import refresh_summaries
from mailsync.models import Activity, Conversation, Mailbox, Message
from mailsync.runner import push_folder_changes, sync_mailbox
from mailsync.templatetags.history import describe
from teaminbox import tasks
from teaminbox.models import Membership, Note, OutgoingMessage
from teaminbox.services import (
    AccessRefused,
    add_note,
    assign_conversation,
    bulk_act,
    open_conversation,
    restore_message,
    set_conversation_status,
    set_flag,
    snooze_conversation,
    wake_snoozed,
)
from teaminbox.services import outgoing as outgoing_mail
from tests.support.personas import PASSWORD
from tests.test_threading import arrival, deliver_and_sync
from tests.test_threading import fixture as threading_fixture

pytestmark = pytest.mark.django_db

CAROL = "Carol Customer <carol@example.org>"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def mail(
    key: str,
    *,
    sender: str = CAROL,
    to: str = "support@example.test",
    subject: str = "Printer on fire",
    hours: float = 0,
    parent: str = "",
    body: str = "",
    references: tuple[str, ...] = (),
) -> bytes:
    """A small mail with a Message-ID of its own and, for a reply, its parent."""
    headers = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {format_datetime(T0 + timedelta(hours=hours))}\r\n"
        f"Message-ID: <{key}@example.org>\r\n"
    )
    if parent:
        headers += f"In-Reply-To: <{parent}@example.org>\r\n"
    if references:
        headers += "References: " + " ".join(f"<{r}@example.org>" for r in references) + "\r\n"
    text = body or f"Text of {key}."
    return (headers + "\r\n" + text + "\r\n").encode()


def team(mailbox: Mailbox) -> str:
    return f"Support <{mailbox.email_address}>"


def conversation_of(mailbox: Mailbox, key: str) -> Conversation:
    message = Message.objects.get(folder__mailbox=mailbox, message_id=f"{key}@example.org")
    return Conversation.objects.get(messages=message)


def deliver(mail_user, mailbox, raw: bytes, *, seen: bool = False) -> int:
    uid = int(mail_user.append(raw, flags=["\\Seen"] if seen else []))
    sync_mailbox(mailbox)
    return uid


def thread(mailbox: Mailbox) -> dict[str, bytes]:
    """The customer asks, the team answers from Outlook, the customer writes twice more."""
    return {
        "ask": mail("ask", hours=0, body="My printer is on fire, please help."),
        "answer": mail(
            "answer", sender=team(mailbox), to=CAROL, subject="Re: Printer on fire",
            hours=1, parent="ask",
        ),
        "again": mail("again", subject="Re: Printer on fire", hours=2, parent="answer"),
        "more": mail(
            "more", subject="Re: Printer on fire", hours=3, parent="again",
            body="Still burning.\n\n  Smoke everywhere now.",
        ),
    }  # fmt: skip


def summary(conversation: Conversation) -> dict[str, object]:
    conversation.refresh_from_db()
    return {
        "message_count": conversation.message_count,
        "unread_count": conversation.unread_count,
        "latest": conversation.latest_message.message_id if conversation.latest_message else "",
        "latest_from_customer": conversation.latest_from_customer,
        "latest_sender_name": conversation.latest_sender_name,
        "customer": (conversation.customer_name, conversation.customer_address),
        "snippet": conversation.snippet,
        "waiting_since": conversation.waiting_since,
        "last_message_at": conversation.last_message_at,
    }


EXPECTED = {
    "message_count": 4,
    "unread_count": 3,  # the team's answer came in read
    "latest": "more@example.org",
    "latest_from_customer": True,
    "latest_sender_name": "Carol Customer",
    "customer": ("Carol Customer", "carol@example.org"),
    "snippet": "Still burning. Smoke everywhere now.",
    "waiting_since": T0 + timedelta(hours=2),  # the first customer mail after the answer
    "last_message_at": T0 + timedelta(hours=3),
}


@pytest.mark.parametrize("order", ["as written", "backwards", "replies first"])
def test_summaries_are_right_after_mail_arrives_in_any_order(shared_mailbox, mail_user, order):
    mails = thread(shared_mailbox)
    keys = {
        "as written": ["ask", "answer", "again", "more"],
        "backwards": ["more", "again", "answer", "ask"],
        "replies first": ["again", "more", "ask", "answer"],
    }[order]
    for key in keys:  # one sync (one ingest batch) per mail
        deliver(mail_user, shared_mailbox, mails[key], seen=key == "answer")

    assert Conversation.objects.filter(merged_into__isnull=True, message_count__gt=0).count() == 1
    assert summary(conversation_of(shared_mailbox, "ask")) == EXPECTED


def test_summaries_follow_flag_changes_from_the_server_and_from_staff(
    shared_mailbox, mail_user, bob
):
    mails = thread(shared_mailbox)
    uids = {key: deliver(mail_user, shared_mailbox, raw) for key, raw in mails.items()}
    conversation = conversation_of(shared_mailbox, "ask")
    assert summary(conversation)["unread_count"] == 4

    mail_user.add_flags([uids["ask"], uids["again"]], ["\\Seen"])  # another client reads two
    sync_mailbox(shared_mailbox)
    assert summary(conversation)["unread_count"] == 2

    set_flag(message=Message.objects.get(uid=uids["more"]), flag="\\Seen", on=True, actor=bob)
    assert summary(conversation)["unread_count"] == 1


def test_summaries_follow_an_expunge_of_the_latest_message(shared_mailbox, mail_user):
    mails = thread(shared_mailbox)
    uids = {key: deliver(mail_user, shared_mailbox, raw) for key, raw in mails.items()}
    conversation = conversation_of(shared_mailbox, "ask")

    mail_user.expunge([uids["more"]])
    sync_mailbox(shared_mailbox)

    after = summary(conversation)
    assert (after["message_count"], after["latest"], after["last_message_at"]) == (
        3,
        "again@example.org",
        T0 + timedelta(hours=2),
    )
    assert after["snippet"] == "Text of again."


def test_summaries_follow_a_merge(shared_mailbox, mail_user):
    """Two conversations with the same subject from two people, joined by a mail naming
    both: the survivor counts every message, the merged one none (so it is not listed)."""
    deliver(mail_user, shared_mailbox, mail("one", hours=0))
    other = "Dan Other <dan@example.org>"
    deliver(mail_user, shared_mailbox, mail("two", sender=other, hours=1))
    older, newer = conversation_of(shared_mailbox, "one"), conversation_of(shared_mailbox, "two")
    assert older.pk != newer.pk

    deliver(
        mail_user,
        shared_mailbox,
        mail("both", subject="Re: Printer on fire", hours=2, references=("one", "two")),
    )

    newer.refresh_from_db()
    assert newer.merged_into_id == older.pk
    assert summary(newer)["message_count"] == 0
    merged = summary(older)
    assert (merged["message_count"], merged["unread_count"], merged["latest"]) == (
        3,
        3,
        "both@example.org",
    )
    assert merged["customer"] == ("Carol Customer", "carol@example.org")


def test_the_team_replying_last_means_nobody_waits_and_names_who_replied(
    shared_mailbox, mail_user, bob
):
    deliver(mail_user, shared_mailbox, mail("ask"))
    conversation = conversation_of(shared_mailbox, "ask")
    assert summary(conversation)["waiting_since"] == T0
    # bob's reply from the app (its sent copy arrives by sync), then one from Outlook
    OutgoingMessage.objects.create(
        mailbox=shared_mailbox, author=bob, state="sent", message_id="bobs@example.org"
    )
    reply = mail("bobs", sender=team(shared_mailbox), to=CAROL, hours=1, parent="ask")
    deliver(mail_user, shared_mailbox, reply)
    after_bob = summary(conversation)
    assert (after_bob["waiting_since"], after_bob["latest_sender_name"]) == (None, "bob")
    assert after_bob["latest_from_customer"] is False

    outlook = mail("outlook", sender=team(shared_mailbox), to=CAROL, hours=2, parent="bobs")
    deliver(mail_user, shared_mailbox, outlook)
    assert summary(conversation)["latest_sender_name"] == "Support"


# -- the workflow ----------------------------------------------------------------------


@pytest.fixture
def conversation(shared_mailbox, mail_user) -> Conversation:
    deliver(mail_user, shared_mailbox, mail("ask"))
    return conversation_of(shared_mailbox, "ask")


@pytest.fixture
def dana(shared_mailbox) -> User:
    dana = User.objects.create_user("dana", "dana@example.test", PASSWORD)
    Membership.objects.create(user=dana, mailbox=shared_mailbox, role=Membership.Role.VIEWER)
    return dana


def verbs(conversation: Conversation) -> list[tuple[str | None, str]]:
    return list(
        Activity.objects.filter(conversation=conversation)
        .order_by("pk")
        .values_list("actor__username", "verb")
    )


def test_assign_status_and_note_change_the_conversation_with_history(conversation, alice, bob):
    assign_conversation(conversation=conversation, assignee=bob, actor=alice)
    set_conversation_status(conversation=conversation, status="pending", actor=bob)
    note = add_note(conversation=conversation, body="  Called her: it was a candle.  ", actor=bob)
    assign_conversation(conversation=conversation, assignee=None, actor=bob)

    conversation.refresh_from_db()
    assert (conversation.assignee, conversation.status) == (None, "pending")
    assert Note.objects.get().body == "Called her: it was a candle."
    assert note.conversation_id == conversation.pk
    assert verbs(conversation) == [
        ("alice", "assigned"),
        ("bob", "status_changed"),
        ("bob", "note_added"),
        ("bob", "unassigned"),
    ]


def test_it_refuses_to_assign_to_a_viewer_or_to_snooze_into_the_past(conversation, bob, dana):
    with pytest.raises(Exception, match="cannot take conversations here"):
        assign_conversation(conversation=conversation, assignee=dana, actor=bob)
    with pytest.raises(Exception, match="in the future"):
        snooze_conversation(
            conversation=conversation, until=timezone.now() - timedelta(minutes=1), actor=bob
        )
    with pytest.raises(Exception, match="needs some text"):
        add_note(conversation=conversation, body="   ", actor=bob)
    conversation.refresh_from_db()
    assert (conversation.assignee_id, conversation.snoozed_until) == (None, None)


def test_a_snooze_wakes_on_time_and_not_before(conversation, bob):
    now = timezone.now()
    snooze_conversation(conversation=conversation, until=now + timedelta(hours=1), actor=bob)

    assert wake_snoozed(now=now + timedelta(minutes=59)) == 0
    conversation.refresh_from_db()
    assert conversation.snoozed_until == now + timedelta(hours=1)

    assert wake_snoozed(now=now + timedelta(hours=1)) == 1
    conversation.refresh_from_db()
    assert (conversation.snoozed_until, conversation.status) == (None, "open")
    assert verbs(conversation)[-2:] == [("bob", "snoozed"), (None, "woke")]
    assert wake_snoozed(now=now + timedelta(hours=2)) == 0  # once


@pytest.mark.parametrize("state", ["closed", "pending", "snoozed"])
def test_a_customer_reply_reopens_a_conversation_set_aside(
    shared_mailbox, mail_user, conversation, bob, state
):
    if state == "snoozed":
        later = timezone.now() + timedelta(days=3)
        snooze_conversation(conversation=conversation, until=later, actor=bob)
    else:
        set_conversation_status(conversation=conversation, status=state, actor=bob)

    deliver(mail_user, shared_mailbox, mail("again", subject="Re: Printer on fire", hours=5,
                                            parent="ask"))  # fmt: skip

    conversation.refresh_from_db()
    assert (conversation.status, conversation.snoozed_until) == ("open", None)
    reopened = Activity.objects.get(conversation=conversation, verb="reopened")
    assert reopened.detail["was"] == state


def test_the_teams_own_mail_does_not_reopen_a_closed_conversation(
    shared_mailbox, mail_user, conversation, bob
):
    set_conversation_status(conversation=conversation, status="closed", actor=bob)
    deliver(mail_user, shared_mailbox, mail("fyi", sender=team(shared_mailbox), hours=5,
                                            parent="ask"))  # fmt: skip
    conversation.refresh_from_db()
    assert conversation.status == "closed"


def reply_draft(conversation: Conversation, author: User) -> OutgoingMessage:
    message = Message.objects.filter(conversation=conversation).first()
    assert message is not None
    draft = outgoing_mail.start_reply(message=message, kind="reply", actor=author)
    return outgoing_mail.save_draft(
        draft=draft, to=CAROL, cc="", bcc="", subject=draft.subject, body_text="Out.", actor=author
    )


def test_send_and_close_closes_the_conversation(conversation, bob):
    outgoing_mail.send_reply(draft=reply_draft(conversation, bob), actor=bob, then_status="closed")
    conversation.refresh_from_db()
    assert conversation.status == "closed"
    assert conversation.assignee_id is None  # the mailbox does not assign on reply


def test_the_first_replier_takes_the_conversation_when_the_mailbox_says_so(
    shared_mailbox, conversation, alice, bob
):
    Mailbox.objects.filter(pk=shared_mailbox.pk).update(auto_assign_on_reply=True)
    outgoing_mail.send_reply(draft=reply_draft(conversation, bob), actor=bob, then_status="pending")
    outgoing_mail.send_reply(draft=reply_draft(conversation, alice), actor=alice)

    conversation.refresh_from_db()
    assert (conversation.assignee, conversation.status) == (bob, "pending")


def test_opening_marks_read_on_the_server_for_an_agent_and_writes_nothing_for_a_viewer(
    shared_mailbox, mail_user, conversation, bob, dana
):
    deliver(mail_user, shared_mailbox, mail("again", subject="Re: Printer on fire", hours=1,
                                            parent="ask"))  # fmt: skip
    conversation.refresh_from_db()
    assert conversation.unread_count == 2

    assert open_conversation(conversation=conversation, actor=dana) == 0
    conversation.refresh_from_db()
    assert conversation.unread_count == 2
    assert not Activity.objects.filter(actor=dana).exists()

    assert open_conversation(conversation=conversation, actor=bob) == 2
    push_folder_changes(Message.objects.filter(conversation=conversation)[0].folder_id)
    assert all("\\Seen" in flags for flags in mail_user.flags().values())
    conversation.refresh_from_db()
    assert conversation.unread_count == 0


def test_opening_marks_nothing_when_the_mailbox_does_not_mark_read_on_open(
    shared_mailbox, conversation, bob
):
    Mailbox.objects.filter(pk=shared_mailbox.pk).update(mark_read_on_open=False)
    assert open_conversation(conversation=conversation, actor=bob) == 0
    assert not Message.objects.filter(seen=True).exists()


def test_bulk_actions_work_on_many_conversations_with_one_push_per_folder(
    shared_mailbox, mail_user, bob, django_capture_on_commit_callbacks
):
    for n in range(3):
        deliver(mail_user, shared_mailbox, mail(f"case{n}", subject=f"Case {n}", hours=n))
    ids = [conversation_of(shared_mailbox, f"case{n}").pk for n in range(3)]

    with django_capture_on_commit_callbacks() as pushes:
        done = bulk_act(conversation_ids=ids, mailbox=shared_mailbox, action="read", actor=bob)
    assert done == 3
    assert len(pushes) == 1  # one folder, one push for three messages
    push_folder_changes(Message.objects.all()[0].folder_id)
    assert all("\\Seen" in flags for flags in mail_user.flags().values())

    bulk_act(conversation_ids=ids[:2], mailbox=shared_mailbox, action="assign", actor=bob,
             assignee=bob)  # fmt: skip
    bulk_act(conversation_ids=ids, mailbox=shared_mailbox, action="status", actor=bob,
             status="closed")  # fmt: skip
    rows = Conversation.objects.filter(pk__in=ids).order_by("pk")
    assert [(c.assignee_id, c.status, c.unread_count) for c in rows] == [
        (bob.pk, "closed", 0),
        (bob.pk, "closed", 0),
        (None, "closed", 0),
    ]

    bulk_act(conversation_ids=ids[:1], mailbox=shared_mailbox, action="delete", actor=bob)
    push_folder_changes(Message.objects.all()[0].folder_id)
    deleted = Conversation.objects.get(pk=ids[0])
    assert deleted.message_count == 0  # out of the list
    assert sum("\\Deleted" in flags for flags in mail_user.flags().values()) == 1


def test_a_viewer_can_do_none_of_it(conversation, shared_mailbox, dana):
    for call in (
        lambda: assign_conversation(conversation=conversation, assignee=None, actor=dana),
        lambda: set_conversation_status(conversation=conversation, status="closed", actor=dana),
        lambda: add_note(conversation=conversation, body="hi", actor=dana),
        lambda: bulk_act(
            conversation_ids=[conversation.pk], mailbox=shared_mailbox, action="read", actor=dana
        ),
    ):
        with pytest.raises(AccessRefused):
            call()
    conversation.refresh_from_db()
    assert conversation.status == "open"


@pytest.mark.parametrize(
    ("verb", "detail", "words"),
    [
        ("assigned", {"to": "bob", "by": "alice"}, "assigned it to bob"),
        ("assigned", {"to": "bob", "by": "bob"}, "took it"),
        ("unassigned", {"from": "bob"}, "unassigned bob"),
        ("status_changed", {"from": "open", "to": "closed"}, "closed it"),
        ("status_changed", {"from": "closed", "to": "pending"}, "set it pending"),
        ("snoozed", {"until": "2026-03-02T09:00:00+00:00"}, "snoozed it until Mon Mar 2, "),
        ("woke", {}, "the snooze ended: open again"),
        ("note_added", {"note": 1}, "added a note"),
        ("reopened", {"was": "closed"}, "the customer wrote again: reopened (it was closed)"),
    ],
)
def test_the_history_words_each_workflow_step(verb, detail, words):
    assert describe(Activity(verb=verb, detail=detail)).startswith(words)


SUMMARY_FIELDS = [
    "message_count", "unread_count", "has_attachments", "latest_message_id",
    "latest_from_customer", "latest_sender_name", "customer_name", "customer_address",
    "snippet", "waiting_since",
]  # fmt: skip


@pytest.mark.parametrize("order", ["newest first", "shuffled"])
def test_summaries_kept_batch_by_batch_equal_a_recount_over_the_threading_fixture(
    order, make_mailbox, mail_user
):
    """The threading fixture (70-odd conversations in INBOX and Sent, delivered 12 at a
    time, merges when a reply arrives before its thread): what ingest and the merges kept
    equals what a recount from scratch gives, and each conversation counts its mails."""
    mailbox = make_mailbox(mail_user, folders=["INBOX", "Sent"])
    mails = threading_fixture(mail_user.address)
    deliver_and_sync(mail_user, mailbox, arrival(mails, order), chunk=12)
    rows = Conversation.objects.filter(mailbox=mailbox)
    kept = {c["id"]: c for c in rows.values("id", *SUMMARY_FIELDS)}

    refresh_summaries(list(kept))

    assert {c["id"]: c for c in rows.values("id", *SUMMARY_FIELDS)} == kept
    listed = rows.filter(merged_into__isnull=True, message_count__gt=0)
    sizes = Counter(m.conversation for m in mails)
    assert sorted(c.message_count for c in listed) == sorted(sizes.values())
    assert not rows.filter(merged_into__isnull=False, message_count__gt=0).exists()


def test_beat_wakes_snoozed_conversations_every_minute(conversation, bob, settings):
    entry = next(
        e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "teaminbox.wake_snoozed"
    )
    assert entry["schedule"] == timedelta(minutes=1)
    Conversation.objects.filter(pk=conversation.pk).update(
        snoozed_until=timezone.now() - timedelta(seconds=1)
    )

    assert tasks.wake_snoozed.name == "teaminbox.wake_snoozed"
    assert tasks.wake_snoozed() == 1
    conversation.refresh_from_db()
    assert conversation.snoozed_until is None


def test_a_conversation_deleted_to_trash_leaves_the_list_and_undo_brings_it_back(
    make_mailbox, mail_user, bob
):
    mailbox = make_mailbox(mail_user, delete_mode="trash", agents=(bob,))
    deliver(mail_user, mailbox, mail("ask"))
    conversation = conversation_of(mailbox, "ask")
    inbox = Message.objects.get().folder_id

    bulk_act(conversation_ids=[conversation.pk], mailbox=mailbox, action="delete", actor=bob)
    assert summary(conversation)["message_count"] == 0  # at once, before the server moves it
    push_folder_changes(inbox)
    assert mail_user.uids("Trash") and summary(conversation)["message_count"] == 0

    message = Message.objects.get()
    restore_message(message=message, actor=bob)
    assert summary(conversation)["message_count"] == 1  # on its way back: listed again
    push_folder_changes(message.folder_id)
    sync_mailbox(mailbox)
    assert mail_user.uids("Trash") == []
    assert summary(conversation)["message_count"] == 1
