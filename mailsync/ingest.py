"""Store newly fetched messages: raw bytes, envelope and flags, a batch at a time.

List first, text later: a batch costs a header-block parse per message and a handful of
bulk INSERTs, so the inbox fills as fast as the server sends; bodies, attachments and
search text are extracted afterwards (``mailsync.extract``), in parallel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from django.db import IntegrityError, connection, transaction
from django.db.models import (
    Field,
    ForeignKey,
    Model,
    Q,
)
from django.utils import timezone
from psycopg.types.json import Jsonb

from mailsync import changes
from mailsync.conversations import (
    announce_merges,
    facts_of,
    insert_thread_references,
    lock_threading,
    merge_conversations,
    refresh_summaries,
    related_stored_messages,
    summarize_new,
    team_addresses,
)
from mailsync.engine.flags import split_flags
from mailsync.engine.imap import FetchedMessage
from mailsync.engine.mime import ParsedEnvelope, parse_envelope
from mailsync.engine.threader import link
from mailsync.models import (
    Activity,
    Blob,
    BlobChunk,
    Change,
    Conversation,
    Folder,
    Mailbox,
    Message,
)
from mailsync.search_index import write_documents


def clean_text(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters."""
    return text.replace("\x00", "\ufffd")


def apply_envelope(message: Message, envelope: ParsedEnvelope) -> None:
    sender = envelope.sender
    message.message_id = clean_text(envelope.message_id)
    message.in_reply_to = clean_text(envelope.in_reply_to)
    message.references = [clean_text(r) for r in envelope.references]
    message.subject = clean_text(envelope.subject)
    message.from_name = clean_text(sender.name) if sender else ""
    message.from_address = clean_text(sender.address) if sender else ""
    message.to_display = clean_text(", ".join(a.display() for a in envelope.to))
    message.cc_display = clean_text(", ".join(a.display() for a in envelope.cc))
    message.date = envelope.date or message.internaldate


def apply_flags_to_row(message: Message, flags: frozenset[str]) -> None:
    system, keywords = split_flags(flags)
    for flag, field in Message.FLAG_FIELDS.items():
        setattr(message, field, flag in system)
    message.keywords = list(keywords)


@dataclass
class _Pending:
    fetched: FetchedMessage
    digest: str
    envelope: ParsedEnvelope
    message: Message


def store_new_messages(folder: Folder, uidvalidity: int, batch: Sequence[FetchedMessage]) -> int:
    """Insert rows for fetched messages whose UID is not stored yet; one transaction.
    Returns how many were inserted."""
    if not batch:
        return 0
    stored = set(
        Message.objects.filter(
            folder=folder, uidvalidity=uidvalidity, uid__in=[m.uid for m in batch]
        ).values_list("uid", flat=True)
    )
    pending = []
    for fetched in sorted(batch, key=lambda m: m.uid):
        if fetched.uid in stored:
            continue
        message = Message(
            folder=folder,
            uidvalidity=uidvalidity,
            uid=fetched.uid,
            blob_id=fetched.digest(),
            size=len(fetched.raw),
            internaldate=fetched.internaldate,
            modseq=fetched.modseq,
        )
        envelope = fetched.envelope or parse_envelope(fetched.raw)
        apply_envelope(message, envelope)
        apply_flags_to_row(message, fetched.flags)
        pending.append(_Pending(fetched, str(message.blob_id), envelope, message))
    if not pending:
        return 0
    with transaction.atomic():
        commit_without_waiting_for_disk()
        store_blobs({p.digest: p.fetched.raw for p in pending})
        references, stale, waiting = _thread(folder, pending)
        messages = [p.message for p in pending]
        _insert_with_pks(messages)
        write_documents(messages, new=True)  # found by its headers before extraction
        insert_thread_references(
            folder.mailbox_id,
            [(m.pk, r) for m, refs in zip(messages, references, strict=True) for r in refs],
        )
        refresh_summaries(stale)
        _reopen(folder.mailbox_id, waiting)
        # last, so the mailbox's counter row is locked only until the commit just after
        changes.bump(
            mailbox=folder.mailbox_id,
            kind=Change.Kind.NEW_MAIL,
            message_ids=[m.pk for m in messages],
            conversation_ids=[m.conversation_id for m in messages],
        )
    return len(pending)


