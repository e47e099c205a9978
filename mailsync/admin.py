from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from mailsync.models import Activity, DeadLetter, FlagChange, Folder, Mailbox


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
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["folder_names"] = ", ".join(self.instance.chosen_folder_names())

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
        "last_error",
    ]
    list_filter = ["sync_status", "protocol", "is_active"]
    search_fields = ["name", "email_address", "host", "username"]
    readonly_fields = ["sync_status", "last_synced_at", "last_error"]
    inlines = [FolderInline]
    actions = ["sync_now"]

    @admin.action(description="Sync now")
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Mailbox]) -> None:
        from mailsync.tasks import sync_mailbox

        for mailbox in queryset:
            sync_mailbox.delay(mailbox.pk)
        self.message_user(
            request, f"Sync queued for {queryset.count()} mailbox(es).", messages.SUCCESS
        )


@admin.register(Folder)
class FolderAdmin(admin.ModelAdmin[Folder]):
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
class ActivityAdmin(admin.ModelAdmin[Activity]):
    list_display = ["created_at", "mailbox", "actor", "source", "describe", "message"]
    list_filter = ["mailbox", "source", "verb"]
    list_select_related = ["mailbox", "actor", "message"]
    raw_id_fields = ["message"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Activity | None = None) -> bool:
        return False


@admin.register(FlagChange)
class FlagChangeAdmin(admin.ModelAdmin[FlagChange]):
    list_display = ["created_at", "folder", "uid", "flag", "add", "state", "attempts", "last_error"]
    list_filter = ["state"]
    raw_id_fields = ["message"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin[DeadLetter]):
    list_display = ["created_at", "folder", "uidvalidity", "uid", "attempts", "reason"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
