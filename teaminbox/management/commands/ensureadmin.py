from __future__ import annotations

import secrets
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a first administrator when there is none, and print its password once."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "An administrator exists. Forgot the password? "
                "python manage.py changepassword <name>"
            )
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser(options["username"], "", password)
        self.stdout.write(
            f"Created administrator {options['username']!r} with password {password} "
            "(shown once; change it with: python manage.py changepassword "
            f"{options['username']})"
        )
