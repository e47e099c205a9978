"""The mirror survives what real life does to it: a killed worker, mail arriving or
vanishing mid-sync, other clients changing flags under our feet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mailsync.models import Message
from mailsync.runner import sync_mailbox
from tests.support.mirror import comparable, parse_export, server_state
from tests.support.paths import PROJECT_ROOT
from tests.support.personas import child_database_url
from tests.test_sync import app_state, make_mail


def wait_for(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.django_db(transaction=True)
def test_it_loses_nothing_and_duplicates_nothing_when_killed_mid_sync(manage, mail_user):
    total = 600
    mail_user.deliver_bulk(make_mail(f"Bulk {n}", body=f"body {n}") for n in range(total))
    url = f"imap://{mail_user.address.replace('@', '%40')}@127.0.0.1:{mail_user.server.imap_port}"
    manage("addmailbox", "support", "--url", url, env={"MAILBOX_PASSWORD": mail_user.password})
    env = {**os.environ, "DATABASE_URL": child_database_url(), "SYNC_BATCH_MESSAGES": "10"}
    child = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "manage.py"), "syncmailbox", "support", "--once"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: Message.objects.count() >= 100, timeout=60, what="100 rows")
        child.send_signal(signal.SIGKILL)  # no cleanup, no lease release: a real crash
        child.wait(timeout=10)
        assert Message.objects.count() < total, "the sync finished before it could be killed"
    finally:
        if child.poll() is None:
            child.kill()

    # The dead worker's lease still holds the folder; it expires, as after a real crash.
    from mailsync.models import Folder

    Folder.objects.update(lease_expires_at=None)
    rerun = manage("syncmailbox", "support", "--once")
    assert rerun.returncode == 0, rerun.stderr
    exported = parse_export(manage("exportmailbox", "support").stdout)

    assert len(exported) == total
    assert len({row["uid"] for row in exported}) == total
    assert comparable(exported) == comparable(server_state(mail_user))
    assert not Message.objects.filter(extracted_at__isnull=True).exists()


@pytest.mark.django_db
def test_it_takes_mail_arriving_during_the_initial_sync_on_the_next_run(
    settings, shared_mailbox, mail_user
):
    settings.SYNC_BATCH_MESSAGES = 5
    for n in range(20):
        mail_user.append(make_mail(f"Early {n}"))
    arrived: list[int] = []

    def deliver_once(progress):
        if not arrived:
            arrived.append(mail_user.append(make_mail("Arrived mid-sync")))

    sync_mailbox(shared_mailbox, on_progress=deliver_once)
    assert not Message.objects.filter(uid=arrived[0]).exists()  # after the SELECT snapshot

    result = sync_mailbox(shared_mailbox)

    assert result.reports[0].new_messages == 1
    assert Message.objects.filter(subject="Arrived mid-sync").count() == 1
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


@pytest.mark.django_db
def test_it_skips_a_message_expunged_between_listing_and_fetching(
    settings, shared_mailbox, mail_user
):
    settings.SYNC_BATCH_MESSAGES = 5
    uids = [mail_user.append(make_mail(f"Listed {n}")) for n in range(20)]
    victim = uids[0]  # newest first: the oldest UID is fetched last

    def expunge_once(progress):
        if victim in mail_user.uids():
            mail_user.expunge([victim])

    report = sync_mailbox(shared_mailbox, on_progress=expunge_once).reports[0]

    assert report.vanished_before_fetch == 1
    assert not Message.objects.filter(uid=victim).exists()  # no empty row
    assert Message.objects.count() == 19
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


@pytest.mark.django_db
@pytest.mark.parametrize("ignored", [[], ["QRESYNC", "CONDSTORE"]], ids=["qresync", "neither"])
def test_it_keeps_flags_right_when_the_server_sends_unsolicited_fetch_responses(
    ignored, settings, shared_mailbox, mail_user
):
    """Without QRESYNC, Dovecot's unsolicited ``* n FETCH (FLAGS ...)`` carries no UID;
    imapclient keyed it by sequence number and overwrote the answer for UID n."""
    settings.IMAP_IGNORE_CAPABILITIES = ignored
    settings.SYNC_BATCH_MESSAGES = 3
    uids = [mail_user.append(make_mail(f"Flags {n}")) for n in range(12)]
    changed: list[bool] = []

    def change_flags_once(progress):
        if not changed:
            # Sequence numbers 1..4 are UIDs 1..4 here: exactly the collision that bit.
            mail_user.add_flags(uids[:4], ["\\Flagged"])
            mail_user.add_flags([uids[5]], ["\\Seen"])
            changed.append(True)

    sync_mailbox(shared_mailbox, on_progress=change_flags_once)
    server = {row["uid"]: row["flags"] for row in server_state(mail_user)}
    for message in Message.objects.all():
        # Each row holds either the flags as fetched or the newer ones; never another's.
        assert set(message.imap_flags()) <= set(server[message.uid]), message.uid

    sync_mailbox(shared_mailbox)
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


@pytest.mark.django_db
def test_a_message_the_server_cannot_deliver_is_dead_lettered_and_retried_later(
    shared_mailbox, mail_user
):
    """Dovecot drops the connection (BYE) when it cannot read a message from disk."""
    from mailsync.models import DeadLetter

    uids = [mail_user.append(make_mail(f"Readable {n}")) for n in range(3)]
    with mail_user.imap() as client:  # a read-write SELECT moves new/ to cur/ for good
        client.select_folder("INBOX")
    unreadable = next(
        path
        for path in (mail_user.home / "Maildir").glob("*/*")
        if path.is_file() and b"Subject: Readable 1" in path.read_bytes()
    )
    mode = unreadable.stat().st_mode
    unreadable.chmod(0)
    try:
        report = sync_mailbox(shared_mailbox).reports[0]
    finally:
        unreadable.chmod(mode)

    assert report.dead_letters == 1
    letter = DeadLetter.objects.get()
    assert letter.uid == uids[1]
    assert Message.objects.count() == 2  # the others are in, the folder is not blocked
    assert shared_mailbox.folders.get(name="INBOX").uidnext_done > max(uids)

    # readable again (an admin fixed it): the next sync delivers it and clears the record
    report = sync_mailbox(shared_mailbox).reports[0]
    assert report.new_messages == 1
    assert not DeadLetter.objects.exists()
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))
