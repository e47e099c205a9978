"""The conversation list and a conversation page: server time over HTTP against gunicorn.

    .venv/bin/python benchmarks/list_bench.py [--messages 100000] [--requests 100] [--json out.json]

One command, one table (and JSON). A fresh PostgreSQL database (teaminbox_listbench:
dropped, created, migrated) gets ``--messages`` messages (default 100,000) in about
``--messages / 3.3`` conversations (30,000), written straight into the tables with
bulk_create (the list's cost does not depend on how the rows came: IMAP would only make
setup slow), then ``mailsync.conversations.refresh_summaries`` computes each conversation's
list summary as ingest would. The team state is spread as a team's would be: about 55 %
open (a third of them unassigned, the rest split between the benchmark's user and a
colleague), 15 % pending, 5 % snoozed, 25 % closed.

gunicorn (2 sync workers, DEBUG off) then answers, one request at a time, ``--requests``
requests of each kind: the list's first page of every view, the "longest waiting" sort,
the page 50 of All open reached by its keyset cursor, a folder view, and a conversation
page (a different conversation of 3 to 4 messages each time). Server time is gunicorn's
own request time from its access log (%(D)s); the round trip as the client saw it is
shown beside it. Targets (from issue 12): p95 <= 50 ms for the list, <= 80 ms for the
conversation page. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import secrets
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.click_latency import (  # noqa: E402
    VENV_BIN,
    BenchmarkError,
    WebClient,
    free_port,
    psql,
    run_step,
    start_service,
    stop_services,
    wait_until,
)

LIST_TARGET_MS = 50.0
CONVERSATION_TARGET_MS = 80.0
MAILBOX_NAME = "listbench"
STAFF_USER = "lister"
VIEWS = ("unassigned", "mine", "others", "open", "pending", "snoozed", "closed")

# Runs in a child process with the benchmark's DATABASE_URL: Django set up the usual way.
CHILD = r"""
import json, os, random, sys
from datetime import timedelta
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teaminbox.settings")
django.setup()
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from mailsync.conversations import refresh_summaries
from mailsync.models import Blob, Conversation, Folder, Mailbox, Message
from teaminbox.models import Membership

mode, name = sys.argv[1], sys.argv[2]
if mode == "setup":
    username, password, messages = sys.argv[3], sys.argv[4], int(sys.argv[5])
    rng = random.Random(12)
    user = User.objects.create_user(username, f"{username}@example.test", password)
    mate = User.objects.create_user("colleague", "colleague@example.test", password)
    mailbox = Mailbox.objects.create(
        name=name, email_address="support@example.test", host="127.0.0.1", port=993,
        username="support@example.test", folder_names=["INBOX", "Sent"])
    for who in (user, mate):
        Membership.objects.create(user=who, mailbox=mailbox, role=Membership.Role.AGENT)
    inbox = Folder.objects.create(mailbox=mailbox, name="INBOX", uidvalidity=1)
    sent = Folder.objects.create(mailbox=mailbox, name="Sent", uidvalidity=1)
    raw = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    blob = Blob.objects.create(sha256="0" * 64, data=raw, size=len(raw))
    now = timezone.now()
    start = now - timedelta(days=365)
    n_conv = max(1, round(messages / 3.33))
    snooze_until = now + timedelta(days=2)
    conversations = []
    for i in range(n_conv):
        r = rng.random()
        status, assignee, snoozed = "open", None, None
        if r < 0.55:
            assignee = (None, user, mate)[i % 3]
        elif r < 0.70:
            status = "pending"
        elif r < 0.75:
            snoozed = snooze_until
        else:
            status = "closed"
        conversations.append(Conversation(
            mailbox=mailbox, subject=f"Order {i}: where is my parcel?", status=status,
            assignee=assignee, snoozed_until=snoozed))
    with transaction.atomic():
        conversations = Conversation.objects.bulk_create(conversations, batch_size=5000)
    # every conversation gets 1 message, the rest spread at random: ~3.3 per conversation
    owners = [c.pk for c in conversations] + [
        rng.choice(conversations).pk for _ in range(messages - n_conv)]
    owners.sort()
    uids = {inbox.pk: 0, sent.pk: 0}
    batch, position = [], {}
    for k, conversation_id in enumerate(owners):
        nth = position[conversation_id] = position.get(conversation_id, -1) + 1
        from_team = nth % 2 == 1 and rng.random() < 0.8  # customer, team, customer ...
        folder = sent if from_team else inbox
        uids[folder.pk] += 1
        when = start + timedelta(minutes=(conversation_id * 17 + nth * 90) % (365 * 24 * 60))
        batch.append(Message(
            folder=folder, uidvalidity=1, uid=uids[folder.pk], blob=blob, size=len(raw),
            seen=rng.random() < 0.8, has_attachments=rng.random() < 0.1,
            message_id=f"<bench-{k}@example.org>", subject=f"Order {conversation_id}",
            from_name="Support" if from_team else f"Customer {conversation_id}",
            from_address="support@example.test" if from_team
            else f"customer{conversation_id}@example.org",
            to_display="support@example.test", date=when, internaldate=when,
            text_body=f"Hello,\n\nmessage {nth} about order {conversation_id}.\n\nThanks\n",
            extracted_at=now, conversation_id=conversation_id))
        if len(batch) == 5000:
            Message.objects.bulk_create(batch)
            batch = []
    Message.objects.bulk_create(batch)
    ids = [c.pk for c in conversations]
    for begin in range(0, len(ids), 2000):
        chunk = ids[begin:begin + 2000]
        with transaction.atomic():
            refresh_summaries(chunk)
    from django.db import connection
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(json.dumps({"conversations": len(ids), "messages": len(owners)}))
elif mode == "conversations":
    rows = Conversation.objects.filter(
        mailbox__name=name, message_count__in=[3, 4], merged_into__isnull=True
    ).order_by("?").values_list("pk", flat=True)[: int(sys.argv[3])]
    print(json.dumps(list(rows)))
