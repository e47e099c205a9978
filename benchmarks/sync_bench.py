#!/usr/bin/env python
"""Sync benchmark: our engine against the floor, mbsync and OfflineIMAP, in one run.

    cd /work/main && .venv/bin/python benchmarks/sync_bench.py \
        [--messages 10000] [--skip-offlineimap] [--json out.json]

What it does (see benchmarks/README.md for the full story):

1. starts its own Dovecot (tests.support.dovecot) under /tmp/teaminbox-bench and writes a
   generated, seeded, real-looking INBOX (benchmarks/corpus.py) straight into the user's
   Maildir -- no APPEND -- then sets realistic initial flags and warms Dovecot's index;
2. floor: one raw socket, ``UID FETCH 1:* BODY.PEEK[]`` read by literal length; then the
   same messages through the engine's ImapSession, storing nothing;
3. mbsync and OfflineIMAP: initial sync into an empty Maildir, no-change resync (median
   of 3), pick-up of \\Flagged set on 10 messages by another IMAP client;
4. ours, in a child process on a fresh PostgreSQL database (benchmarks/ours_child.py):
   newest 50 listed, initial sync, text extracted, no-change resync, 10 flag changes,
   peak RSS;
5. prints one table (and writes JSON with ``--json``).

``--messages N`` with N > 10000 runs everything at 10k first, then ours, mbsync and the
floor again at N (OfflineIMAP only at 10k), to show which costs stay flat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(PROJECT_ROOT))


from benchmarks import corpus, report  # noqa: E402
from benchmarks.external import (  # noqa: E402
    Mbsync,
    OfflineImap,
    SyncTool,
    ensure_installed,
)
from benchmarks.procs import (  # noqa: E402
    TreeSampler,
    kill_all_started,
    kill_group,
    register,
    unregister,
)
from mailsync.engine.imap import ImapSession  # noqa: E402
from tests.support.dovecot import DovecotServer, MailUser  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/teaminbox_bench"
DEFAULT_WORKDIR = Path("/tmp/teaminbox-bench")
BASE_SIZE = 10_000
PASSWORD = "secret"
FETCH_WINDOW = 1000
NEWEST = 50
FLAG_CHANGES = 10
NOCHANGE_RUNS = 3

_t0 = time.perf_counter()


class BenchError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[{time.perf_counter() - _t0:7.1f}s] {message}", file=sys.stderr, flush=True)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.3f} s"


def mb(kib: float) -> float:
    """KiB (ru_maxrss, VmHWM) -> MB of 10^6 bytes, as the target "≤ 250 MB" is read."""
    return kib * 1024 / 1e6


def windows(items: Sequence[int], size: int = FETCH_WINDOW) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# ---------------------------------------------------------------- PostgreSQL


def reset_database(url: str, workdir: Path) -> None:
    """DROP + CREATE the benchmark database, then ``manage.py migrate`` into it."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if "bench" not in name:  # this drops the database: never one that is not ours
        raise BenchError(f"refusing to drop database {name!r}: its name must contain 'bench'")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=PROJECT_ROOT,
        env=django_env(url, workdir),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def postgres_facts(url: str) -> dict[str, str]:
    import psycopg

    facts = {}
    with contextlib.suppress(Exception), psycopg.connect(url, connect_timeout=10) as conn:
        for setting in ("server_version", "fsync", "synchronous_commit", "shared_buffers"):
            row = conn.execute(f"SHOW {setting}").fetchone()
            facts[setting] = str(row[0]) if row else ""
    return facts


def django_env(url: str, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="teaminbox.settings",
        TEAMINBOX_VAR_DIR=str(workdir / "var"),
        LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)
    # Keys are files in the var directory, written by the command that first needs them
    # (issue 8); settings only read them.
    subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "manage.py"), "ensurekeys"],
        env=env,
        cwd=PROJECT_ROOT,
        check=True,
    )
    return env


# ---------------------------------------------------------------- Dovecot and the INBOX


