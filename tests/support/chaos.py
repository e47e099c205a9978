"""Helpers for the chaos scenarios (tests/chaos/): a seed, processes and servers of the
test's own to kill or stop, and the mirror's promise checked after each fault.

Only what a test started itself is ever stopped: its own Redis on a free port, its own
Dovecot instance, its own worker, beat and ``syncmailbox`` processes. PostgreSQL is
shared: only the test database's connections are ever terminated.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.mirror import comparable, parse_export, server_state
from tests.support.paths import PROJECT_ROOT
from tests.support.smtp import free_port

SEED_VARIABLE = "TEAMINBOX_CHAOS_SEED"
SOAK_VARIABLE = "TEAMINBOX_CHAOS_SOAK"

T = TypeVar("T")

_run_seed: int | None = None


def run_seed() -> int:
    """The run's seed: ``TEAMINBOX_CHAOS_SEED`` if set, else drawn once per process."""
    global _run_seed
    if _run_seed is None:
        given = os.environ.get(SEED_VARIABLE, "").strip()
        if given and not given.isdigit():
            raise ValueError(f"{SEED_VARIABLE} must be a whole number, not {given!r}")
        _run_seed = int(given) if given else secrets.randbelow(2**32)
    return _run_seed


def replay_hint() -> str:
    return f"chaos seed {run_seed()}: replay with {SEED_VARIABLE}={run_seed()}"


def soak() -> bool:
    """The long mode (more kills, more mail, longer outages): TEAMINBOX_CHAOS_SOAK=1."""
    return os.environ.get(SOAK_VARIABLE, "") not in ("", "0")


def scaled(normal: T, soaked: T) -> T:
    return soaked if soak() else normal


def scenario_rng(name: str) -> random.Random:
    """Each scenario's own stream of fault points, from the run's seed and its name (so
    one scenario's draws do not shift when another changes)."""
    return random.Random(f"{run_seed()}:{name}")


