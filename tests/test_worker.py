"""A real Celery worker process on Redis, against the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.conf import settings

from mailsync.engine.flags import FLAGGED
from mailsync.models import FlagChange, Message
from mailsync.runner import sync_mailbox
from teaminbox.services import set_flag
from tests.support.ci import unavailable
from tests.support.paths import PROJECT_ROOT
from tests.support.personas import child_database_url
from tests.support.rawlog import stores_per_uid
from tests.test_sync import make_mail

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def empty_broker():
    if not settings.REDIS_URL:
        unavailable("REDIS_URL is not set: the worker tests need Redis as their broker")
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # no tasks left from earlier runs


@pytest.fixture
def worker(empty_broker):
    env = {**os.environ, "DATABASE_URL": child_database_url()}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "teaminbox",
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    process.terminate()
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    if "Traceback" in output:
        print(output)


def wait_for(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_it_pushes_a_flag_change_through_a_real_worker(worker, shared_mailbox, mail_user, bob):
    uid = mail_user.append(make_mail("Worker please flag me"))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(uid=uid)

    change = set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
    assert change is not None

    wait_for(lambda: "\\Flagged" in mail_user.flags()[uid], timeout=60, what="\\Flagged on Dovecot")
    assert worker.poll() is None, "the worker died"
    change.refresh_from_db()
    wait_for(
        lambda: FlagChange.objects.get(pk=change.pk).state == FlagChange.State.DONE,
        timeout=10,
        what="the outbox row to be marked done",
    )


def test_changes_made_while_no_worker_ran_all_arrive_once_when_it_starts(
    empty_broker, recorded_user, make_mailbox, bob, request
):
    mailbox = make_mailbox(recorded_user, name="recorded", agents=(bob,))
    recorded_user.deliver_bulk(make_mail(f"Queued {n}") for n in range(100))
    sync_mailbox(mailbox)
    messages = list(Message.objects.filter(folder__mailbox=mailbox))
    for message in messages:  # each commits and enqueues its push; no worker is running
        set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
    assert FlagChange.objects.filter(state=FlagChange.State.PENDING).count() == 100

    request.getfixturevalue("worker")  # the worker comes back

    wait_for(
        lambda: not FlagChange.objects.exclude(state=FlagChange.State.DONE).exists(),
        timeout=60,
        what="every outbox row to be done",
    )
    assert all("\\Flagged" in flags for flags in recorded_user.flags().values())
    stored = stores_per_uid(recorded_user.rawlog_commands(), "\\Flagged")
    assert sorted(stored) == sorted(m.uid for m in messages)
    assert set(stored.values()) == {1}, "some UID was stored more than once"


def test_a_worker_lists_new_mail_then_extracts_it_in_tasks(worker, shared_mailbox, mail_user):
    from mailsync.tasks import sync_mailbox as sync_mailbox_task

    mail_user.deliver_bulk(make_mail(f"Via worker {n}", body=f"text {n}") for n in range(120))

    sync_mailbox_task.delay(shared_mailbox.pk)

    wait_for(
        lambda: Message.objects.filter(extracted_at__isnull=False).count() == 120,
        timeout=90,
        what="120 messages listed and extracted by the worker",
    )
    assert Message.objects.get(subject="Via worker 42").text_body.strip() == "text 42"
    shared_mailbox.refresh_from_db()
    assert shared_mailbox.sync_status == "ok"
