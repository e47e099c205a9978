from __future__ import annotations

import logging
import os

from celery import Celery
from celery.app import trace
from celery.beat import PersistentScheduler, ScheduleEntry
from celery.signals import after_setup_logger
from kombu import Connection, Producer

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

    def _ensure_connected(self) -> Connection:
        # Celery's own (private, overridden on purpose): a tick waits here, retrying, for as
        # long as the broker is down, so apply_entry below is not reached in an outage; and
        # Celery logs every retry. One line, and the mailboxes told, instead.
        def broker_down(exc: Exception, interval: float) -> None:
            if log_state_change(
                log, "beat: broker", "down", "beat cannot publish due tasks: %s", exc
            ):
                _show_broker_outage(exc)

        connection: Connection = self.connection.ensure_connection(
            broker_down, self.app.conf.broker_connection_max_retries
        )
        return connection

    def apply_entry(self, entry: ScheduleEntry, producer: Producer | None = None) -> None:
        log.debug("sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception as exc:  # a SchedulingError around kombu's or redis' own
            if log_state_change(
                log, "beat: broker", "down", "beat cannot publish due tasks: %s", exc
            ):
                _show_broker_outage(exc)
            return
        if (
            log_state_change(
                log, "beat: broker", OK, "beat publishes due tasks again", level=logging.INFO
            )
            and "sync-all-mailboxes" in self.schedule
        ):
            # The mailboxes said that nothing runs: a sync of each says how they are now.
            self.apply_async(self.schedule["sync-all-mailboxes"], producer=producer, advance=False)


def _show_broker_outage(exc: Exception) -> None:
    # Imported here: this module is loaded before Django's apps are ready.
    from mailsync.tasks import show_broker_outage

    try:
        show_broker_outage(str(exc))
    except Exception as error:  # the database may be down too; the log line stands
        log.warning("beat could not mark the mailboxes: %s", error)
