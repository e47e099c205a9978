"""The recorder (mailsync.changes): every write path announces itself on the mailbox's
change counter, history verbs come from the vocabulary only, and a reader holding number
N never misses a change that a slower transaction commits late."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection, transaction
from django.urls import reverse

from mailsync import changes
from mailsync.conversations import merge_conversations
from mailsync.engine.errors import MailError
from mailsync.engine.flags import FLAGGED, SEEN
from mailsync.extract import extract_messages
from mailsync.models import Activity, Change, Conversation, FlagChange, Message
from mailsync.runner import push_folder_changes, sync_mailbox
from mailsync.templatetags.history import WORDING, describe
from teaminbox import delivery
from teaminbox.services import outgoing as outgoing_mail
from teaminbox.services.flags import delete_message, purge_message, restore_message, set_flag
from teaminbox.services.memberships import set_membership
from tests.support.mail import client_for, receive
from tests.support.smtp import QUIET_AUTH_WARNING, SMTP_PASSWORD, SMTP_USER, smtp_server

pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings(QUIET_AUTH_WARNING)]

CASE = b"""\
From: Carol Customer <carol@example.org>
To: Support <SHARED>
Subject: Where is my refund?
Date: Tue, 03 Dec 2024 10:15:00 +0000
Message-ID: <refund-1@example.org>

