"""Outgoing mail from the app: drafts (reply, reply all, forward), checking them, queueing
them for delivery, and a person's retry.

Keyword-only services under ``@transaction.atomic``; ``teaminbox.delivery`` is the worker
side (SMTP, the copy in Sent) and talks to the network outside any transaction; the text a
draft starts with is ``mailsync.engine.reply_text``.

Sent at most once. ``send_reply`` builds the exact bytes and fixes the Message-ID when the
row is queued; ``delivery.deliver`` claims the row with one conditional UPDATE (queued ->
sending), so a task that Celery delivers twice, or two workers, send it once. The one unavoidable
gap: a crash after the SMTP server accepted the message and before the row is marked
"sent" leaves it in "sending". Such rows are never re-sent automatically:
``fail_stale_sending`` marks them failed for a person to check, who may then retry.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from email.utils import make_msgid

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from mailsync import changes
from mailsync.engine.compose import (
    HeaderError,
    OutgoingMail,
    Recipient,
    build_message,
    check_address,
    check_header_text,
    format_address_list,
    forward_subject,
    one_line,
    parse_address_list,
    references_for,
    reply_subject,
    unique_recipients,
    usable_message_id,
)
from mailsync.engine.compose import (
    OutgoingAttachment as MailAttachment,
)
from mailsync.engine.mime import ParsedMessage, parse_message
from mailsync.engine.reply_text import forward_body, quoted_reply, reply_recipients
from mailsync.enqueue import publish_now
from mailsync.ingest import store_blobs
from mailsync.models import Activity, Conversation, Mailbox, Message
from teaminbox import delivery
from teaminbox.models import OutgoingAttachment, OutgoingMessage
from teaminbox.services.access import Actor, Role, actor_id_of, require_author, require_role
from teaminbox.services.conversations import after_reply
from teaminbox.tasks import send_outgoing

log = logging.getLogger(__name__)

MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024  # in total per message, before base64
VERBS = {
    OutgoingMessage.Kind.REPLY: Activity.Verb.REPLIED,
    OutgoingMessage.Kind.REPLY_ALL: Activity.Verb.REPLIED_TO_ALL,
    OutgoingMessage.Kind.FORWARD: Activity.Verb.FORWARDED,
    OutgoingMessage.Kind.NEW: Activity.Verb.SENT_NEW_MESSAGE,
}
EDITABLE_FIELDS = ("to", "cc", "bcc", "subject", "body_text")
THEN_STATUSES = (None, Conversation.Status.PENDING, Conversation.Status.CLOSED)


class ReplyInvalid(Exception):
    """What a person must fix before sending: field name -> sentence (``__all__`` too)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class NotADraft(Exception):
    """The row was already queued or sent: it cannot be edited or sent again."""


# -- drafts ------------------------------------------------------------------------------


def shared_addresses(mailbox: Mailbox) -> set[str]:
    """Addresses that are the team itself: never a recipient of its own replies."""
    candidates = [mailbox.email_address, mailbox.username, mailbox.smtp_username]
    return {a.strip().lower() for a in candidates if a and "@" in a}


def team_name(mailbox: Mailbox) -> str:
    """The display name in From: the mailbox's, else its short name ("sales-eu" → "Sales Eu")."""
    if mailbox.display_name.strip():
        return one_line(mailbox.display_name)
    return one_line(mailbox.name.replace("-", " ").replace("_", " ")).title()


