"""Conversations on the Django side: what threading looks up, and merges.

The rules are in ``mailsync.engine.threader`` (pure, tested without a database); this
module gives them the stored messages a new batch could link to, and carries out what
they decide. Ingest calls it once per batch, inside the batch's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from datetime import datetime
from email.utils import getaddresses
from typing import Any, Protocol

from django.db import connection, transaction
from django.db.models import ForeignObjectRel, Max, Min, Model, Q
from django.db.models.functions import Substr

from mailsync import changes
from mailsync.engine.threader import (
    ThreadFacts,
    normalize_subject,
    thread_references,
    topic_for,
)
from mailsync.models import Activity, Conversation, Folder, Mailbox, Message, ThreadReference

# pg_advisory_xact_lock's first key: "threading of mailbox <second key>"
_THREADING_LOCK = 0x7468


def lock_threading(mailbox_id: int) -> None:
    """Until this transaction ends, no other batch threads mail of this mailbox: two
    folders synced at once (INBOX and Sent) would each miss the other's uncommitted
    messages and start two conversations where there is one. Readers are not blocked."""
    if connection.vendor == "postgresql":  # SQLite runs one writing transaction at a time
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_THREADING_LOCK, mailbox_id])


class MessageFields(Protocol):
    """The fields of a message row that threading reads (a ``Message`` has them)."""

    message_id: str
    in_reply_to: str
    references: Any
    subject: str
    from_address: str
    to_display: str
    cc_display: str
    date: datetime | None
    blob_id: str
    conversation_id: int | None


def facts_of(message: MessageFields, key: Hashable, own_addresses: frozenset[str]) -> ThreadFacts:
    """What threading needs of a message row (stored or about to be)."""
    subject_key = normalize_subject(message.subject)
    return ThreadFacts(
        key=key,
        message_id=message.message_id,
        references=thread_references(message.references, message.in_reply_to, message.message_id),
        subject_key=subject_key,
        sender=message.from_address.lower(),
        address_lines=f"{message.from_address}, {message.to_display}, {message.cc_display}",
        topic=topic_for(message.from_address, subject_key, own_addresses),
        date=message.date,
        digest=str(message.blob_id),
        conversation=message.conversation_id,
    )


@dataclass
class StoredMessage:
    """A stored message as threading reads it (a model instance costs ten times more)."""

    id: int
    conversation_id: int | None
    folder_id: int
    message_id: str
    in_reply_to: str
    references: list[str]
    subject: str
    from_address: str
    to_display: str
    cc_display: str
    date: datetime | None
    blob_id: str


_FACT_FIELDS = [
    "id",
    "conversation_id",
    "folder_id",
    "message_id",
    "in_reply_to",
    "references",
    "subject",
    "from_address",
    "to_display",
    "cc_display",
    "date",
    "blob_id",
]


def related_stored_messages(
    mailbox_id: int,
    folder_ids: set[int],
    *,
    ids: Sequence[str],
    digests: Sequence[str],
    topics: Sequence[str],
) -> list[StoredMessage]:
    """Stored messages of the mailbox that have one of these Message-IDs, name one of them
    in their thread headers, have one of these digests or topics: every message a rule
    could link to the batch. One query; on PostgreSQL with array parameters, which cost
    less than Django's expansion of a thousand placeholders."""
    if connection.vendor == "postgresql":
        quote = connection.ops.quote_name
        columns = ", ".join(quote(c) for c in _FACT_FIELDS)
        with connection.cursor() as cursor:
            # Two queries: with the subquery among the ORs the planner scans every message.
            cursor.execute(
                "SELECT message_id FROM mailsync_threadreference"
                " WHERE mailbox_id = %s AND reference = ANY(%s)",
                [mailbox_id, list(ids)],
            )
            naming = [pk for (pk,) in cursor]
            cursor.execute(
                f"SELECT {columns} FROM mailsync_message WHERE conversation_id IS NOT NULL AND ("
                " message_id = ANY(%(ids)s) OR blob_id = ANY(%(digests)s) OR id = ANY(%(naming)s)"
                " OR (thread_topic = ANY(%(topics)s) AND thread_topic <> ''))",
                {
                    "ids": list(ids),
                    "digests": list(digests),
                    "topics": list(topics),
                    "naming": naming,
                },
            )
            rows = [StoredMessage(*row) for row in cursor]
        for row in rows:  # Django leaves jsonb as text for JSONField to decode
            if isinstance(row.references, str):
                row.references = json.loads(row.references)
    else:
        named = ThreadReference.objects.filter(mailbox_id=mailbox_id, reference__in=ids)
        rows = [
            StoredMessage(*row)
            for row in Message.objects.filter(conversation__isnull=False)
            .filter(
                Q(message_id__in=ids)
                | Q(blob_id__in=digests)
                | Q(thread_topic__in=[t for t in topics if t])
                | Q(pk__in=named.values("message_id"))
            )
            .values_list(*_FACT_FIELDS)
        ]
    return [m for m in rows if m.folder_id in folder_ids]


