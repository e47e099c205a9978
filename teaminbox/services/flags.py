"""Flags, delete, restore and purge of a message, as a person does them in the app:
the local state at once, an outbox row for the server, history, a push on commit.

Each service checks that its actor is an agent or a mailbox admin of the message's
mailbox (``access.require_role``) before it changes anything."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import transaction

from mailsync import changes
from mailsync.conversations import refresh_summaries_soon
from mailsync.engine.flags import ANSWERED, DELETED, SEEN, SYSTEM_FLAGS
from mailsync.enqueue import enqueue_on_commit
from mailsync.models import Activity, FlagChange, Folder, Mailbox, Message
from mailsync.tasks import push_flag_changes
from teaminbox.services.access import Actor, Role, actor_id_of, require_role

# An IMAP keyword is an atom: no space, control character or atom-special (RFC 3501 §9)
KEYWORD = re.compile(r"[^\x00-\x20\x7f(){%*\"\\\]]{1,64}")


_pushes_waiting: ContextVar[set[int] | None] = ContextVar("pushes_waiting", default=None)


@contextmanager
def pushes_in_one_go() -> Iterator[None]:
    """Inside it, the outbox is pushed once per folder at the end (on commit), not once per
    message: a bulk action over a hundred conversations sends one task per folder."""
    if _pushes_waiting.get() is not None:  # nested: the outer one pushes
        yield
        return
    waiting: set[int] = set()
    token = _pushes_waiting.set(waiting)
    try:
        yield
    finally:
        _pushes_waiting.reset(token)
    for folder_id in sorted(waiting):
        enqueue_on_commit(push_flag_changes, folder_id)


def _push(folder_id: int) -> None:
    waiting = _pushes_waiting.get()
    if waiting is None:
        enqueue_on_commit(push_flag_changes, folder_id)
    else:
        waiting.add(folder_id)


class ActionRefused(Exception):
    """The action cannot be done in the message's current state; str() says why."""


def act_on_message(*, message: Message, action: str, actor: Actor) -> None:
    """The staff actions offered on a message page, by name."""
    if action == "read":
        set_flag(message=message, flag=SEEN, on=True, actor=actor)
    elif action == "unread":
        set_flag(message=message, flag=SEEN, on=False, actor=actor)
    elif action == "delete":
        delete_message(message=message, actor=actor)
    elif action == "undelete":
        restore_message(message=message, actor=actor)
    elif action == "purge":
        purge_message(message=message, actor=actor)
    else:
        raise ActionRefused("Unknown action: use read, unread, delete, undelete or purge.")


MESSAGE_ACTIONS = ("read", "unread", "delete", "undelete", "purge")


@transaction.atomic
def set_flag(*, message: Message, flag: str, on: bool, actor: Actor) -> FlagChange | None:
    """Set or clear one flag as a person: local state now, the server soon.

    Returns None when the message already has that state (nothing to send).
    """
    if flag not in SYSTEM_FLAGS and not KEYWORD.fullmatch(flag):
        raise ValueError(f"not a flag we can set: {flag!r}")
    message = _lock(message, actor)
    return _set_flag(message, flag, on, actor)


@transaction.atomic
def mark_answered(*, message: Message, author: Actor) -> FlagChange | None:
    """\\Answered on a message once the author's reply went out (the worker, after SMTP).
    The author's role was checked when the reply was sent; it is not asked again, so a
    reply whose author left the team since still marks its original."""
    message = _locked_row(message)
    return _set_flag(message, ANSWERED, True, author)


def _lock(message: Message, actor: Actor) -> Message:
    """The message row, locked for this transaction, once the actor may change it."""
    message = _locked_row(message)
    require_role(actor, message.folder.mailbox_id, Role.AGENT)
    return message


def _locked_row(message: Message) -> Message:
    # The message's row only: a plain FOR UPDATE locks the joined folder row too, which
    # every sync transaction's foreign-key check needs at its COMMIT, after it took the
    # mailbox's change counter that this transaction then waits for (a deadlock).
    return (
        Message.objects.select_for_update(of=("self",)).select_related("folder").get(pk=message.pk)
    )


