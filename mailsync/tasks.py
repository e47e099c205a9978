"""Thin Celery tasks: take ids, call a runner function. Celery delivers at least once;
leases and conditional claims in the database make the work happen once."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.app.task import Task

from mailsync import outbox, runner
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
    if mailbox is None or mailbox.protocol != Mailbox.Protocol.IMAP:
        return
    try:
        runner.sync_mailbox(mailbox)
    except MailError as exc:
        _retry_later(self, exc)


@shared_task(bind=True, name="mailsync.sync_folder", acks_late=True)
def sync_folder(self: Task[Any, Any], folder_id: int) -> None:
    try:
        runner.sync_folder_by_id(folder_id)
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


@shared_task(name="mailsync.sync_all_mailboxes")
def sync_all_mailboxes() -> None:
    """Beat's safety net: push (IDLE, later) is the fast path, this catches the rest."""
    for mailbox_id in Mailbox.objects.filter(
        is_active=True, protocol=Mailbox.Protocol.IMAP
    ).values_list("pk", flat=True):
        sync_mailbox.delay(mailbox_id)


@shared_task(name="mailsync.sweep_flag_outbox")
def sweep_flag_outbox() -> None:
    """Re-enqueue what is still in the outbox: a lost task or a broker outage only delays
    a change, never loses it."""
    outbox.release_stale_claims()
    for folder_id in outbox.folders_with_pending_changes():
        push_flag_changes.delay(folder_id)
