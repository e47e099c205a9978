"""Click-to-server latency: a staff click in the web app until the IMAP server has the flag.

    .venv/bin/python benchmarks/click_latency.py [--changes 200] [--json out.json]

One command, one table (and JSON). Starts its own Dovecot (tests/support/dovecot.py) with
one user holding enough unread messages, a fresh PostgreSQL database (teaminbox_latency:
dropped, created, migrated), Redis database 14 (flushed), then the real parts as separate
processes: gunicorn (2 sync workers) and a Celery worker (prefork, concurrency 2). A
client logs in at /login/ and clicks "Mark read" through the web endpoint
(POST /m/<mailbox>/messages/<id>/flags/, as htmx sends it) on --changes different
messages, one every --interval seconds; then --burst more back to back. Another IMAP
connection sends NOOP every 20 ms and timestamps the first untagged FETCH with \\Seen for
each UID; a third waits in IDLE, as a colleague's mail client would (reported only:
Dovecot delays IDLE pushes by up to 500 ms).

latency = the time the poller saw the flag - the time the click's request started.
Target (from the issue): p95 <= 1 s over the paced changes. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from http.cookies import SimpleCookie
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imapclient import IMAPClient  # noqa: E402

from mailsync.engine.imap import ImapSession  # noqa: E402
from tests.support.dovecot import DovecotServer, MailUser  # noqa: E402

TARGET_P95_S = 1.0
MAILBOX_NAME = "latency"
STAFF_USER = "clicker"
WARMUP_CHANGES = 4
VENV_BIN = Path(sys.executable).parent

# Runs in a child process with the benchmark's DATABASE_URL: Django set up the usual way.
CHILD = r"""
import json, os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teaminbox.settings")
django.setup()
from django.contrib.auth.models import User
from mailsync.models import FlagChange, Folder, Mailbox, Message
from teaminbox.models import Membership

mode, name = sys.argv[1], sys.argv[2]
if mode == "setup":
    username, password, host, port, address, mail_password = sys.argv[3:9]
    user = User.objects.create_user(username, f"{username}@example.test", password)
    mailbox = Mailbox(name=name, email_address=address, protocol=Mailbox.Protocol.IMAP,
                      security=Mailbox.Security.PLAIN, host=host, port=int(port),
                      username=address, folder_names=["INBOX"], delete_mode="flag")
    mailbox.set_password(mail_password)
    mailbox.save()
    Membership.objects.create(user=user, mailbox=mailbox, role=Membership.Role.AGENT)
elif mode == "ids":
    folder = Folder.objects.get(mailbox__name=name, name="INBOX")
    rows = Message.objects.filter(folder=folder, expunged_at__isnull=True)
    print(json.dumps({str(uid): pk for uid, pk in rows.values_list("uid", "pk")}))
elif mode == "outbox":
    def ts(value):
        return value.timestamp() if value is not None else None
    rows = FlagChange.objects.filter(folder__mailbox__name=name).order_by("pk")
    print(json.dumps([
        {"uid": c.uid, "flag": c.flag, "add": c.add, "state": c.state, "attempts": c.attempts,
         "claimed_by": c.claimed_by, "created_at": ts(c.created_at),
         "claimed_at": ts(c.claimed_at), "done_at": ts(c.done_at), "last_error": c.last_error}
        for c in rows
    ]))
"""


class BenchmarkError(RuntimeError):
    """Something the benchmark needs did not happen in time (the message says what)."""


# --- child processes (each in its own session, ended by its process group id) ------------


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


_services: list[Service] = []


def start_service(name: str, cmd: list[str], env: dict[str, str], workdir: Path) -> Service:
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(name, process, log_path)
    _services.append(service)
    return service


def stop_services(grace: float = 5.0) -> None:
    """SIGTERM each service's process group, SIGKILL what is left after ``grace`` s."""
    for service in _services:
        if service.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for service in _services:
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for service in _services:
        # the group may outlive its leader (pool children): kill it whatever the leader did
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=5)
    _services.clear()


