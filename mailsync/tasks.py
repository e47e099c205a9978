"""Thin Celery tasks: take ids, call a runner function. Celery delivers at least once;
leases and conditional claims in the database make the work happen once."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from celery.app.task import Task
from django.core.cache import cache
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from mailsync import extract, outbox, runner
from mailsync.engine.errors import MailError
from mailsync.enqueue import FAIL_FAST, enqueue_on_commit, publish_now
from mailsync.leases import FolderBusy, abandoned_mailbox_ids
from mailsync.models import Folder, Mailbox
from mailsync.outages import OK, log_state_change

log = logging.getLogger(__name__)

RETRY_BACKOFF = [5, 15, 60, 300]


# How often a sync task that found its folder busy asks again (see _retry_when_free).
BUSY_RETRIES = 2


def _retry_on_a_new_connection(task: Task[Any, Any], exc: Exception) -> None:
    """A lost database connection is transient, as a server outage is: the task again,
    later. The broken connection is closed first (Django would otherwise hand the next
    task in this process the same dead socket). Anything else is raised as it is."""
    if not runner.lost_database_connection(exc):
        raise exc
    connection.close()
    log_state_change(
        log, _what(task), "no-database", "%s: lost the database connection; retrying", _what(task)
    )
    attempt = task.request.retries
    if attempt >= len(RETRY_BACKOFF):
        return
    raise task.retry(exc=exc, countdown=RETRY_BACKOFF[attempt], max_retries=len(RETRY_BACKOFF))


def _retry_when_free(task: Task[Any, Any], folders: QuerySet[Folder]) -> None:
    """Another worker holds a folder this task was to sync. It may be dead: a worker killed
    mid-sync has its task redelivered (CELERY_TASK_REJECT_ON_WORKER_LOST), and the copy
    finds the dead worker's lease. Ask again a second after the lease runs out unless its
    heartbeat renews it: a dead holder's folder is taken over then, about 30 s after the
    death, not at beat's next sync. A live holder renews it; after BUSY_RETRIES the task
    ends (the holder's sync covers it, and beat's sync comes within a minute)."""
    now = timezone.now()
    expiries = [e for e in folders.values_list("lease_expires_at", flat=True) if e is not None]
    if not expiries or task.request.retries >= BUSY_RETRIES:
        return
    countdown = max(1.0, (max(expiries) - now).total_seconds() + 1)
    raise task.retry(countdown=countdown, max_retries=BUSY_RETRIES)


def _what(task: Task[Any, Any]) -> str:
    return f"{task.name}({', '.join(map(str, task.request.args or ()))})"


def _retry_later(task: Task[Any, Any], exc: MailError) -> None:
    """Retry a transient failure with backoff, saying so once per outage (Celery's own
    line per retry is filtered out in ``teaminbox.celery``). After the last retry the
    task ends quietly: beat's sync or the outbox sweeper starts the work again."""
    if not exc.transient:
        log.warning("%s: %s (not retried)", task.name, exc)
        return
    log_state_change(
        log, _what(task), "failing", "%s: %s; retrying until it works", _what(task), exc
    )
    attempt = task.request.retries
    if attempt >= len(RETRY_BACKOFF):
        return
    raise task.retry(exc=exc, countdown=RETRY_BACKOFF[attempt], max_retries=len(RETRY_BACKOFF))


def _working_again(task: Task[Any, Any]) -> None:
    log_state_change(log, _what(task), OK, "%s: working again", _what(task), level=logging.INFO)


@shared_task(bind=True, name="mailsync.sync_mailbox", acks_late=True)
def sync_mailbox(self: Task[Any, Any], mailbox_id: int) -> None:
    _started(f"mailbox:{mailbox_id}")
    mailbox = Mailbox.objects.filter(pk=mailbox_id, is_active=True).first()
    if mailbox is None:
        return
    if mailbox.protocol != Mailbox.Protocol.IMAP:
        runner.record_not_synced(mailbox)
        return
    try:
        result = runner.sync_mailbox(mailbox, extract=False)
    except MailError as exc:
        enqueue_extraction(mailbox)  # what it stored before the error
        _retry_later(self, exc)
        return
    except Exception as exc:
        _retry_on_a_new_connection(self, exc)
        return
    _working_again(self)
    # Not the folders another worker is filling: that worker queues their rows.
    enqueue_extraction(mailbox, skip_folders=result.busy_folders)
    if result.busy_folders:
        _retry_when_free(self, mailbox.folders.filter(name__in=result.busy_folders))


