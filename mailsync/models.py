"""The mirror of the mail server.

One ``Message`` row per server copy, identified by (folder, UIDVALIDITY, UID) and never by
Message-ID or ``\\Seen``. The exact bytes the server returned for ``BODY.PEEK[]`` live in a
content-addressed ``Blob`` so identical copies (the same mail in INBOX and Archive, a
UIDVALIDITY reset) share one stored body.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from mailsync.crypto import decrypt_secret, encrypt_secret
from mailsync.engine.accounts import MailAccount
from mailsync.engine.flags import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN


class Mailbox(models.Model):
    class Protocol(models.TextChoices):
        IMAP = "imap", "IMAP"
        POP3 = "pop3", "POP3"

    class Security(models.TextChoices):
        TLS = "tls", "TLS"
        STARTTLS = "starttls", "STARTTLS"
        PLAIN = "plain", "None (loopback or trusted network only)"

    class DeleteMode(models.TextChoices):
        TRASH = "trash", "Move to Trash"
        FLAG = "flag", "Mark \\Deleted"

    class SyncStatus(models.TextChoices):
        NEW = "new", "Not synced yet"
        SYNCING = "syncing", "Syncing"
        OK = "ok", "In step"
        # in step, except for messages the server has not delivered yet (dead letters,
        # retried at every due sync): last_error says how many and why
        WARNING = "warning", "Messages not fetched yet"
        ERROR = "error", "Error"

    name = models.SlugField(max_length=100, unique=True, help_text="Short name used in URLs")
    email_address = models.EmailField(blank=True, help_text="The shared address staff reply from")
    display_name = models.CharField(
        max_length=120, blank=True, help_text='The name in From on replies, e.g. "Acme Support"'
    )
    protocol = models.CharField(max_length=8, choices=Protocol.choices, default=Protocol.IMAP)
    security = models.CharField(max_length=10, choices=Security.choices, default=Security.TLS)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    username = models.CharField(max_length=320)
    password_encrypted = models.TextField(blank=True, editable=False)
    folder_names = models.JSONField(default=list, blank=True, help_text="Folders to sync")
    delete_mode = models.CharField(
        max_length=8,
        choices=DeleteMode.choices,
        default=DeleteMode.TRASH,
        help_text="Move to Trash needs a SPECIAL-USE Trash folder; without one, \\Deleted is set.",
    )
    is_active = models.BooleanField(default=True)

    # Outgoing mail (replies from the app) goes through the mailbox's own submission server.
    smtp_host = models.CharField(max_length=255, blank=True)
    smtp_port = models.PositiveIntegerField(default=587)
    smtp_security = models.CharField(
        max_length=10, choices=Security.choices, default=Security.STARTTLS
    )
    smtp_username = models.CharField(
        max_length=320, blank=True, help_text="Empty: the IMAP user name"
    )
    smtp_password_encrypted = models.TextField(blank=True, editable=False)
    server_saves_sent = models.BooleanField(
        default=False,
        help_text="The server files sent mail itself (Gmail): do not APPEND to Sent.",
    )
    # the team's workflow (issue 12)
    auto_assign_on_reply = models.BooleanField(
        default=False,
        help_text="Assign an unassigned conversation to whoever replies to it first.",
    )
    mark_read_on_open = models.BooleanField(
        default=True,
        help_text="Opening a conversation as an agent marks its messages read on the server.",
    )

    sync_status = models.CharField(
        max_length=10, choices=SyncStatus.choices, default=SyncStatus.NEW
    )
    last_error = models.TextField(blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "mailboxes"

    def __str__(self) -> str:
        return self.name

    def set_password(self, password: str) -> None:
        self.password_encrypted = encrypt_secret(password)

    def get_password(self) -> str:
        return decrypt_secret(self.password_encrypted)

    def set_smtp_password(self, password: str) -> None:
        self.smtp_password_encrypted = encrypt_secret(password) if password else ""

    def smtp_account(self) -> MailAccount:
        """The submission account; user and password default to the IMAP ones."""
        return MailAccount(
            protocol="smtp",
            security=self.smtp_security,
            host=self.smtp_host or self.host,
            port=self.smtp_port,
            username=self.smtp_username or self.username,
            password=(
                decrypt_secret(self.smtp_password_encrypted)
                if self.smtp_password_encrypted
                else self.get_password()
            ),
        )

    def account(self) -> MailAccount:
        return MailAccount(
            protocol=self.protocol,
            security=self.security,
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.get_password(),
        )

    def chosen_folder_names(self) -> list[str]:
        return [str(name) for name in self.folder_names] or ["INBOX"]


class Folder(models.Model):
    """A server folder and its sync cursor.

    Cursor rule: every UID below ``uidnext_done`` (under ``uidvalidity``) is stored; it only
    advances after the batch holding those UIDs has committed, and never beyond the UIDNEXT
    snapshot taken at SELECT.
    """

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=512)
    special_use = models.CharField(max_length=32, blank=True)
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    uidnext_done = models.BigIntegerField(default=1)
    highestmodseq_done = models.BigIntegerField(null=True, blank=True)
    messages_on_server = models.IntegerField(null=True, blank=True)
    # progress of the running sync's fetch of new mail (for the UI)
    sync_fetched = models.IntegerField(default=0)
    sync_total = models.IntegerField(default=0)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["mailbox", "name"]
        constraints = [
            models.UniqueConstraint(fields=["mailbox", "name"], name="folder_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox.name}/{self.name}"


class Blob(models.Model):
    """Bytes stored once per sha256: raw messages and decoded attachments.

    Large blobs live in 1 MiB ``BlobChunk`` rows instead of ``data``: a single 60 MB bytea
    parameter costs the database driver several copies of it in memory (it is escaped into
    the query text), a 1 MiB chunk costs a few MiB.
    """

    INLINE_LIMIT = 8 * 1024 * 1024
    CHUNK_SIZE = 1024 * 1024

    sha256 = models.CharField(max_length=64, primary_key=True)
    data = models.BinaryField(blank=True)
    size = models.BigIntegerField()
    chunked = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]} ({self.size} bytes)"

    def iter_bytes(self) -> Iterator[bytes]:
        if not self.chunked:
            yield bytes(self.data)
            return
        for chunk in (
            self.chunks.order_by("seq").values_list("data", flat=True).iterator(chunk_size=4)
        ):
            yield bytes(chunk)

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())


class BlobChunk(models.Model):
    blob = models.ForeignKey(Blob, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["blob", "seq"], name="blobchunk_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.blob_id[:12]}#{self.seq}"


class Conversation(models.Model):
    """Messages that belong together (``mailsync.engine.threader`` says which), across the
    mailbox's mirrored folders.

    Identity survives merges: when a later message shows that two conversations are one,
    the one with the lower id (known longest: its URL, its assignee, its history) absorbs
    the other, which is kept with ``merged_into`` set so its old URL redirects
    (``mailsync.conversations.merge_conversations``).

    The team's state about a conversation follows a merge without mailsync importing
    teaminbox (ARCHITECTURE: ``mailsync`` never imports ``teaminbox``):

    * single values (assignee, status, snooze) are fields of this model, owned by mailsync,
      and the merge combines them (``conversations._combine_team_state``): the survivor
      keeps its assignee or takes one, and nothing someone still has to answer, or be
      reminded of, is closed or snoozed away;
    * rows about a conversation (notes, tags, history) point at it with a foreign key,
      from whichever app: the merge moves every row of every model with a foreign key to
      ``Conversation``, found through Django's model registry, not by import. A model whose
      rows are unique per conversation (a one-to-one) keeps the survivor's row.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        PENDING = "pending", "Pending"
        CLOSED = "closed", "Closed"

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="conversations")
    subject = models.TextField(blank=True)  # of its earliest message
    first_message_at = models.DateTimeField(null=True, blank=True)
    last_message_at = models.DateTimeField(null=True, blank=True)
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # the team's state (teaminbox.services.conversations writes it; a merge combines it)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    snoozed_until = models.DateTimeField(null=True, blank=True)  # snoozed while in the future

    # summaries of its live messages for the list, kept by ``conversations.refresh_summaries``
    message_count = models.IntegerField(default=0)
    unread_count = models.IntegerField(default=0)
    has_attachments = models.BooleanField(default=False)
    latest_message = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    latest_from_customer = models.BooleanField(default=False)
    latest_sender_name = models.TextField(blank=True)
    customer_name = models.TextField(blank=True)
    customer_address = models.TextField(blank=True)
    snippet = models.CharField(max_length=200, blank=True)
    # the oldest customer message after the team's last reply; null when the team replied last
    waiting_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # keyset pagination of the list: newest first, and longest waiting first
            models.Index(
                "mailbox", F("last_message_at").desc(), F("id").desc(), name="conversation_newest"
            ),
            models.Index(fields=["mailbox", "waiting_since", "id"], name="conversation_waiting"),
        ]

    def __str__(self) -> str:
        return self.subject or f"conversation {self.pk}"


