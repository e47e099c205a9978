from __future__ import annotations

from django.contrib import admin

from teaminbox.models import Membership


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin[Membership]):
    list_display = ["user", "mailbox", "role", "created_at"]
    list_filter = ["mailbox", "role"]
    search_fields = ["user__username", "mailbox__name"]
    autocomplete_fields = ["user"]
