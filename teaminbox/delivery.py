"""Worker side of outgoing mail: SMTP delivery, the copy in Sent, \\Answered on the original.

Talks to the network outside any transaction. Sent at most once: ``deliver`` claims the
row with one conditional UPDATE (queued -> sending), so a task that Celery delivers twice,
or two workers, send it once. A crash after the SMTP server accepted the message and
before the row is marked "sent" leaves it in "sending"; such rows are never re-sent by
themselves (``fail_stale_sending`` marks them failed for a person to check).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from mailsync.crypto import CredentialError
from mailsync.engine import smtp
from mailsync.engine.errors import ConfigurationError, FolderMissing, MailError
from mailsync.engine.flags import ANSWERED, SEEN
from mailsync.models import Activity
from mailsync.runner import open_session
from teaminbox.models import OutgoingMessage
from teaminbox.services import set_flag

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # transient SMTP failures before a row is failed for a person to check
STALE_SENDING = timedelta(minutes=15)
SENT_FOLDER_NAMES = ("sent", "sent items", "sent messages", "sent mail", "inbox.sent")


@dataclass(frozen=True)
class Delivery:
    outgoing_id: int
    sent: bool
    saved_to_sent: bool = False
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
    OutgoingMessage.objects.filter(pk=outgoing.pk, state=OutgoingMessage.State.SENDING).update(
        state=OutgoingMessage.State.SENT,
        sent_at=timezone.now(),
        smtp_reply=result.reply[:1000],
        last_error=f"refused by the server: {refused}"[:2000] if refused else "",
        updated_at=timezone.now(),
    )
    saved = False if mailbox.server_saves_sent else _save_to_sent(outgoing, raw)
    original = outgoing.in_reply_to
    if (
        original is not None
        and original.expunged_at is None
        and outgoing.kind in {OutgoingMessage.Kind.REPLY, OutgoingMessage.Kind.REPLY_ALL}
    ):
        set_flag(message=original, flag=ANSWERED, on=True, actor=outgoing.author)
    return Delivery(outgoing_id, sent=True, saved_to_sent=saved)


def _save_to_sent(outgoing: OutgoingMessage, raw: bytes) -> bool:
    """APPEND the exact bytes sent, with \\Seen; a failure is recorded, never re-sent."""
    try:
        imap = open_session(outgoing.mailbox)
        try:
            folder = imap.find_special_folder("\\Sent")
            if folder is None:
                names = {f.name.lower(): f.name for f in imap.list_folders() if f.selectable}
                folder = next((names[n] for n in SENT_FOLDER_NAMES if n in names), None)
            if folder is None:
                raise FolderMissing("the server has no Sent folder (none marked \\Sent)")
            uid = imap.append(folder, raw, [SEEN])
        finally:
            imap.close()
    except MailError as exc:
        log.warning("outgoing %s sent but not saved to Sent: %s", outgoing.pk, exc)
        OutgoingMessage.objects.filter(pk=outgoing.pk).update(sent_copy_error=str(exc)[:2000])
        Activity.objects.create(
            mailbox_id=outgoing.mailbox_id,
            message_id=outgoing.in_reply_to_id,
            source=Activity.Source.SYSTEM,
            verb="sent_copy_failed",
            detail={"outgoing": outgoing.pk, "error": str(exc)[:500]},
        )
        return False
    OutgoingMessage.objects.filter(pk=outgoing.pk).update(
        sent_folder=folder, sent_uid=uid, sent_copy_error=""
    )
    return True


def _record_failure(outgoing: OutgoingMessage, exc: MailError, *, requeue: bool) -> None:
    text = str(exc)[:2000]
    if isinstance(exc, smtp.DeliveryUncertain):
        text = f"{text}. Check with the recipient before retrying."
    state = OutgoingMessage.State.QUEUED if requeue else OutgoingMessage.State.FAILED
    OutgoingMessage.objects.filter(pk=outgoing.pk, state=OutgoingMessage.State.SENDING).update(
        state=state, last_error=text, updated_at=timezone.now()
    )
    if not requeue:
        Activity.objects.create(
            mailbox_id=outgoing.mailbox_id,
            message_id=outgoing.in_reply_to_id,
            source=Activity.Source.SYSTEM,
            verb="reply_failed",
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
            Activity.objects.create(
                mailbox_id=mailbox_id,
                message_id=message_id,
                source=Activity.Source.SYSTEM,
                verb="reply_failed",
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