class Message(models.Model):
    folder = models.ForeignKey(Folder, on_delete=models.CASCADE, related_name="messages")
    uidvalidity = models.BigIntegerField()
    uid = models.BigIntegerField()
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="messages")
    size = models.BigIntegerField()
    internaldate = models.DateTimeField(null=True, blank=True)
    modseq = models.BigIntegerField(null=True, blank=True)

    # flags as the app believes the server has them (see FlagChange for pending intent)
    seen = models.BooleanField(default=False)
    answered = models.BooleanField(default=False)
    flagged = models.BooleanField(default=False)
    deleted = models.BooleanField(default=False)
    draft = models.BooleanField(default=False)
    keywords = models.JSONField(default=list, blank=True)

    # parsed projection of the raw bytes (re-runnable)
    message_id = models.TextField(blank=True, db_index=True)
    in_reply_to = models.TextField(blank=True)
    references = models.JSONField(default=list, blank=True)
    subject = models.TextField(blank=True)
    from_name = models.TextField(blank=True)
    from_address = models.TextField(blank=True)
    to_display = models.TextField(blank=True)
    cc_display = models.TextField(blank=True)
    date = models.DateTimeField(null=True, blank=True)
    text_body = models.TextField(blank=True)
    html_body = models.TextField(blank=True)
    parse_notices = models.JSONField(default=list, blank=True)
    shown_raw = models.BooleanField(default=False)
    has_attachments = models.BooleanField(default=False)
    # None until bodies and attachments are extracted (list first, text later)
    extracted_at = models.DateTimeField(null=True, blank=True)

    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    # customer address and normalized subject, "" for mail from the mailbox itself: the
    # last-resort threading key (mailsync.engine.threader, rule 5)
    thread_topic = models.TextField(blank=True)
    # Delete in "trash" mode: where a pending MOVE takes it (hidden from its folder until
    # then), and where it came from (so undo can move it back).
    moving_to = models.ForeignKey(
        Folder, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    moved_from = models.ForeignKey(
        Folder, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expunged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["folder", "uidvalidity", "uid"], name="message_unique_location"
            ),
        ]
        indexes = [
            models.Index(
                fields=["folder", "-date"],
                condition=Q(expunged_at__isnull=True),
                name="message_live_by_date",
            ),
            models.Index(
                fields=["thread_topic"], condition=~Q(thread_topic=""), name="message_topic"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.folder} uid {self.uid}: {self.subject[:60]}"

    FLAG_FIELDS = {
        SEEN: "seen",
        ANSWERED: "answered",
        FLAGGED: "flagged",
        DELETED: "deleted",
        DRAFT: "draft",
    }

    def imap_flags(self) -> list[str]:
        """Sorted IMAP flags and keywords, as ``exportmailbox`` prints them."""
        system = [flag for flag, field in self.FLAG_FIELDS.items() if getattr(self, field)]
        return sorted([*system, *(str(k) for k in self.keywords)])

    def has_flag(self, flag: str) -> bool:
        field = self.FLAG_FIELDS.get(flag)
        if field is not None:
            return bool(getattr(self, field))
        return flag in self.keywords

    @property
    def sender_display(self) -> str:
        if self.from_name and self.from_address:
            return f"{self.from_name} <{self.from_address}>"
        return self.from_name or self.from_address


class ThreadReference(models.Model):
    """An id a message names in its thread headers (References, else In-Reply-To), so the
    message is found when the one it names arrives later: a first sync goes newest first
    and stores replies before their parents."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+", db_index=False)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="thread_references")
    reference = models.TextField()

    class Meta:
        indexes = [models.Index(fields=["mailbox", "reference"], name="threadreference_lookup")]

    def __str__(self) -> str:
        return f"{self.message_id} names {self.reference}"


class Attachment(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachments")
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="attachments")
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255)
    content_id = models.CharField(max_length=255, blank=True)
    inline = models.BooleanField(default=False)
    size = models.BigIntegerField()
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["message", "position"]

    def __str__(self) -> str:
        return self.filename


class FlagChange(models.Model):
    """The outbox: a staff flag change waiting to reach the server.

    It records the location the person acted on (UIDVALIDITY + UID) so a change is never
    applied to another message after a UIDVALIDITY reset.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        DONE = "done", "On the server"
        FAILED = "failed", "Failed"
        CONFLICT = "conflict", "Conflict"
        CANCELLED = "cancelled", "Cancelled"

    class Kind(models.TextChoices):
        FLAG = "flag", "Flag"
        MOVE = "move", "Move"
        EXPUNGE = "expunge", "Expunge"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="flag_changes")
    folder = models.ForeignKey(Folder, on_delete=models.CASCADE, related_name="flag_changes")
    uidvalidity = models.BigIntegerField()
    uid = models.BigIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.FLAG)
    flag = models.CharField(max_length=128, blank=True)
    add = models.BooleanField(default=True)
    target_folder = models.ForeignKey(
        Folder, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    # the modseq of the message as the person saw it (CONDSTORE UNCHANGEDSINCE)
    base_modseq = models.BigIntegerField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["folder", "state"], name="flagchange_folder_state")]
        verbose_name = "outbox flag change"
        verbose_name_plural = "outbox (flag changes)"

    def __str__(self) -> str:
        if self.kind == self.Kind.MOVE:
            what = f"move to {self.target_folder}"
        elif self.kind == self.Kind.EXPUNGE:
            what = "expunge"
        else:
            what = ("+" if self.add else "-") + self.flag
        return f"{what} on {self.folder} uid {self.uid} ({self.state})"


