"""Crash recovery: how long a kill -9 costs, and what a dead pusher sends again.

    .venv/bin/python benchmarks/crash_recovery.py [--messages 3000] [--json out.json]

One command, one table (and JSON). Starts its own Dovecot (tests/support/dovecot.py, with
the rawlog service), a fresh PostgreSQL database (teaminbox_crash: dropped, created,
migrated), Redis database 13 (flushed), Celery beat and real Celery workers (prefork,
concurrency 2, each in its own process group); a second worker is always running when one
is killed. Then:

A. kill -9 mid first sync: two workers run; one lists a mailbox of --messages generated
   messages (benchmarks/corpus.py); when --kill-at of them are stored, the worker holding
   the IMAP connection is killed (its whole process group: the machine died). Timed from
   the kill until the app holds a complete, extracted mirror: every message listed and
   extracted, and `manage.py exportmailbox` equal to what another client reads from
   Dovecot (tests/support/mirror.py).
B. a dead pusher: --changes staff changes in one transaction (every other message marked
   read, the others flagged: at least two UID STOREs) on mail that arrived one message at
   a time. The worker that pushes them is killed as soon as Dovecot has answered its
   first UID STORE: a relay in front of Dovecot sees the command, holds back the answer
   and kills the worker, so that STORE is applied and the worker never learns it. Timed
   from the kill until the server has every change (another IMAP connection, NOOP every
   20 ms); also until the outbox rows are done.
C. from the same run: UID STORE commands per change, from Dovecot's rawlog, the one
   before the kill included (each change should be sent once); the relay splits them at
   the kill and counts [MODIFIED] answers.
D. a first sync through the fault proxy (tests/support/faultproxy.py) cutting every
   connection after --cut-bytes from the server: `manage.py syncmailbox --once`, its
   time and completeness (report only).

Targets (from issue 9): A <= 30 s (342 s before), B <= 30 s (248 s before), 1 STORE per
change, the one before the crash included (3 before). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from benchmarks import corpus  # noqa: E402
from benchmarks.click_latency import (  # noqa: E402
    BenchmarkError,
    SeenWatcher,
    Service,
    make_messages,
    psql,
    run_step,
    start_service,
    stop_services,
    wait_until,
)
from benchmarks.procs import process_tree  # noqa: E402
from benchmarks.sync_bench import stop_stale_dovecot  # noqa: E402
from tests.support.dovecot import RAWLOG_CONFIG, DovecotServer, MailUser  # noqa: E402
from tests.support.mirror import comparable, parse_export, server_state  # noqa: E402
from tests.support.rawlog import stores_per_uid  # noqa: E402

VENV_BIN = Path(sys.executable).parent
PASSWORD = "secret"
SEEN = "\\Seen"
FLAGGED = "\\Flagged"
TARGET_SYNC_S = 30.0
TARGET_PUSH_S = 30.0
TARGET_STORES = 1.0
BEFORE = {"sync": "342 s", "push": "248 s", "stores": "3", "cut": "36 of 1,000 lost (64 KB)"}

# Runs in a child process with the benchmark's DATABASE_URL / REDIS_URL.
CHILD = r"""
import json, os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teaminbox.settings")
django.setup()
from django.contrib.auth.models import User
from django.db import transaction
from mailsync.models import Mailbox, Message
from teaminbox.models import Membership

mode, name = sys.argv[1], sys.argv[2]
if mode == "mailbox":
    host, port, address, password = sys.argv[3:7]
    mailbox = Mailbox(name=name, email_address=address, protocol=Mailbox.Protocol.IMAP,
                      security=Mailbox.Security.PLAIN, host=host, port=int(port),
                      username=address, folder_names=["INBOX"], delete_mode="flag")
    mailbox.set_password(password)
    mailbox.save()
    staff, _ = User.objects.get_or_create(username="agent",
                                          defaults={"email": "agent@example.test"})
    Membership.objects.create(user=staff, mailbox=mailbox, role=Membership.Role.AGENT)
elif mode == "sync":
    from mailsync.tasks import sync_mailbox
    sync_mailbox.delay(Mailbox.objects.get(name=name).pk)
