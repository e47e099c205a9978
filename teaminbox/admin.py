from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from teaminbox.models import Membership
from teaminbox.services.memberships import remove_membership, set_membership


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin[Membership]):
    list_display = ["user", "mailbox", "role", "created_at"]
    list_filter = ["mailbox", "role"]
    search_fields = ["user__username", "mailbox__name"]
    autocomplete_fields = ["user"]

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> list[str]:
        # A membership is one person on one mailbox: only the role changes. Another
        # person or mailbox is another membership.
        return ["user", "mailbox"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        # Through the service, so the mailbox's history says who gave whom which role.
        saved = set_membership(
            user=obj.user, mailbox=obj.mailbox, role=obj.role, actor=request.user
        )
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        remove_membership(membership=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        # one by one, so each removal is checked and in the history ("Delete selected")
        for membership in queryset.select_related("user"):
            remove_membership(membership=membership, actor=request.user)
