"""Conversations through the normal sync against Dovecot, in any arrival order; merges keep
the team's state and history and the merged conversation's URL."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from mailsync.engine.flags import SEEN
from mailsync.models import Activity, Conversation, Mailbox, Message
from mailsync.runner import sync_mailbox
from teaminbox.models import Note
from teaminbox.services import set_flag
from tests.support.dovecot import MailUser
from tests.support.mail import client_for

pytestmark = pytest.mark.django_db

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Mail:
    key: str
    conversation: str  # the expected conversation: same label, same conversation
    folder: str
    sender: str
    to: str
    subject: str
    date: datetime
    message_id: str | None  # None: no Message-ID header at all
    in_reply_to: str = ""
    references: tuple[str, ...] = ()

    def raw(self) -> bytes:
        headers = [f"From: {self.sender}", f"To: {self.to}", f"Subject: {self.subject}"]
        headers.append(f"Date: {format_datetime(self.date)}")
        if self.message_id is not None:
            headers.append(f"Message-ID: <{self.message_id}>")
        if self.in_reply_to:
            headers.append(f"In-Reply-To: {self.in_reply_to}")
        if self.references:
            headers.append("References: " + " ".join(f"<{r}>" for r in self.references))
        return ("\r\n".join(headers) + f"\r\n\r\n{self.key}\r\n").encode()


def fixture(support: str) -> list[Mail]:
    """At least 60 conversations of every shape threading must get right; ``support`` is
    the shared mailbox's address (its replies are in Sent, which the mailbox mirrors)."""
    mails: list[Mail] = []

    def add(key: str, conversation: str, hours: float, **fields: object) -> Mail:
        fields.setdefault("folder", "INBOX")
        fields.setdefault("to", support)
        fields.setdefault("message_id", f"{key}@example.org")
        when = START + timedelta(hours=hours)
        mail = Mail(key=key, conversation=conversation, date=when, **fields)  # type: ignore[arg-type]
        mails.append(mail)
        return mail

    def reply(key: str, to: Mail, later: float, *, sent: bool, **fields: object) -> Mail:
        """``to`` answered ``later`` hours after it: by the team (in Sent) or the customer."""
        fields.setdefault("in_reply_to", f"<{to.message_id}>")
        fields.setdefault("references", (*to.references, str(to.message_id)))
        fields.setdefault("subject", f"Re: {to.subject}")
        if sent:
            fields.update(folder="Sent", sender=support, to=to.sender)
        else:
            fields.setdefault("sender", to.to if to.folder == "Sent" else to.sender)
        hours = (to.date - START) / timedelta(hours=1) + later
        return add(key, to.conversation, hours, **fields)

    def customer(n: int) -> str:
        return f"Customer {n} <customer{n}@example.org>"

    hour = 0.0
    for n in range(18):  # a question and the team's answer (from Sent)
        hour += 1
        root = add(f"q{n}", f"answered-{n}", hour, sender=customer(n), subject=f"Printer {n}")
        reply(f"q{n}-a", root, 0.5, sent=True)
    for n in range(10):  # replies to replies
        hour += 1
        root = add(f"r{n}", f"back-and-forth-{n}", hour, sender=customer(100 + n),
                   subject=f"Invoice {n}")  # fmt: skip
        answer = reply(f"r{n}-a", root, 1, sent=True)
        reply(f"r{n}-b", answer, 2, sent=False)
    for n in range(8):  # In-Reply-To only
        hour += 1
        root = add(
            f"i{n}", f"in-reply-to-{n}", hour, sender=customer(200 + n), subject=f"Login {n}"
        )
        reply(f"i{n}-a", root, 1, sent=True, references=())
    for n in range(8):  # References only
        hour += 1
        root = add(
            f"f{n}", f"references-{n}", hour, sender=customer(300 + n), subject=f"Refund {n}"
        )
        reply(f"f{n}-a", root, 1, sent=True, in_reply_to="")
    for n in range(6):  # a broken In-Reply-To beside good References
        hour += 1
        root = add(f"b{n}", f"broken-{n}", hour, sender=customer(400 + n), subject=f"Delivery {n}")
        wrong = "<q0@example.org>" if n % 2 else "your message of Tuesday"
        reply(f"b{n}-a", root, 1, sent=False, in_reply_to=wrong)
    # one Message-ID, two unrelated messages (a broken mailer), each answered
    hour += 1
    first = add("dup-a", "dup-alice", hour, sender="Alice <alice@example.org>",
                subject="Broken form", message_id="form@example.org")  # fmt: skip
    second = add("dup-b", "dup-bob", hour + 0.2, sender="Bob <bob@example.org>",
                 subject="Shipping address", message_id="form@example.org")  # fmt: skip
    reply("dup-a-a", first, 1, sent=True)
    reply("dup-b-a", second, 1, sent=True)
    for n in range(4):  # no Message-ID; the customer writes again without thread headers
        hour += 1
        add(f"n{n}", f"no-id-{n}", hour, sender=customer(500 + n), subject=f"Password {n}",
            message_id=None)  # fmt: skip
        if n % 2:
            add(f"n{n}-again", f"no-id-{n}", hour + 20, sender=customer(500 + n),
                subject=f"RE: password {n}", message_id=None)  # fmt: skip
    # the same subject from two customers: two conversations; one writes again next day
    hour += 1
    add("dan", "question-dan", hour, sender="Dan <dan@example.org>", subject="Question")
    add("erin", "question-erin", hour + 0.1, sender="Erin <erin@example.org>", subject="Question")
    add("dan-2", "question-dan", hour + 24, sender="Dan <dan@example.org>", subject="AW: Question")
    # replies whose parent is in no mirrored folder
    hour += 1
    add("lost-1", "lost-parent", hour, sender=customer(600), subject="Re: Contract",
        references=("gone@example.org",))  # fmt: skip
    add("lost-2", "lost-parent", hour + 1, sender=customer(601), subject="Re: Contract",
        references=("gone@example.org",))  # fmt: skip
    # a thread of 8, each naming only its parent, back and forth between INBOX and Sent,
    # spread over days so that other mail arrives in between
    message = add("t1", "thread-of-8", 3, sender=customer(700), subject="Order 8")
    for n in range(2, 9):
        message = reply(f"t{n}", message, 9, sent=n % 2 == 0, references=())
    # the team edits the subject in its answer
    hour += 1
    root = add("e", "edited", hour, sender=customer(800), subject="Screen flickers")
    answer = reply("e-a", root, 1, sent=True, subject="Ticket 4711: screen flickers (was: Re:)")
    reply("e-b", answer, 2, sent=False)
    return mails


