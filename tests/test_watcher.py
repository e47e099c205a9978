"""The IDLE watcher (``manage.py watchmailboxes``) as its own process, with a real Celery
worker on Redis, against Dovecot: changes made by other clients reach the database within
seconds, through kicks, outages and the death of a watcher."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailsync.engine.errors import ServerUnreachable
from mailsync.engine.imap import ImapSession
from mailsync.models import Message, WatcherLease
from tests.support.chaos import wait_until
from tests.support.dovecot import MailUser
from tests.support.paths import PROJECT_ROOT
from tests.support.personas import child_database_url
from tests.test_sync import make_mail
from tests.test_worker import empty_broker, worker  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# How long the outage test watches the CPU time of a watcher whose server is down.
OUTAGE_SECONDS = max(10.0, float(os.environ.get("TEAMINBOX_WATCHER_OUTAGE_SECONDS", "30")))

WatcherFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_watcher(tmp_path: Path) -> Iterator[WatcherFactory]:
    """``manage.py watchmailboxes`` processes of the test's own (their output in files)."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"watcher-{len(started)}.log"
        process = subprocess.Popen(
            [sys.executable, "manage.py", "watchmailboxes"],
            cwd=PROJECT_ROOT,
            env={
                **os.environ,
                "DATABASE_URL": child_database_url(),
                "WATCHER_POLL_SECONDS": "1",
                **env,
            },
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append((process, log_path))
        return process

    yield start
    for process, log_path in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        output = log_path.read_text(errors="replace")
        if "Traceback" in output:
            print(output)


def imap_connections(pid: int, port: int) -> int:
    """Established TCP connections process ``pid`` holds to ``port`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admin_page(mailbox_id: int) -> str:
    """The admin's mailbox list: its sync health column shows the watcher."""
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse

    root = User.objects.filter(username="root").first() or User.objects.create_superuser(
        "root", "root@example.test", "x"
    )
    client = Client()
    client.force_login(root)
    page = client.get(reverse("admin:mailsync_mailbox_changelist")).content.decode()
    change = client.get(reverse("admin:mailsync_mailbox_change", args=[mailbox_id]))
    return page + change.content.decode()


def lease_state(mailbox_id: int) -> str | None:
    return (
        WatcherLease.objects.filter(mailbox_id=mailbox_id).values_list("state", flat=True).first()
    )


def arrives(subject: str) -> Callable[[], bool]:
    return lambda: Message.objects.filter(subject=subject).exists()


def watching(mailbox_id: int) -> Callable[[], bool]:
    return lambda: lease_state(mailbox_id) == WatcherLease.State.CONNECTED


def test_idle_hears_another_clients_mail_and_a_kick_ends_it_instead_of_empty_news(mail_user):
    """The engine's IDLE on its own: imapclient's idle_check returns [] at once, forever,
    once the server has closed the connection (#565); ours raises."""
    with ImapSession.open(mail_user.account(), timeout=10) as imap:
        imap.select("INBOX")
        imap.idle_start(timeout=5)
        mail_user.append(make_mail("Heard in IDLE"))
        news = wait_until(lambda: imap.idle_wait(1.0), timeout=5, what="IDLE news")
        assert any(item.kind == "EXISTS" and item.is_change for item in news)

        mail_user.kick()
        with pytest.raises(ServerUnreachable):
            for _ in range(5):
                imap.idle_wait(1.0)


@pytest.mark.usefixtures("worker")
def test_new_mail_and_a_flag_set_by_another_client_reach_the_database_within_seconds(
    start_watcher, shared_mailbox, mail_user
):
    start_watcher()
    wait_until(watching(shared_mailbox.pk), timeout=10, what="the watcher's IDLE")

    uid = mail_user.append(make_mail("Pushed by IDLE"))
    wait_until(arrives("Pushed by IDLE"), timeout=10, what="the new message in the database")

    mail_user.add_flags([uid], ["\\Flagged"])  # another client (Thunderbird, Outlook)
    wait_until(
        lambda: Message.objects.get(uid=uid, folder__mailbox=shared_mailbox).flagged,
        timeout=10,
        what="the other client's flag in the database",
    )


@pytest.mark.usefixtures("worker")
def test_after_a_kick_the_watcher_reconnects_and_the_next_message_arrives(
    start_watcher, shared_mailbox, mail_user
):
    watcher = start_watcher()
    wait_until(watching(shared_mailbox.pk), timeout=10, what="the watcher's IDLE")
    port = mail_user.server.imap_port
    assert imap_connections(watcher.pid, port) == 1

    mail_user.kick()  # every session of the user closed by the server
    mail_user.append(make_mail("After the kick"))

    wait_until(arrives("After the kick"), timeout=10, what="the message sent after the kick")
    wait_until(
        lambda: imap_connections(watcher.pid, port) == 1,
        timeout=10,
        what="the watcher's new connection",
    )
    assert watcher.poll() is None


@pytest.mark.usefixtures("worker")
def test_a_mailbox_added_while_the_watcher_runs_is_watched_within_ten_seconds(
    start_watcher, shared_mailbox, mail_user, make_mailbox
):
    watcher = start_watcher()
    wait_until(watching(shared_mailbox.pk), timeout=10, what="the first mailbox watched")
    other_user = mail_user.server.add_user(
        f"late-{secrets.token_hex(4)}@example.test", secrets.token_hex(8)
    )
    later = make_mailbox(other_user, name="later", folders=["INBOX", "Sent"])
    other_user.create_folder("Sent")

    wait_until(watching(later.pk), timeout=10, what="the added mailbox watched")
    # INBOX and Sent: two connections of the watcher for it, one for the first mailbox
    assert imap_connections(watcher.pid, mail_user.server.imap_port) == 3
    other_user.append(make_mail("To the added mailbox"), folder="Sent")
    wait_until(arrives("To the added mailbox"), timeout=10, what="mail of the added mailbox")

    later.is_active = False
    later.save()
    wait_until(
        lambda: imap_connections(watcher.pid, mail_user.server.imap_port) == 1,
        timeout=10,
        what="the deactivated mailbox's connections closed",
    )


@pytest.mark.usefixtures("worker")
def test_with_its_server_down_the_watcher_backs_off_and_recovers_when_it_returns(
    start_watcher, dovecot_factory, make_mailbox
):
    server = dovecot_factory(f"watcher-outage-{secrets.token_hex(3)}")
    user: MailUser = server.add_user("outage@example.test", secrets.token_hex(8))
    mailbox = make_mailbox(user, name="outage")
    watcher = start_watcher(WATCHER_BACKOFF_MAX_SECONDS="4")
    wait_until(watching(mailbox.pk), timeout=10, what="the watcher's IDLE")

    server.stop()
    try:
        # the admin's sync health says so, and why (the first try after the BYE is refused)
        wait_until(
            lambda: (
                "backing off since" in (page := admin_page(mailbox.pk))
                and "connection refused" in page
            ),
            timeout=15,
            what="the admin showing the watcher backing off, connection refused",
        )
        before = cpu_seconds(watcher.pid)
        time.sleep(OUTAGE_SECONDS)  # the measurement window itself, not a synchronisation
        spent = cpu_seconds(watcher.pid) - before
    finally:
        server.start_again()
    assert spent < OUTAGE_SECONDS / 30, f"{spent:.2f} s of CPU in {OUTAGE_SECONDS:.0f} s"

    wait_until(watching(mailbox.pk), timeout=15, what="the watcher back on IDLE")
    assert "connected since" in admin_page(mailbox.pk)
    user.append(make_mail("After the outage"))
    wait_until(arrives("After the outage"), timeout=10, what="mail after the outage")


def test_two_watchers_share_the_mailboxes_and_one_takes_over_when_the_other_dies(
    start_watcher, make_mailbox, mail_user
):
    users = [
        mail_user.server.add_user(f"pair-{n}-{secrets.token_hex(3)}@example.test", "pw")
        for n in range(3)
    ]
    mailboxes = [make_mailbox(user, name=f"pair-{n}") for n, user in enumerate(users)]
    first, second = start_watcher(), start_watcher()
    port = mail_user.server.imap_port
    for mailbox in mailboxes:
        wait_until(watching(mailbox.pk), timeout=10, what=f"{mailbox.name} watched")
    wait_until(
        lambda: imap_connections(first.pid, port) + imap_connections(second.pid, port) == 3,
        timeout=10,
        what="one connection per mailbox",
    )
    owners = set(WatcherLease.objects.values_list("owner", flat=True))
    holders = {pid for pid in (first.pid, second.pid) if imap_connections(pid, port)}
    assert len(holders) == len(owners)

    victim, survivor = (first, second) if imap_connections(first.pid, port) else (second, first)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    started = time.monotonic()
    wait_until(
        lambda: imap_connections(survivor.pid, port) == 3,
        timeout=30,
        what="the survivor watching every mailbox",
    )
    assert time.monotonic() - started < 30
    assert len(set(WatcherLease.objects.values_list("owner", flat=True))) == 1