"""


@dataclass
class Row:
    what: str
    kind: str  # list | conversation
    server_ms: list[float] = field(default_factory=list)
    client_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def p(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def summary(self) -> dict[str, Any]:
        target = LIST_TARGET_MS if self.kind == "list" else CONVERSATION_TARGET_MS
        p95 = self.p(self.server_ms, 0.95)
        return {
            "what": self.what,
            "kind": self.kind,
            "requests": len(self.server_ms),
            "server_p50_ms": round(statistics.median(self.server_ms), 1),
            "server_p95_ms": round(p95, 1),
            "client_p50_ms": round(statistics.median(self.client_ms), 1),
            "client_p95_ms": round(self.p(self.client_ms, 0.95), 1),
            "target_p95_ms": target,
            "ok": p95 <= target and all(s == 200 for s in self.statuses),
        }


def child(mode: str, *args: str, env: dict[str, str], timeout: float = 60) -> str:
    return run_step(
        [sys.executable, "-c", CHILD, mode, MAILBOX_NAME, *args],
        env,
        timeout=timeout,
        what=f"the {mode} child",
    )


class AccessLog:
    """gunicorn's access log, read from where we last stopped: one line per request,
    ``METHOD PATH STATUS MICROSECONDS``."""

    LINE = re.compile(r"^(\S+) (\S+) (\d{3}) (\d+)$")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0  # from now on

    def new_lines(self) -> list[tuple[str, int, float]]:
        if not self.path.exists():
            return []
        with self.path.open() as log:
            log.seek(self.offset)
            text = log.read()
            self.offset = log.tell()
        found = []
        for line in text.splitlines():
            match = self.LINE.match(line.strip())
            if match:
                found.append((match[2], int(match[3]), int(match[4]) / 1000))
        return found


def timed(web: WebClient, log: AccessLog, row: Row, path: str) -> bytes:
    """One GET, its round trip and gunicorn's own time for it. Requests go one at a time
    and each waits for its access-log line, so the next line is this request's."""
    began = time.perf_counter()
    status, body, _ = web.request("GET", path)
    row.client_ms.append((time.perf_counter() - began) * 1000)
    row.statuses.append(status)
    if status != 200:
        raise BenchmarkError(f"GET {path} answered {status}:\n{body[:600]!r}")
    deadline = time.monotonic() + 10  # gunicorn writes the line after the response
    while time.monotonic() < deadline:
        lines = log.new_lines()
        if lines:
            if len(lines) > 1:
                raise BenchmarkError(f"{len(lines)} access-log lines for one request: {lines}")
            row.server_ms.append(lines[0][2])
            return body
        time.sleep(0.002)
    raise BenchmarkError(f"no access-log line for {path}")


def older_link(body: bytes) -> str | None:
    """The query string of the page's "Older" link (the next keyset page), if any."""
    match = re.search(rb'<a href="(\?[^"]*)"[^>]*rel="next"', body)
    return html.unescape(match[1].decode()) if match else None