@transaction.atomic
def start_reply(*, message: Message, kind: str, actor: Actor) -> OutgoingMessage:
    """A new draft answering (or forwarding) ``message``, prefilled like a mail client."""
    if kind not in OutgoingMessage.Kind.values or kind == OutgoingMessage.Kind.NEW:
        raise ValueError(f"not a reply kind: {kind!r}")
    mailbox = message.folder.mailbox
    require_role(actor, mailbox, Role.AGENT)
    parsed = parse_message(message.blob.read())
    to: tuple[Recipient, ...] = ()
    cc: tuple[Recipient, ...] = ()
    when = parsed.date or message.date
    local = timezone.localtime(when) if when and timezone.is_aware(when) else when
    if kind == OutgoingMessage.Kind.FORWARD:
        subject = forward_subject(parsed.subject or message.subject)
        body = forward_body(parsed, subject=parsed.subject or message.subject, when=local)
    else:
        to, cc = reply_recipients(
            parsed,
            own=shared_addresses(mailbox),
            reply_all=kind == OutgoingMessage.Kind.REPLY_ALL,
        )
        subject = reply_subject(parsed.subject or message.subject)
        sender = parsed.sender.display() if parsed.sender else (message.sender_display or "")
        body = quoted_reply(parsed, sender=sender or "someone", when=local)
    draft = OutgoingMessage.objects.create(
        mailbox=mailbox,
        in_reply_to=message,
        kind=kind,
        author_id=actor_id_of(actor),
        to=format_address_list(to),
        cc=format_address_list(cc),
        subject=subject,
        body_text=body,
    )
    if kind == OutgoingMessage.Kind.FORWARD:
        _copy_original_attachments(draft, message, parsed)
    return draft


def open_reply(*, message: Message, kind: str, actor: Actor) -> OutgoingMessage:
    """The person's unsent draft of this kind for this message, else a new one: opening
    "Reply" twice (or reloading) continues the autosaved draft."""
    require_role(actor, message.folder.mailbox_id, Role.AGENT)
    existing = (
        OutgoingMessage.objects.filter(
            in_reply_to=message,
            kind=kind,
            author_id=actor_id_of(actor),
            state=OutgoingMessage.State.DRAFT,
        )
        .order_by("-updated_at")
        .first()
    )
    return existing or start_reply(message=message, kind=kind, actor=actor)


@transaction.atomic
def save_draft(
    *,
    draft: OutgoingMessage,
    to: str,
    cc: str,
    bcc: str,
    subject: str,
    body_text: str,
    actor: Actor,
) -> OutgoingMessage:
    """Autosave: store what was typed as is (checked only when sending)."""
    draft = _lock_draft(draft, actor)
    draft.to, draft.cc, draft.bcc = to, cc, bcc
    draft.subject, draft.body_text = subject, body_text
    draft.save(update_fields=[*EDITABLE_FIELDS, "updated_at"])
    return draft


@transaction.atomic
def add_attachment(
    *, draft: OutgoingMessage, filename: str, content_type: str, data: bytes, actor: Actor
) -> OutgoingAttachment:
    draft = _lock_draft(draft, actor)
    total = sum(a.size for a in draft.attachments.all()) + len(data)
    if total > MAX_ATTACHMENT_BYTES:
        raise ReplyInvalid(
            {"attachments": f"Attachments may add up to {MAX_ATTACHMENT_BYTES // 2**20} MB."}
        )
    digest = hashlib.sha256(data).hexdigest()
    store_blobs({digest: data})
    return OutgoingAttachment.objects.create(
        outgoing=draft,
        blob_id=digest,
        filename=one_line(filename)[:255] or "attachment.bin",
        content_type=one_line(content_type)[:255] or "application/octet-stream",
        size=len(data),
        position=draft.attachments.count(),
    )


@transaction.atomic
def remove_attachment(*, draft: OutgoingMessage, attachment_id: int, actor: Actor) -> None:
    draft = _lock_draft(draft, actor)
    draft.attachments.filter(pk=attachment_id).delete()


@transaction.atomic
def discard_draft(*, draft: OutgoingMessage, actor: Actor) -> None:
    _lock_draft(draft, actor).delete()


# -- sending -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedRecipients:
    to: tuple[Recipient, ...]
    cc: tuple[Recipient, ...]
    bcc: tuple[Recipient, ...]

    @property
    def envelope(self) -> list[str]:
        return [r.address for r in unique_recipients([*self.to, *self.cc, *self.bcc])]


