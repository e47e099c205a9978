from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from mailsync.models import Folder, Mailbox, Message


class Command(BaseCommand):
    help = (
        "Print one JSON object per line for every message the server has in the chosen "
        "folders, as the app knows it: folder, uidvalidity, uid, flags, sha256, message_id, "
        "subject, size. A folder whose first sync has not finished yet is printed as far "
        "as it is stored, with a warning on stderr."
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
            uidvalidity = _stored_uidvalidity(folder)
            if uidvalidity is None:
                continue
            if not _first_sync_finished(folder):
                self.stderr.write(
                    f"exportmailbox: {mailbox.name}/{folder.name}: the first sync has not "
                    "finished; the messages stored so far are printed"
                )
            messages = (
                Message.objects.filter(
                    folder=folder, uidvalidity=uidvalidity, expunged_at__isnull=True
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


def _first_sync_finished(folder: Folder) -> bool:
    """The cursor says so: it gets its UIDVALIDITY, and a UIDNEXT past every stored UID,
    only when a full pass over the folder has ended (a renumbered folder starts again)."""
    if folder.uidvalidity is None:
        return False
    return folder.uidnext_done > 1 or not folder.messages.filter(expunged_at__isnull=True).exists()


def _stored_uidvalidity(folder: Folder) -> int | None:
    """The cursor's, or during a first sync the one its stored rows carry."""
    if folder.uidvalidity is not None:
        return folder.uidvalidity
    return (
        Message.objects.filter(folder=folder, expunged_at__isnull=True)
        .order_by("-uidvalidity")
        .values_list("uidvalidity", flat=True)
        .first()
    )
