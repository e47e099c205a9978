"""One sync per folder at a time, by a lease taken with a conditional UPDATE.

A plain ``UPDATE ... WHERE lease_expires_at IS NULL OR lease_expires_at < now`` is atomic
on SQLite and PostgreSQL alike (no ``SELECT FOR UPDATE``, which SQLite lacks), and a lease
that a crashed worker never released simply expires.

The lease is short (``SYNC_LEASE_SECONDS``, 20 s) and kept alive by a heartbeat: a daemon
thread renews it every sixth of that, whatever the sync is doing (a 60 MB message is one
batch and may take minutes), on its own database connection. So a folder whose worker died
(kill -9, a lost machine, a lost database connection) is free again within about 20 s.

If a renewal finds the lease gone (the heartbeat could not renew it in time, e.g. the
process was stopped or the database unreachable, and another worker took the expired
lease), this sync must stop writing at once: another worker is syncing the folder, and a
stale flag listing applied after its newer one would undo it. Every statement the holding
thread sends while it holds the lease therefore checks first that the lease is still known
to be ours (a flag set by the heartbeat, and the time since the last confirmed renewal);
if not, it raises ``LeaseLost`` before the statement runs and the sync unwinds. What was
already committed is safe: each step of a sync is idempotent and the cursor only advances
after the rows it covers are stored, so the new holder simply carries on from there.
``LeaseLost`` is a ``FolderBusy``: the mailbox sync lists the folder as busy (the mailbox
stays "syncing", never "ok"), a sync task asks again later, ``syncmailbox`` says another
sync holds it. The check runs before each statement, not at COMMIT: a statement started
while the lease was trusted may still commit, which is why trust ends at 80% of the lease
period (24 s of 30), before another worker can take it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.db.models import Q
from django.utils import timezone

from mailsync.models import Folder

log = logging.getLogger(__name__)

# The heartbeat renews this often per lease period: every 3.3 s for a 20 s lease.
BEATS_PER_LEASE = 6
# Without a confirmed renewal for this share of the lease period, the lease may be about to
# run out (the renewal itself can be seconds late): stop writing before it does.
TRUSTED_SHARE = 0.8


class FolderBusy(Exception):
    """Another worker holds this folder's lease."""


class LeaseLost(FolderBusy):
    """This worker's lease ran out or was taken over: the sync stops writing."""


def take_folder_lease(folder_id: int, *, seconds: int | None = None) -> str | None:
    token = secrets.token_hex(16)
    now = timezone.now()
    ttl = timedelta(seconds=seconds or settings.SYNC_LEASE_SECONDS)
    taken = (
        Folder.objects.filter(pk=folder_id)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(lease_owner=token, lease_expires_at=now + ttl)
    )
    return token if taken else None


def renew_folder_lease(
    folder_id: int, token: str, *, fetched: int = 0, total: int = 0, seconds: int | None = None
) -> bool:
    """Extend the lease (after each batch); the same UPDATE records the fetch progress."""
    ttl = timedelta(seconds=seconds or settings.SYNC_LEASE_SECONDS)
    return bool(
        Folder.objects.filter(pk=folder_id, lease_owner=token).update(
            lease_expires_at=timezone.now() + ttl, sync_fetched=fetched, sync_total=total
        )
    )


def extend_folder_lease(folder_id: int, token: str, *, seconds: int | None = None) -> bool:
    """The heartbeat's renewal: one small UPDATE of one row, so on SQLite it waits for
    the write lock only as long as the holder's current batch takes to commit."""
    ttl = timedelta(seconds=seconds or settings.SYNC_LEASE_SECONDS)
    return bool(
        Folder.objects.filter(pk=folder_id, lease_owner=token).update(
            lease_expires_at=timezone.now() + ttl
        )
    )


def release_folder_lease(folder_id: int, token: str) -> None:
    """Free the folder and clear the holder's progress (a no-op if the lease was lost)."""
    Folder.objects.filter(pk=folder_id, lease_owner=token).update(
        lease_owner="", lease_expires_at=None, sync_fetched=0, sync_total=0
    )


def abandoned_mailbox_ids() -> list[int]:
    """Mailboxes with a folder whose lease ran out while still owned: the worker syncing it
    died (kill -9, a lost machine, its database connection gone for good) unreleased."""
    return list(
        Folder.objects.exclude(lease_owner="")
        .filter(lease_expires_at__lt=timezone.now(), mailbox__is_active=True)
        .values_list("mailbox_id", flat=True)
        .distinct()
    )