def check_draft(draft: OutgoingMessage) -> CheckedRecipients:
    """Everything a person must fix before sending, all at once (ReplyInvalid)."""
    errors: dict[str, str] = {}
    limit = settings.MAX_RECIPIENTS
    too_many = (
        f"A message may go to at most {limit} recipients (To, Cc and Bcc together, each "
        "address counted once); this one has {count}."
    )
    typed = sum(getattr(draft, name).count("@") for name in ("to", "cc", "bcc"))
    if typed > 10 * limit:  # not worth parsing (about half a millisecond per address)
        raise ReplyInvalid({"__all__": too_many.format(count=f"about {typed}")})
    lists: dict[str, tuple[Recipient, ...]] = {}
    for name in ("to", "cc", "bcc"):
        try:
            lists[name] = parse_address_list(getattr(draft, name), name.capitalize())
        except HeaderError as exc:
            errors[name] = str(exc)
    try:
        check_header_text(draft.subject, "The subject")
    except HeaderError as exc:
        errors["subject"] = str(exc)
    if not errors and not any(lists.values()):
        errors["to"] = "Add at least one recipient."
    if not errors:
        count = len(unique_recipients([*lists["to"], *lists["cc"], *lists["bcc"]]))
        if count > limit:
            errors["__all__"] = too_many.format(count=count)
    try:
        check_address(draft.mailbox.email_address)
    except HeaderError:
        errors["__all__"] = (
            "This mailbox has no valid shared address to send from; an admin must set one."
        )
    try:
        check_header_text(team_name(draft.mailbox), "The mailbox's display name")
    except HeaderError as exc:
        errors["__all__"] = f"{exc} An admin must change it."
    if errors:
        raise ReplyInvalid(errors)
    return CheckedRecipients(to=lists["to"], cc=lists["cc"], bcc=lists["bcc"])


@transaction.atomic
def send_reply(
    *, draft: OutgoingMessage, actor: Actor, then_status: str | None = None
) -> OutgoingMessage:
    """Check the draft, build its bytes once, queue it; the worker sends it on commit.
    ``then_status`` ("pending" or "closed": "send and set pending / closed") sets the
    conversation's status in the same transaction; with the mailbox's "assign to whoever
    replies first", an unassigned conversation becomes the sender's.

    Raises ReplyInvalid (nothing changes) or NotADraft (already queued: a double-click or
    a resubmitted form sends nothing twice).
    """
    if then_status not in THEN_STATUSES:
        raise ReplyInvalid({"__all__": "After sending, set the conversation pending or closed."})
    draft = _lock_draft(draft, actor)
    recipients = check_draft(draft)
    mailbox = draft.mailbox
    original = draft.in_reply_to
    shared = mailbox.email_address.strip()
    message_id = make_msgid(domain=shared.rpartition("@")[2])
    in_reply_to = ""
    references: tuple[str, ...] = ()
    if original is not None and original.message_id:
        # ids from the customer's message: one that cannot be written back as it came
        # (an encoded word, a line break) is left out of the thread, not refused
        chain = original.references or ([original.in_reply_to] if original.in_reply_to else [])
        references = references_for(original.message_id, [str(r) for r in chain])
        if draft.kind != OutgoingMessage.Kind.FORWARD and usable_message_id(original.message_id):
            in_reply_to = original.message_id
    attachments = tuple(
        MailAttachment(filename=a.filename, content_type=a.content_type, payload=a.blob.read())
        for a in draft.attachments.select_related("blob")
    )
    try:
        raw = build_message(
            OutgoingMail(
                sender=Recipient(name=team_name(mailbox), address=shared),
                to=recipients.to,
                cc=recipients.cc,
                subject=draft.subject,
                body=draft.body_text,
                message_id=message_id,
                date=timezone.now(),
                in_reply_to=in_reply_to,
                references=references,
                attachments=attachments,
            )
        )
    except HeaderError as exc:  # the checks above should have caught it; never send it
        raise ReplyInvalid({"__all__": str(exc)}) from exc
    digest = hashlib.sha256(raw).hexdigest()
    store_blobs({digest: raw})
    draft.raw_id = digest
    draft.message_id = message_id.strip("<>")
    draft.envelope_from = shared
    draft.envelope_recipients = recipients.envelope
    draft.state = OutgoingMessage.State.QUEUED
    draft.queued_at = timezone.now()
    draft.last_error = ""
    draft.save()
    changes.record(
        mailbox=mailbox,
        message=original,
        actor=actor_id_of(actor),
        source=Activity.Source.APP,
        verb=VERBS[OutgoingMessage.Kind(draft.kind)],
        detail={
            "outgoing": draft.pk,
            "to": recipients.envelope,
            "subject": draft.subject,
            "message_id": draft.message_id,
        },
    )
    if original is not None:
        after_reply(
            conversation_id=original.conversation_id,
            mailbox=mailbox,
            then_status=then_status,
            actor=actor,
        )
    outgoing_id = draft.pk
    transaction.on_commit(lambda: enqueue_delivery(outgoing_id))
    return draft


