"""The team's work on a conversation: assign, status, snooze, notes, read/unread, bulk.

Each service is keyword-only and one transaction, checks that the actor is an agent or a
mailbox admin (``access.require_role``; a viewer gets ``AccessRefused``) and records what
it did through ``mailsync.changes`` (history row and change number together). Read and
unread go through the flag services, so the server hears of them through the outbox.

The state lives on ``mailsync.Conversation`` (assignee, status, snoozed_until): a merge
there combines it without mailsync knowing about this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from mailsync import changes
from mailsync.conversations import resolve, summaries_in_one_go
from mailsync.engine.flags import SEEN
from mailsync.models import Activity, Conversation, Mailbox, Message
from teaminbox.models import Note, OutgoingMessage
from teaminbox.services.access import Actor, Role, actor_id_of, may, require_role
from teaminbox.services.flags import (
    ActionRefused,
    delete_message,
    pushes_in_one_go,
    set_flag,
)

Status = Conversation.Status
BULK_ACTIONS = ("read", "unread", "assign", "status", "delete")
NOTE_MAX_LENGTH = 20_000


@transaction.atomic
def assign_conversation(
    *, conversation: Conversation, assignee: AbstractBaseUser | None, actor: Actor
) -> Conversation:
    """Give the conversation to a teammate who may act in the mailbox (None: nobody)."""
    conversation = _lock(conversation, actor)
    _assign(conversation, assignee, actor)
    return conversation


@transaction.atomic
def set_conversation_status(
    *, conversation: Conversation, status: str, actor: Actor
) -> Conversation:
    """Open, pending or closed. Setting a status by hand ends a snooze."""
    conversation = _lock(conversation, actor)
    _set_status(conversation, status, actor)
    return conversation


@transaction.atomic
def snooze_conversation(
    *, conversation: Conversation, until: datetime, actor: Actor, now: datetime | None = None
) -> Conversation:
    """Out of the open views until ``until`` (in the future); ``wake_snoozed`` brings it back."""
    now = now or timezone.now()
    if timezone.is_naive(until):
        raise ActionRefused("Give the snooze time with its time zone.")
    if until <= now:
        raise ActionRefused("Snooze until a time in the future.")
    conversation = _lock(conversation, actor)
    conversation.snoozed_until = until
    conversation.save(update_fields=["snoozed_until"])
    _record(conversation, actor, Activity.Verb.SNOOZED, {"until": until.isoformat()})
    return conversation


@transaction.atomic
def add_note(*, conversation: Conversation, body: str, actor: Actor) -> Note:
    """An internal note: for the team, never sent to the customer."""
    body = body.strip()
    if not body:
        raise ActionRefused("A note needs some text.")
    if len(body) > NOTE_MAX_LENGTH:
        raise ActionRefused(f"A note can be at most {NOTE_MAX_LENGTH:,} characters long.")
    conversation = _lock(conversation, actor)
    note = Note.objects.create(conversation=conversation, author_id=actor_id_of(actor), body=body)
    _record(conversation, actor, Activity.Verb.NOTE_ADDED, {"note": note.pk})
    return note


@transaction.atomic
def open_conversation(*, conversation: Conversation, actor: Actor) -> int:
    """A person opened the conversation: with the mailbox's "mark read when opened" on,
    an agent's (or admin's) look sets \\Seen on its unread messages, here and on the
    server. A viewer's look writes nothing. Returns how many messages were marked."""
    mailbox = Mailbox.objects.get(pk=conversation.mailbox_id)
    if actor is None or not mailbox.mark_read_on_open or not may(actor, mailbox, Role.AGENT):
        return 0
    return mark_conversation(conversation=conversation, read=True, actor=actor)


@transaction.atomic
def mark_conversation(*, conversation: Conversation, read: bool, actor: Actor) -> int:
    """\\Seen set (or cleared) on every message of the conversation that lacks (or has) it,
    through the flag services: one push per folder. Returns how many messages changed."""
    with pushes_in_one_go(), summaries_in_one_go():
        conversation = _lock(conversation, actor)
        return _mark(conversation, read, actor)


@transaction.atomic
def bulk_act(
    *,
    conversation_ids: Iterable[int],
    mailbox: Mailbox,
    action: str,
    actor: Actor,
    assignee: AbstractBaseUser | None = None,
    status: str | None = None,
) -> int:
    """One action on many conversations of one mailbox, in one transaction: read,
    unread, assign (``assignee``, None for nobody), status (``status``) or delete (every
    message to Trash, or \\Deleted). The outbox is pushed once per folder and the list's
    summaries refreshed once. Ids of other mailboxes are ignored. Returns how many
    conversations it acted on."""
    if action not in BULK_ACTIONS:
        raise ActionRefused("Unknown action: use read, unread, assign, status or delete.")
    if action == "status" and status not in Status.values:
        raise ActionRefused("Unknown status: use open, pending or closed.")
    require_role(actor, mailbox, Role.AGENT)
    with pushes_in_one_go(), summaries_in_one_go():
        rows = _locked(
            Conversation.objects.filter(
                mailbox=mailbox, pk__in=list(conversation_ids), merged_into__isnull=True
            )
        )
        for conversation in rows:
            if action in ("read", "unread"):
                _mark(conversation, action == "read", actor)
            elif action == "assign":
                _assign(conversation, assignee, actor)
            elif action == "status":
                _set_status(conversation, str(status), actor)
            else:
                for message in _live_messages(conversation):
                    delete_message(message=message, actor=actor)
        return len(rows)


