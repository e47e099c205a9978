from __future__ import annotations

import logging
import os

from celery import Celery
from celery.app import trace
from celery.beat import PersistentScheduler, ScheduleEntry
from celery.signals import after_setup_logger
from kombu import Producer

from mailsync.outages import OK, log_state_change

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teaminbox.settings")

app = Celery("teaminbox")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

log = logging.getLogger("teaminbox.beat")


class WithoutRetryLines(logging.Filter):
    """Celery logs every retry of every task ("retry: Retry in 5s: ..."): hundreds of
    lines in an outage of the mail server. Our tasks log the first failure and the
    recovery instead (``mailsync.outages``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg is not trace.LOG_RETRY


logging.getLogger(trace.__name__).addFilter(WithoutRetryLines())


@after_setup_logger.connect
def print_each_line_once(**_kwargs: object) -> None:
    """In a worker or beat, our loggers' records reach Celery's root handler (with its
    time stamp and process); the console handler Django's LOGGING gives them would print
    every line a second time."""
    for name in ("mailsync", "teaminbox"):
        logging.getLogger(name).handlers.clear()


class BeatScheduler(PersistentScheduler):
    """Celery beat's scheduler with one line per broker outage and one when it is back,
    where Celery logs a traceback for every due task it cannot publish. A due task that
    could not be published is not sent late: the next due time sends it, and the
    sweepers it starts find whatever waited meanwhile."""

    def apply_entry(self, entry: ScheduleEntry, producer: Producer | None = None) -> None:
        log.debug("sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception as exc:  # a SchedulingError around kombu's or redis' own
            log_state_change(log, "beat: broker", "down", "beat cannot publish due tasks: %s", exc)
            return
        log_state_change(
            log, "beat: broker", OK, "beat publishes due tasks again", level=logging.INFO
        )