@transaction.atomic
def retry_outgoing(*, outgoing: OutgoingMessage, actor: Actor) -> OutgoingMessage:
    """A person decided a failed message should go out (again): the same bytes and
    Message-ID, so a recipient who did get the first copy can recognise the second."""
    outgoing = OutgoingMessage.objects.select_for_update().get(pk=outgoing.pk)
    require_role(actor, outgoing.mailbox_id, Role.AGENT)
    if outgoing.state != OutgoingMessage.State.FAILED:
        raise NotADraft(f"only a failed message can be retried (this one is {outgoing.state})")
    outgoing.state = OutgoingMessage.State.QUEUED
    outgoing.queued_at = timezone.now()
    outgoing.attempts = 0
    outgoing.save(update_fields=["state", "queued_at", "attempts", "updated_at"])
    changes.record(
        mailbox=outgoing.mailbox_id,
        message=outgoing.in_reply_to_id,
        actor=actor_id_of(actor),
        source=Activity.Source.APP,
        verb=Activity.Verb.REPLY_RETRIED,
        detail={"outgoing": outgoing.pk},
    )
    outgoing_id = outgoing.pk
    transaction.on_commit(lambda: enqueue_delivery(outgoing_id))
    return outgoing


def save_to_sent(*, outgoing: OutgoingMessage, actor: Actor) -> delivery.SentCopyAttempt | None:
    """A person's "Save to Sent": try the copy of sent mail now, whatever its backoff (the
    worker side does it; it never sends the mail again). None: nothing to do right now."""
    require_role(actor, outgoing.mailbox_id, Role.AGENT)
    return delivery.save_sent_copy(outgoing.pk, actor=actor)


def enqueue_delivery(outgoing_id: int) -> None:
    """One quick try (``publish_now``): the row is queued in the database already, so a
    broker that is down never makes the person wait; ``sweep_outgoing`` enqueues it later."""
    publish_now(send_outgoing, outgoing_id)


# -- helpers -----------------------------------------------------------------------------


def _lock_draft(draft: OutgoingMessage, actor: Actor) -> OutgoingMessage:
    """The draft row, locked, once the actor is its author and still an agent."""
    locked = (
        OutgoingMessage.objects.select_for_update(of=("self",))
        .select_related("mailbox", "in_reply_to")
        .get(pk=draft.pk)
    )
    require_author(actor, locked)
    if locked.state != OutgoingMessage.State.DRAFT:
        raise NotADraft(f"this message is {locked.get_state_display().lower()}, not a draft")
    return locked


def _copy_original_attachments(
    draft: OutgoingMessage, message: Message, parsed: ParsedMessage
) -> None:
    """Forwarding keeps the original's attachments: the stored parts when extracted,
    else the ones parsed just now (stored content-addressed, so never twice)."""
    stored = list(message.attachments.filter(inline=False).select_related("blob"))
    if stored:
        OutgoingAttachment.objects.bulk_create(
            OutgoingAttachment(
                outgoing=draft,
                blob_id=a.blob_id,
                source=a,
                filename=one_line(a.filename)[:255] or "attachment.bin",
                content_type=a.content_type,
                size=a.size,
                position=n,
            )
            for n, a in enumerate(stored)
        )
        return
    parts = [a for a in parsed.attachments if not a.inline]
    store_blobs({hashlib.sha256(a.payload).hexdigest(): a.payload for a in parts})
    OutgoingAttachment.objects.bulk_create(
        OutgoingAttachment(
            outgoing=draft,
            blob_id=hashlib.sha256(a.payload).hexdigest(),
            filename=one_line(a.filename)[:255] or "attachment.bin",
            content_type=a.content_type,
            size=len(a.payload),
            position=n,
        )
        for n, a in enumerate(parts)
    )