def _set_flag(message: Message, flag: str, on: bool, actor: Actor) -> FlagChange | None:
    if message.has_flag(flag) == on:
        return None
    field = Message.FLAG_FIELDS.get(flag)
    if field is not None:
        setattr(message, field, on)
        message.save(update_fields=[field])
    else:
        keywords = set(message.keywords)
        (keywords.add if on else keywords.discard)(flag)
        message.keywords = sorted(keywords)
        message.save(update_fields=["keywords"])
    change = FlagChange.objects.create(
        message=message,
        folder=message.folder,
        uidvalidity=message.uidvalidity,
        uid=message.uid,
        flag=flag,
        add=on,
        base_modseq=message.modseq,
        actor_id=actor_id_of(actor),
    )
    verb = Activity.Verb.FLAG_ADDED if on else Activity.Verb.FLAG_REMOVED
    _record(message, actor, verb, {"flag": flag})
    _push(message.folder_id)
    return change


def trash_folder(mailbox: Mailbox) -> Folder | None:
    return mailbox.folders.filter(special_use="\\Trash").order_by("pk").first()


@transaction.atomic
def delete_message(*, message: Message, actor: Actor) -> None:
    """Delete as the mailbox is set up: MOVE to Trash where the server has one (the row
    follows the message there), else set \\Deleted and leave the purge to a person."""
    message = _lock(message, actor)
    if message.moving_to_id is not None:
        return  # already on its way
    mailbox = message.folder.mailbox
    trash = trash_folder(mailbox)
    if (
        mailbox.delete_mode == Mailbox.DeleteMode.TRASH
        and trash is not None
        and message.folder_id != trash.pk
    ):
        _queue_move(message=message, target=trash, actor=actor, verb=Activity.Verb.DELETED)
    else:
        _set_flag(message, DELETED, True, actor)


@transaction.atomic
def restore_message(*, message: Message, actor: Actor) -> None:
    """Undo a delete: cancel the move still waiting, move it back out of Trash, or clear
    \\Deleted."""
    message = _lock(message, actor)
    if message.moving_to_id is not None:
        cancelled = FlagChange.objects.filter(
            message=message, kind=FlagChange.Kind.MOVE, state=FlagChange.State.PENDING
        ).update(state=FlagChange.State.CANCELLED, last_error="undone before it was sent")
        if not cancelled:
            raise ActionRefused("The move is being sent right now; undo it in a moment.")
        message.moving_to = None
        message.save(update_fields=["moving_to"])
        _record(message, actor, Activity.Verb.RESTORED, {})
    elif message.moved_from_id is not None and message.moved_from is not None:
        _queue_move(
            message=message, target=message.moved_from, actor=actor, verb=Activity.Verb.RESTORED
        )
    elif message.deleted:
        _set_flag(message, DELETED, False, actor)


@transaction.atomic
def purge_message(*, message: Message, actor: Actor) -> None:
    """Remove a message marked \\Deleted for good: ``UID EXPUNGE`` of its UID only."""
    message = _lock(message, actor)
    if not message.deleted:
        raise ActionRefused("Only a message marked deleted can be purged.")
    FlagChange.objects.create(
        message=message,
        folder=message.folder,
        uidvalidity=message.uidvalidity,
        uid=message.uid,
        kind=FlagChange.Kind.EXPUNGE,
        actor_id=actor_id_of(actor),
    )
    _record(message, actor, Activity.Verb.PURGED, {})
    _push(message.folder_id)


def _queue_move(*, message: Message, target: Folder, actor: Actor, verb: str) -> None:
    FlagChange.objects.create(
        message=message,
        folder=message.folder,
        uidvalidity=message.uidvalidity,
        uid=message.uid,
        kind=FlagChange.Kind.MOVE,
        target_folder=target,
        actor_id=actor_id_of(actor),
    )
    message.moving_to = target
    message.save(update_fields=["moving_to"])
    _record(message, actor, verb, {"to": target.name})
    _push(message.folder_id)


def _record(message: Message, actor: Actor, verb: str, detail: dict[str, object]) -> None:
    # every action here can change what the conversation list shows (unread, deleted)
    refresh_summaries_soon([message.conversation_id])
    changes.record(
        mailbox=message.folder.mailbox_id,
        message=message,
        actor=actor_id_of(actor),
        source=Activity.Source.APP,
        verb=verb,
        detail=detail,
    )
