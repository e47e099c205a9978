"""Worker side of outgoing mail: SMTP delivery, the copy in Sent, \\Answered on the original.

Talks to the network outside any transaction. Sent at most once: ``deliver`` claims the
row with one conditional UPDATE (queued -> sending), so a task that Celery delivers twice,
or two workers, send it once. A crash after the SMTP server accepted the message and
before the row is marked "sent" leaves it in "sending"; such rows are never re-sent by
themselves (``fail_stale_sending`` marks them failed for a person to check).

The copy in Sent is separate work that never sends mail: the UPDATE that marks a row sent
also makes its copy "pending" and claims it for this worker. ``save_sent_copy`` (the
sweeper's retries, a person's "Save to Sent") claims a pending copy by conditional UPDATE,
looks for the Message-ID in Sent first (an APPEND whose answer was lost, or a worker that
died before recording it, has left the copy there) and APPENDs only when it is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from mailsync import changes
from mailsync.crypto import CredentialError
from mailsync.engine import smtp
from mailsync.engine.errors import ConfigurationError, FolderMissing, MailError
from mailsync.engine.flags import SEEN
from mailsync.engine.imap import ImapSession
from mailsync.models import Activity, Change
from mailsync.runner import open_session
from teaminbox.models import OutgoingMessage
from teaminbox.services.access import Actor, actor_id_of
from teaminbox.services.flags import mark_answered

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # transient SMTP failures before a row is failed for a person to check
STALE_SENDING = timedelta(minutes=15)
SENT_FOLDER_NAMES = ("sent", "sent items", "sent messages", "sent mail", "inbox.sent")
# Longer than any one attempt (a connection, LIST, SEARCH and APPEND, each bounded by
# IMAP_TIMEOUT_SECONDS): a claim older than this belongs to a worker that died.
SENT_COPY_LEASE = timedelta(minutes=10)
SENT_COPY_MAX_BACKOFF = timedelta(hours=1)

SentCopy = OutgoingMessage.SentCopy


@dataclass(frozen=True)
class Delivery:
    outgoing_id: int
    sent: bool
    saved_to_sent: bool = False
    error: str = ""


@dataclass(frozen=True)
class SentCopyAttempt:
    outgoing_id: int
    saved: bool
    found_in_sent: bool = False  # the server already had it: nothing was appended
    error: str = ""


def claim(outgoing_id: int) -> bool:
    """queued -> sending, in one conditional UPDATE: true for exactly one caller."""
    return bool(
        OutgoingMessage.objects.filter(pk=outgoing_id, state=OutgoingMessage.State.QUEUED).update(
            state=OutgoingMessage.State.SENDING,
            claimed_at=timezone.now(),
            attempts=F("attempts") + 1,
            updated_at=timezone.now(),
        )
    )


def deliver(outgoing_id: int) -> Delivery | None:
    """Send one queued message, file it in Sent, mark the original \\Answered.

    Returns None when the row was not queued (already sent, being sent, or a draft): that
    is how a second run of the same task sends nothing. Raises a transient ``MailError``
    after putting the row back in the queue, for the task to retry with backoff.
    """
    if not claim(outgoing_id):
        return None
    outgoing = OutgoingMessage.objects.select_related(
        "mailbox", "raw", "in_reply_to", "author"
    ).get(pk=outgoing_id)
    mailbox = outgoing.mailbox
    raw = outgoing.raw.read() if outgoing.raw is not None else b""
    try:
        if not raw:
            raise ConfigurationError("nothing to send: the message was never built")
        try:
            account = mailbox.smtp_account()
        except CredentialError as exc:
            raise ConfigurationError(str(exc)) from exc
        result = smtp.send_message(
            account,
            sender=outgoing.envelope_from,
            recipients=[str(r) for r in outgoing.envelope_recipients],
            raw=raw,
            timeout=float(settings.IMAP_TIMEOUT_SECONDS),
        )
    except MailError as exc:
        retry = exc.transient and outgoing.attempts < MAX_ATTEMPTS
        _record_failure(outgoing, exc, requeue=retry)
        if retry:
            raise
        return Delivery(outgoing_id, sent=False, error=str(exc))

    refused = "; ".join(f"{r}: {c} {a}" for r, (c, a) in result.refused.items())
    copy = SentCopy.NOT_NEEDED if mailbox.server_saves_sent else SentCopy.PENDING
    now = timezone.now()
    with transaction.atomic():
        OutgoingMessage.objects.filter(pk=outgoing.pk, state=OutgoingMessage.State.SENDING).update(
            state=OutgoingMessage.State.SENT,
            sent_at=now,
            smtp_reply=result.reply[:1000],
            last_error=f"refused by the server: {refused}"[:2000] if refused else "",
            updated_at=now,
            # pending and claimed by this worker in the same UPDATE: if it dies before the
            # copy is recorded, the lease runs out and the sweeper takes over
            sent_copy=copy,
            sent_copy_claimed_at=now if copy == SentCopy.PENDING else None,
            sent_copy_attempts=1 if copy == SentCopy.PENDING else 0,
        )
        changes.bump(
            mailbox=mailbox, kind=Change.Kind.OUTGOING, message_ids=[outgoing.in_reply_to_id]
        )
    saved = False
    if copy == SentCopy.PENDING:
        outgoing.sent_copy_attempts = 1
        saved = _copy_to_sent(outgoing, raw, actor=None).saved
    original = outgoing.in_reply_to
    if (
        original is not None
        and original.expunged_at is None
        and outgoing.kind in {OutgoingMessage.Kind.REPLY, OutgoingMessage.Kind.REPLY_ALL}
    ):
        mark_answered(message=original, author=outgoing.author)
    return Delivery(outgoing_id, sent=True, saved_to_sent=saved)


def save_sent_copy(outgoing_id: int, *, actor: Actor = None) -> SentCopyAttempt | None:
    """Put the copy of a sent message in Sent, if it is still pending; never sends mail.

    Returns None when the copy is not pending, another worker holds it, or (for the
    sweeper, ``actor`` None) its backoff has not run out. A person (``actor``) asks now.
    """
    now = timezone.now()
    pending = OutgoingMessage.objects.filter(pk=outgoing_id, sent_copy=SentCopy.PENDING).filter(
        Q(sent_copy_claimed_at__isnull=True) | Q(sent_copy_claimed_at__lt=now - SENT_COPY_LEASE)
    )
    if actor is None:
        pending = pending.filter(
            Q(sent_copy_retry_at__isnull=True) | Q(sent_copy_retry_at__lte=now)
        )
    if not pending.update(sent_copy_claimed_at=now, sent_copy_attempts=F("sent_copy_attempts") + 1):
        return None
    outgoing = OutgoingMessage.objects.select_related("mailbox", "raw").get(pk=outgoing_id)
    raw = outgoing.raw.read() if outgoing.raw is not None else b""
    return _copy_to_sent(outgoing, raw, actor=actor)


def sent_copies_due() -> list[int]:
    """Pending copies whose backoff ran out and that no live worker holds: for the sweeper."""
    now = timezone.now()
    return list(
        OutgoingMessage.objects.filter(sent_copy=SentCopy.PENDING)
        .filter(Q(sent_copy_retry_at__isnull=True) | Q(sent_copy_retry_at__lte=now))
        .filter(
            Q(sent_copy_claimed_at__isnull=True) | Q(sent_copy_claimed_at__lt=now - SENT_COPY_LEASE)
        )
        .values_list("pk", flat=True)
    )


def _copy_to_sent(outgoing: OutgoingMessage, raw: bytes, *, actor: Actor) -> SentCopyAttempt:
    """The claimed copy: found by Message-ID or APPENDed with \\Seen, then recorded."""
    try:
        if not raw:
            raise ConfigurationError("nothing to save: the message was never built")
        imap = open_session(outgoing.mailbox)
        try:
            folder = _sent_folder(imap)
            found = (
                imap.search_header(folder, "Message-ID", f"<{outgoing.message_id}>")
                if outgoing.message_id
                else []
            )
            uid = found[-1] if found else imap.append(folder, raw, [SEEN])
        finally:
            imap.close()
    except MailError as exc:
        _record_copy_failed(outgoing, exc, actor=actor)
        return SentCopyAttempt(outgoing.pk, saved=False, error=str(exc))
    _record_copy_saved(outgoing, folder, uid, found_in_sent=bool(found), actor=actor)
    return SentCopyAttempt(outgoing.pk, saved=True, found_in_sent=bool(found))


def _sent_folder(imap: ImapSession) -> str:
    folder = imap.find_special_folder("\\Sent")
    if folder is None:
        names = {f.name.lower(): f.name for f in imap.list_folders() if f.selectable}
        folder = next((names[n] for n in SENT_FOLDER_NAMES if n in names), None)
    if folder is None:
        raise FolderMissing("the server has no Sent folder (none marked \\Sent)")
    return folder


def _record_copy_saved(
    outgoing: OutgoingMessage,
    folder: str,
    uid: int | None,
    *,
    found_in_sent: bool,
    actor: Actor,
) -> None:
    with transaction.atomic():
        OutgoingMessage.objects.filter(pk=outgoing.pk, sent_copy=SentCopy.PENDING).update(
            sent_copy=SentCopy.SAVED,
            sent_folder=folder,
            sent_uid=uid,
            sent_copy_error="",
            sent_copy_claimed_at=None,
            sent_copy_retry_at=None,
        )
        # The first attempt succeeding is the normal case, not news for the history.
        if outgoing.sent_copy_attempts > 1 or found_in_sent:
            _record_copy_activity(
                outgoing,
                Activity.Verb.SENT_COPY_SAVED,
                {"outgoing": outgoing.pk, "folder": folder, "found_in_sent": found_in_sent},
                actor=actor,
            )
        else:
            changes.bump(
                mailbox=outgoing.mailbox_id,
                kind=Change.Kind.OUTGOING,
                message_ids=[outgoing.in_reply_to_id],
            )


def _record_copy_failed(outgoing: OutgoingMessage, exc: MailError, *, actor: Actor) -> None:
    log.warning("outgoing %s sent but not saved to Sent: %s", outgoing.pk, exc)
    attempts = max(outgoing.sent_copy_attempts, 1)
    backoff = min(timedelta(minutes=5) * 2 ** min(attempts - 1, 8), SENT_COPY_MAX_BACKOFF)
    with transaction.atomic():
        OutgoingMessage.objects.filter(pk=outgoing.pk, sent_copy=SentCopy.PENDING).update(
            sent_copy_error=str(exc)[:2000],
            sent_copy_claimed_at=None,
            sent_copy_retry_at=timezone.now() + backoff,
        )
        # Once in the history, not once per retry; the message page shows the latest reason.
        if attempts == 1:
            _record_copy_activity(
                outgoing,
                Activity.Verb.SENT_COPY_FAILED,
                {"outgoing": outgoing.pk, "error": str(exc)[:500]},
                actor=actor,
            )
        else:
            changes.bump(
                mailbox=outgoing.mailbox_id,
                kind=Change.Kind.OUTGOING,
                message_ids=[outgoing.in_reply_to_id],
            )


def _record_copy_activity(
    outgoing: OutgoingMessage,
    verb: str,
    detail: dict[str, object],
    *,
    actor: Actor,
) -> None:
    actor_id = actor_id_of(actor)
    changes.record(
        mailbox=outgoing.mailbox_id,
        message=outgoing.in_reply_to_id,
        actor=actor_id,
        source=Activity.Source.APP if actor_id is not None else Activity.Source.SYSTEM,
        verb=verb,
        detail=detail,
    )


def _record_failure(outgoing: OutgoingMessage, exc: MailError, *, requeue: bool) -> None:
    text = str(exc)[:2000]
    if isinstance(exc, smtp.DeliveryUncertain):
        text = f"{text}. Check with the recipient before retrying."
    state = OutgoingMessage.State.QUEUED if requeue else OutgoingMessage.State.FAILED
    with transaction.atomic():
        OutgoingMessage.objects.filter(pk=outgoing.pk, state=OutgoingMessage.State.SENDING).update(
            state=state, last_error=text, updated_at=timezone.now()
        )
        if requeue:
            return  # no news: it is tried again
        changes.record(
            mailbox=outgoing.mailbox_id,
            message=outgoing.in_reply_to_id,
            source=Activity.Source.SYSTEM,
            verb=Activity.Verb.REPLY_FAILED,
            detail={"outgoing": outgoing.pk, "error": text[:500]},
        )


def fail_stale_sending(*, older_than: timedelta = STALE_SENDING) -> int:
    """Rows a crashed worker left in "sending": perhaps sent, so never sent again by
    themselves. Failed, with a note, for a person to check and retry."""
    cutoff = timezone.now() - older_than
    stale = list(
        OutgoingMessage.objects.filter(
            state=OutgoingMessage.State.SENDING, claimed_at__lt=cutoff
        ).values_list("pk", "mailbox_id", "in_reply_to_id")
    )
    for pk, mailbox_id, message_id in stale:
        with transaction.atomic():
            changed = OutgoingMessage.objects.filter(
                pk=pk, state=OutgoingMessage.State.SENDING, claimed_at__lt=cutoff
            ).update(
                state=OutgoingMessage.State.FAILED,
                last_error=(
                    "a worker stopped while sending this message; it may have been delivered. "
                    "Check the Sent folder or with the recipient before retrying."
                ),
            )
            if changed:
                changes.record(
                    mailbox=mailbox_id,
                    message=message_id,
                    source=Activity.Source.SYSTEM,
                    verb=Activity.Verb.REPLY_FAILED,
                    detail={"outgoing": pk, "error": "delivery state unknown"},
                )
    return len(stale)


def queued_ids(*, older_than: timedelta) -> list[int]:
    """Queued rows whose task may have been lost (a broker outage): for the sweeper."""
    cutoff = timezone.now() - older_than
    return list(
        OutgoingMessage.objects.filter(
            state=OutgoingMessage.State.QUEUED, updated_at__lt=cutoff
        ).values_list("pk", flat=True)
    )
