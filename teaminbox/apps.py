from __future__ import annotations

from django.apps import AppConfig


class TeaminboxConfig(AppConfig):
    name = "teaminbox"
    verbose_name = "Team inbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The conversation list names the colleague who sent a reply from the app; mailsync
        # keeps that summary but never imports teaminbox, so teaminbox tells it how to ask.
        from mailsync.conversations import author_lookups
        from teaminbox.services.conversations import app_authors

        if app_authors not in author_lookups:
            author_lookups.append(app_authors)
