"""The team side: who may see which shared mailbox, and in which role."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from mailsync.models import Mailbox


class Membership(models.Model):
    class Role(models.TextChoices):
        VIEWER = "viewer", "Viewer (read only)"
        AGENT = "agent", "Agent"
        ADMIN = "admin", "Mailbox admin"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.AGENT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["mailbox", "user"]
        constraints = [
            models.UniqueConstraint(fields=["user", "mailbox"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} → {self.mailbox} ({self.role})"

    @property
    def can_act(self) -> bool:
        return self.role in {self.Role.AGENT, self.Role.ADMIN}


class OutgoingMessage(models.Model):
    """A reply, reply-all, forward or new message written in the app: a draft until sent.

    States: draft -> queued (bytes built, Message-ID fixed) -> sending (claimed by exactly
    one worker with a conditional UPDATE) -> sent | failed. A row left in "sending" by a
    crash is never re-sent automatically: the mail may already have gone out.

    The copy in Sent has its own state, apart from delivery: "pending" is set in the same
    UPDATE that marks the row sent (so a crash between SMTP and the APPEND leaves it
    pending), and stays until the server has the copy; retrying it never sends mail.
    """

    class Kind(models.TextChoices):
        REPLY = "reply", "Reply"
        REPLY_ALL = "reply_all", "Reply all"
        FORWARD = "forward", "Forward"
        NEW = "new", "New message"

    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    class SentCopy(models.TextChoices):
        NOT_NEEDED = "none", "Not needed"  # not sent yet, or the server files sent mail itself
        PENDING = "pending", "Not yet saved to Sent"
        SAVED = "saved", "Saved to Sent"

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="outgoing_messages")
    in_reply_to = models.ForeignKey(
        "mailsync.Message",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="outgoing_replies",
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.REPLY)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="outgoing_messages",
    )
    to = models.TextField(blank=True)
    cc = models.TextField(blank=True)
    bcc = models.TextField(blank=True)
    subject = models.TextField(blank=True)
    body_text = models.TextField(blank=True)

    state = models.CharField(max_length=10, choices=State.choices, default=State.DRAFT)
    # fixed once, when queued: a retry sends the very same bytes under the same id
    message_id = models.CharField(max_length=255, blank=True, db_index=True)
    envelope_from = models.CharField(max_length=320, blank=True)
    envelope_recipients = models.JSONField(default=list, blank=True)
    raw = models.ForeignKey(
        "mailsync.Blob",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="outgoing_messages",
    )
    attempts = models.PositiveIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    smtp_reply = models.TextField(blank=True)
    sent_folder = models.CharField(max_length=512, blank=True)
    sent_uid = models.BigIntegerField(null=True, blank=True)
    sent_copy_error = models.TextField(blank=True)
    sent_copy = models.CharField(
        max_length=8, choices=SentCopy.choices, default=SentCopy.NOT_NEEDED
    )
    sent_copy_attempts = models.PositiveIntegerField(default=0)
    # a lease, not a lock: a worker that died mid-APPEND leaves it to expire
    sent_copy_claimed_at = models.DateTimeField(null=True, blank=True)
    sent_copy_retry_at = models.DateTimeField(null=True, blank=True)  # backoff

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "queued_at"], name="outgoing_state_queued"),
            models.Index(fields=["sent_copy", "sent_copy_retry_at"], name="outgoing_sent_copy_due"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.subject[:60]!r} ({self.state})"

    @property
    def is_draft(self) -> bool:
        return self.state == self.State.DRAFT


class OutgoingAttachment(models.Model):
    """A file sent with an outgoing message: an upload, or a forwarded original's part."""

    outgoing = models.ForeignKey(
        OutgoingMessage, on_delete=models.CASCADE, related_name="attachments"
    )
    blob = models.ForeignKey(
        "mailsync.Blob", on_delete=models.PROTECT, related_name="outgoing_attachments"
    )
    source = models.ForeignKey(
        "mailsync.Attachment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="forwarded_as",
    )
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255)
    size = models.BigIntegerField()
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["outgoing", "position", "id"]

    def __str__(self) -> str:
        return self.filename


class Note(models.Model):
    """An internal note on a conversation: for the team only, never sent to the customer.

    A merge moves it to the surviving conversation (``mailsync.conversations`` moves every
    row with a foreign key to ``Conversation``)."""

    conversation = models.ForeignKey(
        "mailsync.Conversation", on_delete=models.CASCADE, related_name="notes"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"note {self.pk} on conversation {self.conversation_id}"