@shared_task(bind=True, name="mailsync.sync_folder", acks_late=True)
def sync_folder(self: Task[Any, Any], folder_id: int) -> None:
    _started(f"folder:{folder_id}")
    try:
        runner.sync_folder_by_id(folder_id)
        enqueue_extraction(Folder.objects.get(pk=folder_id).mailbox, folder_id=folder_id)
        _working_again(self)
    except FolderBusy:
        log.info("folder %s is already being synced", folder_id)
        _retry_when_free(self, Folder.objects.filter(pk=folder_id))
    except Folder.DoesNotExist:
        return
    except MailError as exc:
        _retry_later(self, exc)
    except Exception as exc:
        _retry_on_a_new_connection(self, exc)


@shared_task(bind=True, name="mailsync.push_flag_changes", acks_late=True)
def push_flag_changes(self: Task[Any, Any], folder_id: int) -> None:
    """Not retried by Celery: the changes are back in the outbox, and the outbox sweeper
    enqueues their folder again within ``OUTBOX_SWEEP_SECONDS`` (retries on top of that
    only piled up tasks for the same folder during an outage)."""
    try:
        runner.push_folder_changes(folder_id)
    except Folder.DoesNotExist:
        return
    except MailError as exc:
        log_state_change(
            log, _what(self), "failing", "%s: %s; the outbox sweeper retries", _what(self), exc
        )
        # Staff changes wait on a server we cannot reach: the mailbox says so now, not at
        # beat's next sync (up to a minute later, or never while the outage lasts less).
        Mailbox.objects.filter(folders__pk=folder_id).update(
            sync_status=Mailbox.SyncStatus.ERROR, last_error=str(exc)[:2000]
        )
        return
    _working_again(self)
    # Reachable again: a sync finds out whether the mailbox is in step, and says so.
    failing = Mailbox.objects.filter(folders__pk=folder_id, sync_status=Mailbox.SyncStatus.ERROR)
    for mailbox_id in failing.values_list("pk", flat=True):
        start_mailbox_sync(mailbox_id)


@shared_task(name="mailsync.extract_messages", acks_late=True)
def extract_messages(message_ids: list[int]) -> None:
    extract.extract_messages(message_ids)


def enqueue_extraction(
    mailbox: Mailbox | None,
    *,
    folder_id: int | None = None,
    skip_folders: Sequence[str] = (),
    created_before: datetime | None = None,
) -> None:
    """A task per batch, so every worker process parses in parallel; newest first.

    A sync queues every row of its folders still waiting for its text, not only the rows it
    stored: a sync that was killed never queued its rows, and the next sync of the folder
    (a lease's length later at most) is when they should get it, not the sweeper's ten
    minutes. A row queued twice is parsed once as a rule: the later task finds it done
    (extract_messages takes only pending rows, and claims them before writing)."""
    pending = extract.pending_messages(mailbox, folder_id=folder_id)
    if skip_folders:
        pending = pending.exclude(folder__name__in=list(skip_folders))
    if created_before is not None:
        pending = pending.filter(created_at__lt=created_before)
    ids = list(extract.newest_first(pending).values_list("pk", flat=True))
    for chunk in extract.chunks(ids):
        extract_messages.delay(chunk)


@shared_task(name="mailsync.sweep_extraction")
def sweep_extraction() -> None:
    """Messages whose extraction task was lost (a worker crash, a broker outage)."""
    enqueue_extraction(None, created_before=timezone.now() - timedelta(minutes=10))


def show_broker_outage(reason: str) -> None:
    """Beat cannot publish, so no sync, push or sweep runs: every active mailbox says so
    within beat's shortest interval (5 s), not "ok" with an ever older time. Beat's sync
    of every mailbox once it publishes again puts each right."""
    Mailbox.objects.filter(is_active=True).update(
        sync_status=Mailbox.SyncStatus.ERROR,
        last_error=(
            f"background work is stopped: the task queue cannot be reached ({reason}); "
            "staff changes wait and are sent when it is back"
        )[:2000],
    )