def run_step(cmd: list[str], env: dict[str, str], *, timeout: float, what: str) -> str:
    process = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:  # timeout, Ctrl-C, the overall deadline
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if process.returncode != 0:
        raise BenchmarkError(
            f"{what} exited {process.returncode}:\n{err.decode(errors='replace')[-3000:]}"
        )
    return out.decode()


def child(mode: str, *args: str, env: dict[str, str]) -> str:
    return run_step(
        [sys.executable, "-c", CHILD, mode, MAILBOX_NAME, *args],
        env,
        timeout=60,
        what=f"the {mode} child",
    )


def psql(database_url: str, sql: str) -> None:
    url = urlsplit(database_url)
    subprocess.run(
        [
            "psql",
            "-h", url.hostname or "127.0.0.1",
            "-p", str(url.port or 5432),
            "-U", url.username or "postgres",
            "-d", "postgres",
            "-qc", sql,
        ],
        check=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, **({"PGPASSWORD": url.password} if url.password else {})},
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Any, *, timeout: float, what: str, services: list[Service]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for service in services:
            if not service.alive():
                raise BenchmarkError(f"{service.name} died:\n{service.log_tail()}")
        if check():
            return
        if time.monotonic() >= deadline:
            raise BenchmarkError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# --- the mailbox --------------------------------------------------------------------------


def make_messages(count: int, address: str) -> list[bytes]:
    raws = []
    for n in range(count):
        message = EmailMessage()
        message["From"] = f"Customer {n} <customer{n}@example.org>"
        message["To"] = address
        message["Subject"] = f"Order {10000 + n}: where is my parcel?"
        message["Date"] = format_datetime(datetime.fromtimestamp(1_760_000_000 + 60 * n))
        message["Message-ID"] = f"<latency-{n}-{secrets.token_hex(4)}@example.org>"
        message.set_content(f"Hello,\n\nmy order {10000 + n} has not arrived yet.\n\nThanks\n")
        raws.append(bytes(message))
    return raws


