"""Thin Celery tasks for outgoing mail. Celery delivers at least once; the conditional
claim in ``delivery.deliver`` makes a message go out once."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import shared_task
from celery.app.task import Task

from mailsync.engine.errors import MailError
from mailsync.outages import OK, log_state_change
from teaminbox import delivery
from teaminbox.services import conversations

log = logging.getLogger(__name__)

RETRY_BACKOFF = [10, 30, 120, 600, 1800]


@shared_task(bind=True, name="teaminbox.send_outgoing", acks_late=True)
def send_outgoing(self: Task[Any, Any], outgoing_id: int) -> None:
    what = f"{self.name}({outgoing_id})"
    try:
        delivery.deliver(outgoing_id)
    except MailError as exc:  # deliver raises only transient errors, after re-queueing
        # once per outage: Celery's own line per retry is filtered out (teaminbox.celery)
        log_state_change(log, what, "failing", "%s: %s; retrying until it works", what, exc)
        attempt = self.request.retries
        countdown = RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)]
        raise self.retry(exc=exc, countdown=countdown, max_retries=len(RETRY_BACKOFF)) from exc
    log_state_change(log, what, OK, "%s: working again", what, level=logging.INFO)


@shared_task(name="teaminbox.save_sent_copy", acks_late=True)
def save_sent_copy(outgoing_id: int) -> None:
    """Retry the copy in Sent of mail already sent; its backoff is kept on the row."""
    delivery.save_sent_copy(outgoing_id)


@shared_task(name="teaminbox.sweep_outgoing")
def sweep_outgoing() -> None:
    """For beat: re-enqueue queued mail whose task was lost; fail what a crash left in
    "sending" (perhaps delivered, so never re-sent by itself); retry copies of sent mail
    that the server does not have yet."""
    delivery.fail_stale_sending()
    for outgoing_id in delivery.queued_ids(older_than=timedelta(minutes=10)):
        send_outgoing.delay(outgoing_id)
    for outgoing_id in delivery.sent_copies_due():
        save_sent_copy.delay(outgoing_id)


@shared_task(name="teaminbox.wake_snoozed")
def wake_snoozed() -> int:
    """For beat, every minute: conversations whose snooze is due are open again."""
    return conversations.wake_snoozed()
