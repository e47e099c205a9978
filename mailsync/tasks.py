"""Thin Celery tasks: take ids, call a runner function. Celery delivers at least once;
leases and conditional claims in the database make the work happen once."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from celery.app.task import Task
from django.db import transaction
from django.utils import timezone

from mailsync import extract, outbox, runner
from mailsync.engine.errors import MailError
from mailsync.leases import FolderBusy
from mailsync.models import Folder, Mailbox

log = logging.getLogger(__name__)

RETRY_BACKOFF = [5, 15, 60, 300]


def _retry_later(task: Task[Any, Any], exc: MailError) -> None:
    if not exc.transient:
        log.warning("%s: %s (not retried)", task.name, exc)
        return
    attempt = task.request.retries
    countdown = RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)]
    raise task.retry(exc=exc, countdown=countdown, max_retries=len(RETRY_BACKOFF))


@shared_task(bind=True, name="mailsync.sync_mailbox", acks_late=True)
def sync_mailbox(self: Task[Any, Any], mailbox_id: int) -> None:
    mailbox = Mailbox.objects.filter(pk=mailbox_id, is_active=True).first()
    if mailbox is None:
        return
    if mailbox.protocol != Mailbox.Protocol.IMAP:
        runner.record_not_synced(mailbox)
        return
    started = timezone.now()
    try:
        runner.sync_mailbox(mailbox, extract=False)
    except MailError as exc:
        _retry_later(self, exc)
    finally:
        enqueue_extraction(mailbox, created_since=started)


@shared_task(bind=True, name="mailsync.sync_folder", acks_late=True)
def sync_folder(self: Task[Any, Any], folder_id: int) -> None:
    started = timezone.now()
    try:
        runner.sync_folder_by_id(folder_id)
        enqueue_extraction(Folder.objects.get(pk=folder_id).mailbox, created_since=started)
    except FolderBusy:
        log.info("folder %s is already being synced", folder_id)
    except Folder.DoesNotExist:
        return
    except MailError as exc:
        _retry_later(self, exc)


@shared_task(bind=True, name="mailsync.push_flag_changes", acks_late=True)
def push_flag_changes(self: Task[Any, Any], folder_id: int) -> None:
    try:
        runner.push_folder_changes(folder_id)
    except Folder.DoesNotExist:
        return
    except MailError as exc:
        _retry_later(self, exc)


@shared_task(name="mailsync.extract_messages", acks_late=True)
def extract_messages(message_ids: list[int]) -> None:
    extract.extract_messages(message_ids)


def enqueue_extraction(
    mailbox: Mailbox | None,
    *,
    created_since: datetime | None = None,
    created_before: datetime | None = None,
) -> None:
    """A task per batch, so every worker process parses in parallel; newest first."""
    pending = extract.pending_messages(mailbox)
    if created_since is not None:
        pending = pending.filter(created_at__gte=created_since)
    if created_before is not None:
        pending = pending.filter(created_at__lt=created_before)
    ids = list(extract.newest_first(pending).values_list("pk", flat=True))
    for chunk in extract.chunks(ids):
        extract_messages.delay(chunk)


@shared_task(name="mailsync.sweep_extraction")
def sweep_extraction() -> None:
    """Messages whose extraction task was lost (a worker crash, a broker outage)."""
    enqueue_extraction(None, created_before=timezone.now() - timedelta(minutes=10))


@shared_task(name="mailsync.sync_all_mailboxes")
def sync_all_mailboxes() -> None:
    """Beat's safety net: push (IDLE, later) is the fast path, this catches the rest."""
    for mailbox in Mailbox.objects.filter(is_active=True):
        if mailbox.protocol == Mailbox.Protocol.IMAP:
            sync_mailbox.delay(mailbox.pk)
        else:
            runner.record_not_synced(mailbox)


def start_mailbox_sync(mailbox_id: int) -> None:
    """Sync the mailbox once the caller's transaction commits (the worker must see the
    saved row). A broker that is down only delays it: beat's sync runs within a minute."""

    def enqueue() -> None:
        try:
            sync_mailbox.delay(mailbox_id)
        except Exception:  # any broker failure: kombu raises its own and OSError
            log.warning("could not enqueue a sync of mailbox %s; beat's sync will", mailbox_id)

    transaction.on_commit(enqueue)


@shared_task(name="mailsync.sweep_flag_outbox")
def sweep_flag_outbox() -> None:
    """Re-enqueue what is still in the outbox: a lost task or a broker outage only delays
    a change, never loses it."""
    outbox.release_stale_claims()
    for folder_id in outbox.folders_with_pending_changes():
        push_flag_changes.delay(folder_id)