@shared_task(name="mailsync.sync_all_mailboxes")
def sync_all_mailboxes() -> None:
    """Beat's safety net: push (IDLE, later) is the fast path, this catches the rest."""
    for mailbox in Mailbox.objects.filter(is_active=True):
        if mailbox.protocol == Mailbox.Protocol.IMAP:
            sync_mailbox.delay(mailbox.pk)
        else:
            runner.record_not_synced(mailbox)


@shared_task(name="mailsync.resume_abandoned_syncs")
def resume_abandoned_syncs() -> None:
    """A sync whose worker died is started again as soon as its lease has run out (within
    ``SYNC_LEASE_SECONDS`` of the death), not at beat's next safety-net sync: the dead
    worker's own task comes back only if its worker process survived it. Cheap enough to
    run every few seconds: one query on the folder table."""
    for mailbox_id in abandoned_mailbox_ids():
        sync_mailbox.delay(mailbox_id)


def start_mailbox_sync(mailbox_id: int) -> None:
    """Sync the mailbox once the caller's transaction commits (the worker must see the
    saved row). A broker that is down only delays it: beat's sync runs within a minute."""
    enqueue_on_commit(sync_mailbox, mailbox_id)


@shared_task(name="mailsync.sweep_flag_outbox")
def sweep_flag_outbox() -> None:
    """Re-enqueue what is still in the outbox: a lost task or a broker outage only delays
    a change, never loses it."""
    outbox.release_stale_claims()
    for folder_id in outbox.folders_with_pending_changes():
        push_flag_changes.delay(folder_id)


# While a sync is queued and not started, another request for it is dropped: the queued
# sync reads whatever changed before it starts. The mark expires, so a task lost with its
# worker or broker does not block the next request for long.
QUEUED_MARK_SECONDS = 60


def request_folder_sync(folder_id: int) -> bool:
    """The IDLE watcher's hint: sync this folder soon, unless a sync of it is already
    queued. One quick publish (``publish_now``): a broker outage does not block the
    caller. Returns whether a task was published."""
    return _publish_once(f"folder:{folder_id}", sync_folder, folder_id)


def request_mailbox_sync(mailbox_id: int) -> bool:
    """As ``request_folder_sync``, for a mailbox whose folders were never listed yet."""
    return _publish_once(f"mailbox:{mailbox_id}", sync_mailbox, mailbox_id)


def _publish_once(what: str, task: Task[Any, Any], item_id: int) -> bool:
    key = f"mailsync:sync-queued:{what}"
    try:
        if not cache.add(key, 1, QUEUED_MARK_SECONDS):
            return False
    except Exception as exc:  # the cache down (Redis): publish anyway, duplicates are harmless
        log.debug("sync dedup mark not set: %s", exc)
    if _publish_on_kept_connection(task, item_id) or publish_now(task, item_id):
        return True
    _started(what)
    return False


_kept = threading.local()


def _publish_on_kept_connection(task: Task[Any, Any], item_id: int) -> bool:
    """Publish on this thread's broker connection, kept between calls: a new connection
    per publish (``publish_now``) cost ≈20 ms of a hint's way to the worker, ≈2 ms on a kept
    one. Fails fast as publish_now does; on a failure the connection is dropped and the
    caller falls back to publish_now, which says that the broker is down."""
    if task.app.conf.task_always_eager:
        return False
    broker = getattr(_kept, "connection", None)
    try:
        if broker is None:
            broker = task.app.connection_for_write(transport_options=FAIL_FAST)
            _kept.connection, _kept.producer = broker, broker.Producer()
        task.apply_async((item_id,), producer=_kept.producer, retry=False)
    except Exception as exc:  # kombu wraps most broker failures, not all (OSError)
        log.debug("publish on the kept broker connection failed: %s", exc)
        with contextlib.suppress(Exception):
            if broker is not None:
                broker.release()
        _kept.connection = None
        return False
    return True


def _started(what: str) -> None:
    """A queued sync starts: later changes need a sync of their own."""
    try:
        cache.delete(f"mailsync:sync-queued:{what}")
    except Exception as exc:
        log.debug("sync dedup mark not cleared: %s", exc)
