"""Extract bodies, attachments and notices from stored raw bytes (text later).

Re-runnable: a message is extracted again from the same bytes with the same result, and a
crash half-way leaves it pending (its update and its attachments commit together).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from datetime import datetime

from django.db import connections, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from mailsync import changes
from mailsync.conversations import refresh_summaries
from mailsync.engine.mime import ParsedMessage, envelope_of, fallback_message, parse_message
from mailsync.ingest import (
    apply_envelope,
    clean_text,
    commit_without_waiting_for_disk,
    store_blobs,
)
from mailsync.models import Attachment, Blob, Change, Folder, Mailbox, Message
from mailsync.search_index import write_documents

log = logging.getLogger(__name__)

CHUNK = 50
CHUNK_BYTES = 32 * 1024 * 1024
EXTRACTED_FIELDS = [
    "message_id", "in_reply_to", "references", "subject", "from_name", "from_address",
    "to_display", "cc_display", "date", "text_body", "html_body", "parse_notices",
    "shown_raw", "has_attachments", "extracted_at",
]  # fmt: skip


# A person opening a message not extracted yet gets it extracted then and there, up to
# this size (larger ones take a second or more: the worker's job, the page says so).
EXTRACT_ON_VIEW_BYTES = 10 * 1024 * 1024


def pending_messages(
    mailbox: Mailbox | None = None, *, folder_id: int | None = None
) -> QuerySet[Message]:
    """Rows whose text is not extracted yet (of a mailbox, or of one folder)."""
    rows = Message.objects.filter(extracted_at__isnull=True)
    if mailbox is not None:
        rows = rows.filter(folder__mailbox=mailbox)
    if folder_id is not None:
        rows = rows.filter(folder_id=folder_id)
    return rows


def newest_first(rows: QuerySet[Message]) -> QuerySet[Message]:
    """The order to extract in: the mail people read first. Not by primary key: a first
    sync inserts the newest batches first, so the oldest mail has the highest keys."""
    return rows.order_by(F("internaldate").desc(nulls_last=True), "-pk")


def extract_for_reader(message: Message) -> bool:
    """Extract a message a person is opening, unless it is large (the worker's job).
    Returns whether it is extracted now."""
    if message.extracted_at is not None:
        return True
    if message.size > EXTRACT_ON_VIEW_BYTES:
        return False
    extract_message(message)  # claims like a worker: whoever is first writes, once
    return True


def chunks(ids: Sequence[int], size: int = CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def extract_messages(message_ids: Sequence[int]) -> int:
    """Extract the given messages that are still pending; returns how many were done.

    A group at a time (at most CHUNK messages and about CHUNK_BYTES of mail): its rows and
    raw bytes read in two queries, each message parsed outside any transaction (CPU), then
    the group claimed and written in one transaction -- not a query and a commit per
    message, which cost more than the parsing."""
    pending = Message.objects.filter(pk__in=list(message_ids), extracted_at__isnull=True)
    done = 0
    for group in _groups(list(pending.order_by("pk").values_list("pk", "size"))):
        messages = list(pending.filter(pk__in=group).order_by("pk"))
        blobs = Blob.objects.in_bulk({m.blob_id for m in messages})
        done += _write_extracted([(m, _parse_safely(blobs[m.blob_id].read())) for m in messages])
    return done


def _groups(sized: list[tuple[int, int]]) -> Iterator[list[int]]:
    group: list[int] = []
    group_bytes = 0
    for pk, size in sized:
        if group and (len(group) >= CHUNK or group_bytes + size > CHUNK_BYTES):
            yield group
            group, group_bytes = [], 0
        group.append(pk)
        group_bytes += size
    if group:
        yield group


def extract_message(message: Message) -> bool:
    """Extract one message now (a person is opening it); False if a worker was first."""
    return _write_extracted([(message, _parse_safely(message.blob.read()))]) == 1


def _write_extracted(group: list[tuple[Message, ParsedMessage]]) -> int:
    """Claim and write: only rows still pending are claimed (locked, then re-checked), so
    two workers given the same message write it once."""
    if not group:
        return 0
    now = timezone.now()
    for message, parsed in group:
        _take_parsed(message, parsed, now)
    with transaction.atomic():
        commit_without_waiting_for_disk()
        claimed = set(
            Message.objects.select_for_update()
            .filter(pk__in=[m.pk for m, _ in group], extracted_at__isnull=True)
            .values_list("pk", flat=True)
        )
        mine = [(m, parsed) for m, parsed in group if m.pk in claimed]
        payloads = {_digest(a.payload): a.payload for _, parsed in mine for a in parsed.attachments}
        store_blobs(payloads)
        Attachment.objects.bulk_create(
            [
                Attachment(
                    message=message,
                    blob_id=_digest(part.payload),
                    filename=clean_text(part.filename)[:255],
                    content_type=clean_text(part.content_type)[:255],
                    content_id=clean_text(part.content_id)[:255],
                    inline=part.inline,
                    size=len(part.payload),
                    position=position,
                )
                for message, parsed in mine
                for position, part in enumerate(parsed.attachments)
            ]
        )
        for message, _ in mine:  # plain UPDATEs: bulk_update's CASE costs more per row
            Message.objects.filter(pk=message.pk).update(
                **{field: getattr(message, field) for field in EXTRACTED_FIELDS}
            )
        write_documents(m for m, _ in mine)  # search: text and attachment names
        refresh_summaries(m.conversation_id for m, _ in mine)  # snippet, attachment mark
        _announce([m for m, _ in mine])
    return len(mine)


def _announce(messages: list[Message]) -> None:
    """One change per mailbox for the group: open pages show the text (and the subject,
    sender and attachment mark it may have fixed)."""
    if not messages:
        return
    mailbox_of = dict(
        Folder.objects.filter(pk__in={m.folder_id for m in messages}).values_list(
            "pk", "mailbox_id"
        )
    )
    by_mailbox: dict[int, list[Message]] = {}
    for message in messages:
        by_mailbox.setdefault(mailbox_of[message.folder_id], []).append(message)
    for mailbox_id, members in by_mailbox.items():
        changes.bump(
            mailbox=mailbox_id,
            kind=Change.Kind.TEXT_EXTRACTED,
            message_ids=[m.pk for m in members],
            conversation_ids=[m.conversation_id for m in members],
        )


def _take_parsed(message: Message, parsed: ParsedMessage, now: datetime) -> None:
    apply_envelope(message, envelope_of(parsed))
    message.text_body = clean_text(parsed.text)
    message.html_body = clean_text(parsed.html)
    message.parse_notices = [clean_text(n) for n in parsed.notices]
    message.shown_raw = parsed.shown_raw
    message.has_attachments = any(not a.inline for a in parsed.attachments)
    message.extracted_at = now


def extract_pending_in_parallel(mailbox: Mailbox | None = None, *, jobs: int = 0) -> int:
    """Extract every pending message with a pool of processes (the parser is CPU-bound and
    single-threaded). Used by ``syncmailbox --once``; workers use ``extract_messages`` tasks."""
    ids = list(newest_first(pending_messages(mailbox)).values_list("pk", flat=True))
    if not ids:
        return 0
    jobs = jobs or multiprocessing.cpu_count()
    if jobs <= 1 or len(ids) <= CHUNK:
        return extract_messages(ids)
    # A forked child must not share the parent's database socket: close it first, each
    # side then opens its own.
    connections.close_all()
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, initializer=connections.close_all) as pool:
        return sum(pool.imap_unordered(extract_messages, chunks(ids)))


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _parse_safely(raw: bytes) -> ParsedMessage:
    try:
        return parse_message(raw)
    except Exception:  # parse_message promises not to raise; a bug there must not lose mail
        log.exception("parser failed; the message is shown raw")
        return fallback_message(raw, "the parser failed")