class FolderLease:
    """A lease this worker holds, kept alive by a heartbeat thread while the sync runs."""

    def __init__(self, folder_id: int, token: str, *, seconds: int) -> None:
        self.folder_id = folder_id
        self.token = token
        self.seconds = seconds
        self._confirmed_at = time.monotonic()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def record_progress(self, fetched: int, total: int) -> None:
        """Renew with the fetch progress (after a batch); raises LeaseLost if it is gone."""
        if not renew_folder_lease(
            self.folder_id, self.token, fetched=fetched, total=total, seconds=self.seconds
        ):
            self._lose("its renewal found another holder")
        self._confirmed_at = time.monotonic()

    def ensure_held(self) -> None:
        if self._lost.is_set():
            raise LeaseLost(f"folder {self.folder_id}: the lease was lost to another worker")
        unconfirmed = time.monotonic() - self._confirmed_at
        if self._heartbeat is not None and unconfirmed > self.seconds * TRUSTED_SHARE:
            self._lose(f"not renewed for {unconfirmed:.0f} s")

    def guard(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        """A ``connection.execute_wrapper``: no statement runs once the lease is lost.
        Undoing the batch in progress does run (``ROLLBACK TO SAVEPOINT``, ``RELEASE``)."""
        if not sql.startswith(("ROLLBACK", "RELEASE")):
            self.ensure_held()
        return execute(sql, params, many, context)

    def _lose(self, why: str) -> None:
        self._lost.set()
        log.warning("folder %s: lease lost (%s); this sync stops", self.folder_id, why)
        raise LeaseLost(f"folder {self.folder_id}: the lease was lost ({why})")

    def start_heartbeat(self) -> None:
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"lease-heartbeat-{self.folder_id}", daemon=True
        )
        self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            # A renewal blocked on the database ends by itself: it is a daemon thread, and
            # a renewal after the release matches no row.
            self._heartbeat.join(timeout=self.seconds)
            self._heartbeat = None

    def _beat(self) -> None:
        interval = self.seconds / BEATS_PER_LEASE
        failing = False
        try:
            while not self._stop.wait(interval):
                try:
                    held = extend_folder_lease(self.folder_id, self.token, seconds=self.seconds)
                except DatabaseError as exc:
                    # The holder meets the same error on its next statement and reports it;
                    # here the broken connection is closed so the next beat reconnects.
                    if not failing:
                        log.debug("folder %s: lease heartbeat failed: %s", self.folder_id, exc)
                    failing = True
                    with contextlib.suppress(DatabaseError):
                        connection.close()
                    continue
                failing = False
                if not held:
                    if not self._stop.is_set():
                        self._lost.set()
                        log.warning("folder %s: lease taken over; this sync stops", self.folder_id)
                    return
                self._confirmed_at = time.monotonic()
        finally:
            connections.close_all()  # this thread's own connections


@contextmanager
def folder_lease(folder_id: int, *, wait: float = 0) -> Iterator[FolderLease]:
    """Hold the folder's lease; with ``wait``, poll for it that many seconds first.

    Inside a transaction (tests, mostly) the lease row is not committed: no other worker
    can take it until the transaction ends, and a heartbeat on its own connection would
    only wait for this transaction's lock. So there is no heartbeat and no guard then."""
    seconds = settings.SYNC_LEASE_SECONDS
    deadline = time.monotonic() + wait
    token = take_folder_lease(folder_id, seconds=seconds)
    while token is None and time.monotonic() < deadline:
        time.sleep(0.5)
        token = take_folder_lease(folder_id, seconds=seconds)
    if token is None:
        raise FolderBusy(f"folder {folder_id} is being synced by another worker")
    lease = FolderLease(folder_id, token, seconds=seconds)
    beating = not connection.in_atomic_block
    try:
        if beating:
            lease.start_heartbeat()
            with connection.execute_wrapper(lease.guard):
                yield lease
        else:
            yield lease
    finally:
        lease.stop_heartbeat()
        _release_quietly(folder_id, token)


def _release_quietly(folder_id: int, token: str) -> None:
    """Release even after the connection broke (PostgreSQL restarted, the backend was
    terminated). If that fails, the lease runs out by itself within
    ``SYNC_LEASE_SECONDS``; the error that ended the sync is the one reported, not this."""
    if not write_on_a_working_connection(lambda: release_folder_lease(folder_id, token)):
        log.debug("folder %s: lease not released; it expires", folder_id)


def write_on_a_working_connection(write: Callable[[], object]) -> bool:
    """Run ``write``; if the connection is broken, once more on a new one. False if that
    fails too (the database is down) or the caller's transaction is broken."""
    for _attempt in (1, 2):
        try:
            write()
            return True
        except DatabaseError:
            if connection.in_atomic_block:
                return False  # the caller's transaction rolls back; no new connection here
            with contextlib.suppress(DatabaseError):
                connection.close()
    return False
