from __future__ import annotations

import sys
import time
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from mailsync.engine.errors import MailError
from mailsync.engine.sync import SyncProgress
from mailsync.extract import extract_pending_in_parallel
from mailsync.models import Mailbox
from mailsync.runner import lost_database_connection, one_line, sync_mailbox

# --once: the mirror is in step except for messages the server has not delivered yet
# (each is asked for again at later syncs); a script must not take that for success.
NOT_FETCHED_EXIT = 3


class Command(BaseCommand):
    help = (
        "Sync a mailbox's chosen folders in the foreground (no worker needed). With --once, "
        f"the exit status is 0 when the app is in step, 1 on an error, {NOT_FETCHED_EXIT} "
        "when some messages could not be fetched yet (they are retried at later syncs)."
    )
    _not_fetched = ""

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name")
        parser.add_argument(
            "--once",
            action="store_true",
            help=(
                "sync once and exit when the app is in step (exit status 0), on an error (1), "
                f"or with messages not fetched yet ({NOT_FETCHED_EXIT})"
            ),
        )
        parser.add_argument("--interval", type=int, default=settings.SYNC_INTERVAL_SECONDS)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._run(options)
        except Exception as exc:
            if not lost_database_connection(exc):
                raise
            # The database went away (restarted, the connection terminated): one line,
            # not Django's traceback. The sync recorded what it could; rerun to go on.
            self._fail(f"lost the connection to the database: {one_line(exc)}")
            raise SystemExit(1) from None

    def _run(self, options: dict[str, Any]) -> None:
        mailbox = Mailbox.objects.filter(name=options["name"]).first()
        if mailbox is None:
            self._fail(f"no mailbox named {options['name']!r} (see: manage.py addmailbox)")
            raise SystemExit(1)
        if mailbox.protocol != Mailbox.Protocol.IMAP:
            self._fail(f"mailbox {mailbox.name!r} is {mailbox.protocol}; only IMAP syncs yet")
            raise SystemExit(1)
        while True:
            ok = self._sync_once(mailbox)
            if options["once"]:
                if not ok:
                    raise SystemExit(1)
                if self._not_fetched:
                    raise SystemExit(NOT_FETCHED_EXIT)
                return
            try:
                time.sleep(options["interval"])
            except KeyboardInterrupt:
                return

    def _sync_once(self, mailbox: Mailbox) -> bool:
        progress = _TerminalProgress(sys.stderr)
        try:
            # A worker may be syncing the same folder right now: wait for it rather than
            # return before the app is in step.
            result = sync_mailbox(
                mailbox,
                on_progress=progress,
                extract=False,
                # A crashed holder's lease runs out within this (its heartbeat stopped).
                wait_for_lease=settings.SYNC_LEASE_SECONDS + 1,
            )
        except MailError as exc:
            progress.finish()
            self._fail(f"{mailbox.name}: {exc}")
            return False
        except KeyboardInterrupt:
            progress.finish()
            raise SystemExit(130) from None
        progress.finish()
        # Text later, but before we return: --once exits only when everything is there.
        extracted = extract_pending_in_parallel(mailbox)
        if extracted:
            self.stdout.write(f"{mailbox.name}: extracted text of {extracted} messages")
        for report in result.reports:
            if report.skipped:
                self.stdout.write(f"{mailbox.name}/{report.folder}: no change")
                continue
            self.stdout.write(
                f"{mailbox.name}/{report.folder}: {report.new_messages} new, "
                f"{report.flag_updates} flag updates, {report.expunged} expunged"
                + (f", {report.dead_letters} not fetched yet" if report.dead_letters else "")
            )
        for name in result.busy_folders:
            self.stderr.write(f"{mailbox.name}/{name}: skipped, another sync holds it")
        if result.missing_folders:
            self._fail(f"{mailbox.name}: not on the server: {', '.join(result.missing_folders)}")
            return False
        self._not_fetched = result.not_fetched
        if result.not_fetched:
            self._fail(f"{mailbox.name}: {result.not_fetched}")
        return True

    def _fail(self, message: str) -> None:
        self.stderr.write(f"syncmailbox: {message}")


class _TerminalProgress:
    """A one-line progress counter, only when stderr is a terminal."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._active = bool(getattr(stream, "isatty", lambda: False)())
        self._drawn = False

    def __call__(self, progress: SyncProgress) -> None:
        if not self._active:
            return
        self._stream.write(f"\r{progress.folder}: {progress.fetched}/{progress.total} messages")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