def wait_until(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- processes of the test's own -------------------------------------------------------


@dataclass
class Child:
    """A child process whose output goes to a file (never a pipe nobody reads)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no lease released, no task acknowledged."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(text.splitlines()[-lines:])


def start_child(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Child(name, process, log_path)


def child_env(*, redis_url: str | None = None, **settings: str) -> dict[str, str]:
    """The environment of a child process on the test database (and on the test's own
    Redis as broker and cache, when given), with settings as environment variables."""
    from tests.support.personas import child_database_url

    env = {**os.environ, "DATABASE_URL": child_database_url(), **settings}
    env.pop("MAILBOX_PASSWORD", None)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
        env["CELERY_BROKER_URL"] = redis_url
    return env


def start_syncmailbox(name: str, env: dict[str, str], log_dir: Path, label: str) -> Child:
    args = [sys.executable, str(PROJECT_ROOT / "manage.py"), "syncmailbox", name, "--once"]
    return start_child(label, args, env, log_dir)


def start_worker(env: dict[str, str], log_dir: Path, label: str) -> Child:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "teaminbox",
        "worker",
        "--pool=solo",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "info",
        "-n",
        f"{label}@%h",
    ]
    return start_child(label, args, env, log_dir)


def start_beat(env: dict[str, str], log_dir: Path) -> Child:
    schedule = log_dir / "celerybeat-schedule"
    args = [sys.executable, "-m", "celery", "-A", "teaminbox", "beat", "-s", str(schedule)]
    return start_child("beat", args, env, log_dir)


class OwnRedis:
    """A Redis server of the test's own on a free loopback port, to stop and start again
    on the same port (never the shared one)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._child: Child | None = None

    def start(self) -> None:
        args = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self._child = start_child(f"redis-{self.port}", args, dict(os.environ), self.log_dir)
        wait_until(self.answers, timeout=10, what=f"Redis on port {self.port}")

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop(timeout=10)
            self._child = None


# --- the database ----------------------------------------------------------------------


def terminate_test_database_connections() -> int:
    """Terminate every connection to the test database but this process's own (never
    another database's): what a PostgreSQL restart or failover does to the app."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


# --- what the mailbox showed during an outage --------------------------------------------


@dataclass
class StatusTimeline:
    """Mailbox.sync_status polled while a fault lasts: (seconds since the fault, status)."""

    mailbox_id: int
    started: float = field(default_factory=time.monotonic)
    seen: list[tuple[float, str]] = field(default_factory=list)

    def poll(self) -> str:
        from mailsync.models import Mailbox

        status = str(
            Mailbox.objects.filter(pk=self.mailbox_id).values_list("sync_status", flat=True)[0]
        )
        self.seen.append((time.monotonic() - self.started, status))
        return status

    def poll_for(self, seconds: float, interval: float = 0.5) -> None:
        """Poll until ``seconds`` after the fault began (the outage lasting meanwhile)."""
        while time.monotonic() - self.started < seconds:
            self.poll()
            time.sleep(interval)

    def first(self, status: str) -> float | None:
        return next((t for t, s in self.seen if s == status), None)

    def summary(self) -> str:
        changes = [
            f"{t:.1f}s {s}"
            for i, (t, s) in enumerate(self.seen)
            if i == 0 or s != self.seen[i - 1][1]
        ]
        return ", ".join(changes)


# --- the mirror's promise ----------------------------------------------------------------


def assert_mirror_promise(
    manage: Callable[..., Any],
    mailbox: Any,
    user: Any,
    *,
    folders: Iterable[str] = ("INBOX",),
    context: str = "",
) -> None:
    """After a fault, once the app has caught up: the export equals the server message by
    message (folder, UIDVALIDITY, UID, flags, sha256), every message has its text, no
    lease is held, no change is pending or "sending", no outgoing mail "sending", and the
    mailbox is "ok"."""
    from mailsync.models import FlagChange, Folder, Mailbox, Message
    from teaminbox.models import OutgoingMessage

    hint = f"{replay_hint()}\n{context}"
    exported = manage("exportmailbox", mailbox.name)
    assert exported.returncode == 0, f"{exported.stderr}\n{hint}"
    assert exported.stderr == "", f"{exported.stderr}\n{hint}"
    ours = comparable(parse_export(exported.stdout))
    theirs = comparable(server_state(user, folders))
    if ours != theirs:
        only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        raise AssertionError(
            f"the export differs from the server: {len(ours)} vs {len(theirs)} messages;"
            f" only in the export {only_ours[:5]}; only on the server {only_theirs[:5]}\n{hint}"
        )
    live = Message.objects.filter(folder__mailbox=mailbox, expunged_at__isnull=True)
    unextracted = live.filter(extracted_at__isnull=True).count()
    assert unextracted == 0, f"{unextracted} messages have no text\n{hint}"
    held = list(
        Folder.objects.filter(mailbox=mailbox)
        .exclude(lease_owner="")
        .values_list("name", flat=True)
    )
    assert held == [], f"leases still held on {held}\n{hint}"
    open_changes = FlagChange.objects.filter(
        folder__mailbox=mailbox,
        state__in=[FlagChange.State.PENDING, FlagChange.State.SENDING],
    ).count()
    assert open_changes == 0, f"{open_changes} staff changes still pending or sending\n{hint}"
    sending = OutgoingMessage.objects.filter(state=OutgoingMessage.State.SENDING).count()
    assert sending == 0, f"{sending} outgoing messages still 'sending'\n{hint}"
    status = Mailbox.objects.get(pk=mailbox.pk).sync_status
    assert status == Mailbox.SyncStatus.OK, f"the mailbox is {status!r}, not 'ok'\n{hint}"


# --- another mail client, busy throughout --------------------------------------------------


def mail_of_size(rng: random.Random, subject: str, size: int) -> bytes:
    """A message of about ``size`` bytes, its bytes drawn from ``rng`` (no two alike)."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "Customer <customer@example.org>"
    message["To"] = "support@example.test"
    message["Subject"] = subject
    message["Message-ID"] = f"<{rng.getrandbits(64):x}@example.org>"
    message.set_content(f"{subject}: see the attachment.")
    if size > 2048:
        message.add_attachment(
            rng.randbytes(size * 3 // 4), maintype="application", subtype="octet-stream"
        )
    return bytes(message)


@dataclass
class OtherClient:
    """Another mail client (Outlook at a colleague's desk) on its own connections straight
    to Dovecot: appends, expunges, moves and changes flags, at seeded moments. It leaves
    alone the messages staff change (``hands_off``), so that each staff change has exactly
    one right outcome to check; its flags are ones staff do not set."""

    user: Any
    rng: random.Random
    sizes: tuple[int, int] = (1024, 64 * 1024)
    archive: str = "Archive"
    done: list[str] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)  # INBOX UIDs it changed or removed

    def act(self, hands_off: Iterable[int] = (), times: int = 4) -> None:
        inbox = [uid for uid in self.user.uids() if uid not in set(hands_off)]
        for _ in range(times):
            action = self.rng.choice(["append", "expunge", "move", "flags", "flags"])
            if action == "append" or len(inbox) < 3:
                size = self.rng.randint(*self.sizes)
                subject = f"From the other client {len(self.done)}"
                uid = self.user.append(mail_of_size(self.rng, subject, size))
                self.done.append(f"append {uid} ({size // 1024} KB)")
                continue
            uid = self.rng.choice(inbox)
            inbox.remove(uid)
            self.touched.add(uid)
            if action == "expunge":
                self.user.expunge([uid])
            elif action == "move":
                with self.user.imap() as client:
                    client.select_folder("INBOX")
                    client.move([uid], self.archive)
            else:
                flag = self.rng.choice(["\\Seen", "\\Answered", "$Label1"])
                if flag in self.user.flags().get(uid, set()):
                    self.user.remove_flags([uid], [flag])
                    action = f"-{flag}"
                else:
                    self.user.add_flags([uid], [flag])
                    action = f"+{flag}"
            self.done.append(f"{action} {uid}")


def sync_until_in_step(mailbox: Any, *, tries: int = 6) -> list[str]:
    """Sync in this process as beat would, again after each failure (a sync that fails
    through a fault is fine; one that never ends in step is not). Returns the failures."""
    from mailsync.engine.errors import MailError
    from mailsync.runner import sync_mailbox

    failures: list[str] = []
    for _ in range(tries):
        try:
            sync_mailbox(mailbox)
        except MailError as exc:
            failures.append(str(exc))
            continue
        return failures
    raise AssertionError(f"no sync ended in step in {tries} tries: {failures}\n{replay_hint()}")


def staff_mailbox(make_mailbox: Callable[..., Any], user: Any, agent: Any, **options: Any) -> Any:
    """A mailbox on ``user`` with ``agent`` on its team."""
    from teaminbox.models import Membership

    mailbox = make_mailbox(user, **options)
    Membership.objects.create(user=agent, mailbox=mailbox, role=Membership.Role.AGENT)
    return mailbox


@dataclass
class Production:
    """A Celery worker and beat of the test's own, as production runs them (with the
    given settings), on the test's own Redis; all stopped at the end."""

    env: dict[str, str]
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self) -> None:
        self.children += [
            start_worker(self.env, self.log_dir, f"worker-{len(self.children)}"),
            start_beat(self.env, self.log_dir),
        ]

    def wait_until_beat_tasks_run(self) -> None:
        """Until the worker ran a task beat sent (both are up and on the broker)."""
        worker = self.children[-2]
        wait_until(
            lambda: (
                "mailsync.resume_abandoned_syncs" in worker.log_path.read_text(errors="replace")
            ),
            timeout=30,
            what="the worker to run a task from beat",
        )

    def settle(self) -> None:
        """Stop beat, then let the worker finish its task (a warm shutdown): the checks
        then see the app at rest, not a safety-net sync that has just begun."""
        for child in reversed(self.children):
            child.stop(timeout=60)

    def stop(self) -> None:
        # the scenario is over: a worker still busy need not finish its task
        for child in self.children:
            child.stop(timeout=3)

    def log_tails(self) -> str:
        return "\n".join(child.log_tail() for child in self.children)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def stop_dovecot_with_its_sessions(server: Any) -> None:
    """Stop a Dovecot instance of the test's own as a crash or a restart does: the master
    and every session process it started (this Dovecot's master leaves open sessions
    running when it stops, so a client on a kept connection would not notice)."""
    sessions = _children(server.pid) if server.pid else []
    server.stop()
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
