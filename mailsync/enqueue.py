"""Enqueue a task for work whose database row is already committed, without waiting on
the broker.

A staff action writes its outbox row first; the task only makes it happen sooner, and a
sweeper enqueues whatever still waits (the flag outbox every ``OUTBOX_SWEEP_SECONDS``).
So when the broker is down the person must not wait out kombu's connection retries
(0.6 s per action with Redis refusing connections, more with a broker that does not
answer): one try on a connection of its own that gives up at once, and a log line per
outage.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.app.task import Task
from django.db import transaction

from mailsync.outages import OK, log_state_change

log = logging.getLogger(__name__)

# No connection retries, and a short connect timeout for a broker host that does not
# answer at all (kombu's Redis transport reads both from the transport options).
FAIL_FAST = {"max_retries": 0, "socket_connect_timeout": 0.5, "socket_timeout": 2.0}


def enqueue_on_commit(task: Task[Any, Any], *args: Any) -> None:
    """Publish once the caller's transaction commits (the worker must see the row)."""
    transaction.on_commit(lambda: publish_now(task, *args))


def publish_now(task: Task[Any, Any], *args: Any) -> bool:
    """One try; returns whether the broker took the task. A failure only delays the
    work: the caller's sweeper enqueues it again."""
    if task.app.conf.task_always_eager:
        task.apply_async(args)
        return True
    try:
        with task.app.connection_for_write(transport_options=FAIL_FAST) as connection:
            task.apply_async(args, producer=connection.Producer(), retry=False)
    except Exception as exc:  # kombu wraps most broker failures, not all (OSError)
        log_state_change(
            log,
            "broker",
            "down",
            "cannot reach the broker (%s); tasks wait in the database for the sweepers",
            exc,
        )
        return False
    log_state_change(log, "broker", OK, "the broker is reachable again", level=logging.INFO)
    return True
