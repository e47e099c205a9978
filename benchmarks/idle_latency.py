"""IDLE latency: another client's change on the server -> the same change in the database.

    .venv/bin/python benchmarks/idle_latency.py [--samples 50] [--json out.json]

Starts its own Dovecot (tests/support/dovecot.py), a fresh PostgreSQL database
(teaminbox_idle_latency: dropped, created, migrated), Redis database 12 (flushed), and the
processes of docker-compose.yml with their command lines, started directly: a Celery
worker (``celery -A teaminbox worker --loglevel=info --concurrency=4``), beat, and the
IDLE watcher (``manage.py watchmailboxes``). After a first sync and the watcher's IDLE:

- new mail: another connection APPENDs a message; timed from the APPEND until its row is
  in the database (a query every 5 ms);
- flags: another connection sets \\Flagged on one of them (``UID STORE``); timed from the
  STORE until the row's ``flagged`` is true.

One change at a time, --pause s apart. Targets (issue 13): p95 <= 0.6 s for new mail,
<= 1.0 s for flags. Before the watcher, beat's safety-net sync every 60 s made it
0.8-43 s. The floor rows: when an IDLE client of the benchmark's own heard of the same
change. Dovecot 2.3 tells IDLE clients of any change (new mail too, here) about 0.5 s after
it (NOTIFY_DELAY_MSECS in mailbox-watch.c), so of the 0.6 s target for new mail about
0.1 s is ours: the hint's publish, the worker's pickup and the folder's sync.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from benchmarks.click_latency import (  # noqa: E402
    BenchmarkError,
    Deadline,
    Stats,
    _on_alarm,
    _on_term,
    make_messages,
    ms,
    psql,
    run_step,
    start_service,
    stats,
    stop_services,
    wait_until,
)
from benchmarks.sync_bench import stop_stale_dovecot  # noqa: E402
from mailsync.engine.imap import ImapSession  # noqa: E402
from tests.support.dovecot import DovecotServer, MailUser  # noqa: E402

VENV_BIN = Path(sys.executable).parent
MAILBOX = "idle"
TARGET_NEW_MAIL_S = 0.6
TARGET_FLAG_S = 1.0
BEFORE = "0.8-43 s (beat's sync every 60 s)"
POLL_S = 0.005

CHILD = r"""
import os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teaminbox.settings")
django.setup()
from mailsync.models import Mailbox
host, port, address, password = sys.argv[1:5]
mailbox = Mailbox(name="idle", email_address=address, protocol=Mailbox.Protocol.IMAP,
                  security=Mailbox.Security.PLAIN, host=host, port=int(port),
                  username=address, folder_names=["INBOX"], delete_mode="flag")
mailbox.set_password(password)
mailbox.save()
"""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Database:
    """Read directly with psycopg: the benchmark polls every few ms."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)

    def value(self, sql: str, *params: Any) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def watcher_state(self) -> str | None:
        return self.value(  # type: ignore[no-any-return]
            """SELECT l.state FROM mailsync_watcherlease l
               JOIN mailsync_mailbox b ON l.mailbox_id = b.id WHERE b.name = %s""",
            MAILBOX,
        )

    def uid_of(self, message_id: str) -> int | None:
        return self.value(  # type: ignore[no-any-return]
            """SELECT m.uid FROM mailsync_message m JOIN mailsync_folder f ON m.folder_id = f.id
               JOIN mailsync_mailbox b ON f.mailbox_id = b.id
               WHERE b.name = %s AND m.message_id = %s""",
            MAILBOX,
            message_id,
        )

    def flagged(self, uid: int) -> bool:
        return bool(
            self.value(
                """SELECT m.flagged FROM mailsync_message m
                   JOIN mailsync_folder f ON m.folder_id = f.id
                   JOIN mailsync_mailbox b ON f.mailbox_id = b.id
                   WHERE b.name = %s AND f.name = 'INBOX' AND m.uid = %s""",
                MAILBOX,
                uid,
            )
        )


