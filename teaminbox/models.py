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