@transaction.atomic
def wake_snoozed(now: datetime | None = None) -> int:
    """Snoozes that are due end: the conversation is open again, with a history row.
    Run every minute by beat (``teaminbox.wake_snoozed``); a conversation locked by a
    person right now is left for the next run. Returns how many woke."""
    now = now or timezone.now()
    due = list(
        Conversation.objects.select_for_update(skip_locked=True)
        .filter(snoozed_until__lte=now)
        .order_by("pk")
        .values_list("pk", "mailbox_id", "status")
    )
    if not due:
        return 0
    Conversation.objects.filter(pk__in=[pk for pk, _, _ in due]).update(
        snoozed_until=None, status=Status.OPEN
    )
    by_mailbox: dict[int, list[changes.Entry]] = {}
    for pk, mailbox_id, was in due:
        by_mailbox.setdefault(mailbox_id, []).append(
            changes.Entry(
                conversation_id=pk,
                source=Activity.Source.SYSTEM,
                verb=Activity.Verb.WOKE,
                detail={"was": was},
            )
        )
    for mailbox_id, entries in by_mailbox.items():
        changes.record_all(mailbox=mailbox_id, entries=entries)
    return len(due)


def after_reply(
    *, conversation_id: int | None, mailbox: Mailbox, then_status: str | None, actor: Actor
) -> None:
    """What a sent reply does to its conversation (``outgoing.send_reply``, in its
    transaction, the actor checked there): the status chosen with "send and ...", and the
    conversation assigned to the replier when the mailbox says the first replier takes it."""
    rows = _locked(Conversation.objects.filter(pk=conversation_id)) if conversation_id else []
    if not rows:  # a new message, or mail threaded nowhere
        return
    conversation = _survivor(rows[0])
    user = actor if isinstance(actor, AbstractBaseUser) else None
    if mailbox.auto_assign_on_reply and conversation.assignee_id is None and user is not None:
        _assign(conversation, user, actor)
    if then_status is not None:
        _set_status(conversation, then_status, actor)


def app_authors(mailbox_id: int, message_ids: Sequence[str]) -> Mapping[str, str]:
    """Message-ID -> the username of the colleague who sent it from the app: how the
    conversation list names the writer of a latest message the team sent
    (registered with ``mailsync.conversations.author_lookups`` by ``TeaminboxConfig``)."""
    rows = OutgoingMessage.objects.filter(
        mailbox_id=mailbox_id, message_id__in=list(message_ids), author__isnull=False
    ).values_list("message_id", "author__username")
    return {message_id: str(username) for message_id, username in rows}


# -- the steps, without the access check (the public services check once) ---------------


def _lock(conversation: Conversation, actor: Actor) -> Conversation:
    """The conversation (the one it was merged into, if so), locked, once the actor may
    act in its mailbox."""
    require_role(actor, conversation.mailbox_id, Role.AGENT)
    locked = _locked(Conversation.objects.filter(pk=conversation.pk))[0]
    return _survivor(locked)


def _survivor(conversation: Conversation) -> Conversation:
    if conversation.merged_into_id is None:
        return conversation
    survivor = resolve(conversation)
    return _locked(Conversation.objects.filter(pk=survivor.pk))[0]


def _locked(rows: QuerySet[Conversation]) -> list[Conversation]:
    return list(rows.select_for_update(of=("self",)).select_related("assignee").order_by("pk"))


def _assign(conversation: Conversation, assignee: AbstractBaseUser | None, actor: Actor) -> None:
    if assignee is not None and not may(assignee, _mailbox(conversation), Role.AGENT):
        raise ActionRefused(
            f"{assignee.get_username()} cannot take conversations here: assign to a teammate "
            "who is an agent or mailbox admin of this mailbox."
        )
    new_id = int(assignee.pk) if assignee is not None else None
    if conversation.assignee_id == new_id:
        return
    before = conversation.assignee
    conversation.assignee_id = new_id
    conversation.save(update_fields=["assignee"])
    by = actor.get_username() if isinstance(actor, AbstractBaseUser) else ""
    if assignee is not None:
        _record(
            conversation, actor, Activity.Verb.ASSIGNED, {"to": assignee.get_username(), "by": by}
        )
    else:
        previous = before.get_username() if before is not None else ""
        _record(conversation, actor, Activity.Verb.UNASSIGNED, {"from": previous, "by": by})


def _set_status(conversation: Conversation, status: str, actor: Actor) -> None:
    if status not in Status.values:
        raise ActionRefused("Unknown status: use open, pending or closed.")
    if conversation.status == status and conversation.snoozed_until is None:
        return
    before = conversation.status
    conversation.status = status
    conversation.snoozed_until = None
    conversation.save(update_fields=["status", "snoozed_until"])
    _record(conversation, actor, Activity.Verb.STATUS_CHANGED, {"from": before, "to": status})


def _mark(conversation: Conversation, read: bool, actor: Actor) -> int:
    changed = 0
    for message in _live_messages(conversation).filter(seen=not read):
        if set_flag(message=message, flag=SEEN, on=read, actor=actor) is not None:
            changed += 1
    return changed


def _live_messages(conversation: Conversation) -> QuerySet[Message]:
    """Its messages a person sees: not expunged, not on their way to Trash."""
    return Message.objects.filter(
        conversation=conversation, expunged_at__isnull=True, moving_to__isnull=True
    ).order_by("pk")


def _mailbox(conversation: Conversation) -> Mailbox:
    return Mailbox.objects.get(pk=conversation.mailbox_id)


def _record(conversation: Conversation, actor: Actor, verb: str, detail: dict[str, object]) -> None:
    changes.record(
        mailbox=conversation.mailbox_id,
        conversation=conversation,
        actor=actor_id_of(actor),
        source=Activity.Source.APP,
        verb=verb,
        detail=detail,
    )
