"""Extract bodies, attachments and notices from stored raw bytes (text later).

Re-runnable: a message is extracted again from the same bytes with the same result, and a
crash half-way leaves it pending (its update and its attachments commit together).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Iterator, Sequence

from django.db import connections, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from mailsync.engine.mime import ParsedMessage, envelope_of, fallback_message, parse_message
from mailsync.ingest import apply_envelope, clean_text, store_blobs
from mailsync.models import Attachment, Mailbox, Message

log = logging.getLogger(__name__)

CHUNK = 50
EXTRACTED_FIELDS = [
    "message_id", "in_reply_to", "references", "subject", "from_name", "from_address",
    "to_display", "cc_display", "date", "text_body", "html_body", "parse_notices",
    "shown_raw", "has_attachments", "extracted_at",
]  # fmt: skip


# A person opening a message not extracted yet gets it extracted then and there, up to
# this size (larger ones take a second or more: the worker's job, the page says so).
EXTRACT_ON_VIEW_BYTES = 10 * 1024 * 1024


def pending_messages(mailbox: Mailbox | None = None) -> QuerySet[Message]:
    rows = Message.objects.filter(extracted_at__isnull=True)
    if mailbox is not None:
        rows = rows.filter(folder__mailbox=mailbox)
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
    """Extract the given messages that are still pending; returns how many were done."""
    done = 0
    rows = (
        Message.objects.filter(pk__in=list(message_ids), extracted_at__isnull=True)
        .select_related("blob")
        .order_by("pk")
    )
    for message in rows.iterator(chunk_size=CHUNK):
        done += extract_message(message)
    return done


def extract_message(message: Message) -> bool:
    """Parse outside the transaction (CPU), then claim and write inside it: the claim is a
    conditional UPDATE, so two workers given the same message write it once."""
    parsed = _parse_safely(message.blob.read())
    apply_envelope(message, envelope_of(parsed))
    message.text_body = clean_text(parsed.text)
    message.html_body = clean_text(parsed.html)
    message.parse_notices = [clean_text(n) for n in parsed.notices]
    message.shown_raw = parsed.shown_raw
    message.has_attachments = any(not a.inline for a in parsed.attachments)
    message.extracted_at = timezone.now()
    with transaction.atomic():
        claimed = Message.objects.filter(pk=message.pk, extracted_at__isnull=True).update(
            extracted_at=message.extracted_at
        )
        if not claimed:
            return False
        store_blobs({_digest(part.payload): part.payload for part in parsed.attachments})
        Attachment.objects.bulk_create(
            [
                Attachment(
                    message=message,
                    blob_id=_digest(part.payload),
                    filename=clean_text(part.filename)[:255],
                    content_type=part.content_type[:255],
                    content_id=clean_text(part.content_id)[:255],
                    inline=part.inline,
                    size=len(part.payload),
                    position=position,
                )
                for position, part in enumerate(parsed.attachments)
            ]
        )
        message.save(update_fields=EXTRACTED_FIELDS)
    return True


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