def stop_stale_dovecot(workdir: Path) -> None:
    """A Dovecot left running by an interrupted earlier run of this benchmark."""
    pid_file = workdir / "dovecot" / "run" / "master.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"dovecot" in cmdline and str(workdir).encode() in cmdline:
            say(f"stopping a Dovecot left over from an earlier run (pid {pid})")
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)


def load_inbox(
    server: DovecotServer, size: int, seed: int
) -> tuple[MailUser, corpus.CorpusStats, dict[str, float]]:
    user = server.add_user(f"bench{size}@example.test", PASSWORD)
    stats = corpus.CorpusStats()
    started = time.perf_counter()
    user.deliver_bulk(corpus.generate(size, seed, stats))
    timings = {"generate_and_deliver_s": time.perf_counter() - started}
    started = time.perf_counter()
    with user.imap() as client:
        client.select_folder("INBOX")  # Dovecot assigns the UIDs and builds its index here
        uids = sorted(int(uid) for uid in client.search("ALL"))
        if len(uids) != size:
            raise BenchError(f"Dovecot lists {len(uids)} messages, {size} were delivered")
        for flag, positions in corpus.initial_flags(size, seed).items():
            for chunk in windows([uids[p - 1] for p in positions]):
                client.add_flags(chunk, [flag], silent=True)
    timings["index_and_flags_s"] = time.perf_counter() - started
    return user, stats, timings


def server_flags(user: MailUser) -> dict[int, frozenset[str]]:
    with user.imap() as client:
        client.select_folder("INBOX", readonly=True)
        uids = sorted(int(uid) for uid in client.search("ALL"))
        flags: dict[int, frozenset[str]] = {}
        for chunk in windows(uids):
            wanted = set(chunk)
            for uid, data in client.fetch(chunk, ["FLAGS"]).items():
                if uid in wanted:
                    names = {f.decode() if isinstance(f, bytes) else f for f in data[b"FLAGS"]}
                    flags[int(uid)] = frozenset(names - {"\\Recent"})
    return flags