def _insert_with_pks(rows: Sequence[Model]) -> None:
    """INSERT rows of one model with their primary keys set, since rows inserted next
    point at them. On PostgreSQL the keys are taken from the sequence in one query and the
    rows sent by COPY (a bulk INSERT ... RETURNING of thousands of rows cost more)."""
    if not rows:
        return
    model = type(rows[0])
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(rows)  # (sets the keys on SQLite too)
        return
    if any(row.pk is None for row in rows):  # (else taken already: ``_take_pks``)
        _take_pks(rows)
    insert_rows(rows, with_pk=True)


def _take_pks(rows: Sequence[Model]) -> None:
    """Primary keys from the table's sequence, in one query (PostgreSQL)."""
    if not rows:
        return
    model = type(rows[0])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [model._meta.db_table, len(rows)],
        )
        for row, (pk,) in zip(rows, cursor.fetchall(), strict=True):
            row.pk = pk


def commit_without_waiting_for_disk() -> None:
    """This transaction's commit need not wait for its WAL flush (a few ms per commit, a
    large share of a first sync's time, and of extraction's). For work that is redone
    when lost: a batch of new mail (the server still has it, and the folder's cursor moves
    later in a transaction that does wait; PostgreSQL writes WAL in order, so a crash can
    lose only batches the cursor has not passed), or extracted text (the message stays
    pending and is extracted again)."""
    if connection.vendor == "postgresql" and not connection.get_autocommit():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO off")


def insert_rows(rows: Sequence[Model], *, with_pk: bool = False) -> None:
    """INSERT model instances of one model; by binary COPY on PostgreSQL, where Django's
    bulk INSERT spent more time preparing and quoting 35 columns per message than the
    database spent storing them. Primary keys are not read back: with ``with_pk`` the rows
    carry them already."""
    if not rows:
        return
    model = type(rows[0])
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(rows)
        return
    now = timezone.now()
    fields = [f for f in model._meta.concrete_fields if with_pk or not f.primary_key]
    types = {f.column: _COPY_TYPES[_stored_type(f)] for f in fields}
    for row in rows:
        for field in fields:
            if getattr(field, "auto_now_add", False) and getattr(row, field.attname) is None:
                setattr(row, field.attname, now)
    _copy_rows(
        model,
        types,
        [
            tuple(
                Jsonb(getattr(row, f.attname)) if types[f.column] == "jsonb"
                else getattr(row, f.attname)
                for f in fields
            )
            for row in rows
        ],
    )  # fmt: skip


def store_blobs(raw_by_digest: Mapping[str, bytes | bytearray]) -> None:
    """Content-addressed: bytes already stored are not sent to the database again."""
    present = set(
        Blob.objects.filter(sha256__in=list(raw_by_digest)).values_list("sha256", flat=True)
    )
    missing = {d: raw for d, raw in raw_by_digest.items() if d not in present}
    if not missing:
        return
    now = timezone.now()
    rows = [
        (digest, b"" if len(raw) > Blob.INLINE_LIMIT else raw, len(raw),
         len(raw) > Blob.INLINE_LIMIT, now)
        for digest, raw in missing.items()
    ]  # fmt: skip
    chunks = [
        (digest, seq, memoryview(raw)[start : start + Blob.CHUNK_SIZE])
        for digest, raw in missing.items()
        if len(raw) > Blob.INLINE_LIMIT
        for seq, start in enumerate(range(0, len(raw), Blob.CHUNK_SIZE))
    ]
    if connection.vendor == "postgresql":
        try:
            with transaction.atomic():  # a savepoint: a lost race must not end the batch
                _copy_rows(
                    Blob,
                    {"sha256": "text", "data": "bytea", "size": "int8", "chunked": "bool",
                     "created_at": "timestamptz"},
                    rows,
                )  # fmt: skip
                _copy_rows(BlobChunk, {"blob_id": "text", "seq": "int4", "data": "bytea"}, chunks)
            return
        except IntegrityError:
            pass  # another worker stored some of these bytes a moment ago
    Blob.objects.bulk_create(
        [
            Blob(sha256=d, data=data, size=size, chunked=c, created_at=t)
            for d, data, size, c, t in rows
        ],
        ignore_conflicts=True,
    )
    for digest, seq, data in chunks:
        BlobChunk.objects.bulk_create(
            [BlobChunk(blob_id=digest, seq=seq, data=data)], ignore_conflicts=True
        )