def deliver_and_sync(
    mail_user: MailUser, mailbox: Mailbox, mails: list[Mail], chunk: int
) -> dict[tuple[str, int], str]:
    """APPEND ``mails`` in this order, syncing after each ``chunk``; (folder, uid) -> key."""
    where = {}
    for start in range(0, len(mails), chunk):
        with mail_user.imap() as client:
            for mail in mails[start : start + chunk]:
                answer = client.append(mail.folder, mail.raw())
                match = re.search(rb"APPENDUID \d+ (\d+)", answer)
                assert match is not None, answer
                where[(mail.folder, int(match.group(1)))] = mail.key
        sync_mailbox(mailbox, extract=False)
    return where


def arrival(mails: list[Mail], order: str) -> list[Mail]:
    if order == "newest first":
        return sorted(mails, key=lambda m: m.date, reverse=True)
    if order == "oldest first":
        return sorted(mails, key=lambda m: m.date)
    shuffled = list(mails)
    random.Random(20261201).shuffle(shuffled)
    return shuffled


@pytest.mark.parametrize("order", ["newest first", "oldest first", "shuffled"])
def test_every_message_is_in_its_expected_conversation_in_any_arrival_order(
    order, make_mailbox, mail_user
):
    mailbox = make_mailbox(mail_user, folders=["INBOX", "Sent"])
    mails = fixture(mail_user.address)
    expected = {m.key: m.conversation for m in mails}
    assert len(set(expected.values())) >= 60

    where = deliver_and_sync(mail_user, mailbox, arrival(mails, order), chunk=12)

    stored = {
        where[(m.folder.name, m.uid)]: m
        for m in Message.objects.filter(folder__mailbox=mailbox).select_related("folder")
    }
    assert set(stored) == set(expected)
    found: dict[str, set[int | None]] = defaultdict(set)
    for key, message in stored.items():
        found[expected[key]].add(message.conversation_id)
    split = {label: ids for label, ids in found.items() if len(ids) != 1}
    assert split == {}, "conversations split over several"
    owners: dict[int | None, set[str]] = defaultdict(set)
    for label, ids in found.items():
        owners[ids.pop()].add(label)
    shared = {pk: labels for pk, labels in owners.items() if len(labels) != 1}
    assert shared == {}, "unrelated conversations joined"
    # each conversation is named after its first message, however it arrived
    order8 = stored["t1"].conversation
    assert order8 is not None
    assert (order8.subject, order8.first_message_at) == ("Order 8", START + timedelta(hours=3))
    assert order8.last_message_at == START + timedelta(hours=3 + 7 * 9)
    if order == "shuffled":  # some messages came after two parts of their thread
        assert Conversation.objects.filter(mailbox=mailbox, merged_into__isnull=False).exists()