def print_table(rows: list[dict[str, Any]], setup: dict[str, Any]) -> None:
    print(
        f"\n{setup['messages']:,} messages in {setup['conversations']:,} conversations "
        f"(PostgreSQL, gunicorn 2 sync workers); {rows[0]['requests']} requests each\n"
    )
    head = ("", "server p50", "server p95", "client p50", "client p95", "target p95", "")
    print(f"{head[0]:<34}{head[1]:>11}{head[2]:>11}{head[3]:>11}{head[4]:>11}{head[5]:>11}")
    for row in rows:
        mark = "ok" if row["ok"] else "MISSED"
        print(
            f"{row['what']:<34}{row['server_p50_ms']:>9.1f}ms{row['server_p95_ms']:>9.1f}ms"
            f"{row['client_p50_ms']:>9.1f}ms{row['client_p95_ms']:>9.1f}ms"
            f"{row['target_p95_ms']:>9.0f}ms  {mark}"
        )


def _on_alarm(signum: int, frame: Any) -> None:
    raise BenchmarkError("the run took longer than --timeout")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100, help="per row (default 100)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/teaminbox_listbench",
        help="its database is dropped and created: the name must contain 'listbench'",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/teaminbox-listbench"))
    parser.add_argument("--timeout", type=int, default=1200, help="bound for the whole run (s)")
    args = parser.parse_args()
    database = urlsplit(args.database_url).path.lstrip("/")
    if "listbench" not in database or not database.replace("_", "").isalnum():
        parser.error("--database-url: the database name must contain 'listbench' (dropped)")
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(args.timeout)
    began = time.monotonic()
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
        for old in args.workdir.glob("*.log"):
            old.unlink()
        psql(args.database_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        psql(args.database_url, f"CREATE DATABASE {database}")
        password = secrets.token_urlsafe(12)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "teaminbox.settings",
            "DATABASE_URL": args.database_url,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "TEAMINBOX_VAR_DIR": str(args.workdir / "var"),
        }
        for name in ("CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "MAILBOX_PASSWORD"):
            env.pop(name, None)
        manage = [sys.executable, str(ROOT / "manage.py")]
        run_step([*manage, "ensurekeys"], env, timeout=60, what="manage.py ensurekeys")
        run_step([*manage, "migrate", "-v0"], env, timeout=180, what="manage.py migrate")
        setup = json.loads(
            child("setup", STAFF_USER, password, str(args.messages), env=env, timeout=1200)
        )
        print(f"setup done in {time.monotonic() - began:.0f} s: {setup}", file=sys.stderr)
        conversation_ids = json.loads(child("conversations", str(args.requests), env=env))
        if not conversation_ids:
            raise BenchmarkError("no conversation of 3 or 4 messages to open")

        port = free_port()
        access_log = args.workdir / "access.log"
        web_service = start_service(
            "gunicorn",
            [
                str(VENV_BIN / "gunicorn"), "teaminbox.wsgi",
                "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--access-logfile", str(access_log),
                "--access-logformat", "%(m)s %(U)s %(s)s %(D)s",
            ],
            env,
            args.workdir,
        )  # fmt: skip
        web = WebClient(port)
        wait_until(web.up, timeout=30, what="gunicorn to answer", services=[web_service])
        web.login(STAFF_USER, password)
        time.sleep(0.5)  # the login's own lines written
        log = AccessLog(access_log)
        base = f"/m/{MAILBOX_NAME}/"
        warm = Row("warm-up", "list")
        for _ in range(6):  # both workers: templates, connections
            timed(web, log, warm, base)

        # the cursor of page 50 of All open, reached page by page as a person would (a
        # quick run with fewer conversations stops at its last page and says which)
        path, page = f"{base}?view=open", 1
        while page < 50:
            link = older_link(timed(web, log, warm, path))
            if link is None:
                break
            path, page = base + link, page + 1
        deep_page = path

        targets: list[tuple[str, str, list[str]]] = [
            (f"list: {view}, first page", "list", [f"{base}?view={view}"]) for view in VIEWS
        ]
        targets += [
            ("list: open, longest waiting", "list", [f"{base}?view=open&sort=waiting"]),
            (f"list: open, page {page} (keyset)", "list", [deep_page]),
            ("list: folder INBOX", "list", [f"{base}?view=folder%3AINBOX"]),
            ("conversation page", "conversation",
             [f"{base}c/{pk}/" for pk in conversation_ids]),
        ]  # fmt: skip
        rows = []
        for what, kind, paths in targets:
            row = Row(what, kind)
            for n in range(args.requests):
                timed(web, log, row, paths[n % len(paths)])
            rows.append(row.summary())
        print_table(rows, setup)
        if args.json:
            args.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
        return 0 if all(row["ok"] for row in rows) else 1
    except BenchmarkError as error:
        print(f"list_bench: {error}", file=sys.stderr)
        return 2
    finally:
        signal.alarm(0)
        stop_services()


if __name__ == "__main__":
    sys.exit(main())
