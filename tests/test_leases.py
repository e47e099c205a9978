"""A folder's lease lasts seconds, is kept by a heartbeat whatever a batch costs, and a
sync that loses it (or its database) stops writing and leaves nothing that says "syncing"."""

from __future__ import annotations

import functools
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from mailsync import extract, runner, tasks
from mailsync.leases import LeaseLost, take_folder_lease
from mailsync.models import Folder, Mailbox, Message
from mailsync.runner import sync_mailbox
from tests.support.mirror import comparable, server_state
from tests.test_sync import app_state, make_mail
from tests.test_sync_faults import wait_for

# A heartbeat runs only outside a transaction (see mailsync.leases.folder_lease).
pytestmark = pytest.mark.django_db(transaction=True)


def inbox(mailbox: Mailbox) -> Folder:
    return Folder.objects.get(mailbox=mailbox, name="INBOX")


def test_a_heartbeat_keeps_the_lease_over_a_batch_longer_than_the_lease(
    settings, shared_mailbox, mail_user
):
    settings.SYNC_LEASE_SECONDS = 3
    settings.SYNC_BATCH_MESSAGES = 5
    for n in range(12):
        mail_user.append(make_mail(f"Slow {n}"))
    attempts: list[str | None] = []

    def slow_batch(progress):
        # A batch that takes twice the lease (a 60 MB message on a slow link): meanwhile
        # another worker keeps trying to take the folder.
        if attempts:
            return
        folder_id = inbox(shared_mailbox).pk
        until = time.monotonic() + 2 * settings.SYNC_LEASE_SECONDS
        while time.monotonic() < until:
            attempts.append(take_folder_lease(folder_id))
            time.sleep(0.2)  # the slow batch itself, not a wait for anything

    result = sync_mailbox(shared_mailbox, on_progress=slow_batch)

    assert len(attempts) > 10 and set(attempts) == {None}, "another worker took the folder"
    assert result.busy_folders == [] and result.reports[0].new_messages == 12
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))
    assert inbox(shared_mailbox).lease_owner == ""  # released at the end


def test_a_sync_that_lost_its_lease_stops_writing(settings, shared_mailbox, mail_user):
    settings.SYNC_LEASE_SECONDS = 3
    settings.SYNC_BATCH_MESSAGES = 5
    for n in range(30):
        mail_user.append(make_mail(f"Contested {n}"))
    stored_when_lost: list[int] = []

    def taken_over(progress):
        if stored_when_lost:
            return
        # The lease ran out (a stopped process, a database that did not answer) and
        # another worker took it: the heartbeat's next renewal finds it gone.
        Folder.objects.filter(pk=inbox(shared_mailbox).pk).update(
            lease_owner="another-worker", lease_expires_at=timezone.now() + timedelta(minutes=1)
        )
        stored_when_lost.append(Message.objects.count())

        def refused() -> bool:
            try:
                Message.objects.exists()
            except LeaseLost:
                return True
            return False

        wait_for(refused, timeout=10, what="the heartbeat to notice the lost lease")

    result = sync_mailbox(shared_mailbox, on_progress=taken_over)

    assert result.busy_folders == ["INBOX"]
    assert Message.objects.count() == stored_when_lost[0] < 30  # nothing written after
    folder = inbox(shared_mailbox)
    assert folder.lease_owner == "another-worker"  # its lease, untouched
    assert folder.uidvalidity is None  # the cursor did not move
    shared_mailbox.refresh_from_db()
    assert shared_mailbox.sync_status == Mailbox.SyncStatus.SYNCING
    assert shared_mailbox.last_synced_at is None


def test_beats_sync_of_a_mailbox_whose_folder_is_busy_does_not_mark_it_in_step(
    shared_mailbox, mail_user, monkeypatch
):
    monkeypatch.setattr(tasks.extract_messages, "delay", lambda ids: None)
    mail_user.append(make_mail("Before"))
    tasks.sync_mailbox(shared_mailbox.pk)
    shared_mailbox.refresh_from_db()
    synced_at = shared_mailbox.last_synced_at
    assert shared_mailbox.sync_status == Mailbox.SyncStatus.OK
    mail_user.append(make_mail("While another worker syncs"))
    assert take_folder_lease(inbox(shared_mailbox).pk) is not None  # another worker
    asked = ask_again_recorder(monkeypatch, tasks.sync_mailbox)

    with pytest.raises(AskedAgain):
        tasks.sync_mailbox(shared_mailbox.pk)  # what beat's safety net runs every minute

    shared_mailbox.refresh_from_db()
    assert shared_mailbox.sync_status == Mailbox.SyncStatus.SYNCING
    assert shared_mailbox.last_synced_at == synced_at
    assert len(asked) == 1  # once the folder may be free


class AskedAgain(Exception):
    """What a task's ``retry`` raises in these tests (Celery's would run it again)."""


def ask_again_recorder(monkeypatch, task) -> list[dict[str, Any]]:
    asked: list[dict[str, Any]] = []

    def retry(**options):
        asked.append(options)
        raise AskedAgain

    monkeypatch.setattr(task, "retry", retry)
    return asked