def _copy_rows(model: type[Model], types: dict[str, str], rows: Sequence[tuple[Any, ...]]) -> None:
    """PostgreSQL COPY in binary format: bytes travel as they are. A bulk INSERT escapes
    every bytea into the query text (twice the size, a copy or two in memory), which
    made storing the raw messages the slowest part of a sync. ``types`` maps each column
    to its PostgreSQL type, in the order of the row tuples."""
    if not rows:
        return
    quote = connection.ops.quote_name
    columns = ", ".join(quote(column) for column in types)
    sql = f"COPY {quote(model._meta.db_table)} ({columns}) FROM STDIN (FORMAT BINARY)"
    with connection.cursor() as cursor:
        try:
            with cursor.cursor.copy(sql) as copy:
                copy.set_types(list(types.values()))
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation as exc:
            raise IntegrityError(str(exc)) from exc


def _stored_type(field: Field[Any, Any]) -> str:
    """A foreign key is stored as the field it points to."""
    if isinstance(field, ForeignKey):
        return str(field.target_field.get_internal_type())
    return str(field.get_internal_type())


# Django field type -> PostgreSQL type, for COPY (a new field type fails loudly here)
_COPY_TYPES = {
    "CharField": "text",
    "TextField": "text",
    "SlugField": "text",
    "BinaryField": "bytea",
    "BigIntegerField": "int8",
    "IntegerField": "int4",
    "PositiveIntegerField": "int4",
    "BooleanField": "bool",
    "DateTimeField": "timestamptz",
    "JSONField": "jsonb",
    "BigAutoField": "int8",
    "AutoField": "int4",
}


def _thread(
    folder: Folder, pending: list[_Pending]
) -> tuple[list[tuple[str, ...]], set[int], dict[int, str]]:
    """Give each message its conversation (``mailsync.engine.threader`` has the rules):
    the stored conversation it links to, else a new one; stored conversations it links
    together are merged. Messages of the same batch thread onto each other. Returns the
    ids each message names, for the ThreadReference rows, the conversations whose summaries
    are to be refreshed once the messages are stored (on PostgreSQL the new ones get theirs
    as they are inserted: most of a first sync's), and the conversations a new customer
    message reopens (id -> the state it leaves: closed, pending or snoozed)."""
    lock_threading(folder.mailbox_id)
    address = Mailbox.objects.filter(pk=folder.mailbox_id).values_list("email_address")
    own = frozenset(a.lower() for (a,) in address if a)
    new = [facts_of(p.message, index, own) for index, p in enumerate(pending)]
    for fact, p in zip(new, pending, strict=True):
        p.message.thread_topic = fact.topic
    by_key: dict[Hashable, Message] = {f.key: p.message for f, p in zip(new, pending, strict=True)}
    folder_ids = set(
        Folder.objects.filter(mailbox_id=folder.mailbox_id).values_list("pk", flat=True)
    )
    stored = related_stored_messages(
        folder.mailbox_id,
        folder_ids,
        ids=sorted({i for f in new for i in (f.message_id, *f.references) if i}),
        digests=[f.digest for f in new if not f.message_id],  # (else rule 2 finds copies)
        topics=sorted({f.topic for f in new if f.topic}),
    )
    known = [facts_of(m, ("stored", m.id), own) for m in stored]
    fresh: list[tuple[Conversation, list[Message]]] = []
    touched: dict[int, list[Message]] = {}
    merges: dict[int, list[int]] = {}
    for group in link(new, known):
        members = [by_key[key] for key in group.new]
        if group.survivor is None:
            fresh.append((Conversation(mailbox_id=folder.mailbox_id), members))
            continue
        if group.merged:
            merges[group.survivor] = merge_conversations(
                survivor_id=group.survivor, merged_ids=group.merged, announce=False
            )
        touched[group.survivor] = members
    if any(merges.values()):  # after the last merge (see merge_conversations)
        announce_merges(folder.mailbox_id, {s: m for s, m in merges.items() if m})
    for conversation, members in fresh:
        first = min(members, key=_when)
        conversation.subject = first.subject[:1000]
        conversation.first_message_at = _when(first)
        conversation.last_message_at = max(_when(m) for m in members)
    if connection.vendor == "postgresql":  # the messages' keys first: a summary names one
        _take_pks([p.message for p in pending])
        summarize_new(fresh)
    _insert_with_pks([c for c, _ in fresh])
    for conversation, members in fresh:  # (the COPY reads the id, not the object)
        for message in members:
            message.conversation_id = conversation.pk
    for pk, members in touched.items():
        for message in members:
            message.conversation_id = pk
    waiting = _waiting_for_the_team(folder.mailbox_id, touched)
    _extend_conversations(touched)
    stale = set(touched)
    if connection.vendor != "postgresql":
        stale |= {c.pk for c, _ in fresh}
    return [f.references for f in new], stale, waiting


