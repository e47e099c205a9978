from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from mailsync.models import Mailbox, Message


class Command(BaseCommand):
    help = (
        "Print one JSON object per line for every message the server has in the chosen "
        "folders, as the app knows it: folder, uidvalidity, uid, flags, sha256, message_id, "
        "subject, size."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        mailbox = Mailbox.objects.filter(name=options["name"]).first()
        if mailbox is None:
            self.stderr.write(f"exportmailbox: no mailbox named {options['name']!r}")
            raise SystemExit(1)
        for folder in mailbox.folders.filter(name__in=mailbox.chosen_folder_names()).order_by(
            "name"
        ):
            if folder.uidvalidity is None:
                continue
            messages = (
                Message.objects.filter(
                    folder=folder, uidvalidity=folder.uidvalidity, expunged_at__isnull=True
                )
                .order_by("uid")
                .only(
                    "uid",
                    "uidvalidity",
                    "blob_id",
                    "message_id",
                    "subject",
                    "size",
                    "seen",
                    "answered",
                    "flagged",
                    "deleted",
                    "draft",
                    "keywords",
                )
            )
            for message in messages.iterator(chunk_size=1000):
                record = {
                    "folder": folder.name,
                    "uidvalidity": message.uidvalidity,
                    "uid": message.uid,
                    "flags": message.imap_flags(),
                    "sha256": message.blob_id,
                    "message_id": message.message_id,
                    "subject": message.subject,
                    "size": message.size,
                }
                self.stdout.write(json.dumps(record, ensure_ascii=False))