elif mode == "changes":
    from teaminbox.services import set_flag
    staff = User.objects.get(username="agent")
    rows = Message.objects.filter(folder__mailbox__name=name, folder__name="INBOX",
                                  seen=False, expunged_at__isnull=True).order_by("uid")
    changes = []
    # A selection marked read or flagged, every other message: every push task is enqueued
    # at the commit and the first worker to run claims them all; two flags, so the push
    # needs at least two UID STOREs.
    with transaction.atomic():
        for n, message in enumerate(rows[: int(sys.argv[3])]):
            flag = "\\Seen" if n % 2 == 0 else "\\Flagged"
            if set_flag(message=message, flag=flag, on=True, actor=staff) is not None:
                changes.append([message.uid, flag])
    print(json.dumps(changes))
"""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child(env: dict[str, str], mode: str, name: str, *args: str) -> str:
    return run_step(
        [sys.executable, "-c", CHILD, mode, name, *args], env, timeout=60, what=f"the {mode} child"
    )


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    return run_step(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env,
        timeout=timeout,
        what=f"manage.py {args[0]}",
    )


# --- the database, read directly (a Django start-up per poll would cost a second) --------


class Database:
    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)

    def one(self, sql: str, *params: Any) -> tuple[Any, ...]:
        row = self.conn.execute(sql, params).fetchone()
        assert row is not None
        return tuple(row)

    def mirror(self, mailbox: str) -> tuple[int, int]:
        """(messages listed, of which extracted) in the mailbox's INBOX, current numbering."""
        return self.one(
            """SELECT count(*), count(m.extracted_at)
               FROM mailsync_message m
               JOIN mailsync_folder f ON m.folder_id = f.id
               JOIN mailsync_mailbox b ON f.mailbox_id = b.id
               WHERE b.name = %s AND f.name = 'INBOX' AND m.expunged_at IS NULL
                 -- a first sync sets the folder's UIDVALIDITY only when it completes
                 AND (f.uidvalidity IS NULL OR m.uidvalidity = f.uidvalidity)""",
            mailbox,
        )

    def lease_expires(self, mailbox: str) -> float | None:
        """When the INBOX's lease runs out (epoch seconds), None when nobody holds it."""
        row = self.conn.execute(
            """SELECT extract(epoch FROM f.lease_expires_at) FROM mailsync_folder f
               JOIN mailsync_mailbox b ON f.mailbox_id = b.id
               WHERE b.name = %s AND f.name = 'INBOX' AND f.lease_owner <> ''""",
            (mailbox,),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def status(self, mailbox: str) -> str:
        row = self.conn.execute(
            "SELECT sync_status FROM mailsync_mailbox WHERE name = %s", (mailbox,)
        ).fetchone()
        return str(row[0]) if row else "-"

    def outbox(self, mailbox: str) -> dict[str, int]:
        rows = self.conn.execute(
            """SELECT c.state, count(*) FROM mailsync_flagchange c
               JOIN mailsync_folder f ON c.folder_id = f.id
               JOIN mailsync_mailbox b ON f.mailbox_id = b.id
               WHERE b.name = %s GROUP BY c.state""",
            (mailbox,),
        ).fetchall()
        return {str(state): int(count) for state, count in rows}

    def dead_letters(self, mailbox: str) -> int:
        return int(
            self.one(
                """SELECT count(*) FROM mailsync_deadletter d
                   JOIN mailsync_folder f ON d.folder_id = f.id
                   JOIN mailsync_mailbox b ON f.mailbox_id = b.id WHERE b.name = %s""",
                mailbox,
            )[0]
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


# --- workers: which one holds a connection, and killing exactly that one ------------------


def _tcp_inodes(*, local_port: int | None = None, remote_port: int | None = None) -> set[str]:
    """Socket inodes of loopback TCP connections with that local and/or remote port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            next(handle)
            for line in handle:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                if state != "01":  # ESTABLISHED
                    continue
                if local_port is not None and int(local.rsplit(":", 1)[1], 16) != local_port:
                    continue
                if remote_port is not None and int(remote.rsplit(":", 1)[1], 16) != remote_port:
                    continue
                found.add(inode)
    return found


def worker_holding(
    workers: list[Service], *, local_port: int | None = None, remote_port: int | None = None
) -> Service | None:
    """The worker one of whose processes owns such a connection."""
    inodes = _tcp_inodes(local_port=local_port, remote_port=remote_port)
    for worker in workers:
        if not worker.alive():
            continue
        for pid in process_tree(worker.process.pid):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if target.startswith("socket:[") and target[8:-1] in inodes:
                            return worker
    return None


def kill_worker(worker: Service) -> float:
    """SIGKILL the worker's process group (main process and pool children at once, as a
    machine that dies); returns the time of the kill."""
    os.killpg(worker.process.pid, signal.SIGKILL)
    killed = time.time()
    worker.process.wait(timeout=10)
    return killed


def start_worker(name: str, env: dict[str, str], workdir: Path) -> Service:
    return start_service(
        name,
        [
            str(VENV_BIN / "celery"), "-A", "teaminbox", "worker", "--concurrency=2",
            "--without-gossip", "--without-mingle", "-l", "info", "-n", f"{name}@%h",
        ],
        env,
        workdir,
    )  # fmt: skip


def wait_ready(worker: Service, services: list[Service]) -> None:
    def ready() -> bool:
        with contextlib.suppress(OSError):
            return " ready." in worker.log_path.read_text(errors="replace")
        return False

    wait_until(ready, timeout=60, what=f"{worker.name} to be ready", services=services)


# --- a relay in front of Dovecot that kills the pusher at its first UID STORE -------------


class StoreTrap:
    """A loopback relay to Dovecot for the pusher mailbox. It notes every command line a
    client sends (tag removed, with the time) and every tagged ``[MODIFIED`` answer. Once
    armed, the first ``UID STORE`` goes through to Dovecot, its answer (and all after it on
    that connection) is held back, and ``on_store(client_port)`` runs once Dovecot has
    answered: the change is on the server, and the worker cannot know."""

    def __init__(self, target_port: int, on_store: Callable[[int], None]) -> None:
        self.target_port = target_port
        self.on_store = on_store
        self.armed = threading.Event()
        self.fired = threading.Event()
        self.commands: list[tuple[float, str]] = []
        self.modified: list[float] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="trap", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):  # every answer on at once, no Nagle delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        held: dict[str, bytes] = {}  # the tag whose answer is held back
        client_port = client.getpeername()[1]

        def from_client() -> None:
            pending = b""
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    pending += data
                    *lines, pending = pending.split(b"\r\n")
                    for line in lines:
                        tag, _, rest = line.decode("utf-8", "replace").partition(" ")
                        with self._lock:
                            self.commands.append((time.time(), rest[:2000]))
                        if rest.upper().startswith("UID STORE") and self.armed.is_set():
                            self.armed.clear()
                            held["tag"] = tag.encode()  # before the STORE leaves
                    upstream.sendall(data)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

        def from_server() -> None:
            pending = b""
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    pending += data
                    *lines, pending = pending.split(b"\r\n")
                    for line in lines:
                        if b"[MODIFIED" in line and not line.startswith(b"*"):
                            self.modified.append(time.time())
                        tag = held.get("tag")
                        if tag is not None and line.startswith(tag + b" "):
                            self._fire(client_port)
                    if "tag" not in held:
                        client.sendall(data)
            with contextlib.suppress(OSError):
                client.close()

        threading.Thread(target=from_server, daemon=True).start()
        from_client()
        with contextlib.suppress(OSError):
            upstream.close()

    def _fire(self, client_port: int) -> None:
        if self.fired.is_set():
            return
        try:
            self.on_store(client_port)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        self.fired.set()

    def stores(self, *, before: float | None = None, after: float | None = None) -> list[str]:
        with self._lock:
            return [
                line
                for at, line in self.commands
                if (before is None or at < before) and (after is None or at >= after)
            ]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()


# --- results ------------------------------------------------------------------------------


@dataclass
class Row:
    measurement: str
    before: str = ""
    target: str = ""
    measured: str = ""
    result: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def verdict(self, name: str, value: float | None, target: float, unit: str = " s") -> str:
        if value is None:
            self.missed.append(name)
            return "NOT met (never)"
        if value <= target:
            return "met"
        self.missed.append(name)
        return f"NOT met (+{value - target:.1f}{unit})"


def seconds(value: float | None, bound: float | None = None) -> str:
    if value is None:
        return f"> {bound:.0f} s (not within the bound)" if bound is not None else "never"
    return f"{value:.1f} s"


class Timeline:
    """When a polled value first changed, relative to ``t0``."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.events: list[tuple[float, str]] = []
        self._last: dict[str, Any] = {}

    def note(self, key: str, value: Any, now: float) -> None:
        if self._last.get(key, object()) != value:
            self._last[key] = value
            self.events.append((round(now - self.t0, 2), f"{key}={value}"))


# --- A: kill -9 mid first sync ------------------------------------------------------------


def bench_sync_crash(
    args: argparse.Namespace,
    env: dict[str, str],
    db: Database,
    user: MailUser,
    beat: Service,
    results: Results,
) -> list[Service]:
    name = "crash"
    total = args.messages
    expected = comparable(server_state(user))
    workers = [start_worker("w1", env, args.workdir), start_worker("w2", env, args.workdir)]
    for worker in workers:
        wait_ready(worker, [beat, *workers])
    child(env, "mailbox", name, user.server.host, str(user.server.imap_port), user.address,
          PASSWORD)  # fmt: skip
    child(env, "sync", name)
    say(f"A: first sync of {total} messages; kill -9 at {args.kill_at:.0%}")
    kill_when = max(1, int(total * args.kill_at))
    # Which worker lists it: the one holding a connection to Dovecot once rows arrive
    # (found before the kill, so the kill itself is a single call).
    victim = None
    deadline = time.monotonic() + 120
    while (listed := db.mirror(name)[0]) < kill_when:
        if time.monotonic() > deadline:
            raise BenchmarkError(f"A: only {listed} of {total} listed after 120 s")
        if victim is None and listed:
            victim = worker_holding(workers, remote_port=user.server.imap_port)
        time.sleep(0.005)
    if victim is None:
        raise BenchmarkError("A: no worker holds a connection to Dovecot mid-sync")
    t_kill = kill_worker(victim)
    listed_at_kill, extracted_at_kill = db.mirror(name)
    # The dead worker's lease: renewed no more, so the folder is free from then on.
    expires = db.lease_expires(name)
    lease_free = None if expires is None else max(0.0, expires - t_kill)
    survivors = [w for w in workers if w is not victim]
    say(f"A: killed {victim.name} with {listed_at_kill} of {total} listed; waiting")

    timeline = Timeline(t_kill)
    resumed = listed_all = extracted_all = done = None
    bound = time.monotonic() + args.recovery_timeout
    exports = 0
    while time.monotonic() < bound:
        now = time.time()
        listed, extracted = db.mirror(name)
        timeline.note("status", db.status(name), now)
        if resumed is None and listed > listed_at_kill:
            resumed = now - t_kill
        if listed_all is None and listed >= total:
            listed_all = now - t_kill
        if extracted_all is None and extracted >= total:
            extracted_all = now - t_kill
        if listed >= total and extracted >= total:
            exports += 1
            export = comparable(parse_export(manage(env, "exportmailbox", name)))
            if export == expected:
                done = now - t_kill
                break
        time.sleep(0.1)
    timeline.note("status", db.status(name), time.time())
    listed, extracted = db.mirror(name)
    results.raw["sync_crash"] = {
        "messages": total,
        "listed_at_kill": listed_at_kill,
        "extracted_at_kill": extracted_at_kill,
        "killed": victim.name,
        "lease_free_s": lease_free,
        "resumed_s": resumed,
        "listed_s": listed_all,
        "extracted_s": extracted_all,
        "complete_s": done,
        "exports_compared": exports,
        "listed_at_end": listed,
        "extracted_at_end": extracted,
        "status_timeline": timeline.events,
    }
    results.rows += [
        Row(
            f"A. kill -9 mid first sync ({total} messages) -> complete, extracted mirror",
            BEFORE["sync"],
            f"<= {TARGET_SYNC_S:.0f} s",
            seconds(done, args.recovery_timeout),
            results.verdict("A", done, TARGET_SYNC_S),
        ),
        Row(f"   listed / extracted when killed: {listed_at_kill} / {extracted_at_kill}"),
        Row(
            "   the dead worker's lease ran out: "
            + ("not held" if lease_free is None else f"{lease_free:.1f} s")
            + f"; listing resumed: {seconds(resumed, args.recovery_timeout)}"
        ),
        Row(
            f"   all {total} listed: {seconds(listed_all, args.recovery_timeout)}; all with "
            f"text: {seconds(extracted_all, args.recovery_timeout)}"
        ),
        Row(f"   at the end: {listed} listed, {extracted} with text; export compared {exports}x"),
        Row("   mailbox status: " + ", ".join(f"{e} at {t:+.1f} s" for t, e in timeline.events)),
    ]
    if done is None:
        results.warnings.append(
            f"A: no complete, extracted mirror within {args.recovery_timeout:.0f} s "
            f"({listed} listed, {extracted} extracted of {total})"
        )
    return survivors


# --- B: a dead pusher ---------------------------------------------------------------------


class FlagWatcher(SeenWatcher):
    """Another mail client polling with NOOP (every 20 ms): when each UID first had the
    flag a staff change wants (``wanted``: UID -> flag)."""

    def __init__(self, user: MailUser, wanted: dict[int, str]) -> None:
        self.wanted = wanted
        super().__init__(user, "poll")

    def _note(self, response: Any, now: float) -> None:
        if not isinstance(response, tuple) or len(response) < 3 or response[1] != b"FETCH":
            return
        items = response[2]
        data = {items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}
        uid = data.get(b"UID")
        uid = int(uid) if uid is not None else self.uid_of_seq.get(int(response[0]))
        flags = {f.decode() if isinstance(f, bytes) else f for f in data.get(b"FLAGS", ())}
        if uid in self.wanted and self.wanted[uid] in flags:
            self.seen_at.setdefault(uid, now)


def stores_per_change(commands: list[str], changes: dict[int, str]) -> dict[int, int]:
    """UID STORE commands that named each change's UID with its flag."""
    by_flag = {flag: stores_per_uid(commands, flag) for flag in set(changes.values())}
    return {uid: by_flag[flag].get(uid, 0) for uid, flag in changes.items()}


def store_verdict(results: Results, stores: dict[int, int]) -> str:
    """Met when every change went out in exactly one UID STORE."""
    never = sum(1 for n in stores.values() if n == 0)
    if never:
        results.missed.append("STORE")
        return f"NOT met ({never} never sent)"
    return results.verdict("STORE", float(max(stores.values())), TARGET_STORES, unit=" STORE")


def bench_dead_pusher(
    args: argparse.Namespace,
    env: dict[str, str],
    db: Database,
    user: MailUser,
    beat: Service,
    workers: list[Service],
    results: Results,
) -> None:
    name = "pusher"
    workers.append(start_worker("w3", env, args.workdir))
    wait_ready(workers[-1], [beat, *workers])
    killed: dict[str, Any] = {}

    def on_store(client_port: int) -> None:
        victim = worker_holding(workers, local_port=client_port)
        if victim is None:
            raise BenchmarkError("B: no worker owns the connection that sent the STORE")
        killed["at"] = kill_worker(victim)
        killed["worker"] = victim.name

    trap = StoreTrap(user.server.imap_port, on_store)
    watcher: FlagWatcher | None = None
    try:
        child(env, "mailbox", name, "127.0.0.1", str(trap.port), user.address, PASSWORD)
        child(env, "sync", name)
        wait_until(
            lambda: db.mirror(name)[0] >= args.changes,
            timeout=60,
            what=f"the {args.changes} messages of the pusher mailbox to be listed",
            services=[beat, *workers],
        )
        # The changes go to the lowest unread UIDs, every other one read / flagged.
        uids = user.uids()[: args.changes]
        wanted = {uid: SEEN if n % 2 == 0 else FLAGGED for n, uid in enumerate(uids)}
        watcher = FlagWatcher(user, wanted)
        trap.armed.set()
        say(f"B: {args.changes} staff changes; kill -9 once Dovecot answered a UID STORE")
        t_changes = time.time()
        made = {
            int(uid): flag
            for uid, flag in json.loads(child(env, "changes", name, str(args.changes)))
        }
        if made != wanted:
            raise BenchmarkError(f"B: {len(made)} changes made, not the {len(wanted)} wanted")
        if not trap.fired.wait(60):
            raise BenchmarkError("B: no UID STORE reached Dovecot within 60 s of the changes")
        if trap.error is not None:
            raise BenchmarkError(f"B: {trap.error}")
        t_kill = killed["at"]
        say(f"B: killed {killed['worker']} {t_kill - t_changes:.1f} s after the changes")
        outbox_at_kill = db.outbox(name)

        timeline = Timeline(t_kill)
        on_server = outbox_done = None
        bound = time.monotonic() + args.recovery_timeout
        while time.monotonic() < bound:
            watcher.check()
            now = time.time()
            outbox = db.outbox(name)
            timeline.note("outbox", outbox, now)
            if on_server is None and all(u in watcher.seen_at for u in uids):
                on_server = max(0.0, max(watcher.seen_at[u] for u in uids) - t_kill)
            if outbox_done is None and outbox.get("done", 0) == len(uids) == sum(outbox.values()):
                outbox_done = now - t_kill
            if on_server is not None and outbox_done is not None:
                break
            time.sleep(0.05)
        # Applied before the kill: what Dovecot had before the worker died (the poller sees
        # it within 20 ms; the kill waited for Dovecot's answer).
        applied = sum(1 for u in uids if watcher.seen_at.get(u, math.inf) < t_kill + 0.1)
        watcher.stop()
        watcher = None
        # Count what was sent once every IMAP session is closed (Dovecot writes a session's
        # rawlog when it ends).
        stop_services()
        final_flags = user.flags()
        on_server_end = sum(1 for u, flag in wanted.items() if flag in final_flags.get(u, set()))
        rawlog = stores_per_change(user.rawlog_commands(timeout=10), wanted)
        before_kill = stores_per_change(trap.stores(before=t_kill), wanted)
        after_kill = stores_per_change(trap.stores(after=t_kill), wanted)
    finally:
        if watcher is not None:
            watcher.stop()
        trap.close()

    total_stores = sum(rawlog.values())
    after = list(after_kill.values())
    per_change_after = sum(after) / len(uids)
    modified_after = sum(1 for at in trap.modified if at >= t_kill)
    results.raw["dead_pusher"] = {
        "changes": {str(u): f for u, f in wanted.items()},
        "killed": killed.get("worker"),
        "applied_before_kill": applied,
        "outbox_at_kill": outbox_at_kill,
        "on_server_s": on_server,
        "outbox_done_s": outbox_done,
        "on_server_at_end": on_server_end,
        "outbox_timeline": timeline.events,
        "stores_rawlog_per_change": {str(u): n for u, n in rawlog.items()},
        "stores_before_kill_per_change": {str(u): n for u, n in before_kill.items()},
        "stores_after_kill_per_change": {str(u): n for u, n in after_kill.items()},
        "modified_answers_after_kill": modified_after,
    }
    results.rows += [
        Row(
            f"B. dead pusher -> all {len(uids)} changes on the server",
            BEFORE["push"],
            f"<= {TARGET_PUSH_S:.0f} s",
            seconds(on_server, args.recovery_timeout),
            results.verdict("B", on_server, TARGET_PUSH_S),
        ),
        Row(
            f"   applied by Dovecot before the kill (answer held back): {applied} of "
            f"{len(uids)}; outbox at the kill {outbox_at_kill}"
        ),
        Row(f"   outbox rows all done: {seconds(outbox_done, args.recovery_timeout)}"),
        Row("   outbox: " + ", ".join(f"{e} at {t:+.1f} s" for t, e in timeline.events)),
        Row(
            "C. UID STORE per staff change, the crash included (mean; max)",
            BEFORE["stores"],
            f"{TARGET_STORES:.0f}",
            f"{total_stores / len(uids):.2f}; {max(rawlog.values())}",
            store_verdict(results, rawlog),
        ),
        Row(
            f"   rawlog: {total_stores} for {len(uids)} changes; the relay saw "
            f"{sum(before_kill.values())} before the kill and {sum(after)} after "
            f"({per_change_after:.2f} per change, max {max(after)}); "
            f"[MODIFIED] answers after the kill: {modified_after}"
        ),
    ]
    if on_server_end != len(uids):
        results.warnings.append(f"B: only {on_server_end} of {len(uids)} changes on the server")
    if total_stores != sum(before_kill.values()) + sum(after):
        results.warnings.append(
            f"B: the rawlog counts {total_stores} STOREs, the relay "
            f"{sum(before_kill.values()) + sum(after)}"
        )


# --- D: first sync through a cut ----------------------------------------------------------


def load_faultproxy() -> Any | None:
    try:
        return importlib.import_module("tests.support.faultproxy")
    except ImportError:
        return None


@contextlib.contextmanager
def cutting_proxy(module: Any, target_port: int, cut_bytes: int) -> Iterator[Any]:
    """The fault proxy in front of Dovecot, cutting each connection once ``cut_bytes``
    went from the server to the client."""
    with module.FaultProxy("127.0.0.1", target_port) as proxy:
        proxy.cut(server_to_client=cut_bytes)
        yield proxy


def bench_cut(
    args: argparse.Namespace, env: dict[str, str], db: Database, user: MailUser, results: Results
) -> None:
    label = f"D. first sync through a {args.cut_bytes // 1024} KB cut ({args.cut_messages} msgs)"
    module = load_faultproxy()
    if module is None:
        results.rows.append(Row(label, BEFORE["cut"], "(report)", "not measured: proxy missing"))
        return
    name = "cut"
    expected = comparable(server_state(user))
    with cutting_proxy(module, user.server.imap_port, args.cut_bytes) as proxy:
        child(env, "mailbox", name, "127.0.0.1", str(proxy.port), user.address, PASSWORD)
        say(f"D: syncmailbox --once through a {args.cut_bytes}-byte cut")
        started = time.monotonic()
        bound = args.recovery_timeout * 2
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "syncmailbox", name, "--once"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its extraction pool dies with it on a timeout
        )
        try:
            output = process.communicate(timeout=bound)[0].decode(errors="replace")
            elapsed: float | None = time.monotonic() - started
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0].decode(errors="replace")
            elapsed = None
        cuts, connections = int(proxy.cuts), int(proxy.connections)
    (args.workdir / "cut-sync.log").write_text(output)
    listed = db.mirror(name)[0]
    export = comparable(parse_export(manage(env, "exportmailbox", name)))
    equal = export == expected
    dead = db.dead_letters(name)
    status = db.status(name)
    results.raw["cut"] = {
        "cut_bytes": args.cut_bytes,
        "messages": len(expected),
        "seconds": elapsed,
        "exit": process.returncode,
        "listed": listed,
        "export_equals_server": equal,
        "dead_letters": dead,
        "connections": connections,
        "cuts": cuts,
        "status": status,
        "output_tail": output[-2000:],
    }
    results.rows += [
        Row(
            label,
            BEFORE["cut"],
            "(report)",
            f"{seconds(elapsed, bound)}, {listed} of {len(expected)} stored",
            "export equals the server" if equal else "export differs",
        ),
        Row(
            f"   exit {process.returncode}, status {status!r}, {dead} dead letters, "
            f"{connections} connections of which {cuts} cut"
        ),
    ]


