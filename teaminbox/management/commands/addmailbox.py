from __future__ import annotations

import getpass
import os
import sys
from argparse import ArgumentParser
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from mailsync.engine.accounts import parse_account_url
from mailsync.engine.errors import ConfigurationError
from mailsync.models import Mailbox
from mailsync.runner import POP3_NOT_AVAILABLE
from teaminbox.services import set_membership


class Command(BaseCommand):
    help = (
        "Add (or update) a shared mailbox. URL: imap://, imaps:// or imap+starttls:// "
        "user[:password]@host[:port], percent-encoded (POP3 sync is not available yet). "
        "Without a password in the URL, MAILBOX_PASSWORD is used, else you are asked."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="short name, used in URLs (letters, digits, - and _)")
        parser.add_argument("--url", required=True)
        parser.add_argument("--folders", default="INBOX", help="comma-separated, default INBOX")
        parser.add_argument("--members", default="", help="comma-separated user names (agents)")
        parser.add_argument("--email", default="", help="the shared address staff reply from")
        parser.add_argument(
            "--delete-mode", choices=[c.value for c in Mailbox.DeleteMode], default=None
        )
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="allow a plaintext connection to a host other than loopback",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        url: str = options["url"]
        # Before asking for a password that could not be used.
        if _scheme(url).startswith("pop3"):
            raise CommandError(
                f"--url: {POP3_NOT_AVAILABLE}; use imap://, imaps:// or imap+starttls://"
            )
        try:
            account = parse_account_url(url, password=self._password_if_needed(url))
        except ConfigurationError as exc:
            raise CommandError(f"--url: {exc}") from exc
        if account.security == "plain" and not account.is_loopback and not options["insecure"]:
            raise CommandError(
                f"refusing a plaintext connection to {account.host}: the password would cross "
                "the network in clear. Use imaps:// or imap+starttls://, or pass "
                "--insecure."
            )
        folders = [f.strip() for f in options["folders"].split(",") if f.strip()] or ["INBOX"]
        usernames = [u.strip() for u in options["members"].split(",") if u.strip()]
        users = get_user_model().objects.filter(username__in=usernames)
        missing = sorted(set(usernames) - {u.get_username() for u in users})
        if missing:
            raise CommandError(f"no such user(s): {', '.join(missing)}")

        # The password is encrypted with the install's credentials key: the first command to
        # need the key files writes them, so this process and the server share one key.
        call_command("ensurekeys", stdout=self.stdout)
        with transaction.atomic():
            mailbox = Mailbox.objects.filter(name=name).first()
            created = mailbox is None
            if mailbox is None:
                mailbox = Mailbox(name=name)
            mailbox.protocol = account.protocol
            mailbox.security = account.security
            mailbox.host = account.host
            mailbox.port = account.port
            mailbox.username = account.username
            mailbox.folder_names = folders
            if options["email"]:
                mailbox.email_address = options["email"]
            elif not mailbox.email_address and "@" in account.username:
                mailbox.email_address = account.username
            if options["delete_mode"]:
                mailbox.delete_mode = options["delete_mode"]
            mailbox.set_password(account.password)
            try:
                mailbox.full_clean()
            except Exception as exc:
                raise CommandError(f"invalid mailbox: {exc}") from exc
            mailbox.save()
            for user in users:
                set_membership(user=user, mailbox=mailbox, role="agent", actor=None)
        verb = "added" if created else "updated"
        self.stdout.write(
            f"{verb} mailbox {mailbox.name}: {account.protocol} {account.host}:{account.port} "
            f"user {account.username}, folders {', '.join(folders)}"
        )

    def _password_if_needed(self, url: str) -> str | None:
        try:
            from urllib.parse import urlsplit

            if urlsplit(url).password is not None:
                return None
        except ValueError:
            return None
        from_env = os.environ.get("MAILBOX_PASSWORD")
        if from_env is not None:
            return from_env
        if not sys.stdin.isatty():
            raise CommandError(
                "no password: put it in the URL, set MAILBOX_PASSWORD, or run interactively"
            )
        return getpass.getpass("Mailbox password: ")


def _scheme(url: str) -> str:
    try:
        return urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return ""  # parse_account_url explains a malformed URL
