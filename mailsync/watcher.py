"""The IDLE watcher: a long-running process (``manage.py watchmailboxes``) that keeps IDLE
on the important folders of every active IMAP mailbox and turns whatever the server says
into a sync of that folder (``mailsync.tasks.request_folder_sync``).

Not a Celery task: IDLE holds a connection for hours, which would take a worker slot for
good. One thread per connection (``engine.imap.watch.FolderWatch``), at most
``WATCHER_CONNECTIONS_PER_MAILBOX`` per mailbox: INBOX, then the next chosen folders; the
rest are left to beat's periodic sync.

Several watchers may run: each mailbox is watched by exactly one, the holder of its
``WatcherLease`` row. Every ``WATCHER_POLL_SECONDS`` a watcher renews its leases, takes the
leases of mailboxes nobody holds (or whose holder stopped renewing for
``WATCHER_LEASE_SECONDS``: it died), and reads the mailbox table, so a mailbox added,
changed, deactivated or removed is followed within seconds. Leases are taken with
conditional UPDATE/INSERT, as folder leases are (``mailsync.leases``), so this holds on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from mailsync import tasks
from mailsync.crypto import CredentialError
from mailsync.engine.accounts import MailAccount
from mailsync.engine.imap import ImapSession
from mailsync.engine.imap.watch import (
    BACKING_OFF,
    CONNECTED,
    CONNECTING,
    NOT_SUPPORTED,
    FolderWatch,
    WatchTiming,
)
from mailsync.models import Folder, Mailbox, WatcherLease
from mailsync.outages import OK, log_state_change

log = logging.getLogger(__name__)

State = WatcherLease.State
_STATES = {
    CONNECTING: State.STARTING,
    CONNECTED: State.CONNECTED,
    BACKING_OFF: State.BACKING_OFF,
    NOT_SUPPORTED: State.NOT_SUPPORTED,
}


def watched_folders(mailbox: Mailbox, limit: int) -> list[str]:
    """INBOX first when it is chosen, then the other chosen folders, up to ``limit``."""
    names = mailbox.chosen_folder_names()
    ordered = sorted(names, key=lambda name: name.upper() != "INBOX")
    return ordered[:limit]


def timing_from_settings() -> WatchTiming:
    return WatchTiming(
        renew_seconds=settings.WATCHER_IDLE_RENEW_SECONDS,
        answer_seconds=settings.WATCHER_ANSWER_SECONDS,
        backoff_max_seconds=settings.WATCHER_BACKOFF_MAX_SECONDS,
    )


def hint(mailbox_id: int, folder_name: str) -> None:
    """The server said something about this folder: sync it (or, before its first sync
    listed the folders, the whole mailbox)."""
    folder_id = (
        Folder.objects.filter(mailbox_id=mailbox_id, name=folder_name)
        .values_list("pk", flat=True)
        .first()
    )
    if folder_id is None:
        tasks.request_mailbox_sync(mailbox_id)
    else:
        tasks.request_folder_sync(folder_id)


@dataclass
class _Connection:
    state: str = State.STARTING
    detail: str = ""


@dataclass
class MailboxWatch:
    """The watch threads of one mailbox, and the states they report."""

    mailbox_id: int
    name: str
    config: tuple[object, ...]
    stop: threading.Event = field(default_factory=threading.Event)
    connections: dict[str, _Connection] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, account: MailAccount, folders: Iterable[str], timing: WatchTiming) -> None:
        for folder in folders:
            self.connections[folder] = _Connection()
            watch = FolderWatch(
                connect=lambda: ImapSession.connect(
                    account,
                    timeout=settings.IMAP_TIMEOUT_SECONDS,
                    ignore_capabilities=settings.IMAP_IGNORE_CAPABILITIES,
                ),
                folder=folder,
                on_hint=lambda name: hint(self.mailbox_id, name),
                on_state=partial(self._record, folder),
                stop=self.stop,
                timing=timing,
            )
            threading.Thread(
                target=_run_closing_db,
                args=(watch,),
                name=f"watch {self.name}/{folder}",
                daemon=True,
            ).start()

    def summary(self) -> tuple[str, str]:
        """(the mailbox's state: the worst of its connections', one line per folder)."""
        with self.lock:
            items = list(self.connections.items())
        states = {conn.state for _, conn in items}
        for worst in (State.BACKING_OFF, State.STARTING, State.NOT_SUPPORTED, State.CONNECTED):
            if worst in states:
                state = worst
                break
        else:
            state = State.STARTING
        lines = [
            f"{folder}: {State(conn.state).label}" + (f" ({conn.detail})" if conn.detail else "")
            for folder, conn in items
        ]
        return state, "\n".join(lines)

    def _record(self, folder: str, state: str, detail: str) -> None:
        with self.lock:
            self.connections[folder] = _Connection(_STATES.get(state, State.STARTING), detail)
        what = f"watcher {self.name}/{folder}"
        if state == CONNECTED:
            log_state_change(log, what, OK, "%s: IDLE", what, level=logging.INFO)
        elif state == BACKING_OFF:
            log_state_change(log, what, state, "%s: backing off: %s", what, detail)
        elif state == NOT_SUPPORTED:
            log_state_change(log, what, state, "%s: %s; left to beat's sync", what, detail)


def _run_closing_db(watch: FolderWatch) -> None:
    try:
        watch.run()
    finally:
        connection.close()  # this thread's own database connection


class Watcher:
    """One watcher process: its leases and its mailboxes' watch threads."""

    def __init__(self, *, owner: str | None = None) -> None:
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.watches: dict[int, MailboxWatch] = {}
        self._written: dict[int, tuple[str, str]] = {}
        self._since: dict[int, tuple[str, datetime]] = {}

    def run(self, stop: threading.Event) -> None:
        log.info("watcher %s started", self.owner)
        try:
            while not stop.is_set():
                try:
                    self.step()
                    log_state_change(
                        log, "watcher database", OK, "watcher: database reachable again",
                        level=logging.INFO,
                    )  # fmt: skip
                except Exception as exc:
                    # the database restarting: go on with the connections we have, and
                    # ask again at the next step on a new database connection
                    connection.close()
                    log_state_change(
                        log, "watcher database", "down", "watcher: cannot read the database: %s",
                        exc,
                    )  # fmt: skip
                stop.wait(settings.WATCHER_POLL_SECONDS)
        finally:
            self.shutdown()

    def step(self) -> None:
        now = timezone.now()
        held = self._renew(now)
        mailboxes = {
            mailbox.pk: mailbox
            for mailbox in Mailbox.objects.filter(is_active=True, protocol=Mailbox.Protocol.IMAP)
        }
        for mailbox_id in list(self.watches):
            if mailbox_id not in mailboxes or mailbox_id not in held:
                self._stop_watch(mailbox_id, release=mailbox_id in held)
        for mailbox_id in set(held) - set(mailboxes):  # deactivated while not watched here
            self._release(mailbox_id)
        for mailbox in mailboxes.values():
            if mailbox.pk not in held and not self._take(mailbox.pk, now):
                continue
            self._follow(mailbox)
        self._write_states()

    def shutdown(self) -> None:
        """Stop every thread and let go of the leases at once, so another watcher need
        not wait for them to run out."""
        for mailbox_id in list(self.watches):
            self._stop_watch(mailbox_id, release=False)
        try:
            WatcherLease.objects.filter(owner=self.owner).update(
                expires_at=timezone.now() - timedelta(seconds=1),
                state=State.STOPPED,
                since=timezone.now(),
                detail="",
            )
        except DatabaseError as exc:  # the leases run out by themselves
            log.warning("watcher %s: leases not released (%s)", self.owner, exc)
        log.info("watcher %s stopped", self.owner)

    # -- leases ----------------------------------------------------------------------

    def _renew(self, now: datetime) -> set[int]:
        """Renew every lease still ours; the mailboxes we hold. A lease another watcher
        took (ours ran out while this process was stopped) is not ours any more."""
        until = now + timedelta(seconds=settings.WATCHER_LEASE_SECONDS)
        mine = WatcherLease.objects.filter(owner=self.owner)
        mine.update(expires_at=until)
        return set(mine.values_list("mailbox_id", flat=True))

    def _take(self, mailbox_id: int, now: datetime) -> bool:
        until = now + timedelta(seconds=settings.WATCHER_LEASE_SECONDS)
        fresh = {"owner": self.owner, "expires_at": until, "state": State.STARTING, "since": now}
        taken = (
            WatcherLease.objects.filter(mailbox_id=mailbox_id)
            .filter(Q(expires_at__lt=now) | Q(owner=self.owner))
            .update(detail="", **fresh)
        )
        if taken:
            return True
        if WatcherLease.objects.filter(mailbox_id=mailbox_id).exists():
            return False  # another watcher's, alive
        try:
            with transaction.atomic():
                WatcherLease.objects.create(mailbox_id=mailbox_id, **fresh)
        except IntegrityError:
            return False  # another watcher created it first
        return True

    def _release(self, mailbox_id: int) -> None:
        WatcherLease.objects.filter(mailbox_id=mailbox_id, owner=self.owner).delete()

    # -- threads ---------------------------------------------------------------------

    def _follow(self, mailbox: Mailbox) -> None:
        """Start watching a mailbox, or start again when its account or folders changed."""
        limit = settings.WATCHER_CONNECTIONS_PER_MAILBOX
        folders = watched_folders(mailbox, limit)
        config = (
            mailbox.host,
            mailbox.port,
            mailbox.security,
            mailbox.username,
            mailbox.password_encrypted,
            tuple(folders),
        )
        current = self.watches.get(mailbox.pk)
        if current is not None and current.config == config:
            return
        if current is not None:
            log.info("watcher %s: the mailbox changed; connecting again", mailbox.name)
            self._stop_watch(mailbox.pk, release=False)
        try:
            account = mailbox.account()
        except CredentialError as exc:
            log_state_change(log, f"watcher {mailbox.name}", "credentials", "%s", exc)
            return
        watch = MailboxWatch(mailbox_id=mailbox.pk, name=mailbox.name, config=config)
        self.watches[mailbox.pk] = watch
        watch.start(account, folders, timing_from_settings())

    def _stop_watch(self, mailbox_id: int, *, release: bool) -> None:
        watch = self.watches.pop(mailbox_id, None)
        if watch is not None:
            # threads end at their next look at the flag (a second in IDLE); not joined:
            # one stuck in a connect must not hold up the others
            watch.stop.set()
        self._written.pop(mailbox_id, None)
        if release:
            self._release(mailbox_id)

    def _write_states(self) -> None:
        now = timezone.now()
        for mailbox_id, watch in self.watches.items():
            state, detail = watch.summary()
            if self._written.get(mailbox_id) == (state, detail):
                continue
            previous = self._since.get(mailbox_id)
            since = previous[1] if previous is not None and previous[0] == state else now
            self._since[mailbox_id] = (state, since)
            WatcherLease.objects.filter(mailbox_id=mailbox_id, owner=self.owner).update(
                state=state, detail=detail, since=since
            )
            self._written[mailbox_id] = (state, detail)
