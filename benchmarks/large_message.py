"""Peak memory of syncing one large message: one command, one table (and JSON).

    .venv/bin/python benchmarks/large_message.py [--mb 60] [--json out.json]

Starts its own Dovecot (tests/support/dovecot.py), writes a message of about --mb MB
(a random attachment) into a fresh mailbox, and in a child process on a fresh PostgreSQL
database (teaminbox_large) runs the sync (list: raw bytes + envelope) and then the text
extraction, reading the child's VmHWM after each. Target: the sync under 250 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.dovecot import DovecotServer  # noqa: E402

DATABASE = "teaminbox_large"
TARGET_MB = 250

CHILD = r"""
import hashlib, json, os, time
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "teaminbox.settings")
django.setup()
from mailsync.extract import extract_messages
from mailsync.models import Mailbox, Message
from mailsync.runner import sync_mailbox

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024

mailbox = Mailbox(name="large", protocol="imap", security="plain", host=os.environ["BENCH_HOST"],
                  port=int(os.environ["BENCH_PORT"]), username=os.environ["BENCH_USER"],
                  folder_names=["INBOX"])
mailbox.set_password(os.environ["BENCH_PASSWORD"])
mailbox.save()
result = {"start_mb": peak_mb()}
started = time.perf_counter()
sync_mailbox(mailbox, extract=False)
result["sync_s"] = time.perf_counter() - started
result["sync_peak_mb"] = peak_mb()
message = Message.objects.get()
result["bytes"] = message.size
result["sha256_ok"] = hashlib.sha256(message.blob.read()).hexdigest() == message.blob_id
started = time.perf_counter()
extract_messages([message.pk])
result["extract_s"] = time.perf_counter() - started
result["extract_peak_mb"] = peak_mb()
print(json.dumps(result))
"""


def psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    server = DovecotServer.start(f"/tmp/teaminbox-large-{os.getpid()}", "large")
    try:
        password = secrets.token_hex(8)
        user = server.add_user(f"large-{secrets.token_hex(3)}@example.test", password)
        message = EmailMessage()
        message["From"] = "scanner@example.org"
        message["To"] = user.address
        message["Subject"] = f"A {args.mb} MB scan"
        message.set_content("The scan is attached.")
        message.add_attachment(
            os.urandom(args.mb * 1024 * 1024 * 3 // 4),
            maintype="application",
            subtype="pdf",
            filename="scan.pdf",
        )
        user.deliver_bulk([bytes(message)])
        del message
        psql(f"DROP DATABASE IF EXISTS {DATABASE}")
        psql(f"CREATE DATABASE {DATABASE}")
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
            "BENCH_HOST": server.host,
            "BENCH_PORT": str(server.imap_port),
            "BENCH_USER": user.address,
            "BENCH_PASSWORD": password,
        }
        env.pop("REDIS_URL", None)
        for command in ("ensurekeys", "migrate"):
            subprocess.run([sys.executable, "manage.py", command], cwd=ROOT, env=env, check=True)
        child = subprocess.run(
            [sys.executable, "-c", CHILD],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        server.stop()

    rows = [
        ("message size (MB)", f"{result['bytes'] / 1e6:.1f}", "", ""),
        ("bytes stored = server's (sha256)", str(result["sha256_ok"]), "True", ""),
        ("sync time (s)", f"{result['sync_s']:.2f}", "", ""),
        ("sync peak RSS (MB)", str(result["sync_peak_mb"]), f"<= {TARGET_MB}",
         "met" if result["sync_peak_mb"] <= TARGET_MB else "NOT met"),
        ("extraction time (s)", f"{result['extract_s']:.2f}", "", ""),
        ("extraction peak RSS (MB)", str(result["extract_peak_mb"]), "(report)", ""),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'ours':>10}  {'target':>10}  result")
    for name, value, target, verdict in rows:
        print(f"{name:<{width}}  {value:>10}  {target:>10}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
