"""Store newly fetched messages: raw bytes, envelope and flags, a batch at a time.

List first, text later: a batch costs a header-block parse per message and a handful of
bulk INSERTs, so the inbox fills as fast as the server sends; bodies, attachments and
search text are extracted afterwards (``mailsync.extract``), in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from django.db import IntegrityError, connection, transaction
from django.db.models import (
    Case,
    DateTimeField,
    F,
    Field,
    ForeignKey,
    Model,
    Value,
    When,
)
from django.db.models.functions import Greatest
from django.utils import timezone
from psycopg.types.json import Jsonb

from mailsync.engine.flags import split_flags
from mailsync.engine.imap import FetchedMessage
from mailsync.engine.mime import ParsedEnvelope, parse_envelope
from mailsync.models import Blob, BlobChunk, Conversation, Folder, Message


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
        _thread(folder, pending)
        insert_rows([p.message for p in pending])
    return len(pending)


def _create_conversations(conversations: list[Conversation]) -> None:
    """INSERT new conversations with their primary keys set, since the messages inserted
    next point at them. On PostgreSQL the keys are taken from the sequence in one query and
    the rows sent by COPY (a bulk INSERT ... RETURNING of thousands of rows cost more)."""
    if not conversations:
        return
    if connection.vendor != "postgresql":
        Conversation.objects.bulk_create(conversations)
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [Conversation._meta.db_table, len(conversations)],
        )
        for conversation, (pk,) in zip(conversations, cursor.fetchall(), strict=True):
            conversation.pk = pk
    insert_rows(conversations, with_pk=True)


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


def _first_conversations(
    column: str, values: Sequence[str], folder_ids: set[int]
) -> dict[str, int]:
    """value of ``column`` -> conversation of the oldest message in these folders having it.

    Looked up by the indexed column alone and checked against the mailbox here: joined to
    the folder, the planner walked every row of the folder for each batch, which made a
    large initial sync quadratic. On PostgreSQL the values go as one array parameter:
    Django's ``__in`` spent more time expanding a thousand placeholders than the database
    spent answering."""
    if not values:
        return {}
    if connection.vendor == "postgresql":
        table = Message._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {column}, conversation_id, folder_id FROM {table} "
                f"WHERE {column} = ANY(%s) AND conversation_id IS NOT NULL ORDER BY id",
                [list(values)],
            )
            rows = cursor.fetchall()
    else:
        rows = list(
            Message.objects.filter(**{f"{column}__in": values, "conversation__isnull": False})
            .order_by("id")
            .values_list(column, "conversation_id", "folder_id")
        )
    found: dict[str, int] = {}
    for value, conversation_id, folder_id in rows:
        if folder_id in folder_ids:
            found.setdefault(value, conversation_id)
    return found


def _thread(folder: Folder, pending: list[_Pending]) -> None:
    """Give each message its conversation: by the References/In-Reply-To chain, else by the
    same bytes seen elsewhere in the mailbox (another folder, an earlier UIDVALIDITY), else
    a new one. Messages of the same batch thread onto each other."""
    wanted_ids = {
        i
        for p in pending
        for i in (*p.envelope.references, p.envelope.in_reply_to, p.envelope.message_id)
        if i
    }
    folder_ids = set(
        Folder.objects.filter(mailbox_id=folder.mailbox_id).values_list("pk", flat=True)
    )
    by_message_id = _first_conversations("message_id", sorted(wanted_ids), folder_ids)
    by_digest = _first_conversations("blob_id", [p.digest for p in pending], folder_ids)
    new_conversations: dict[str, Conversation] = {}
    touched: dict[int, datetime] = {}
    fresh: list[Conversation] = []
    joining: list[tuple[Message, Conversation]] = []  # rows waiting for a new conversation
    for p in pending:
        chain = [*p.envelope.references, p.envelope.in_reply_to, p.envelope.message_id]
        when = p.message.date or timezone.now()
        existing = next((by_message_id[i] for i in chain if i in by_message_id), None)
        if existing is None:
            existing = by_digest.get(p.digest)
        if existing is not None:
            p.message.conversation_id = existing
            touched[existing] = max(when, touched.get(existing, when))
            continue
        conversation = next((new_conversations[i] for i in chain if i in new_conversations), None)
        if conversation is None:
            conversation = Conversation(
                mailbox_id=folder.mailbox_id, subject=p.message.subject[:1000]
            )
            fresh.append(conversation)
        if conversation.last_message_at is None or conversation.last_message_at < when:
            conversation.last_message_at = when
        joining.append((p.message, conversation))
        for i in chain:
            if i:
                new_conversations.setdefault(i, conversation)
    _create_conversations(fresh)
    for message, conversation in joining:  # (the COPY reads the id, not the object)
        message.conversation_id = conversation.pk
    if touched:  # one UPDATE for the batch, never moving a conversation back in time
        Conversation.objects.filter(pk__in=list(touched)).update(
            last_message_at=Greatest(
                F("last_message_at"),
                Case(
                    *(When(pk=pk, then=Value(when)) for pk, when in touched.items()),
                    output_field=DateTimeField(),
                ),
            )
        )
