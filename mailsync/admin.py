from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from mailsync.models import Activity, DeadLetter, FlagChange, Folder, Mailbox, WatcherLease
from mailsync.runner import POP3_MAILBOX_NOT_SYNCED, POP3_NOT_AVAILABLE, record_not_synced
from mailsync.tasks import start_mailbox_sync
from mailsync.templatetags.history import describe


class MailboxForm(forms.ModelForm[Mailbox]):
    password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; never shown again. Leave empty to keep the current one.",
    )

    folder_names = forms.CharField(
        required=False,
        initial="INBOX",
        help_text="Folders to sync, comma-separated (e.g. INBOX, Sent). Empty means INBOX.",
    )
    smtp_password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Only when the submission server wants another password than IMAP.",
    )

    class Meta:
        model = Mailbox
        fields = [
            "name",
            "display_name",
            "email_address",
            "protocol",
            "security",
            "host",
            "port",
            "username",
            "password",
            "folder_names",
            "delete_mode",
            "is_active",
            "smtp_host",
            "smtp_port",
            "smtp_security",
            "smtp_username",
            "smtp_password",
            "server_saves_sent",
            "auto_assign_on_reply",
            "mark_read_on_open",
        ]
        help_texts = {"protocol": "IMAP. (POP3 sync is not available yet.)"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["folder_names"] = ", ".join(self.instance.chosen_folder_names())

    def clean_protocol(self) -> str:
        protocol = str(self.cleaned_data.get("protocol") or "")
        if protocol != Mailbox.Protocol.IMAP:
            raise forms.ValidationError(f"{POP3_NOT_AVAILABLE}; choose IMAP.")
        return protocol

    def clean_folder_names(self) -> list[str]:
        raw = str(self.cleaned_data.get("folder_names") or "")
        names = [name.strip() for name in raw.split(",") if name.strip()]
        return names or ["INBOX"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not self.instance.password_encrypted and not cleaned.get("password"):
            self.add_error("password", "A new mailbox needs a password.")
        return cleaned

    def save(self, commit: bool = True) -> Mailbox:
        mailbox = super().save(commit=False)
        if self.cleaned_data.get("password"):
            mailbox.set_password(self.cleaned_data["password"])
        if self.cleaned_data.get("smtp_password"):
            mailbox.set_smtp_password(self.cleaned_data["smtp_password"])
        if commit:
            mailbox.save()
        return mailbox


class FolderInline(admin.TabularInline[Folder, Mailbox]):
    model = Folder
    extra = 0
    can_delete = False
    fields = ["name", "special_use", "uidvalidity", "uidnext_done", "last_synced_at", "last_error"]
    readonly_fields = [
        "name",
        "special_use",
        "uidvalidity",
        "uidnext_done",
        "last_synced_at",
        "last_error",
    ]


@admin.register(Mailbox)
class MailboxAdmin(admin.ModelAdmin[Mailbox]):
    form = MailboxForm
    list_display = [
        "name",
        "email_address",
        "protocol",
        "host",
        "sync_status",
        "last_synced_at",
        "problem",
        "watcher",
    ]
    list_select_related = ["watcher"]
    list_filter = ["sync_status", "protocol", "is_active"]
    search_fields = ["name", "email_address", "host", "username"]
    readonly_fields = ["sync_status", "last_synced_at", "last_error", "watcher_connections"]
    inlines = [FolderInline]
    actions = ["sync_now"]

    @admin.display(description="Problem")
    def problem(self, mailbox: Mailbox) -> str:
        """The whole sentence is on the change page; the list shortens it at a word."""
        if mailbox.protocol != Mailbox.Protocol.IMAP:
            return POP3_MAILBOX_NOT_SYNCED
        return Truncator(mailbox.last_error).words(24)

    @admin.display(description="IDLE watcher")
    def watcher(self, mailbox: Mailbox) -> str:
        return watcher_health(mailbox)

    @admin.display(description="IDLE watcher's connections")
    def watcher_connections(self, mailbox: Mailbox) -> SafeString:
        lease = _lease(mailbox)
        lines = lease.detail.splitlines() if lease is not None else []
        return format_html(
            "{}{}",
            watcher_health(mailbox),
            format_html_join("", "<br>{}", ((line,) for line in lines)),
        )

    def save_model(self, request: HttpRequest, obj: Mailbox, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # A new or corrected mailbox is synced now, so its status (or what is wrong with
        # it) shows in seconds rather than at beat's next round.
        if obj.is_active and obj.protocol == Mailbox.Protocol.IMAP:
            start_mailbox_sync(obj.pk)
            self.message_user(request, "Sync started; see the status column.", messages.INFO)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        mailbox = self.get_object(request, object_id)
        if request.method == "GET" and mailbox and mailbox.protocol != Mailbox.Protocol.IMAP:
            self.message_user(request, POP3_MAILBOX_NOT_SYNCED, messages.WARNING)
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Sync now")
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Mailbox]) -> None:
        started = 0
        for mailbox in queryset:
            if mailbox.protocol == Mailbox.Protocol.IMAP:
                start_mailbox_sync(mailbox.pk)
                started += 1
            else:
                record_not_synced(mailbox)
                self.message_user(
                    request, f"{mailbox.name}: {POP3_MAILBOX_NOT_SYNCED}", messages.WARNING
                )
        if started:
            self.message_user(
                request,
                f"Sync started for {started} mailbox(es); see the status column.",
                messages.SUCCESS,
            )


def _lease(mailbox: Mailbox) -> WatcherLease | None:
    try:
        return mailbox.watcher
    except WatcherLease.DoesNotExist:
        return None


def watcher_health(mailbox: Mailbox) -> str:
    """The watcher's connections in a few words: connected, or backing off (and why),
    since when; or that no watcher holds the mailbox (none runs, or its holder died)."""
    if mailbox.protocol != Mailbox.Protocol.IMAP or not mailbox.is_active:
        return "not watched"
    lease = _lease(mailbox)
    if lease is None:
        return "not watched: no watcher is running (manage.py watchmailboxes)"
    since = timezone.localtime(lease.since).strftime("%Y-%m-%d %H:%M:%S")
    if lease.state == WatcherLease.State.STOPPED:
        return f"not watched: its watcher stopped at {since}"
    if lease.expires_at < timezone.now():
        expired = timezone.localtime(lease.expires_at).strftime("%Y-%m-%d %H:%M:%S")
        return f"not watched: its watcher stopped answering at {expired}"
    text = f"{lease.get_state_display()} since {since}"
    if lease.state == WatcherLease.State.BACKING_OFF:
        problems = [line for line in lease.detail.splitlines() if "backing off" in line]
        text += ": " + Truncator("; ".join(problems)).words(24)
    return text


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    """Rows the sync and the team write: deleting one by hand loses something (history,
    a staff change still on its way to the server, a message still to be fetched)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(Folder)
class FolderAdmin(ReadOnlyAdmin):
    # Folders follow the mailbox's folder list; deleting one would drop its messages,
    # their history and pending changes, only for the next sync to fetch it all again.
    list_display = [
        "__str__",
        "special_use",
        "uidvalidity",
        "uidnext_done",
        "highestmodseq_done",
        "last_synced_at",
        "last_error",
    ]
    list_filter = ["mailbox"]
    readonly_fields = [
        "uidvalidity",
        "uidnext_done",
        "highestmodseq_done",
        "lease_owner",
        "lease_expires_at",
        "last_synced_at",
        "last_error",
    ]


@admin.register(Activity)
class ActivityAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "mailbox", "actor", "source", "what", "message"]
    list_filter = ["mailbox", "source", "verb"]
    list_select_related = ["mailbox", "actor", "message"]

    @admin.display(description="What happened")
    def what(self, activity: Activity) -> str:
        return describe(activity)


@admin.register(FlagChange)
class FlagChangeAdmin(ReadOnlyAdmin):
    """Staff changes on their way to the server. "Failed" (the server refused it) and
    "Conflict" (another client kept changing the message) are the ones that never got
    there; the message's history says so too."""

    list_display = [
        "created_at",
        "what",
        "folder",
        "uid",
        "subject",
        "actor",
        "state",
        "attempts",
        "problem",
    ]
    list_filter = ["state", "kind", "folder__mailbox"]
    list_select_related = ["folder__mailbox", "target_folder", "message", "actor"]
    search_fields = ["message__subject", "last_error"]

    @admin.display(description="Change")
    def what(self, change: FlagChange) -> str:
        if change.kind == FlagChange.Kind.MOVE:
            return f"move to {change.target_folder.name if change.target_folder else '?'}"
        if change.kind == FlagChange.Kind.EXPUNGE:
            return "purge"
        return ("+" if change.add else "-") + change.flag

    @admin.display(description="Message")
    def subject(self, change: FlagChange) -> str:
        return Truncator(change.message.subject).chars(60)

    @admin.display(description="Problem")
    def problem(self, change: FlagChange) -> str:
        return Truncator(change.last_error).words(24)


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    # A message the server has not delivered yet: asked for again (at "next attempt") for as
    # long as the server lists it; the mailbox shows "Messages not fetched yet" meanwhile.
    list_display = [
        "created_at",
        "folder",
        "uidvalidity",
        "uid",
        "attempts",
        "last_attempt_at",
        "next_attempt_at",
        "reason",
    ]
