"""Store newly fetched messages: raw bytes, envelope and flags, a batch at a time.

List first, text later: a batch costs a header-block parse per message and a handful of
bulk INSERTs, so the inbox fills as fast as the server sends; bodies, attachments and
search text are extracted afterwards (``mailsync.extract``), in parallel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

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


def store_new_messages(
    folder: Folder, uidvalidity: int, batch: Sequence[FetchedMessage]
) -> list[Message]:
    """Insert rows for fetched messages whose UID is not stored yet; one transaction."""
    if not batch:
        return []
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
            blob_id=hashlib.sha256(fetched.raw).hexdigest(),
            size=len(fetched.raw),
            internaldate=fetched.internaldate,
            modseq=fetched.modseq,
        )
        envelope = parse_envelope(fetched.raw)
        apply_envelope(message, envelope)
        apply_flags_to_row(message, fetched.flags)
        pending.append(_Pending(fetched, str(message.blob_id), envelope, message))
    if not pending:
        return []
    with transaction.atomic():
        store_blobs({p.digest: p.fetched.raw for p in pending})
        _thread(folder, pending)
        return Message.objects.bulk_create([p.message for p in pending])


def store_blobs(raw_by_digest: dict[str, bytes | bytearray]) -> None:
    """Content-addressed: bytes already stored are not sent to the database again."""
    present = set(
        Blob.objects.filter(sha256__in=list(raw_by_digest)).values_list("sha256", flat=True)
    )
    missing = {d: raw for d, raw in raw_by_digest.items() if d not in present}
    large = {d: raw for d, raw in missing.items() if len(raw) > Blob.INLINE_LIMIT}
    Blob.objects.bulk_create(
        [
            Blob(sha256=digest, data=raw, size=len(raw))
            for digest, raw in missing.items()
            if digest not in large
        ]
        + [
            Blob(sha256=digest, data=b"", size=len(raw), chunked=True)
            for digest, raw in large.items()
        ],
        ignore_conflicts=True,  # another worker stored the same bytes a moment ago
    )
    view_size = Blob.CHUNK_SIZE
    for digest, raw in large.items():
        view = memoryview(raw)
        for seq, start in enumerate(range(0, len(raw), view_size)):
            BlobChunk.objects.bulk_create(
                [BlobChunk(blob_id=digest, seq=seq, data=view[start : start + view_size])],
                ignore_conflicts=True,
            )


def _thread(folder: Folder, pending: list[_Pending]) -> None:
    """Give each message its conversation: by the References/In-Reply-To chain, else by the
    same bytes seen elsewhere in the mailbox (another folder, an earlier UIDVALIDITY), else
    a new one. Messages of the same batch thread onto each other."""
    in_mailbox = Message.objects.filter(
        folder__mailbox_id=folder.mailbox_id, conversation__isnull=False
    )
    wanted_ids = {
        i
        for p in pending
        for i in (*p.envelope.references, p.envelope.in_reply_to, p.envelope.message_id)
        if i
    }
    by_message_id: dict[str, int] = {}
    for message_id, conversation_id in (
        in_mailbox.filter(message_id__in=wanted_ids)
        .order_by("-id")
        .values_list("message_id", "conversation_id")
    ):
        by_message_id[message_id] = conversation_id
    by_digest: dict[str, int] = dict(
        in_mailbox.filter(blob_id__in=[p.digest for p in pending])
        .order_by("-id")
        .values_list("blob_id", "conversation_id")
    )
    new_conversations: dict[str, Conversation] = {}
    touched: dict[int, datetime] = {}
    fresh: list[Conversation] = []
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
        p.message.conversation = conversation
        for i in chain:
            if i:
                new_conversations.setdefault(i, conversation)
    # bulk_create of the messages then takes each new conversation's primary key
    Conversation.objects.bulk_create(fresh)
    for conversation_id, when in touched.items():
        Conversation.objects.filter(pk=conversation_id, last_message_at__lt=when).update(
            last_message_at=when
        )