# --- the run ------------------------------------------------------------------------------


def print_table(results: Results) -> None:
    header = Row("measurement", "before (issue)", "target", "measured", "result")
    main_rows = [r for r in results.rows if r.before or r.target]
    widths = [
        max(len(getattr(r, f)) for r in [header, *main_rows])
        for f in ("measurement", "before", "target", "measured")
    ]
    print()
    for row in [header, *results.rows]:
        if row is header or row.before or row.target:
            cells = [row.measurement, row.before, row.target, row.measured]
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)), row.result)
        else:
            print(row.measurement)
    for line in results.warnings:
        print(f"WARNING: {line}")


class Deadline(Exception):
    """The whole run took longer than --timeout."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Deadline()


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="A: first sync size (3000)")
    parser.add_argument(
        "--kill-at", type=float, default=0.4, help="A: kill when this share is listed"
    )
    parser.add_argument("--changes", type=int, default=50, help="B: staff changes (50)")
    parser.add_argument("--cut-messages", type=int, default=300, help="D: mailbox size (300)")
    parser.add_argument("--cut-bytes", type=int, default=32 * 1024, help="D: cut after (32 KB)")
    parser.add_argument("--skip-cut", action="store_true", help="leave D out")
    parser.add_argument(
        "--recovery-timeout", type=float, default=90, help="bound for each recovery (90 s)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/teaminbox_crash",
        help="its database is dropped and created: the name must contain 'crash'",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="flushed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/teaminbox-crash"))
    parser.add_argument("--seed", type=int, default=20251101)
    parser.add_argument("--timeout", type=int, default=600, help="bound for the whole run (s)")
    args = parser.parse_args()
    database = urlsplit(args.database_url).path.lstrip("/")
    if "crash" not in database or not database.replace("_", "").isalnum():
        parser.error("--database-url: the database name must contain 'crash' (it is dropped)")
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at: a share between 0 and 1")
    return args


def setup_users(server: DovecotServer, args: argparse.Namespace) -> dict[str, MailUser]:
    tag = secrets.token_hex(3)
    users = {
        name: server.add_user(f"{name}-{tag}@example.test", PASSWORD)
        for name in ("crash", "pusher", "cut")
    }
    crash = users["crash"]
    crash.deliver_bulk(corpus.generate(args.messages, args.seed))
    with crash.imap() as client:  # Dovecot assigns the UIDs, builds its index; flags as in life
        client.select_folder("INBOX")
        uids = sorted(int(uid) for uid in client.search("ALL"))
        for flag, positions in corpus.initial_flags(args.messages, args.seed).items():
            chosen = [uids[p - 1] for p in positions]
            for start in range(0, len(chosen), 1000):
                client.add_flags(chosen[start : start + 1000], [flag], silent=True)
    # Mail that arrived one by one, as it does: each message its own modseq.
    pusher = users["pusher"]
    pusher.enable_rawlog()
    with pusher.imap() as client:
        for raw in make_messages(args.changes, pusher.address):
            client.append("INBOX", raw)
    if not args.skip_cut:
        users["cut"].deliver_bulk(corpus.generate(args.cut_messages, args.seed + 1))
    return users


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    signal.alarm(args.timeout)
    began = time.monotonic()
    results = Results()
    server: DovecotServer | None = None
    db: Database | None = None
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
        for old in [*args.workdir.glob("*.log"), args.workdir / "celerybeat-schedule"]:
            old.unlink(missing_ok=True)
        stop_stale_dovecot(args.workdir)
        shutil.rmtree(args.workdir / "dovecot", ignore_errors=True)
        server = DovecotServer.start(args.workdir, "dovecot", extra_config=RAWLOG_CONFIG)
        users = setup_users(server, args)
        say(f"dovecot on :{server.imap_port}: {args.messages} + {args.changes} messages")

        import redis  # the venv has it (Celery's Redis transport)

        redis.Redis.from_url(args.redis_url).flushdb()
        database = urlsplit(args.database_url).path.lstrip("/")
        psql(args.database_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        psql(args.database_url, f"CREATE DATABASE {database}")
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "teaminbox.settings",
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "TEAMINBOX_VAR_DIR": str(args.workdir / "var"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),  # this checkout's code, also in a git worktree
        }
        for name in ("CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "MAILBOX_PASSWORD"):
            env.pop(name, None)
        manage(env, "ensurekeys")
        manage(env, "migrate", "-v0")
        db = Database(args.database_url)
        beat = start_service(
            "beat",
            [str(VENV_BIN / "celery"), "-A", "teaminbox", "beat", "-l", "info",
             "-s", str(args.workdir / "celerybeat-schedule")],
            env,
            args.workdir,
        )  # fmt: skip
        say(f"setup done in {time.monotonic() - began:.1f} s")

        survivors = bench_sync_crash(args, env, db, users["crash"], beat, results)
        bench_dead_pusher(args, env, db, users["pusher"], beat, survivors, results)
        stop_services()
        if not args.skip_cut:
            bench_cut(args, env, db, users["cut"], results)
    finally:
        signal.alarm(0)
        stop_services()
        if db is not None:
            db.close()
        if server is not None:
            server.stop()
            shutil.rmtree(server.mail_dir, ignore_errors=True)  # the logs stay

    print_table(results)
    print(f"whole run: {time.monotonic() - began:.1f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "targets": {
                        "sync_s": TARGET_SYNC_S,
                        "push_s": TARGET_PUSH_S,
                        "stores_per_change": TARGET_STORES,
                    },
                    "rows": [vars(r) for r in results.rows],
                    "raw": results.raw,
                    "warnings": results.warnings,
                    "missed": results.missed,
                    "load_average": os.getloadavg(),
                    "cpus": os.cpu_count(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=2,
                default=str,
            )
        )
    return 1 if results.missed or results.warnings else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Deadline:
        print("the run took longer than --timeout and was stopped", file=sys.stderr)
        sys.exit(2)
    except BenchmarkError as exc:
        print(f"crash_recovery: {exc}", file=sys.stderr)
        sys.exit(2)