class Sample:
    """One change: when the database had it, and when Dovecot told an IDLE client (ours,
    in this process): the floor, Dovecot's own notify delay."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.row: float | None = None
        self.told: float | None = None


def wait_both(
    check: Callable[[], Any], idle: ImapSession, started: float, timeout: float = 30
) -> tuple[float, float]:
    """(seconds until ``check()`` is true, until the IDLE client heard of a change), from
    ``started``; inf for what did not happen within ``timeout``."""
    sample = Sample(started)
    while sample.row is None or sample.told is None:
        now = time.monotonic()
        if sample.told is None and any(item.is_change for item in idle.idle_wait(0.0)):
            sample.told = now - sample.started
        if sample.row is None and check():
            sample.row = now - sample.started
        if now - sample.started > timeout:
            break
        time.sleep(POLL_S)
    inf = float("inf")
    row = inf if sample.row is None else sample.row
    return row, inf if sample.told is None else sample.told


def drain(idle: ImapSession) -> None:
    while idle.idle_wait(0.05):
        pass


def message_id_of(raw: bytes) -> str:
    for line in raw.split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode().strip("<>")  # stored without
    raise ValueError("no Message-ID")


Results = dict[str, list[float]]


def measure(user: MailUser, db: Database, samples: int, pause: float, warmup: int) -> Results:
    """Latencies per kind; the first ``warmup`` of each are dropped."""
    found: Results = {"new_mail": [], "new_mail_told": [], "flag": [], "flag_told": []}
    raws = make_messages(samples + warmup, user.address)
    uids: list[int] = []
    with user.imap() as other_client, ImapSession.open(user.account(), timeout=10) as idle:
        other_client.select_folder("INBOX")  # the other mail client, one connection throughout
        idle.select("INBOX")
        idle.idle_start(timeout=10)
        for n, raw in enumerate(raws):
            message_id = message_id_of(raw)
            drain(idle)
            started = time.monotonic()
            other_client.append("INBOX", raw)
            row, told = wait_both(partial(db.uid_of, message_id), idle, started)
            if n >= warmup:
                found["new_mail"].append(row)
                found["new_mail_told"].append(told)
            uid = db.uid_of(message_id)
            if uid is not None:
                uids.append(uid)
            time.sleep(pause)
        say(f"new mail: {len(found['new_mail'])} samples")
        for n, uid in enumerate(uids):
            drain(idle)
            started = time.monotonic()
            other_client.add_flags([uid], ["\\Flagged"])
            row, told = wait_both(partial(db.flagged, uid), idle, started)
            if n >= warmup:
                found["flag"].append(row)
                found["flag_told"].append(told)
            time.sleep(pause)
        say(f"flags: {len(found['flag'])} samples")
        idle.idle_done(timeout=10)
    return found


def print_table(rows: list[tuple[str, Stats | None, float]]) -> bool:
    print()
    print(f"{'another client -> database (ms)':<36}  {'n':>4}  {'p50':>6}  {'p95':>6}  "
          f"{'max':>6}  {'target p95':>10}  result")  # fmt: skip
    met = True
    for name, value, target in rows:
        if value is None:
            print(f"{name:<36}  {'-':>4}")
            met = False
            continue
        ok = not target or value.p95 <= target
        met = met and ok
        verdict = ("met" if ok else "NOT met") if target else ""
        print(
            f"{name:<36}  {value.n:>4}  {ms(value.p50):>6}  {ms(value.p95):>6}  "
            f"{ms(value.max):>6}  {('<= ' + ms(target)) if target else '(report)':>10}  {verdict}"
        )
    print(f"before the watcher: {BEFORE}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50, help="changes of each kind (50)")
    parser.add_argument("--warmup", type=int, default=3, help="first changes not counted (3)")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between changes")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/teaminbox_idle_latency",
        help="its database is dropped and created: the name must contain 'latency'",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="flushed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/teaminbox-idle-latency"))
    parser.add_argument("--timeout", type=int, default=300, help="bound for the whole run (s)")
    args = parser.parse_args()
    database = urlsplit(args.database_url).path.lstrip("/")
    if "latency" not in database or not database.replace("_", "").isalnum():
        parser.error("--database-url: the database name must contain 'latency' (it is dropped)")

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    signal.alarm(args.timeout)
    began = time.monotonic()
    server: DovecotServer | None = None
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
        for old in [*args.workdir.glob("*.log"), args.workdir / "celerybeat-schedule"]:
            old.unlink(missing_ok=True)
        stop_stale_dovecot(args.workdir)
        shutil.rmtree(args.workdir / "dovecot", ignore_errors=True)
        server = DovecotServer.start(args.workdir, "dovecot")
        password = secrets.token_hex(8)
        user = server.add_user(f"idle-{secrets.token_hex(3)}@example.test", password)
        user.deliver_bulk(make_messages(20, user.address))  # not an empty mailbox

        import redis  # the venv has it (Celery's Redis transport)

        redis.Redis.from_url(args.redis_url).flushdb()
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
            "PYTHONPATH": str(ROOT),
        }
        for name in ("CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "MAILBOX_PASSWORD"):
            env.pop(name, None)
        manage = [sys.executable, str(ROOT / "manage.py")]
        run_step([*manage, "ensurekeys"], env, timeout=60, what="manage.py ensurekeys")
        run_step([*manage, "migrate", "-v0"], env, timeout=120, what="manage.py migrate")
        run_step(
            [sys.executable, "-c", CHILD, server.host, str(server.imap_port), user.address,
             password],
            env, timeout=60, what="the mailbox",
        )  # fmt: skip
        run_step([*manage, "syncmailbox", MAILBOX, "--once"], env, timeout=120, what="1st sync")
        db = Database(args.database_url)
        # docker-compose.yml's command lines
        services = [
            start_service(
                "worker",
                [str(VENV_BIN / "celery"), "-A", "teaminbox", "worker", "--loglevel=info",
                 "--concurrency=4"],
                env, args.workdir,
            ),
            start_service(
                "beat",
                [str(VENV_BIN / "celery"), "-A", "teaminbox", "beat", "--loglevel=info",
                 f"--schedule={args.workdir / 'celerybeat-schedule'}"],
                env, args.workdir,
            ),
            start_service("watcher", [*manage, "watchmailboxes"], env, args.workdir),
        ]  # fmt: skip
        wait_until(
            lambda: db.watcher_state() == "connected",
            timeout=30,
            what="the watcher's IDLE",
            services=services,
        )
        wait_until(
            lambda: " ready." in (args.workdir / "worker.log").read_text(errors="replace"),
            timeout=60,
            what="the worker",
            services=services,
        )
        say(f"dovecot on :{server.imap_port}; worker, beat and watcher running")
        found = measure(user, db, args.samples, args.pause, args.warmup)
        for service in services:
            if not service.alive():
                raise BenchmarkError(f"{service.name} died:\n{service.log_tail()}")
    except Deadline:
        say(f"the run took longer than --timeout {args.timeout} s")
        return 2
    finally:
        signal.alarm(0)
        stop_services()
        if server is not None:
            server.stop()
            shutil.rmtree(server.mail_dir, ignore_errors=True)  # the logs stay

    rows = [
        ("new mail (APPEND -> row)", stats(found["new_mail"]), TARGET_NEW_MAIL_S),
        ("  Dovecot -> an IDLE client (floor)", stats(found["new_mail_told"]), 0.0),
        ("flag (UID STORE -> flagged)", stats(found["flag"]), TARGET_FLAG_S),
        ("  Dovecot -> an IDLE client (floor)", stats(found["flag_told"]), 0.0),
    ]
    met = print_table(rows)
    print(f"whole run: {time.monotonic() - began:.1f} s; load average {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "targets": {"new_mail_p95_s": TARGET_NEW_MAIL_S, "flag_p95_s": TARGET_FLAG_S},
                    "rows": {name: asdict(value) if value else None for name, value, _ in rows},
                    "raw": found,
                    "met": met,
                    "cpus": os.cpu_count(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=2,
                default=str,
            )
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