def insert_thread_references(mailbox_id: int, references: Sequence[tuple[int, str]]) -> None:
    """(message pk, id it names) rows; by COPY on PostgreSQL, as ingest stores messages."""
    if not references:
        return
    if connection.vendor != "postgresql":
        ThreadReference.objects.bulk_create(
            ThreadReference(mailbox_id=mailbox_id, message_id=pk, reference=r)
            for pk, r in references
        )
        return
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(
            "COPY mailsync_threadreference (mailbox_id, message_id, reference)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["int8", "int8", "text"])
        for pk, reference in references:
            copy.write_row((mailbox_id, pk, reference))


@transaction.atomic
def merge_conversations(
    *, survivor_id: int, merged_ids: Sequence[int], announce: bool = True
) -> list[int]:
    """Make ``merged_ids`` part of ``survivor_id``: their messages and everything keyed on
    them move over (see ``Conversation``), the survivor spans all their dates and takes
    the subject of the earliest, and each merged one is kept pointing at the survivor, so
    its URL redirects; earlier redirects to them now point at the survivor too.

    Returns the ids merged. ``announce=False`` leaves the history row and the change
    counter to the caller (``announce_merges``, once for a batch, after its last merge):
    the counter row stays locked until commit, and a second merge that waited for a
    message row a person has locked, while holding it, could deadlock with them."""
    merged_ids = [pk for pk in merged_ids if pk != survivor_id]
    if not merged_ids:
        return []
    conversations = {
        c.pk: c
        for c in Conversation.objects.select_for_update().filter(pk__in=[survivor_id, *merged_ids])
    }
    survivor = conversations[survivor_id]
    merged = [conversations[pk] for pk in merged_ids if pk in conversations]
    Message.objects.filter(conversation__in=merged_ids).update(conversation=survivor)
    for relation in _rows_about_a_conversation():
        _move(relation, survivor, merged_ids)
    Conversation.objects.filter(merged_into__in=merged_ids).update(merged_into=survivor)
    Conversation.objects.filter(pk__in=merged_ids).update(merged_into=survivor)

    spans = Message.objects.filter(conversation=survivor).aggregate(
        first=Min("date"), last=Max("date")
    )
    earliest = min(
        [survivor, *merged], key=lambda c: (c.first_message_at is None, c.first_message_at, c.pk)
    )
    survivor.subject = earliest.subject
    survivor.first_message_at = _earliest(spans["first"], survivor.first_message_at)
    survivor.last_message_at = _latest(spans["last"], *(c.last_message_at for c in merged))
    _combine_team_state(survivor, merged)
    survivor.save(
        update_fields=[
            "subject",
            "first_message_at",
            "last_message_at",
            "assignee",
            "status",
            "snoozed_until",
        ]
    )
    refresh_summaries([survivor.pk, *merged_ids])
    if announce:
        announce_merges(survivor.mailbox_id, {survivor.pk: merged_ids})
    return merged_ids


def _combine_team_state(survivor: Conversation, merged: Sequence[Conversation]) -> None:
    """The team's state after a merge. The survivor keeps its assignee, else takes the
    first merged one's; it stays open (or pending) if any of them was, so nothing someone
    still has to answer disappears; it stays snoozed only if all of them were, until the
    earliest wake-up, so no reminder is lost."""
    together = [survivor, *merged]
    if survivor.assignee_id is None:
        survivor.assignee_id = next(
            (c.assignee_id for c in merged if c.assignee_id is not None), None
        )
    for status in (Conversation.Status.OPEN, Conversation.Status.PENDING):
        if any(c.status == status for c in together):
            survivor.status = status
            break
    wake_ups = [c.snoozed_until for c in together]
    survivor.snoozed_until = (
        None if any(w is None for w in wake_ups) else min(w for w in wake_ups if w is not None)
    )


def announce_merges(mailbox_id: int, merges: Mapping[int, Sequence[int]]) -> None:
    """The history rows of merges (survivor id -> merged ids), one change number."""
    changes.record_all(
        mailbox=mailbox_id,
        entries=[
            changes.Entry(
                conversation_id=survivor,
                source=Activity.Source.SYSTEM,
                verb=Activity.Verb.CONVERSATIONS_MERGED,
                detail={"merged": sorted(merged)},
            )
            for survivor, merged in merges.items()
        ],
        conversation_ids=[pk for merged in merges.values() for pk in merged],
    )


def _rows_about_a_conversation() -> list[ForeignObjectRel]:
    """Every relation pointing at Conversation, from any installed app, except the two
    the merge handles itself (messages, redirects)."""
    return [
        relation
        for relation in Conversation._meta.get_fields(include_hidden=True)
        if isinstance(relation, ForeignObjectRel)
        and relation.field.model is not Conversation
        and relation.field is not Message._meta.get_field("conversation")
    ]


def _move(relation: ForeignObjectRel, survivor: Conversation, merged_ids: Sequence[int]) -> None:
    model: type[Model] = relation.related_model  # type: ignore[assignment]
    field = relation.field.name
    rows = model._default_manager.filter(**{f"{field}__in": merged_ids})
    if relation.one_to_one:  # one row per conversation: the survivor's stays
        if model._default_manager.filter(**{field: survivor}).exists():
            return
        rows = rows.order_by("pk")[:1]
        model._default_manager.filter(pk__in=list(rows.values_list("pk", flat=True))).update(
            **{field: survivor}
        )
        return
    rows.update(**{field: survivor})


def _earliest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _latest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def resolve(conversation: Conversation) -> Conversation:
    """The conversation a (possibly merged) one lives on as."""
    seen = {conversation.pk}
    while conversation.merged_into_id is not None and conversation.merged_into_id not in seen:
        seen.add(conversation.merged_into_id)
        following = Conversation.objects.filter(pk=conversation.merged_into_id).first()
        if following is None:
            break
        conversation = following
    return conversation


# -- summaries: what the conversation list shows, kept on the row ------------------------

# Who wrote a message sent from the app (a colleague's username), by Message-ID: filled by
# teaminbox, which knows its outgoing mail (mailsync never imports teaminbox). Each lookup
# takes a mailbox id and Message-IDs and returns Message-ID -> name for those it sent.
AuthorLookup = Callable[[int, Sequence[str]], Mapping[str, str]]
author_lookups: list[AuthorLookup] = []

_summaries_waiting: ContextVar[set[int] | None] = ContextVar("summaries_waiting", default=None)

SNIPPET_LENGTH = 200
TRASH = "\\Trash"  # (messages there are deleted: not counted)


def team_addresses(mailbox: Mailbox) -> frozenset[str]:
    """The addresses that are the team itself (as ``teaminbox.services.outgoing``'s
    shared addresses): a message from one of them is the team's, not the customer's."""
    candidates = [mailbox.email_address, mailbox.username, mailbox.smtp_username]
    return frozenset(a.strip().lower() for a in candidates if a and "@" in a)


def team_display_name(mailbox: Mailbox) -> str:
    """How mail the team sent from another client (Outlook) is attributed: the mailbox."""
    return mailbox.display_name.strip() or mailbox.name.replace("-", " ").replace("_", " ").title()


@contextmanager
def summaries_in_one_go() -> Iterator[None]:
    """Inside it, ``refresh_summaries_soon`` collects ids and they are refreshed once, at
    the end (a bulk action over a hundred conversations: a few queries, not a hundred)."""
    if _summaries_waiting.get() is not None:  # nested: the outer one refreshes
        yield
        return
    waiting: set[int] = set()
    token = _summaries_waiting.set(waiting)
    try:
        yield
    finally:
        _summaries_waiting.reset(token)
    refresh_summaries(waiting)


def refresh_summaries_soon(conversation_ids: Iterable[int | None]) -> None:
    """``refresh_summaries`` now, or at the end of the enclosing ``summaries_in_one_go``."""
    waiting = _summaries_waiting.get()
    if waiting is None:
        refresh_summaries(conversation_ids)
    else:
        waiting.update(pk for pk in conversation_ids if pk is not None)


@dataclass
class _Row:
    conversation_id: int
    id: int
    message_id: str
    blob_id: str
    date: datetime | None
    from_name: str
    from_address: str
    to_display: str
    seen: bool
    has_attachments: bool
    extracted: bool  # (a snippet is asked for only then)


_ROW_FIELDS = [f.name for f in fields(_Row)]


def refresh_summaries(conversation_ids: Iterable[int | None]) -> None:
    """Recompute the list's summary fields of these conversations from their live
    messages (not expunged, not marked deleted, neither in Trash nor on their way there:
    a message on its way out of Trash counts already, so the outbox's move needs no
    refresh).
    A few queries for the whole batch, whatever its size: the messages' small columns, the
    latest ones' first characters of text, app authors, and one UPDATE.

    Copies of one mail (INBOX and Archive, or Sent and INBOX) count once, by Message-ID
    (else by content); a mail is unread while any of its copies is."""
    ids = sorted({pk for pk in conversation_ids if pk is not None})
    for start in range(0, len(ids), 2000):
        _refresh(ids[start : start + 2000])


def _refresh(ids: list[int]) -> None:
    mailbox_of = _mailbox_of(ids)
    if not mailbox_of:
        return
    mailboxes = _mailboxes(set(mailbox_of.values()))
    by_conversation: dict[int, list[_Row]] = {pk: [] for pk in mailbox_of}
    for row in _live_rows(list(mailbox_of)):
        by_conversation[row.conversation_id].append(row)
    values = _summaries(by_conversation, {pk: mailboxes[m] for pk, m in mailbox_of.items()})
    _write_summaries([(pk, *v) for pk, v in values.items()])


def _mailboxes(ids: Iterable[int]) -> dict[int, Mailbox]:
    # only the fields summaries read: migration 0010 runs this against a schema that later
    # migrations may extend
    rows = Mailbox.objects.filter(pk__in=list(ids)).only(
        "name", "display_name", "email_address", "username", "smtp_username"
    )
    return {m.pk: m for m in rows}


def summarize_new(conversations: Sequence[tuple[Conversation, Sequence[Message]]]) -> None:
    """Fill the summary fields of conversations about to be inserted with their messages
    (ingest, on PostgreSQL, where the messages' keys are known before the INSERT): what
    ``refresh_summaries`` would write, without reading or updating the rows again."""
    if not conversations:
        return
    mailbox_ids = {c.mailbox_id for c, _ in conversations}
    mailboxes = _mailboxes(mailbox_ids)
    trash = set(
        Folder.objects.filter(mailbox_id__in=mailbox_ids, special_use=TRASH).values_list(
            "pk", flat=True
        )
    )
    by_key = {index: members for index, (_, members) in enumerate(conversations)}
    rows = {
        index: [
            _Row(
                index, m.pk, m.message_id, str(m.blob_id), m.date, m.from_name, m.from_address,
                m.to_display, m.seen, m.has_attachments, m.extracted_at is not None,
            )
            for m in members
            if not m.deleted and (m.moving_to_id or m.folder_id) not in trash
        ]
        for index, members in by_key.items()
    }  # fmt: skip
    mailbox_of = {index: mailboxes[c.mailbox_id] for index, (c, _) in enumerate(conversations)}
    for index, summary in _summaries(rows, mailbox_of).items():
        conversation = conversations[index][0]
        for (name, _), value in zip(_SUMMARY_COLUMNS, summary, strict=False):
            setattr(conversation, name, value)


def _summaries(
    by_conversation: Mapping[int, list[_Row]], mailbox_of: Mapping[int, Mailbox]
) -> dict[int, tuple[Any, ...]]:
    """Conversation key -> the values of ``_SUMMARY_COLUMNS`` and the latest's date."""
    summaries = {}
    for key, rows in by_conversation.items():
        copies: dict[str, _Row] = {}
        for row in rows:
            first = copies.setdefault(row.message_id or f"blob:{row.blob_id}", row)
            if first is not row:  # another copy of a mail already seen: unread if any copy is
                first.seen = first.seen and row.seen
                first.has_attachments = first.has_attachments or row.has_attachments
        mails = sorted(copies.values(), key=_in_order)
        summaries[key] = _summary(mails, team_addresses(mailbox_of[key]))
    latest_ids = [s.latest.id for s in summaries.values() if s.latest and s.latest.extracted]
    snippets = _text_starts(latest_ids) if latest_ids else {}
    authors = _app_authors({k: m.pk for k, m in mailbox_of.items()}, summaries)
    values = {}
    for key, s in summaries.items():
        latest = s.latest
        if latest is None:
            sender = ""
        elif s.latest_from_customer:
            sender = latest.from_name or latest.from_address
        else:
            sender = authors.get(latest.message_id) or team_display_name(mailbox_of[key])
        values[key] = (
            s.message_count,
            s.unread_count,
            s.has_attachments,
            latest.id if latest else None,
            s.latest_from_customer,
            sender,
            s.customer_name,
            s.customer_address,
            snippet_of(snippets.get(latest.id, "") if latest else ""),
            s.waiting_since,
            latest.date if latest else None,
        )
    return values


# On PostgreSQL, the reads take the ids as one array parameter: Django's expansion of
# hundreds of placeholders cost more than the queries in a first sync.


def _mailbox_of(ids: list[int]) -> dict[int, int]:
    if connection.vendor != "postgresql":
        return dict(Conversation.objects.filter(pk__in=ids).values_list("pk", "mailbox_id"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, mailbox_id FROM mailsync_conversation WHERE id = ANY(%s)", [ids])
        return dict(cursor.fetchall())


def _live_rows(conversation_ids: list[int]) -> list[_Row]:
    """The summary's columns of the conversations' live messages (see refresh_summaries)."""
    if connection.vendor != "postgresql":
        rows = (
            Message.objects.filter(
                conversation_id__in=conversation_ids, expunged_at__isnull=True, deleted=False
            )
            .exclude(moving_to__isnull=True, folder__special_use=TRASH)
            .exclude(moving_to__special_use=TRASH)
            .annotate(extracted=Q(extracted_at__isnull=False))
            .order_by("pk")
            .values_list(*_ROW_FIELDS)
        )
        return [_Row(*values) for values in rows]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.conversation_id, m.id, m.message_id, m.blob_id, m.date, m.from_name,"
            " m.from_address, m.to_display, m.seen, m.has_attachments,"
            " m.extracted_at IS NOT NULL"
            " FROM mailsync_message m"
            " JOIN mailsync_folder f ON f.id = COALESCE(m.moving_to_id, m.folder_id)"
            " WHERE m.conversation_id = ANY(%s) AND m.expunged_at IS NULL"
            " AND NOT m.deleted AND f.special_use <> %s"
            " ORDER BY m.id",
            [conversation_ids, TRASH],
        )
        return [_Row(*values) for values in cursor.fetchall()]


def _text_starts(message_ids: list[int]) -> dict[int, str]:
    """The first characters of these messages' text (enough for a snippet)."""
    length = SNIPPET_LENGTH * 4
    if connection.vendor != "postgresql":
        rows = (
            Message.objects.filter(pk__in=message_ids)
            .annotate(start=Substr("text_body", 1, length))
            .values_list("pk", "start")
        )
        return dict(rows)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, substr(text_body, 1, %s) FROM mailsync_message WHERE id = ANY(%s)",
            [length, message_ids],
        )
        return dict(cursor.fetchall())


@dataclass
class _Summary:
    message_count: int
    unread_count: int
    has_attachments: bool
    latest: _Row | None
    latest_from_customer: bool
    customer_name: str
    customer_address: str
    waiting_since: datetime | None


def _in_order(row: _Row) -> tuple[bool, datetime | None, int]:
    return (row.date is not None, row.date, row.id)


def _summary(mails: list[_Row], team: frozenset[str]) -> _Summary:
    """The summary of one conversation's mails, oldest first."""
    customer_name = customer_address = ""
    waiting_since: datetime | None = None
    for mail in mails:
        from_team = mail.from_address.lower() in team
        if not from_team and not customer_address and mail.from_address:
            customer_name, customer_address = mail.from_name, mail.from_address
        if from_team:
            waiting_since = None  # the team answered: nobody waits since before
        elif waiting_since is None:
            waiting_since = mail.date
    if not customer_address:  # the team wrote first and nobody answered: its recipient
        for mail in mails:
            for name, address in getaddresses([mail.to_display]):
                if address and address.lower() not in team:
                    customer_name, customer_address = name, address
                    break
            if customer_address:
                break
    latest = mails[-1] if mails else None
    return _Summary(
        message_count=len(mails),
        unread_count=sum(1 for m in mails if not m.seen),
        has_attachments=any(m.has_attachments for m in mails),
        latest=latest,
        latest_from_customer=latest is not None and latest.from_address.lower() not in team,
        customer_name=customer_name,
        customer_address=customer_address,
        waiting_since=waiting_since,
    )


def snippet_of(text: str) -> str:
    """The first words of a text on one line, at most ``SNIPPET_LENGTH`` characters."""
    line = " ".join(text.split())
    if len(line) <= SNIPPET_LENGTH:
        return line
    return line[: SNIPPET_LENGTH - 1].rstrip() + "…"


def _app_authors(
    mailbox_of: Mapping[int, int], summaries: Mapping[int, _Summary]
) -> dict[str, str]:
    """Message-ID -> colleague for the latest mails the team sent (asked of teaminbox)."""
    wanted: dict[int, list[str]] = {}
    for pk, s in summaries.items():
        if s.latest is not None and not s.latest_from_customer and s.latest.message_id:
            wanted.setdefault(mailbox_of[pk], []).append(s.latest.message_id)
    found: dict[str, str] = {}
    for mailbox_id, message_ids in wanted.items():
        for lookup in author_lookups:
            found.update(lookup(mailbox_id, message_ids))
    return found


_SUMMARY_COLUMNS = [
    ("message_count", "int4"),
    ("unread_count", "int4"),
    ("has_attachments", "bool"),
    ("latest_message_id", "int8"),
    ("latest_from_customer", "bool"),
    ("latest_sender_name", "text"),
    ("customer_name", "text"),
    ("customer_address", "text"),
    ("snippet", "text"),
    ("waiting_since", "timestamptz"),
]


def _write_summaries(values: list[tuple[Any, ...]]) -> None:
    """One UPDATE for the batch (on PostgreSQL from arrays; bulk_update's CASE per row and
    field cost seconds in a first sync). The last message's date moves ``last_message_at``
    too, also back in time when the latest was expunged: the list sorts by it."""
    if not values:
        return
    if connection.vendor == "postgresql":
        names = [name for name, _ in _SUMMARY_COLUMNS]
        assignments = ", ".join(f"{name} = v.{name}" for name in names)
        arrays = ", ".join(f"%s::{kind}[]" for _, kind in _SUMMARY_COLUMNS)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE mailsync_conversation AS c SET {assignments},"
                " last_message_at = COALESCE(v.latest_at, c.last_message_at)"
                f" FROM unnest(%s::bigint[], {arrays}, %s::timestamptz[])"
                f" AS v(id, {', '.join(names)}, latest_at) WHERE c.id = v.id",
                [list(column) for column in zip(*values, strict=True)],
            )
        return
    rows = []
    for pk, *summary, latest_at in values:
        conversation = Conversation(pk=pk)
        for (name, _), value in zip(_SUMMARY_COLUMNS, summary, strict=True):
            setattr(conversation, name, value)
        rows.append((conversation, latest_at))
    Conversation.objects.bulk_update(
        [c for c, _ in rows], [name.removesuffix("_id") for name, _ in _SUMMARY_COLUMNS]
    )
    for conversation, latest_at in rows:
        if latest_at is not None:
            Conversation.objects.filter(pk=conversation.pk).update(last_message_at=latest_at)