class SeenWatcher:
    """Another mail client on its own connection and thread, noting when each UID was
    first reported \\Seen in an untagged FETCH.

    ``poll``: NOOP every ``interval`` s (Dovecot syncs the mailbox on NOOP and reports what
    other sessions changed): the time the flag is on the server, to within one interval.
    ``idle``: IDLE, as Thunderbird or Outlook would wait; Dovecot batches IDLE pushes
    with a 500 ms timer after its inotify wake-up (NOTIFY_DELAY_MSECS in mailbox-watch.c),
    so this is what a colleague's client sees, not when the server had it."""

    def __init__(self, user: MailUser, mode: str, interval: float = 0.02) -> None:
        self.mode = mode
        self.interval = interval
        self.client = IMAPClient(user.server.host, port=user.server.imap_port, ssl=False)
        self.client.login(user.address, user.password)
        capabilities = {c.decode().upper() for c in self.client.capabilities()}
        if "QRESYNC" in capabilities:  # Dovecot then puts the UID into every FETCH
            self.client.enable("QRESYNC")
        exists = int(self.client.select_folder("INBOX", readonly=True)[b"EXISTS"])
        # Sequence number -> UID as it stands now (nothing is expunged during the run).
        self.client.use_uid = False
        response = self.client.fetch(list(range(1, exists + 1)), ["UID"]) if exists else {}
        self.client.use_uid = True
        self.uid_of_seq: dict[int, int] = {int(s): int(d[b"UID"]) for s, d in response.items()}
        self.seen_at: dict[int, float] = {}
        self.polls = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{mode}-watcher", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchmarkError(f"the {mode} watcher did not start")

    def _run(self) -> None:
        try:
            if self.mode == "idle":
                self.client.idle()
            self._ready.set()
            while not self._stop.is_set():
                if self.mode == "idle":
                    responses = self.client.idle_check(timeout=0.2)
                else:
                    responses = self.client.noop()[1]
                    self.polls += 1
                now = time.time()
                for response in responses:
                    self._note(response, now)
                if self.mode == "poll":
                    self._stop.wait(self.interval)
            if self.mode == "idle":
                self.client.idle_done()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self._ready.set()

    def _note(self, response: Any, now: float) -> None:
        if not isinstance(response, tuple) or len(response) < 3 or response[1] != b"FETCH":
            return
        items = response[2]
        data = {items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}
        uid = data.get(b"UID")
        uid = int(uid) if uid is not None else self.uid_of_seq.get(int(response[0]))
        flags = {f.decode() if isinstance(f, bytes) else f for f in data.get(b"FLAGS", ())}
        if uid is not None and "\\Seen" in flags:
            self.seen_at.setdefault(uid, now)

    def check(self) -> None:
        if self.error is not None:
            raise BenchmarkError(f"the {self.mode} watcher failed: {self.error!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.client.logout()


def server_seen(user: MailUser, uids: list[int]) -> set[int]:
    """What the server says at the end, over a fresh connection: the UIDs that are \\Seen."""
    flags = user.flags()
    return {uid for uid in uids if "\\Seen" in flags.get(uid, set())}


# --- the web client -------------------------------------------------------------------


class WebClient:
    """A browser's requests, over http.client: cookies kept, CSRF token sent as htmx does
    (X-CSRFToken), redirects not followed. Gunicorn's sync workers close every connection,
    so each request opens its own (as they would behind no keep-alive proxy)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, htmx: bool = False
    ) -> tuple[int, bytes, dict[str, str]]:
        headers = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            if "csrftoken" in self.cookies:
                headers["X-CSRFToken"] = self.cookies["csrftoken"]
        if htmx:
            headers["HX-Request"] = "true"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
            for header in response.headers.get_all("Set-Cookie") or []:
                cookie: SimpleCookie = SimpleCookie()
                cookie.load(header)
                for name, morsel in cookie.items():
                    self.cookies[name] = morsel.value
            return response.status, content, dict(response.headers.items())
        finally:
            connection.close()

    def up(self) -> bool:
        try:
            return self.request("GET", "/login/")[0] == 200
        except OSError:
            return False

    def login(self, username: str, password: str) -> None:
        status, _, _ = self.request("GET", "/login/")
        if status != 200 or "csrftoken" not in self.cookies:
            raise BenchmarkError(f"GET /login/ answered {status} without a CSRF cookie")
        form = {
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": self.cookies["csrftoken"],
        }
        status, _, headers = self.request("POST", "/login/", form)
        if status != 302 or "sessionid" not in self.cookies:
            raise BenchmarkError(f"login refused (HTTP {status}, {headers.get('Location')})")


@dataclass
class Click:
    phase: str
    uid: int
    message_id: int
    started: float
    responded: float = 0.0
    status: int = 0
    server_s: float | None = None  # gunicorn's own request time (access log)
    seen: float | None = None  # the poller: on the server
    idle_seen: float | None = None  # a colleague's client in IDLE was told
    # from the outbox row (the web and worker processes' clocks: same machine)
    created_at: float | None = None
    claimed_at: float | None = None
    done_at: float | None = None
    push: str = ""

    @property
    def latency(self) -> float | None:
        return None if self.seen is None else self.seen - self.started

    @property
    def idle_latency(self) -> float | None:
        return None if self.idle_seen is None else self.idle_seen - self.started


def click(web: WebClient, phase: str, uid: int, message_id: int) -> Click:
    record = Click(phase=phase, uid=uid, message_id=message_id, started=time.time())
    try:
        status, _, _ = web.request(
            "POST", f"/m/{MAILBOX_NAME}/messages/{message_id}/flags/", {"action": "read"}, True
        )
    except OSError:
        status = -1
    record.responded = time.time()
    record.status = status
    return record


def wait_for_seen(
    poller: SeenWatcher,
    idler: SeenWatcher,
    clicks: list[Click],
    timeout: float,
    services: list[Service],
) -> None:
    """Until both watchers saw every accepted click (or ``timeout``), then note the times."""

    def arrived() -> bool:
        poller.check()
        idler.check()
        wanted = [c.uid for c in clicks if c.status == 200]
        return all(u in poller.seen_at and u in idler.seen_at for u in wanted)

    with contextlib.suppress(BenchmarkError):
        wait_until(arrived, timeout=timeout, what="the flags", services=services)
    poller.check()
    idler.check()
    for record in clicks:
        record.seen = poller.seen_at.get(record.uid)
        record.idle_seen = idler.seen_at.get(record.uid)


# --- numbers ---------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Stats:
    n: int
    p50: float
    p95: float
    max: float
    mean: float


def stats(values: list[float]) -> Stats | None:
    if not values:
        return None
    return Stats(
        n=len(values),
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        max=max(values),
        mean=statistics.fmean(values),
    )


def measure_session_setup(user: MailUser, rounds: int) -> dict[str, Stats | None]:
    """What every push task pays around its STORE, step by step as the engine's
    ImapSession.connect does it (TCP + greeting, LOGIN, CAPABILITY, ENABLE), then SELECT
    and LOGOUT: timed here against the same Dovecot, nothing else running."""
    steps: dict[str, list[float]] = {
        k: []
        for k in ("TCP connect + greeting", "LOGIN", "CAPABILITY + ENABLE", "SELECT", "LOGOUT")
    }
    for _ in range(rounds):
        t0 = time.perf_counter()
        client = IMAPClient(user.server.host, port=user.server.imap_port, ssl=False, timeout=10)
        t1 = time.perf_counter()
        client.login(user.address, user.password)
        t2 = time.perf_counter()
        client._cached_capabilities = None
        client.capabilities()
        client.enable("QRESYNC")
        t3 = time.perf_counter()
        client.select_folder("INBOX")
        t4 = time.perf_counter()
        client.logout()
        t5 = time.perf_counter()
        for name, value in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            steps[name].append(value)
    result = {name: stats(values) for name, values in steps.items()}
    result["these five together"] = stats(
        [sum(values) for values in zip(*steps.values(), strict=True)]
    )
    # The same, through the engine, as runner.push_folder_changes does it.
    account = user.account()
    engine, contexts = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        session = ImapSession.connect(account, timeout=10)
        session.select("INBOX")
        session.close()
        engine.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ssl.create_default_context()
        contexts.append(time.perf_counter() - t0)
    result["engine: ImapSession.connect, select, close"] = stats(engine)
    result["  of which ssl.create_default_context()"] = stats(contexts)
    return result


@dataclass
class Phase:
    name: str
    clicks: list[Click] = field(default_factory=list)
    wall_s: float = 0.0

    def arrived(self) -> list[Click]:
        return [c for c in self.clicks if c.latency is not None]

    def failed(self) -> list[Click]:
        return [c for c in self.clicks if c.latency is None]

    def latency(self, idle: bool = False) -> Stats | None:
        # a change that never arrived counts as infinitely late, so p95 cannot hide it
        values = [c.idle_latency if idle else c.latency for c in self.clicks]
        return stats([math.inf if v is None else v for v in values])

    def part(self, start: str, end: str) -> Stats | None:
        values = []
        for record in self.clicks:
            a, b = getattr(record, start), getattr(record, end)
            if a is not None and b is not None:
                values.append(b - a)
        return stats(values)

    def part_value(self, name: str) -> Stats | None:
        return stats([v for c in self.clicks if (v := getattr(c, name)) is not None])

    def pushes(self) -> int:
        return len({c.push for c in self.clicks if c.push})


def ms(value: float) -> str:
    return "never" if math.isinf(value) else f"{value * 1000:.0f}"


def print_table(phases: list[Phase], setup: dict[str, Stats | None], interval: float) -> bool:
    rows: list[tuple[str, Stats | None, str, str]] = []
    met = False
    for phase in phases:
        if not phase.clicks:
            continue
        paced = phase.name == "paced"
        label = f"every {interval * 1000:.0f} ms" if paced else "back to back"
        latency = phase.latency()
        verdict = ""
        if paced and latency is not None:
            met = latency.p95 <= TARGET_P95_S
            verdict = "met" if met else "NOT met"
        rows += [
            (f"click -> on the server ({phase.name}, {label})", latency,
             f"p95 <= {TARGET_P95_S * 1000:.0f}" if paced else "(report)", verdict),
            ("  HTTP response (click round trip)", phase.part("started", "responded"), "", ""),
            ("  inside gunicorn (its access log)", phase.part_value("server_s"), "", ""),
            ("  click -> outbox row written (web)", phase.part("started", "created_at"), "", ""),
            ("  outbox row -> claimed (enqueue, pickup, IMAP login)",
             phase.part("created_at", "claimed_at"), "", ""),
            ("  claimed -> done (SELECT, UID STORE, UPDATE)",
             phase.part("claimed_at", "done_at"), "", ""),
            ("  done -> seen by the poller (NOOP every 20 ms)",
             phase.part("done_at", "seen"), "", ""),
            ("  click -> a colleague's IDLE client told", phase.latency(idle=True), "(report)", ""),
        ]  # fmt: skip
    for name, value in setup.items():
        rows.append((f"IMAP session alone: {name}", value, "", ""))
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'measurement (ms)':<{width}}  {'n':>4}  {'p50':>6}  {'p95':>6}  {'max':>6}  "
          f"{'mean':>6}  {'target':>9}  result")  # fmt: skip
    for name, value, target, verdict in rows:
        if value is None:
            print(f"{name:<{width}}  {'-':>4}")
            continue
        print(
            f"{name:<{width}}  {value.n:>4}  {ms(value.p50):>6}  {ms(value.p95):>6}  "
            f"{ms(value.max):>6}  {ms(value.mean):>6}  {target:>9}  {verdict}"
        )
    for phase in phases:
        if phase.clicks:
            changes = sum(1 for c in phase.clicks if c.push)
            print(
                f"{phase.name}: {len(phase.clicks)} clicks in {phase.wall_s:.1f} s, "
                f"{len(phase.failed())} not on the server, "
                f"{sum(1 for c in phase.clicks if c.status != 200)} HTTP errors, "
                f"{phase.pushes()} pushes carried {changes} changes"
            )
    return met


# --- the run -----------------------------------------------------------------------------


class Deadline(Exception):
    """The whole run took longer than --timeout."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Deadline()


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200, help="paced clicks (default 200)")
    parser.add_argument(
        "--interval", type=float, default=0.1, help="seconds between paced clicks (0.1)"
    )
    parser.add_argument("--burst", type=int, default=50, help="back-to-back clicks; 0: none")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/teaminbox_latency",
        help="its database is dropped and created: the name must contain 'latency'",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="flushed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/teaminbox-latency"))
    parser.add_argument("--timeout", type=int, default=170, help="bound for the whole run (s)")
    args = parser.parse_args()
    database = urlsplit(args.database_url).path.lstrip("/")
    if "latency" not in database or not database.replace("_", "").isalnum():
        parser.error("--database-url: the database name must contain 'latency' (it is dropped)")

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    signal.alarm(args.timeout)
    began = time.monotonic()
    server: DovecotServer | None = None
    watchers: list[SeenWatcher] = []
    phases = [Phase("paced"), Phase("burst")]
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
        for old in args.workdir.glob("*.log"):
            old.unlink()
        shutil.rmtree(args.workdir / "dovecot", ignore_errors=True)
        server = DovecotServer.start(args.workdir, "dovecot")
        mail_password = secrets.token_hex(8)
        user = server.add_user(f"latency-{secrets.token_hex(3)}@example.test", mail_password)
        total = WARMUP_CHANGES + args.changes + args.burst
        user.deliver_bulk(make_messages(total, user.address))
        print(f"dovecot on :{server.imap_port}, {total} unread messages", file=sys.stderr)

        import redis  # the venv has it (Celery's Redis transport)

        redis.Redis.from_url(args.redis_url).flushdb()
        psql(args.database_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        psql(args.database_url, f"CREATE DATABASE {database}")
        staff_password = secrets.token_urlsafe(12)
        port = free_port()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "teaminbox.settings",
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "TEAMINBOX_VAR_DIR": str(args.workdir / "var"),
        }
        for name in ("CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "MAILBOX_PASSWORD"):
            env.pop(name, None)
        manage = [sys.executable, str(ROOT / "manage.py")]
        run_step([*manage, "ensurekeys"], env, timeout=60, what="manage.py ensurekeys")
        run_step([*manage, "migrate", "-v0"], env, timeout=120, what="manage.py migrate")
        child(
            "setup", STAFF_USER, staff_password, server.host, str(server.imap_port),
            user.address, mail_password, env=env,
        )  # fmt: skip
        run_step(
            [*manage, "syncmailbox", MAILBOX_NAME, "--once"],
            env,
            timeout=90,
            what="manage.py syncmailbox --once",
        )
        message_ids = {int(uid): pk for uid, pk in json.loads(child("ids", env=env)).items()}
        if len(message_ids) < total:
            raise BenchmarkError(f"only {len(message_ids)} of {total} messages were listed")
        uids = sorted(message_ids)
        warmup_uids = uids[:WARMUP_CHANGES]
        paced_uids = uids[WARMUP_CHANGES : WARMUP_CHANGES + args.changes]
        burst_uids = uids[WARMUP_CHANGES + args.changes : total]
        print(f"setup done in {time.monotonic() - began:.1f} s", file=sys.stderr)

        setup_stats = measure_session_setup(user, rounds=20)
        poller = SeenWatcher(user, "poll")
        watchers.append(poller)
        idler = SeenWatcher(user, "idle")
        watchers.append(idler)

        web_service = start_service(
            "gunicorn",
            [
                str(VENV_BIN / "gunicorn"), "teaminbox.wsgi",
                "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--access-logfile", str(args.workdir / "access.log"),
                "--access-logformat", "%(m)s %(U)s %(s)s %(D)s",
            ],
            env,
            args.workdir,
        )  # fmt: skip
        worker_service = start_service(
            "celery",
            [
                str(VENV_BIN / "celery"), "-A", "teaminbox", "worker", "--concurrency=2",
                "--without-gossip", "--without-mingle", "-l", "warning",
            ],
            env,
            args.workdir,
        )  # fmt: skip
        services = [web_service, worker_service]
        web = WebClient(port)
        wait_until(web.up, timeout=30, what="gunicorn to answer", services=services)
        web.login(STAFF_USER, staff_password)
        for _ in range(4):  # let both gunicorn workers render the login page once
            web.request("GET", "/login/")

        # Warm-up: proves the worker consumes (there is no other readiness signal at -l
        # warning) and gives every process its database and broker connections.
        warmup = []
        for uid in warmup_uids:
            warmup.append(click(web, "warmup", uid, message_ids[uid]))
            time.sleep(0.2)
        if any(c.status != 200 for c in warmup):
            raise BenchmarkError(f"warm-up clicks answered {[c.status for c in warmup]}")
        wait_for_seen(poller, idler, warmup, timeout=45, services=services)
        if any(c.seen is None for c in warmup):
            raise BenchmarkError(
                "the warm-up changes never reached the server:\n" + worker_service.log_tail()
            )
        time.sleep(0.5)

        print(
            f"{args.changes} clicks, one every {args.interval * 1000:.0f} ms ...", file=sys.stderr
        )
        paced = phases[0]
        t0 = time.time()
        for n, uid in enumerate(paced_uids):
            delay = t0 + n * args.interval - time.time()
            if delay > 0:
                time.sleep(delay)
            paced.clicks.append(click(web, "paced", uid, message_ids[uid]))
        paced.wall_s = time.time() - t0
        wait_for_seen(poller, idler, paced.clicks, timeout=20, services=services)

        if burst_uids:
            time.sleep(0.5)
            print(f"{len(burst_uids)} clicks back to back ...", file=sys.stderr)
            burst = phases[1]
            t0 = time.time()
            for uid in burst_uids:
                burst.clicks.append(click(web, "burst", uid, message_ids[uid]))
            burst.wall_s = time.time() - t0
            wait_for_seen(poller, idler, burst.clicks, timeout=20, services=services)

        polls = poller.polls
        for watcher in watchers:
            watcher.stop()
        watchers.clear()
        # The watchers and a fresh connection must agree.
        all_clicked = [c for p in phases for c in p.clicks]
        on_server = server_seen(user, [c.uid for c in all_clicked])
        missed = [
            c.uid
            for c in all_clicked
            if c.uid in on_server and (c.seen is None or c.idle_seen is None)
        ]
        seen_but_not_on_server = [c.uid for c in all_clicked if c.seen and c.uid not in on_server]

        outbox = json.loads(child("outbox", env=env))
        by_uid = {row["uid"]: row for row in outbox if row["flag"] == "\\Seen" and row["add"]}
        for record in all_clicked:
            row = by_uid.get(record.uid)
            if row is not None:
                record.created_at = row["created_at"]
                record.claimed_at = row["claimed_at"]
                record.done_at = row["done_at"]
                record.push = row["claimed_by"]
        not_done = [row for row in outbox if row["state"] != "done"]
        stop_services()  # flushes the access log
        request_us: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (args.workdir / "access.log").read_text().splitlines():
                parts = line.split()
                if len(parts) == 4 and parts[0] == "POST" and parts[1].endswith("/flags/"):
                    request_us[parts[1]] = int(parts[3])
        for record in all_clicked:
            path = f"/m/{MAILBOX_NAME}/messages/{record.message_id}/flags/"
            if path in request_us:
                record.server_s = request_us[path] / 1e6
    finally:
        signal.alarm(0)
        for watcher in watchers:
            watcher.stop()
        stop_services()
        if server is not None:
            server.stop()
            shutil.rmtree(server.mail_dir, ignore_errors=True)  # the logs stay

    met = print_table(phases, setup_stats, args.interval)
    warnings = []
    if missed:
        warnings.append(f"the watchers missed {len(missed)} changes the server has")
    if seen_but_not_on_server:
        warnings.append(f"{len(seen_but_not_on_server)} changes seen are not on the server")
    if not_done:
        warnings.append(f"{len(not_done)} outbox rows not done: {not_done[:3]}")
    for line in warnings:
        print(f"WARNING: {line}")
    print(f"whole run: {time.monotonic() - began:.1f} s")
    if args.json:
        result = {
            "target_p95_s": TARGET_P95_S,
            "met": met,
            "interval_s": args.interval,
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
            "phases": {
                p.name: {
                    "wall_s": p.wall_s,
                    "pushes": p.pushes(),
                    "latency": asdict(s) if (s := p.latency()) else None,
                    "idle_latency": asdict(s) if (s := p.latency(idle=True)) else None,
                    "http": asdict(s) if (s := p.part("started", "responded")) else None,
                    "clicks": [
                        asdict(c) | {"latency": c.latency, "idle_latency": c.idle_latency}
                        for c in p.clicks
                    ],
                }
                for p in phases
                if p.clicks
            },
            "imap_session_alone": {k: asdict(v) if v else None for k, v in setup_stats.items()},
            "poller": {"interval_s": 0.02, "polls": polls},
            "warnings": warnings,
        }
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if met and not warnings else 1


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
        print(f"click_latency: {exc}", file=sys.stderr)
        sys.exit(2)