Hello, I am still waiting for my refund.
"""


@pytest.fixture
def mailbox(shared_mailbox):
    with smtp_server() as smtp:
        shared_mailbox.smtp_host = smtp.host
        shared_mailbox.smtp_port = smtp.port
        shared_mailbox.smtp_security = "plain"
        shared_mailbox.smtp_username = SMTP_USER
        shared_mailbox.set_smtp_password(SMTP_PASSWORD)
        shared_mailbox.save()
        yield shared_mailbox


@dataclass
class World:
    mailbox: Any
    mail_user: Any
    message: Message
    bob: Any
    charlie: Any


def _new_mail(w: World) -> set[int]:
    w.mail_user.append(CASE.replace(b"refund-1", b"refund-2"))
    sync_mailbox(w.mailbox)
    return set(
        Message.objects.filter(message_id="refund-2@example.org").values_list("pk", flat=True)
    )


def _flag_on_server(w: World) -> set[int]:
    w.mail_user.add_flags([w.message.uid], [FLAGGED])
    sync_mailbox(w.mailbox)
    return {w.message.pk}


def _expunge_on_server(w: World) -> set[int]:
    w.mail_user.expunge([w.message.uid])
    sync_mailbox(w.mailbox)
    return {w.message.pk}


def _extraction(w: World) -> set[int]:
    Message.objects.filter(pk=w.message.pk).update(extracted_at=None)
    assert extract_messages([w.message.pk]) == 1
    return {w.message.pk}


def _merge(w: World) -> set[int]:
    other = Conversation.objects.create(mailbox=w.mailbox, subject="Same customer")
    assert w.message.conversation_id is not None
    merge_conversations(survivor_id=w.message.conversation_id, merged_ids=[other.pk])
    return set()


def _push_refused(w: World) -> set[int]:
    """A keyword Dovecot answers BAD to, pushed until the outbox gives up on it."""
    m = w.message
    FlagChange.objects.create(
        message=m, folder=m.folder, uidvalidity=m.uidvalidity, uid=m.uid, flag="bad(kw", add=True
    )
    for _ in range(3):
        push_folder_changes(m.folder_id)
    assert FlagChange.objects.get(message=m).state == FlagChange.State.FAILED
    return {m.pk}


def _set_flag(w: World) -> set[int]:
    set_flag(message=w.message, flag=SEEN, on=True, actor=w.bob)
    return {w.message.pk}


def _delete(w: World) -> set[int]:
    delete_message(message=w.message, actor=w.bob)
    return {w.message.pk}


def _restore(w: World) -> set[int]:
    set_flag(message=w.message, flag="\\Deleted", on=True, actor=w.bob)
    before = changes.current(w.mailbox)
    restore_message(message=w.message, actor=w.bob)
    assert changes.current(w.mailbox) > before
    return {w.message.pk}


def _purge(w: World) -> set[int]:
    set_flag(message=w.message, flag="\\Deleted", on=True, actor=w.bob)
    purge_message(message=w.message, actor=w.bob)
    return {w.message.pk}


def _membership(w: World) -> set[int]:
    set_membership(user=w.charlie, mailbox=w.mailbox, role="viewer", actor=None)
    return set()


def _send_reply(w: World) -> set[int]:
    draft = outgoing_mail.start_reply(message=w.message, kind="reply", actor=w.bob)
    outgoing_mail.send_reply(draft=draft, actor=w.bob)
    return {w.message.pk}


def _delivery(w: World) -> set[int]:
    draft = outgoing_mail.start_reply(message=w.message, kind="reply", actor=w.bob)
    sent = outgoing_mail.send_reply(draft=draft, actor=w.bob)
    before = changes.current(w.mailbox)
    result = delivery.deliver(sent.pk)
    assert result is not None and result.sent
    assert changes.current(w.mailbox) > before
    return {w.message.pk}


def _retry(w: World) -> set[int]:
    draft = outgoing_mail.start_reply(message=w.message, kind="reply", actor=w.bob)
    sent = outgoing_mail.send_reply(draft=draft, actor=w.bob)
    type(sent).objects.filter(pk=sent.pk).update(state="failed")
    outgoing_mail.retry_outgoing(outgoing=sent, actor=w.bob)
    return {w.message.pk}


def _sync_failed(w: World) -> set[int]:
    w.mailbox.set_password("not-the-password")
    w.mailbox.save()
    with pytest.raises(MailError):
        sync_mailbox(w.mailbox)
    return set()


WRITE_PATHS: dict[str, Callable[[World], set[int]]] = {
    "sync: new mail": _new_mail,
    "sync: a flag changed on the server": _flag_on_server,
    "sync: expunged on the server": _expunge_on_server,
    "sync: failed": _sync_failed,
    "extraction": _extraction,
    "threading: a merge": _merge,
    "outbox: a change the server refuses": _push_refused,
    "service: set a flag": _set_flag,
    "service: delete": _delete,
    "service: restore": _restore,
    "service: purge": _purge,
    "service: membership": _membership,
    "service: send a reply": _send_reply,
    "service: retry a failed reply": _retry,
    "delivery: the reply went out": _delivery,
}


@pytest.mark.parametrize("path", WRITE_PATHS)
def test_every_write_path_bumps_the_mailbox_change_counter(path, mailbox, mail_user, bob, charlie):
    message = receive(mail_user, mailbox, CASE)
    world = World(mailbox, mail_user, message, bob, charlie)
    before = changes.current(mailbox)

    touched = WRITE_PATHS[path](world)

    since = changes.changes_since(mailbox, before)
    assert since.anything and since.number == changes.current(mailbox) > before
    assert touched <= since.message_ids, "the change names the messages it touched"
    # history rows only ever carry a verb of the vocabulary, and the number they came with
    for activity in Activity.objects.filter(mailbox=mailbox):
        assert activity.verb in Activity.Verb.values
        assert activity.change is not None


def test_a_batch_of_new_mail_is_one_change_and_no_history_rows(mailbox, mail_user):
    for n in range(5):
        mail_user.append(CASE.replace(b"refund-1", f"batch-{n}".encode()))
    before = changes.current(mailbox)

    sync_mailbox(mailbox)

    new_mail = Change.objects.filter(mailbox=mailbox, number__gt=before, kind=Change.Kind.NEW_MAIL)
    assert new_mail.count() == 1
    assert len(new_mail.get().message_ids) == 5
    assert not Activity.objects.filter(mailbox=mailbox).exists()


def test_it_refuses_a_verb_outside_the_vocabulary(mailbox):
    before = changes.current(mailbox)
    with pytest.raises(ValueError):
        changes.record(mailbox=mailbox, verb="did_something", source=Activity.Source.APP)
    assert changes.current(mailbox) == before
    assert not Activity.objects.exists()


def test_every_verb_has_its_own_wording():
    assert set(WORDING) == set(Activity.Verb.values)


def test_the_history_says_what_a_refused_change_was_and_why(mailbox, mail_user, bob):
    message = receive(mail_user, mailbox, CASE)
    for verb, expected in [
        (Activity.Verb.PUSH_FAILED, "setting $Urgent was refused by the server: NO [CANNOT]"),
        (Activity.Verb.CONFLICT, "clearing \\Seen was not applied (another client kept"),
    ]:
        activity = changes.record(
            mailbox=mailbox,
            message=message,
            actor=bob.pk,
            source=Activity.Source.SYSTEM,
            verb=verb,
            detail={
                "flag": "$Urgent" if verb == Activity.Verb.PUSH_FAILED else "\\Seen",
                "add": verb == Activity.Verb.PUSH_FAILED,
                "kind": "flag",
                "error": "NO [CANNOT] refused.",
            },
        )
        assert describe(activity).startswith(expected)

    page = client_for(bob).get(
        reverse("message", kwargs={"mailbox": mailbox.name, "message_id": message.pk})
    )
    assert "was refused by the server: NO [CANNOT] refused" in page.content.decode()


def _waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_reader_never_skips_a_change_a_slower_transaction_commits_late(make_mailbox, mail_user):
    """Two writers overlap: the slow one takes its number first and commits last, the
    quick one comes second. A reader that looks in between and then asks "since what I
    saw" must get both changes, whatever order they commit in."""
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers: PostgreSQL (SQLite runs one writer at a time)")
    mailbox = make_mailbox(mail_user)
    slow_bumped = threading.Event()
    slow_may_commit = threading.Event()
    quick_done = threading.Event()
    errors: list[BaseException] = []

    def writer(marker: int, before_commit: Callable[[], None]) -> None:
        try:
            with transaction.atomic():
                changes.bump(mailbox=mailbox.pk, kind=Change.Kind.NEW_MAIL, message_ids=[marker])
                before_commit()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    def slow_waits() -> None:
        slow_bumped.set()
        assert slow_may_commit.wait(30)

    slow = threading.Thread(target=writer, args=(1, slow_waits))
    slow.start()
    assert slow_bumped.wait(30)
    quick = threading.Thread(target=writer, args=(2, quick_done.set))
    quick.start()
    # Until the quick writer has either committed or is queued behind the slow one.
    deadline = time.monotonic() + 30
    while not quick_done.is_set() and not _waiting_on_a_lock():
        assert time.monotonic() < deadline, "the quick writer neither committed nor waited"
        time.sleep(0.01)
    seen = changes.changes_since(mailbox, 0)  # a page loads now and keeps seen.number

    slow_may_commit.set()
    slow.join(30)
    quick.join(30)
    assert not errors and not slow.is_alive() and not quick.is_alive()

    later = changes.changes_since(mailbox, seen.number)
    assert seen.message_ids | later.message_ids == {1, 2}, "a change was skipped"