def newest_expectations(user: MailUser, uids: Sequence[int]) -> dict[str, dict[str, Any]]:
    """The newest 50 as the server has them: Message-ID and flags, for ours to match."""
    newest = sorted(uids)[-NEWEST:]
    key = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
    out: dict[str, dict[str, Any]] = {}
    with user.imap() as client:
        client.select_folder("INBOX", readonly=True)
        answer = client.fetch(newest, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    for uid in newest:
        data = answer[uid]
        header = data[key].decode(errors="replace")
        message_id = header.split(":", 1)[1].strip().strip("<>") if ":" in header else ""
        names = {f.decode() if isinstance(f, bytes) else f for f in data[b"FLAGS"]}
        out[str(uid)] = {"message_id": message_id, "flags": sorted(names - {"\\Recent"})}
    return out


_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


def floor_raw(user: MailUser) -> dict[str, Any]:
    """The floor: one plain socket, ``UID FETCH 1:* BODY.PEEK[]`` in one command, the
    answer read with literals skipped by length (no parsing beyond that)."""
    started = time.perf_counter()
    count = total = 0
    with socket.create_connection((user.server.host, user.server.imap_port), timeout=120) as sock:
        reader = sock.makefile("rb", buffering=1 << 20)

        def command(tag: bytes, text: bytes) -> None:
            nonlocal count, total
            sock.sendall(tag + b" " + text + b"\r\n")
            while True:
                line = reader.readline()
                if not line:
                    raise BenchError("floor: the server closed the connection")
                if line.startswith(b"* ") and b" FETCH " in line[:32]:
                    count += 1
                match = _LITERAL.search(line)
                while match is not None:  # a literal, then the rest of the same response
                    size = int(match.group(1))
                    total += size
                    if len(reader.read(size)) != size:
                        raise BenchError("floor: short literal")
                    line = reader.readline()
                    match = _LITERAL.search(line)
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise BenchError(f"floor: {line!r}")
                    return

        reader.readline()  # greeting
        command(b"a", f"LOGIN {user.address} {user.password}".encode())
        command(b"b", b"EXAMINE INBOX")
        count = total = 0
        command(b"c", b"UID FETCH 1:* BODY.PEEK[]")
        elapsed = time.perf_counter() - started
        command(b"d", b"LOGOUT")
    return {"initial_s": elapsed, "messages": count, "bytes": total}


def floor_session(user: MailUser) -> dict[str, Any]:
    """The engine's own ``ImapSession`` (connect, log in, SELECT, UID SEARCH ALL, then
    ``fetch_messages`` -- UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ, BODY.PEEK[] -- in
    windows of 1000 UIDs): the least ours can spend on fetching, without storing."""
    account = user.account()
    started = time.perf_counter()
    with ImapSession.open(account, timeout=120) as imap:
        imap.select("INBOX")
        count = total = 0
        for chunk in windows(imap.all_uids()):
            for message in imap.fetch_messages(chunk):
                count += 1
                total += len(message.raw)
    elapsed = time.perf_counter() - started
    return {"initial_s": elapsed, "messages": count, "bytes": total}


# ---------------------------------------------------------------- mbsync / OfflineIMAP


def bench_tool(
    tool_class: type[SyncTool],
    user: MailUser,
    size: int,
    flag_uids: list[int],
    flagged_before: frozenset[int],
    args: argparse.Namespace,
    warnings: list[str],
) -> dict[str, Any]:
    label = f"{tool_class.name} ({report.size_label(size)})"
    tool = tool_class(
        args.workdir / f"{tool_class.name}-{size}",
        user.server.imap_port,
        user.address,
        user.password,
    )
    out: dict[str, Any] = {"loadavg_before": os.getloadavg()[0]}
    flags_added = False
    try:
        say(f"{label}: initial sync")
        run = tool.run(initial_timeout(size, args))
        out["initial_s"] = run.seconds
        peak = run.peak_rss_kib
        state = tool.state()
        out["initial_messages"] = state.messages
        if state.messages != size or len(state.uids) != size:
            warnings.append(f"{label}: initial sync left {state.messages} files, not {size}")
        say(f"{label}: initial {run.seconds:.2f} s, {state.messages} messages")

        runs = []
        for _ in range(NOCHANGE_RUNS):
            run = tool.run(resync_timeout(size))
            runs.append(run.seconds)
            peak = max(peak, run.peak_rss_kib)
        out["nochange_s"] = statistics.median(runs)
        out["nochange_runs"] = runs

        user.add_flags(flag_uids, ["\\Flagged"])
        flags_added = True
        run = tool.run(resync_timeout(size))
        out["flags_s"] = run.seconds
        peak = max(peak, run.peak_rss_kib)
        flagged_now = tool.state().flagged_uids
        expected = flagged_before | set(flag_uids)
        out["flags_ok"] = flagged_now == expected
        if not out["flags_ok"]:
            missing = len(set(flag_uids) - flagged_now)
            warnings.append(
                f"{label}: after the 10-flag resync the Maildir has {len(flagged_now)} flagged, "
                f"expected {len(expected)} ({missing} of the 10 missing)"
            )
        out["peak_rss_mb"] = mb(peak)
        say(
            f"{label}: no-change {out['nochange_s']:.3f} s, 10 flags {out['flags_s']:.3f} s, "
            f"peak RSS {out['peak_rss_mb']:.0f} MB"
        )
    except Exception as exc:
        warnings.append(f"{label} failed: {exc}".splitlines()[0])
        say(f"{label} FAILED: {exc}")
    finally:
        if flags_added:
            user.remove_flags(flag_uids, ["\\Flagged"])
        if not args.keep:
            tool.cleanup()
    return out


# ---------------------------------------------------------------- ours


class Child:
    """The ``benchmarks.ours_child`` process and its line protocol."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.ours_child"],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        register(self.process)
        self.memory = TreeSampler(self.process.pid)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            if line.startswith("@@bench "):
                self.events.put(json.loads(line[len("@@bench ") :]))
        self.events.put(None)

    def send(self, payload: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(payload) + "\n").encode())
        self.process.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"ours: no {event!r} within {timeout:.0f} s")
            try:
                message = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if message is None:
                raise BenchError(f"ours: the child exited before {event!r}\n{self.log_tail()}")
            if message["event"] == "error":
                raise BenchError(f"ours: {message['error']}\n{message['traceback']}")
            if message["event"] == event:
                return message

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        self.memory.stop()
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(self.process.pid)
            self.process.wait(timeout=10)
        unregister(self.process)
        self._log.close()


def bench_ours(
    user: MailUser,
    size: int,
    newest: dict[str, dict[str, Any]],
    flag_uids: list[int],
    flagged_before: frozenset[int],
    args: argparse.Namespace,
    warnings: list[str],
) -> dict[str, Any]:
    label = f"ours ({report.size_label(size)})"
    out: dict[str, Any] = {"loadavg_before": os.getloadavg()[0]}
    flags_added = False
    child: Child | None = None
    try:
        say(f"{label}: fresh PostgreSQL database + migrate")
        reset_database(args.database_url, args.workdir)
        child = Child(
            django_env(args.database_url, args.workdir), args.workdir / f"ours-{size}.log"
        )
        child.send(
            {
                "mailbox_name": f"bench{size}",
                "host": user.server.host,
                "port": user.server.imap_port,
                "user": user.address,
                "password": user.password,
                "newest": newest,
                "nochange_runs": NOCHANGE_RUNS,
                "profile": str(args.workdir / f"ours-{size}") if args.profile else None,
                "skip_text": args.skip_text,
            }
        )
        ready = child.expect("ready", 300)
        out["django_setup_s"] = ready["setup_s"]
        say(f"{label}: initial sync (Django ready in {ready['setup_s']:.2f} s)")

        initial = child.expect("initial", initial_timeout(size, args))
        out["initial_s"] = initial["seconds"]
        out["newest50_s"] = initial["newest50_s"]
        out["first_batch_s"] = initial["first_batch_s"]
        out["initial_detail"] = {
            k: initial[k]
            for k in (
                "stored",
                "with_raw",
                "callbacks",
                "check_seconds",
                "newest50_detail",
                "newest50_at_fetched",
                "reports",
                "hwm_kib",
            )
        }
        if initial["newest50_s"] is None:
            warnings.append(
                f"{label}: the newest 50 were never listed correctly: {initial['newest50_detail']}"
            )
        if initial["stored"] != size or initial["with_raw"] != size:
            warnings.append(
                f"{label}: initial sync stored {initial['stored']} rows "
                f"({initial['with_raw']} with raw bytes), expected {size}"
            )
        say(
            f"{label}: initial {initial['seconds']:.2f} s, newest 50 listed at "
            f"{_seconds(initial['newest50_s'])}, {initial['stored']} rows"
        )

        text = child.expect("text", initial_timeout(size, args))
        out["text_s"] = None if args.skip_text else text["seconds"]
        out["text_mode"] = text["mode"]
        out["text_extract_s"] = text["extract_s"]
        out["without_text"] = text["without_text"]
        out["text_pending"] = text["pending"]
        if text["extract_s"] is not None:
            out["text_mode"] += f" ({text['extract_s']:.2f} s after the initial sync)"
        if text["pending"] and not args.skip_text:
            warnings.append(f"{label}: {text['pending']} messages still pending extraction")
        if text["without_text"] and not args.skip_text:
            warnings.append(
                f"{label}: {text['without_text']} messages have no text after extraction"
            )

        say(f"{label}: all text extracted at {text['seconds']:.2f} s ({text['mode']})")
        nochange = child.expect("nochange", resync_timeout(size) * NOCHANGE_RUNS)
        out["nochange_s"] = nochange["seconds"]
        out["nochange_runs"] = nochange["runs"]
        if any(any(c.values()) for c in nochange["changes"]):
            warnings.append(f"{label}: a no-change resync changed something: {nochange['changes']}")
        runs = ", ".join(f"{run:.3f}" for run in nochange["runs"])
        say(f"{label}: no-change {nochange['seconds']:.3f} s (runs {runs})")

        child.expect("await_flags", 60)
        user.add_flags(flag_uids, ["\\Flagged"])  # another client, its own connection
        flags_added = True
        child.send({"uids": flag_uids, "flagged_total": len(flagged_before | set(flag_uids))})
        flags = child.expect("flags", resync_timeout(size))
        out["flags_s"] = flags["seconds"]
        out["flags_ok"] = (
            flags["arrived"] == flags["expected"]
            and flags["flagged_total"] == flags["expected_flagged_total"]
        )
        if not out["flags_ok"]:
            warnings.append(
                f"{label}: {flags['arrived']}/{flags['expected']} flag changes in the database "
                f"({flags['flagged_total']} flagged, expected {flags['expected_flagged_total']})"
            )
        say(f"{label}: 10 flags {flags['seconds']:.3f} s ({flags['arrived']}/10 arrived)")

        done = child.expect("done", 60)
        # VmHWM, not ru_maxrss (which keeps the forked parent's high-water mark); and when
        # the extraction runs a process pool, the sampled PSS of the whole tree if larger.
        child.memory.stop()
        out["main_process_hwm_mb"] = mb(done["vm_hwm_kib"])
        out["tree_peak_pss_mb"] = mb(child.memory.peak_pss_kib)
        out["tree_peak_rss_sum_mb"] = mb(child.memory.peak_rss_sum_kib)
        out["tree_max_processes"] = child.memory.max_processes
        out["peak_rss_mb"] = max(out["main_process_hwm_mb"], out["tree_peak_pss_mb"])
        out["ru_maxrss_mb"] = mb(done["ru_maxrss_kib"])
        out["hwm_after_initial_mb"] = mb(initial["hwm_kib"])
        say(f"{label}: peak RSS {out['peak_rss_mb']:.0f} MB")
    except Exception as exc:
        warnings.append(f"{label} failed: {exc}".splitlines()[0])
        say(f"{label} FAILED: {exc}")
    finally:
        if child is not None:
            child.close()
        if flags_added:
            user.remove_flags(flag_uids, ["\\Flagged"])
    return out


# ---------------------------------------------------------------- driver


def initial_timeout(size: int, args: argparse.Namespace) -> float:
    return float(args.timeout) if args.timeout else max(600.0, size * 0.06)


def resync_timeout(size: int) -> float:
    return max(120.0, size * 0.003)


def bench_size(
    server: DovecotServer,
    size: int,
    args: argparse.Namespace,
    warnings: list[str],
    meta: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    k = report.size_label(size)
    say(f"{k}: generating and loading {size} messages into Dovecot's Maildir")
    user, stats, timings = load_inbox(server, size, args.seed)
    meta.setdefault("corpus", {})[str(size)] = {
        "messages": stats.count,
        "average_bytes": round(stats.average_bytes),
        "total_bytes": stats.total_bytes,
        "with_attachments": stats.with_attachments,
        "with_html": stats.html,
        "replies": stats.replies,
        **timings,
    }
    say(
        f"{k}: loaded, average {stats.average_bytes / 1000:.1f} KB, "
        f"{stats.with_attachments} with attachments ({timings['generate_and_deliver_s']:.1f} s)"
    )
    results: dict[str, dict[str, Any]] = {}

    # Floor: once to warm Dovecot and the page cache, then the measured runs.
    warm = floor_raw(user)
    floor = floor_raw(user)
    floor["warmup_s"] = warm["initial_s"]
    with_session = floor_session(user)
    floor["session_s"] = with_session["initial_s"]
    for name, run in (("floor", floor), ("floor with our session", with_session)):
        if run["messages"] != size:
            warnings.append(f"{name} ({k}): fetched {run['messages']} messages, not {size}")
    results["floor"] = floor
    say(
        f"{k}: floor {floor['initial_s']:.2f} s raw socket, {with_session['initial_s']:.2f} s "
        f"with our session ({floor['bytes'] / 1e6:.0f} MB)"
    )

    flags = server_flags(user)
    uids = sorted(flags)
    flagged_before = frozenset(uid for uid, f in flags.items() if "\\Flagged" in f)
    rng = random.Random(args.seed + size)
    flag_uids = sorted(rng.sample([u for u in uids if u not in flagged_before], FLAG_CHANGES))
    newest = newest_expectations(user, uids)
    meta.setdefault("flag_uids", {})[str(size)] = flag_uids

    if not args.skip_mbsync:
        results["mbsync"] = bench_tool(
            Mbsync, user, size, flag_uids, flagged_before, args, warnings
        )
    if not args.skip_offlineimap and size <= BASE_SIZE:
        results["offlineimap"] = bench_tool(
            OfflineImap, user, size, flag_uids, flagged_before, args, warnings
        )
    if not args.skip_ours:
        results["ours"] = bench_ours(user, size, newest, flag_uids, flagged_before, args, warnings)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument(
        "--messages",
        type=int,
        default=BASE_SIZE,
        help="INBOX size; above 10000 the run is 10000 first, then this size "
        "(ours, mbsync and the floor only)",
    )
    parser.add_argument("--skip-offlineimap", action="store_true")
    parser.add_argument("--skip-mbsync", action="store_true", help="(for quick iterations)")
    parser.add_argument("--skip-ours", action="store_true", help="(for quick iterations)")
    parser.add_argument(
        "--skip-text",
        action="store_true",
        help="no text extraction after our initial sync (for quick iterations)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--seed", type=int, default=20251101)
    parser.add_argument(
        "--timeout", type=float, help="seconds allowed for one initial sync (default: scaled)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the Maildirs and logs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile ours: <workdir>/ours-<N>.initial.{prof,txt} and .extract.{prof,txt} "
        "(timings of such a run are not representative)",
    )
    args = parser.parse_args(argv)
    if args.messages < NEWEST + FLAG_CHANGES:
        parser.error(f"--messages must be at least {NEWEST + FLAG_CHANGES}")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    sizes = sorted({min(args.messages, BASE_SIZE), args.messages})
    warnings: list[str] = []
    meta: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sizes": sizes,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if not (args.skip_mbsync and args.skip_offlineimap):
        meta["tools"] = ensure_installed()
    with contextlib.suppress(Exception):
        meta["dovecot"] = subprocess.run(
            ["dovecot", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    meta["postgresql"] = postgres_facts(
        urlunsplit(urlsplit(args.database_url)._replace(path="/postgres"))
    )

    stop_stale_dovecot(args.workdir)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    results: report.Results = {}
    server: DovecotServer | None = None
    interrupted = False
    try:
        server = DovecotServer.start(args.workdir, "dovecot")
        say(f"Dovecot on 127.0.0.1:{server.imap_port} ({args.workdir})")
        for size in sizes:
            results[size] = bench_size(server, size, args, warnings, meta)
    except KeyboardInterrupt:
        interrupted = True
        warnings.append("interrupted: the table is partial")
    except Exception as exc:
        warnings.append(f"aborted: {exc}".splitlines()[0])
        say(f"aborted: {exc}")
    finally:
        kill_all_started()
        if server is not None:
            server.stop()
        if not args.keep:  # the mail is bulky; the logs are small and worth keeping
            shutil.rmtree(args.workdir / "dovecot" / "mail", ignore_errors=True)

    rows = report.build_rows(results, warnings)
    print()
    print(
        f"teaminbox sync benchmark: {' and '.join(map(str, sizes))} messages, "
        f"{os.cpu_count()} CPUs, PostgreSQL {meta['postgresql'].get('server_version', '?')}"
    )
    print(report.render(rows), flush=True)
    if args.json:
        payload = {
            "meta": meta,
            "results": {str(size): tools for size, tools in results.items()},
            "rows": [row.as_json() for row in rows],
            "warnings": warnings,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    return 130 if interrupted else (1 if warnings else 0)


if __name__ == "__main__":
    sys.exit(main())
