"""The recorder: every change to a mailbox announces itself here, in its own transaction.

``record`` writes a history row (a verb from ``Activity.Verb``) and ``bump`` marks a change
that has no history row (a batch of new mail, extracted text); both take the mailbox's
next change number and write a ``Change`` row saying which messages and conversations to
look at again. ``changes_since`` is the reader: a page that holds number N asks what
changed after N.

Why a reader never skips a change, however late it commits: the number comes from
``UPDATE ... SET value = value + 1 RETURNING value`` on the mailbox's one ``ChangeCounter``
row, inside the transaction that makes the change. That UPDATE takes the row's lock and
keeps it until the transaction ends, so a second writer's UPDATE waits for the first to
commit (or roll back) and then reads the committed value: numbers are handed out in
commit order. When change N is visible, every change below N has committed already, so
"changes since N" can never later gain a row numbered N or less. (On SQLite one
transaction writes at a time, which gives the same order.)

The price is that writers of one mailbox queue on that row from their bump to their
commit, so callers bump late in their transaction (a sync batch bumps after its inserts).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db import connection, transaction

from mailsync.models import Activity, Change, ChangeCounter, Conversation, Mailbox, Message

__all__ = ["ChangesSince", "Entry", "bump", "changes_since", "current", "record", "record_all"]


@dataclass(frozen=True)
class Entry:
    """One history row for ``record_all`` (the rows of one batch share one number)."""

    verb: str
    source: str
    message_id: int | None = None
    conversation_id: int | None = None
    actor_id: int | None = None
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangesSince:
    """What changed in a mailbox after the number a page held."""

    since: int  # the number asked about
    number: int  # the newest change seen: ask again with this
    message_ids: frozenset[int]
    conversation_ids: frozenset[int]
    activities: tuple[Activity, ...]  # the history rows among them, oldest first

    @property
    def anything(self) -> bool:
        """Something changed, with or without a history row or an id to name."""
        return self.number > self.since


def record(
    *,
    mailbox: Mailbox | int,
    verb: str,
    source: str,
    actor: int | None = None,
    message: Message | int | None = None,
    conversation: Conversation | int | None = None,
    detail: dict[str, object] | None = None,
) -> Activity:
    """Write one history row and bump the mailbox's change counter; one transaction.

    ``actor`` is a user id (None: the system or the server); ``verb`` must be one of
    ``Activity.Verb`` (ValueError otherwise, before anything is written).
    """
    message_id = message.pk if isinstance(message, Message) else message
    conversation_id = conversation.pk if isinstance(conversation, Conversation) else conversation
    entry = Entry(
        verb=verb,
        source=source,
        message_id=message_id,
        conversation_id=conversation_id,
        actor_id=actor,
        detail=detail or {},
    )
    touched = [message.conversation_id] if isinstance(message, Message) else []
    return record_all(mailbox=mailbox, entries=[entry], conversation_ids=touched)[0]


@transaction.atomic
def record_all(
    *,
    mailbox: Mailbox | int,
    entries: Sequence[Entry],
    conversation_ids: Iterable[int | None] = (),
) -> list[Activity]:
    """``record`` for many rows at once (the flags of a sync window): one number."""
    if not entries:
        return []
    for entry in entries:
        Activity.Verb(entry.verb)  # ValueError: not in the vocabulary
        Activity.Source(entry.source)
    mailbox_id = _pk(mailbox)
    number = _bump(
        mailbox_id,
        Change.Kind.HISTORY,
        message_ids=[e.message_id for e in entries],
        conversation_ids=[*conversation_ids, *(e.conversation_id for e in entries)],
    )
    rows = [
        Activity(
            mailbox_id=mailbox_id,
            message_id=e.message_id,
            conversation_id=e.conversation_id,
            actor_id=e.actor_id,
            source=e.source,
            verb=e.verb,
            detail=e.detail,
            change=number,
        )
        for e in entries
    ]
    if len(rows) == 1:
        rows[0].save(force_insert=True)
    else:
        Activity.objects.bulk_create(rows)
    return rows


@transaction.atomic
def bump(
    *,
    mailbox: Mailbox | int,
    kind: str,
    message_ids: Iterable[int | None] = (),
    conversation_ids: Iterable[int | None] = (),
) -> int:
    """A change with no history row (new mail, extracted text, outgoing mail sent):
    the next number, and which messages and conversations to look at again."""
    return _bump(_pk(mailbox), Change.Kind(kind), message_ids, conversation_ids)


def current(mailbox: Mailbox | int) -> int:
    """The mailbox's newest change number (0 before its first change): what a page holds."""
    value = ChangeCounter.objects.filter(mailbox_id=_pk(mailbox)).values_list("value", flat=True)
    return next(iter(value), 0)


def changes_since(mailbox: Mailbox | int, number: int) -> ChangesSince:
    """Every change committed after ``number``, at once (see the module docstring for
    why none committed later can carry a number at or below the newest one returned)."""
    mailbox_id = _pk(mailbox)
    rows = list(
        Change.objects.filter(mailbox_id=mailbox_id, number__gt=number)
        .order_by("number")
        .values_list("number", "message_ids", "conversation_ids")
    )
    newest = rows[-1][0] if rows else number
    activities = Activity.objects.filter(
        mailbox_id=mailbox_id, change__gt=number, change__lte=newest
    ).order_by("change", "pk")
    return ChangesSince(
        since=number,
        number=newest,
        message_ids=frozenset(pk for _, ids, _ in rows for pk in ids),
        conversation_ids=frozenset(pk for _, _, ids in rows for pk in ids),
        activities=tuple(activities),
    )


def _bump(
    mailbox_id: int,
    kind: str,
    message_ids: Iterable[int | None],
    conversation_ids: Iterable[int | None],
) -> int:
    # An upsert, so a mailbox needs no counter row before its first change. The row lock
    # it takes is held until this transaction ends: the ordering argument above.
    table = ChangeCounter._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (mailbox_id, value) VALUES (%s, 1) "
            f"ON CONFLICT (mailbox_id) DO UPDATE SET value = {table}.value + 1 "
            "RETURNING value",
            [mailbox_id],
        )
        (number,) = cursor.fetchone()
    Change.objects.create(
        mailbox_id=mailbox_id,
        number=number,
        kind=kind,
        message_ids=sorted({pk for pk in message_ids if pk is not None}),
        conversation_ids=sorted({pk for pk in conversation_ids if pk is not None}),
    )
    return int(number)


def _pk(mailbox: Mailbox | int) -> int:
    return mailbox.pk if isinstance(mailbox, Mailbox) else mailbox