def _waiting_for_the_team(mailbox_id: int, joined: dict[int, list[Message]]) -> dict[int, str]:
    """Stored conversations set aside (pending, closed or snoozed) that new mail from the
    customer joined: mail from outside the team, newer than the conversation's latest, so
    a copy of old mail found in another folder reopens nothing."""
    if not joined:
        return {}
    set_aside = Conversation.objects.filter(pk__in=list(joined)).filter(
        ~Q(status=Conversation.Status.OPEN) | Q(snoozed_until__isnull=False)
    )
    rows = list(set_aside.values_list("pk", "status", "snoozed_until", "last_message_at"))
    if not rows:
        return {}
    team = team_addresses(Mailbox.objects.get(pk=mailbox_id))
    waiting = {}
    for pk, status, snoozed_until, last_message_at in rows:
        if any(
            m.from_address.lower() not in team
            and (last_message_at is None or _when(m) > last_message_at)
            for m in joined[pk]
        ):
            snoozed = snoozed_until is not None and status == Conversation.Status.OPEN
            waiting[pk] = "snoozed" if snoozed else status
    return waiting


def _reopen(mailbox_id: int, waiting: dict[int, str]) -> None:
    """Open again, unsnoozed, with a history row each (one change number)."""
    if not waiting:
        return
    Conversation.objects.filter(pk__in=list(waiting)).update(
        status=Conversation.Status.OPEN, snoozed_until=None
    )
    changes.record_all(
        mailbox=mailbox_id,
        entries=[
            changes.Entry(
                conversation_id=pk,
                source=Activity.Source.SYSTEM,
                verb=Activity.Verb.REOPENED,
                detail={"was": was, "why": "customer_replied"},
            )
            for pk, was in sorted(waiting.items())
        ],
    )


def _when(message: Message) -> datetime:
    return message.date or timezone.now()


def _extend_conversations(joined: dict[int, list[Message]]) -> None:
    """Stored conversations that new messages joined now span them, and take the subject of
    a message older than their first: one UPDATE for the batch (on PostgreSQL from arrays:
    a CASE per conversation cost seconds in a first sync), never moving one back in time."""
    if not joined:
        return
    spans = []
    for pk, members in joined.items():
        first = min(members, key=_when)
        spans.append((pk, _when(first), first.subject[:1000], max(_when(m) for m in members)))
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE mailsync_conversation AS c SET"
                " subject = CASE WHEN c.first_message_at IS NULL OR c.first_message_at > v.first"
                "  THEN v.subject ELSE c.subject END,"
                " first_message_at = LEAST(c.first_message_at, v.first),"
                " last_message_at = GREATEST(c.last_message_at, v.last)"
                " FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::timestamptz[])"
                "  AS v(id, first, subject, last) WHERE c.id = v.id",
                [list(column) for column in zip(*spans, strict=True)],
            )
        return
    for pk, since, subject, until in spans:  # (LEAST and GREATEST skip NULL on PostgreSQL only)
        conversation = Conversation.objects.get(pk=pk)
        if conversation.first_message_at is None or conversation.first_message_at > since:
            conversation.subject, conversation.first_message_at = subject, since
        if conversation.last_message_at is None or conversation.last_message_at < until:
            conversation.last_message_at = until
        conversation.save(update_fields=["subject", "first_message_at", "last_message_at"])