class Activity(models.Model):
    """Audit trail: who (or which server change) did what to which message, when.

    Written only by ``mailsync.changes.record`` (a verb from ``Verb``, the mailbox's change
    counter bumped in the same transaction); worded by ``mailsync/templatetags/history.py``.
    """

    class Source(models.TextChoices):
        APP = "app", "In the app"
        SERVER = "server", "Seen on the server"
        SYSTEM = "system", "System"

    class Verb(models.TextChoices):
        # a person in the app (teaminbox.services)
        FLAG_ADDED = "flag_added"
        FLAG_REMOVED = "flag_removed"
        DELETED = "deleted"
        RESTORED = "restored"
        PURGED = "purged"
        MEMBER_ADDED = "member_added"
        MEMBER_ROLE_CHANGED = "member_role_changed"
        MEMBER_REMOVED = "member_removed"
        REPLIED = "replied"
        REPLIED_TO_ALL = "replied_to_all"
        FORWARDED = "forwarded"
        SENT_NEW_MESSAGE = "sent_new_message"
        REPLY_RETRIED = "reply_retried"
        # the worker sending mail (teaminbox.delivery)
        REPLY_FAILED = "reply_failed"
        SENT_COPY_SAVED = "sent_copy_saved"
        SENT_COPY_FAILED = "sent_copy_failed"
        # the outbox pushing to the server (mailsync.outbox)
        MOVED = "moved"
        PUSH_FAILED = "push_failed"
        CONFLICT = "conflict"
        # seen on the server by a sync (mailsync.store, mailsync.runner)
        FLAGS_CHANGED = "flags_changed"
        EXPUNGED = "expunged"
        UIDVALIDITY_CHANGED = "uidvalidity_changed"
        SYNC_FAILED = "sync_failed"
        # threading (mailsync.conversations)
        CONVERSATIONS_MERGED = "conversations_merged"
        # the team's work on a conversation (teaminbox.services.conversations; mailsync.ingest
        # reopens one when the customer writes again)
        ASSIGNED = "assigned"
        UNASSIGNED = "unassigned"
        STATUS_CHANGED = "status_changed"
        SNOOZED = "snoozed"
        WOKE = "woke"
        NOTE_ADDED = "note_added"
        REOPENED = "reopened"

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="activities")
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="activities"
    )
    # history of the conversation itself (a merge; assignments to come): moved by a merge
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.CASCADE, related_name="activities"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    source = models.CharField(max_length=8, choices=Source.choices)
    verb = models.CharField(max_length=64, choices=Verb.choices)
    detail = models.JSONField(default=dict, blank=True)
    # the mailbox's change counter when it was recorded (``mailsync.changes``)
    change = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # the admin menu names it as the app does: the history
        verbose_name = "history entry"
        verbose_name_plural = "history"
        indexes = [models.Index(fields=["mailbox", "change"], name="activity_by_change")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.verb}"


