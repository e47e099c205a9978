"""After a crash (kill -9, a lost database connection) the next sync goes on within about
a lease's length, and what is stored meanwhile is exported, with a word about the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection

from mailsync.models import Folder, Mailbox, Message
from tests.support.mirror import comparable, parse_export, server_state
from tests.support.paths import PROJECT_ROOT
from tests.support.personas import child_database_url
from tests.test_sync import make_mail
from tests.test_sync_faults import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

TOTAL = 2000


def start_first_sync(mail_user, name: str) -> subprocess.Popen[str]:
    """``syncmailbox NAME --once`` in small batches, so it is mid first sync for seconds."""
    mail_user.deliver_bulk(make_mail(f"Crash {n}", body=f"body {n}") for n in range(TOTAL))
    env = {**os.environ, "DATABASE_URL": child_database_url(), "SYNC_BATCH_MESSAGES": "10"}
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "manage.py"), "syncmailbox", name, "--once"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_sync_killed_mid_first_sync_is_exported_as_stored_and_resumed_within_a_lease(
    manage, shared_mailbox, mail_user
):
    child = start_first_sync(mail_user, shared_mailbox.name)
    try:
        wait_for(lambda: Message.objects.count() >= 200, timeout=60, what="200 rows")
        child.send_signal(signal.SIGKILL)  # no cleanup, no lease release: a real crash
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    stored = Message.objects.count()
    assert stored < TOTAL, "the sync finished before it could be killed"

    exported = manage("exportmailbox", shared_mailbox.name)
    assert exported.returncode == 0, exported.stderr
    assert len(parse_export(exported.stdout)) == stored
    assert "support/INBOX: the first sync has not finished" in exported.stderr

    started = time.monotonic()
    rerun = manage("syncmailbox", shared_mailbox.name, "--once")
    elapsed = time.monotonic() - started

    assert rerun.returncode == 0, rerun.stderr
    assert elapsed < 60, f"the rerun waited {elapsed:.0f} s for the dead worker's lease"
    exported = manage("exportmailbox", shared_mailbox.name)
    assert exported.stderr == ""
    assert comparable(parse_export(exported.stdout)) == comparable(server_state(mail_user))
    assert not Message.objects.filter(extracted_at__isnull=True).exists()
    shared_mailbox.refresh_from_db()
    assert shared_mailbox.sync_status == Mailbox.SyncStatus.OK


@pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates PostgreSQL backends")
def test_syncmailbox_says_in_one_line_that_it_lost_the_database_and_exits_1(
    manage, shared_mailbox, mail_user
):
    child = start_first_sync(mail_user, shared_mailbox.name)
    try:
        wait_for(lambda: Message.objects.count() >= 100, timeout=60, what="100 rows")
        with connection.cursor() as cursor:  # the child's connections, not this test's
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone()[0] >= 1
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()

    assert child.returncode == 1
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("syncmailbox: lost the connection to the database: ")
    shared_mailbox.refresh_from_db()
    assert shared_mailbox.sync_status == Mailbox.SyncStatus.ERROR  # not "syncing"
    assert Folder.objects.get(mailbox=shared_mailbox, name="INBOX").lease_owner == ""