def test_a_sync_task_finding_a_dead_workers_lease_asks_again_just_after_it_runs_out(
    shared_mailbox, mail_user, monkeypatch
):
    """A worker killed mid-sync: its task comes back (redelivered) and finds the dead
    worker's lease. It must not be dropped until beat's next sync."""
    mail_user.append(make_mail("Waiting"))
    sync_mailbox(shared_mailbox)
    folder = inbox(shared_mailbox)
    assert take_folder_lease(folder.pk) is not None
    # its heartbeat stopped 25 s ago: 5 s of the lease are left
    Folder.objects.filter(pk=folder.pk).update(
        lease_expires_at=timezone.now() + timedelta(seconds=5)
    )
    asked = ask_again_recorder(monkeypatch, tasks.sync_folder)

    with pytest.raises(AskedAgain):
        tasks.sync_folder(folder.pk)

    assert 5 <= asked[0]["countdown"] <= 7


@pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates PostgreSQL backends")
def test_a_lost_database_connection_leaves_neither_a_lease_nor_syncing_behind(
    settings, shared_mailbox, mail_user, request
):
    # This test's own connection is cut too: the database is cleaned up on a new one.
    request.addfinalizer(connection.close)
    settings.SYNC_BATCH_MESSAGES = 5
    for n in range(20):
        mail_user.append(make_mail(f"Cut {n}"))
    terminated: list[int] = []

    def terminate_the_test_databases_connections(progress):
        if not terminated:
            # From another thread (its own connection, spared): this one, and the
            # heartbeat's, are cut as when PostgreSQL restarts.
            worker = threading.Thread(target=_terminate_other_backends, args=(terminated,))
            worker.start()
            worker.join()

    with pytest.raises((OperationalError, InterfaceError)):
        sync_mailbox(shared_mailbox, on_progress=terminate_the_test_databases_connections)

    assert terminated and terminated[0] >= 1
    shared_mailbox.refresh_from_db()
    assert shared_mailbox.sync_status == Mailbox.SyncStatus.ERROR
    assert "database connection was lost" in shared_mailbox.last_error
    assert inbox(shared_mailbox).lease_owner == ""
    # and the next sync goes on at once, not a lease's length later
    started = time.monotonic()
    sync_mailbox(shared_mailbox)
    assert time.monotonic() - started < 10
    shared_mailbox.refresh_from_db()
    assert shared_mailbox.sync_status == Mailbox.SyncStatus.OK
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


@pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates PostgreSQL backends")
def test_a_sync_task_that_lost_the_database_asks_again_on_a_new_connection(
    settings, shared_mailbox, mail_user, monkeypatch, request
):
    request.addfinalizer(connection.close)
    settings.SYNC_BATCH_MESSAGES = 5
    for n in range(20):
        mail_user.append(make_mail(f"Task cut {n}"))
    terminated: list[int] = []

    def cut_once(progress):
        if not terminated:
            worker = threading.Thread(target=_terminate_other_backends, args=(terminated,))
            worker.start()
            worker.join()

    monkeypatch.setattr(
        runner, "sync_mailbox", functools.partial(sync_mailbox, on_progress=cut_once)
    )
    asked = ask_again_recorder(monkeypatch, tasks.sync_mailbox)

    with pytest.raises(AskedAgain):
        tasks.sync_mailbox(shared_mailbox.pk)

    assert asked[0]["countdown"] == tasks.RETRY_BACKOFF[0]
    assert connection.connection is None  # the broken one closed: the retry gets a new one
    assert Mailbox.objects.get(pk=shared_mailbox.pk).sync_status == Mailbox.SyncStatus.ERROR


def _terminate_other_backends(terminated: list[int]) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            terminated.append(cursor.fetchone()[0])
    finally:
        connection.close()


def test_rows_a_killed_sync_left_without_text_are_queued_by_the_next_sync_of_the_folder(
    shared_mailbox, mail_user, monkeypatch
):
    for n in range(3):
        mail_user.append(make_mail(f"Stored, never queued {n}", body=f"text {n}"))
    # A sync task killed after its batches committed: rows stored, no extraction queued.
    sync_mailbox(shared_mailbox, extract=False)
    assert extract.pending_messages(shared_mailbox).count() == 3
    queued: list[list[int]] = []
    monkeypatch.setattr(tasks.extract_messages, "delay", queued.append)

    tasks.sync_folder(inbox(shared_mailbox).pk)  # the next sync: nothing new on the server

    for chunk in queued:
        extract.extract_messages(chunk)
    assert not extract.pending_messages(shared_mailbox).exists()
    assert Message.objects.get(subject="Stored, never queued 1").text_body.strip() == "text 1"


def test_a_dead_workers_mailbox_is_synced_again_as_soon_as_its_lease_ran_out(
    shared_mailbox, mail_user, monkeypatch
):
    monkeypatch.setattr(tasks.extract_messages, "delay", lambda ids: None)
    mail_user.append(make_mail("Before the crash"))
    sync_mailbox(shared_mailbox)
    folder = inbox(shared_mailbox)
    assert take_folder_lease(folder.pk) is not None  # a worker that is then killed
    mail_user.append(make_mail("During the crash"))
    queued: list[int] = []
    monkeypatch.setattr(tasks.sync_mailbox, "delay", queued.append)

    tasks.resume_abandoned_syncs()
    assert queued == []  # the lease still runs: its holder may be alive

    Folder.objects.filter(pk=folder.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    tasks.resume_abandoned_syncs()
    assert queued == [shared_mailbox.pk]

    tasks.sync_mailbox(queued[0])
    assert inbox(shared_mailbox).lease_owner == ""
    assert Mailbox.objects.get(pk=shared_mailbox.pk).sync_status == Mailbox.SyncStatus.OK
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))