class ChangeCounter(models.Model):
    """The mailbox's change counter: one row, bumped by ``UPDATE ... RETURNING`` inside
    every transaction that changes the mailbox (``mailsync.changes``, which says why the
    row lock makes commit order equal counter order)."""

    mailbox = models.OneToOneField(
        Mailbox, primary_key=True, on_delete=models.CASCADE, related_name="change_counter"
    )
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.mailbox_id}: {self.value}"


class Change(models.Model):
    """One bump of a mailbox's change counter: what a page holding an older number must
    look at again (``mailsync.changes.changes_since``). Written in the transaction that
    made the change, with the number it got."""

    class Kind(models.TextChoices):
        HISTORY = "history", "History recorded"
        NEW_MAIL = "new_mail", "New mail"
        TEXT_EXTRACTED = "text_extracted", "Text extracted"
        OUTGOING = "outgoing", "Outgoing mail sent"

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="+")
    number = models.BigIntegerField()
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message_ids = models.JSONField(default=list, blank=True)
    conversation_ids = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mailbox", "number"], name="change_unique_number"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox_id} #{self.number} {self.kind}"


class DeadLetter(models.Model):
    """A message the server has not delivered yet; recorded so it never blocks the folder.

    Never given up: asked for again at the first sync after ``next_attempt_at`` (a wait
    that doubles with each failure, up to hours) for as long as the server lists it, and
    deleted when it arrives or the server no longer lists it."""

    folder = models.ForeignKey(Folder, on_delete=models.CASCADE, related_name="dead_letters")
    uidvalidity = models.BigIntegerField()
    uid = models.BigIntegerField()
    reason = models.TextField()
    attempts = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["folder", "uidvalidity", "uid"], name="deadletter_unique_location"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.folder} uid {self.uid}: {self.reason[:60]}"