def mail(key: str, *, sender: str, parent: str = "", subject: str, hours: float) -> bytes:
    """Mail naming only its parent (In-Reply-To), as many mailers do."""
    date = format_datetime(START + timedelta(hours=hours))
    headers = f"From: {sender}\r\nTo: support@example.test\r\nDate: {date}\r\n"
    if parent:
        headers += f"In-Reply-To: <{parent}@example.org>\r\n"
    headers += f"Subject: {subject}\r\nMessage-ID: <{key}@example.org>\r\n"
    return f"{headers}\r\nbody-of-{key}\r\n".encode()


def test_a_merge_keeps_state_and_history_and_redirects_the_old_url(
    shared_mailbox, mail_user, bob, charlie
):
    mail_user.append(mail("a", sender="dave@example.org", subject="Printer", hours=0))
    sync_mailbox(shared_mailbox)
    mail_user.append(
        mail("c", sender="carol@example.org", parent="b", subject="Re: Printer", hours=2)
    )
    sync_mailbox(shared_mailbox)
    a = Message.objects.get(message_id="a@example.org")
    c = Message.objects.get(message_id="c@example.org")
    older, newer = a.conversation, c.conversation
    assert older is not None and newer is not None and older.pk < newer.pk  # two, for now
    set_flag(message=c, flag=SEEN, on=True, actor=bob)
    Activity.objects.create(  # history of the conversation itself (its first verbs: issue 12)
        mailbox=shared_mailbox,
        conversation=newer,
        actor=bob,
        source="app",
        verb="flag_added",
        detail={"flag": "\\Flagged"},
    )
    # the team's state: the newer one is bob's and waits on the customer, the older closed
    later = timezone.now() + timedelta(days=1)
    Conversation.objects.filter(pk=newer.pk).update(
        assignee=bob, status=Conversation.Status.PENDING, snoozed_until=later
    )
    Conversation.objects.filter(pk=older.pk).update(status=Conversation.Status.CLOSED)
    note = Note.objects.create(conversation=newer, author=bob, body="Toner ordered")
    page = reverse("conversation", kwargs={"mailbox": "support", "conversation_id": newer.pk})
    assert "marked it read" in client_for(bob).get(page).content.decode()

    # carol's first reply arrives last and shows that the two are one conversation
    mail_user.append(
        mail("b", sender="carol@example.org", parent="a", subject="Re: Printer", hours=1)
    )
    sync_mailbox(shared_mailbox)

    c.refresh_from_db()
    newer.refresh_from_db()
    older.refresh_from_db()
    assert newer.merged_into_id == older.pk
    # the survivor takes the assignee it lacked, stays pending (not closed), and is not
    # snoozed (the older one was not); the note moved with it
    assert (older.assignee, older.status, older.snoozed_until) == (
        bob,
        Conversation.Status.PENDING,
        None,
    )
    note.refresh_from_db()
    assert note.conversation_id == older.pk
    assert [m.message_id for m in Message.objects.filter(conversation=older)] == [
        "a@example.org",
        "c@example.org",
        "b@example.org",
    ]
    assert c.seen
    about_the_conversation = Activity.objects.get(message=None, verb="flag_added")
    assert about_the_conversation.conversation_id == older.pk
    client = client_for(bob)
    response = client.get(page)
    survivor = reverse("conversation", kwargs={"mailbox": "support", "conversation_id": older.pk})
    assert (response.status_code, response["Location"]) == (302, survivor)
    text = client.get(survivor).content.decode()
    assert "3 messages" in text
    assert text.index("body-of-a") < text.index("body-of-b") < text.index("body-of-c")
    assert "marked it read" in text and "flagged it" in text
    assert f"joined conversation #{newer.pk} to this one" in text
    assert client_for(charlie).get(page).status_code == 404
    assert client_for(charlie).get(survivor).status_code == 404
