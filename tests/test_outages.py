"""Broker and mail server outages: staff never wait for the broker, and the logs say once
that something is down and once that it is back, not once per retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module

import pytest
from kombu import pools

from mailsync.engine.flags import FLAGGED, SEEN
from mailsync.models import FlagChange, Message
from mailsync.outages import forget_states
from mailsync.runner import sync_mailbox
from mailsync.tasks import push_flag_changes, sync_folder
from teaminbox.celery import BeatScheduler, app
from teaminbox.services import set_flag
from tests.support.smtp import free_port
from tests.test_sync import make_mail

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_outage_states() -> Iterator[None]:
    forget_states()
    yield
    forget_states()


def forget_broker_connections() -> None:
    """The app's connection and producer pools were made for the broker URL of their time;
    Celery has no public way to drop them (it does so after a fork)."""
    pools.reset()  # kombu's registry of pools, by URL
    app._pool = None  # type: ignore[attr-defined]  # private: see the docstring
    app.amqp._producer_pool = None  # type: ignore[attr-defined]  # private: see the docstring


@dataclass
class Broker:
    monkeypatch: pytest.MonkeyPatch
    working_url: str

    def down(self) -> None:
        closed = f"redis://127.0.0.1:{free_port()}/0"
        # Celery reads the variable before its configuration
        self.monkeypatch.setenv("CELERY_BROKER_URL", closed)
        app.conf.update(broker_url=closed)
        forget_broker_connections()

    def up(self) -> None:
        self.monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
        app.conf.update(broker_url=self.working_url)
        forget_broker_connections()


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    controller = Broker(monkeypatch, app.conf.broker_url)
    yield controller
    controller.up()


def synced_message(mailbox, user) -> Message:
    uid = user.append(make_mail("Case"))
    sync_mailbox(mailbox)
    return Message.objects.get(folder__mailbox=mailbox, uid=uid)


def test_staff_actions_do_not_wait_for_a_broker_that_is_down(
    shared_mailbox, mail_user, bob, broker, caplog, django_capture_on_commit_callbacks
):
    message = synced_message(shared_mailbox, mail_user)
    import_module("kombu.transport.redis")  # loaded once per process, as a web process on Redis has
    broker.down()

    for flag in [FLAGGED, SEEN]:
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True) as enqueued:
            set_flag(message=message, flag=flag, on=True, actor=bob)
        assert time.monotonic() - started < 0.2
        assert len(enqueued) == 1  # it tried the broker

    assert FlagChange.objects.filter(state=FlagChange.State.PENDING).count() == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "cannot reach the broker" in warnings[0].getMessage()


def test_a_reply_sent_while_the_broker_is_down_does_not_wait_for_it(
    shared_mailbox, mail_user, bob, broker, django_capture_on_commit_callbacks
):
    from teaminbox.models import OutgoingMessage
    from teaminbox.services import outgoing as replies

    message = synced_message(shared_mailbox, mail_user)
    draft = replies.start_reply(message=message, kind="reply", actor=bob)
    import_module("kombu.transport.redis")
    broker.down()

    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True) as enqueued:
        replies.send_reply(draft=draft, actor=bob)
    assert time.monotonic() - started < 0.2
    assert len(enqueued) == 1  # it tried the broker
    draft.refresh_from_db()
    assert draft.state == OutgoingMessage.State.QUEUED  # the sweeper sends it later


def test_beat_says_once_that_the_broker_is_down_and_once_that_it_is_back(broker, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    scheduler = BeatScheduler(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    entry = scheduler.schedule["sweep-flag-outbox"]
    try:
        broker.down()
        for _ in range(3):
            scheduler.apply_entry(entry)
        broker.up()
        for _ in range(3):
            scheduler.apply_entry(entry)
    finally:
        scheduler.close()

    lines = [r for r in caplog.records if r.name == "teaminbox.beat" and r.levelno >= logging.INFO]
    assert [r.getMessage().split(":")[0] for r in lines] == [
        "beat cannot publish due tasks",
        "beat publishes due tasks again",
    ]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_worker_says_once_that_the_mail_server_is_down_and_once_that_it_is_back(
    shared_mailbox, mail_user, bob, caplog
):
    message = synced_message(shared_mailbox, mail_user)
    set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
    caplog.set_level(logging.INFO)
    dovecot_port = shared_mailbox.port
    shared_mailbox.port = free_port()
    shared_mailbox.save()

    for _ in range(3):  # the sweeper and beat start them again and again
        push_flag_changes.apply(args=(message.folder_id,))
        sync_folder.apply(args=(message.folder_id,))  # retried by Celery, with backoff
    shared_mailbox.port = dovecot_port
    shared_mailbox.save()
    push_flag_changes.apply(args=(message.folder_id,))
    sync_folder.apply(args=(message.folder_id,))

    assert FLAGGED in mail_user.flags()[message.uid]
    retries = [r for r in caplog.records if "retry" in r.getMessage().lower()]
    assert not [r for r in retries if r.name.startswith("celery")], "a line per retry"
    ours = [r.getMessage() for r in caplog.records if r.name == "mailsync.tasks"]
    assert len(ours) == 4, ours
    assert sorted(line.split(": ")[-1] for line in ours if line.endswith("working again")) == [
        "working again",
        "working again",
    ]