class WatcherLease(models.Model):
    """Which IDLE watcher process watches a mailbox, and how its connections are doing.

    Taken and renewed by conditional UPDATE (``mailsync.watcher``): a watcher that dies stops
    renewing, and another takes the mailbox over once ``expires_at`` has passed. The state
    columns are what the admin's sync health shows."""

    class State(models.TextChoices):
        STARTING = "starting", "starting"
        CONNECTED = "connected", "connected"
        BACKING_OFF = "backing_off", "backing off"
        NOT_SUPPORTED = "not_supported", "no IDLE (beat's sync only)"
        STOPPED = "stopped", "stopped"

    mailbox = models.OneToOneField(Mailbox, on_delete=models.CASCADE, related_name="watcher")
    owner = models.CharField(max_length=128)
    expires_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.STARTING)
    since = models.DateTimeField(default=timezone.now)
    # one line per watched folder: "INBOX: connected", "Sent: backing off (connection refused)"
    detail = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.mailbox_id} watched by {self.owner}: {self.state}"


class MessageSearch(models.Model):
    """A message's search document: its text normalised by ``mailsync.search_index``.

    Written with the headers at ingest and again, with body and attachment names, when the
    text is extracted. The full-text index over it is not a Django field: on PostgreSQL a
    generated ``document`` tsvector column with a GIN index, on SQLite an FTS5 table kept by
    triggers (migration 0011); the columns here also serve the field operators (from:...)."""

    message = models.OneToOneField(
        Message, on_delete=models.CASCADE, primary_key=True, related_name="search"
    )
    subject = models.TextField(blank=True)
    sender = models.TextField(blank=True)  # name and address
    recipients_to = models.TextField(blank=True)
    recipients_cc = models.TextField(blank=True)
    body = models.TextField(blank=True)
    filenames = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"search document of message {self.message_id}"
