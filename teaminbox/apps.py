from __future__ import annotations

from django.apps import AppConfig


class TeaminboxConfig(AppConfig):
    name = "teaminbox"
    verbose_name = "Team inbox"
    default_auto_field = "django.db.models.BigAutoField"
