from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand

from teaminbox import keys


class Command(BaseCommand):
    help = (
        "Write the key files this install lacks (VAR_DIR/secret_key, VAR_DIR/credentials_key, "
        "mode 600). Keys given by SECRET_KEY / CREDENTIALS_KEY are left alone; an existing "
        "key is never replaced."
    )
    # Runs before migrate (scripts/run) and needs no database.
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        var_dir = Path(settings.VAR_DIR)
        for path in keys.write_missing_keys(var_dir):
            self.stdout.write(f"Wrote {path}")
        # This process read its settings before the files existed; a caller in the same
        # process (addmailbox) encrypts with them from now on. A key it already had stays.
        secret = keys.read_secret_key(var_dir)
        credentials = keys.read_credentials_key(var_dir, secret)
        if not _has_secret_key():
            settings.SECRET_KEY = secret.value
            settings.SECRET_KEY_SOURCE = secret.source
        if not settings.CREDENTIALS_KEY:
            settings.CREDENTIALS_KEY = credentials.value
            settings.CREDENTIALS_KEY_SOURCE = credentials.source


def _has_secret_key() -> bool:
    try:
        return bool(settings.SECRET_KEY)
    except ImproperlyConfigured:  # Django refuses to hand out an empty SECRET_KEY
        return False
