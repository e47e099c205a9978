from __future__ import annotations

import secrets
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from mailsync.models import Mailbox
from teaminbox.models import Membership
from teaminbox.services import set_membership


class Command(BaseCommand):
    help = (
        "Add a member of staff (a password is printed once) and give them a mailbox. "
        "For someone who exists already, only the mailbox and role change."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--mailbox", help="the mailbox's short name, e.g. support")
        parser.add_argument(
            "--role",
            choices=Membership.Role.values,
            default=Membership.Role.AGENT,
            help="viewer: reads only; agent: reads, flags, deletes and replies; "
            "admin: the mailbox admin (an agent, for now). Default: agent",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        mailbox = None
        if options["mailbox"]:
            mailbox = Mailbox.objects.filter(name=options["mailbox"]).first()
            if mailbox is None:
                names = ", ".join(Mailbox.objects.values_list("name", flat=True)) or "none yet"
                raise CommandError(f"no mailbox named {options['mailbox']!r} (mailboxes: {names})")
        users = get_user_model()
        password = None
        with transaction.atomic():
            user = users.objects.filter(username=username).first()
            if user is None:
                password = secrets.token_urlsafe(12)
                user = users.objects.create_user(username, options["email"], password)
            if mailbox is not None:
                set_membership(user=user, mailbox=mailbox, role=options["role"], actor=None)
        if password is not None:
            self.stdout.write(
                f"Created {username!r} with password {password} (shown once; they change it "
                f"with: python manage.py changepassword {username}, or an administrator does)"
            )
        else:
            self.stdout.write(f"{username!r} exists already; the password is unchanged")
        if mailbox is not None:
            self.stdout.write(f"{username} is {options['role']} on mailbox {mailbox.name}")
