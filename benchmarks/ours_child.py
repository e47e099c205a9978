"""Our side of the sync benchmark, in a process of its own (so its peak RSS is ours alone).

Started by ``benchmarks/sync_bench.py`` as ``python -m benchmarks.ours_child`` with
``DATABASE_URL`` set. It talks over pipes, one JSON object a line: it reads its
configuration from stdin, and writes events to stdout as ``@@bench {json}`` lines
(anything else on stdout is ignored by the parent; logging goes to stderr).

Sequence, all in this one warm process:

1. ``django.setup()``, create the Mailbox row (not timed);
2. initial ``sync_mailbox`` (timed), with a progress callback that, until it passes, checks
   that the newest 50 UIDs are listed -- rows with subject, sender, date and the server's
   flags -- and records when that first held (the check's own time is subtracted);
3. text extraction: when ``sync_mailbox`` takes ``extract=`` (list first, text later), the
   syncs run with ``extract=False`` as the Celery task does, and the separate step
   (``mailsync.extract.extract_pending_in_parallel``, else ``runner.extract_pending``) is
   timed after the initial sync; with neither, parsing is inline and "text" = initial;
4. no-change resyncs (timed, several, the parent reports the median);
5. ``await_flags``: the parent, as another IMAP client, flags 10 messages and answers with
   their UIDs; one resync is timed and the flags are checked in the database;
6. ``done`` with ``ru_maxrss`` and ``VmHWM``.

With ``"profile": "<prefix>"`` in the configuration (``sync_bench.py --profile``), the
initial sync, the third no-change resync and the 10-flag resync run under cProfile
(``<prefix>.initial.prof`` / ``.txt``, ``<prefix>.nochange.*``, ``<prefix>.flags.*``) and 300
messages
are extracted under cProfile in-process before the timed extraction
(``<prefix>.extract.*``): the timings of such a run are not representative.
"""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import inspect
import json
import os
import pstats
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

_PREFIX = "@@bench "


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(_PREFIX + json.dumps({"event": event, **data}, default=str) + "\n")
    sys.stdout.flush()


def read_command() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("parent closed stdin")
    command: dict[str, Any] = json.loads(line)
    return command


def vm_hwm_kib() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def dump_profile(profiler: cProfile.Profile, prefix: str) -> None:
    """``<prefix>.prof`` (for snakeviz / pstats) and ``<prefix>.txt`` (top 40 by own time
    and by cumulative time)."""
    profiler.dump_stats(f"{prefix}.prof")
    with open(f"{prefix}.txt", "w") as out:
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)


def profile_extraction(messages: Any, prefix: str, sample: int = 300) -> None:
    """Profile the extraction of ``sample`` pending messages in this process (the parallel
    step forks, which cProfile cannot follow); the rest is extracted by the timed step,
    so with --profile the extraction time is NOT representative."""
    from mailsync.extract import extract_messages

    ids = list(messages.filter(extracted_at__isnull=True).values_list("pk", flat=True)[:sample])
    profiler = cProfile.Profile()
    profiler.enable()
    extract_messages(ids)
    profiler.disable()
    dump_profile(profiler, prefix)


def find_extraction(runner: Any) -> tuple[Callable[[Any], Any] | None, str]:
    """The separate text-extraction step, if this version of the engine has one."""
    extract_module: Any = None
    with contextlib.suppress(ImportError):
        from mailsync import extract as extract_module
    parallel = getattr(extract_module, "extract_pending_in_parallel", None)
    if parallel is not None:
        return parallel, "separate step: mailsync.extract.extract_pending_in_parallel(mailbox)"
    pending = getattr(runner, "extract_pending", None)
    if pending is not None:
        return pending, "separate step: mailsync.runner.extract_pending(mailbox)"
    return None, "inline during the sync (no separate step): equals the initial sync"


def main() -> None:
    config = read_command()
    setup_started = time.perf_counter()
    import django

    django.setup()
    from django.db import connection

    from mailsync import runner
    from mailsync.models import Mailbox, Message

    mailbox = Mailbox(
        name=config["mailbox_name"],
        email_address=config["user"],
        protocol=Mailbox.Protocol.IMAP,
        security=Mailbox.Security.PLAIN,
        host=config["host"],
        port=config["port"],
        username=config["user"],
        folder_names=["INBOX"],
    )
    mailbox.set_password(config["password"])
    mailbox.save()
    messages = Message.objects.filter(folder__mailbox=mailbox)
    # What the Celery task calls: list (envelope, flags, raw) now, extract text separately.
    sync_kwargs: dict[str, Any] = {}
    if "extract" in inspect.signature(runner.sync_mailbox).parameters:
        sync_kwargs["extract"] = False
    emit(
        "ready",
        sync_kwargs=sync_kwargs,
        setup_s=time.perf_counter() - setup_started,
        hwm_after_setup_kib=vm_hwm_kib(),
        database=connection.vendor,
    )

    # -- the newest 50, checked against what the parent read from the server ---------------
    expected = {int(uid): item for uid, item in config["newest"].items()}

    def newest_listed() -> tuple[bool, str]:
        rows = messages.filter(uid__in=list(expected)).values(
            "uid",
            "message_id",
            "subject",
            "from_address",
            "date",
            *Message.FLAG_FIELDS.values(),
        )
        found = {row["uid"]: row for row in rows}
        if len(found) < len(expected):
            return False, f"{len(found)}/{len(expected)} rows"
        for uid, want in expected.items():
            row = found[uid]
            if row["message_id"].strip("<>") != want["message_id"]:
                return False, f"uid {uid}: message_id {row['message_id']!r} != {want['message_id']}"
            if not row["subject"] or not row["from_address"] or row["date"] is None:
                return False, f"uid {uid}: envelope incomplete"
            for flag, field in Message.FLAG_FIELDS.items():
                if bool(row[field]) != (flag in want["flags"]):
                    return False, f"uid {uid}: {flag} is {row[field]} in the database"
        return True, "ok"

    class Progress:
        def __init__(self) -> None:
            self.started = 0.0
            self.check_seconds = 0.0
            self.callbacks = 0
            self.first_batch_s: float | None = None  # first callback with fetched >= 50
            self.listed_s: float | None = None  # first moment the newest-50 check held
            self.listed_at_fetched = 0
            self.last_detail = "no callback yet"

        def __call__(self, step: Any) -> None:
            now = time.perf_counter()
            self.callbacks += 1
            at = now - self.started - self.check_seconds
            if self.first_batch_s is None and step.fetched >= 50:
                self.first_batch_s = at
            if self.listed_s is None:
                ok, self.last_detail = newest_listed()
                if ok:
                    self.listed_s = at
                    self.listed_at_fetched = step.fetched
                self.check_seconds += time.perf_counter() - now

    def report_dicts(result: Any) -> list[dict[str, Any]]:
        return [dataclasses.asdict(report) for report in result.reports]

    # -- 2. initial sync ---------------------------------------------------------------------
    progress = Progress()
    profile_prefix = config.get("profile")
    profiler = cProfile.Profile() if profile_prefix else None
    if profiler is not None:
        profiler.enable()
    progress.started = time.perf_counter()
    result = runner.sync_mailbox(mailbox, on_progress=progress, **sync_kwargs)
    initial_s = time.perf_counter() - progress.started - progress.check_seconds
    if profiler is not None:
        profiler.disable()
        dump_profile(profiler, f"{profile_prefix}.initial")
    hwm_after_initial = vm_hwm_kib()
    if progress.listed_s is None:  # never held during the sync: check once more now
        ok, progress.last_detail = newest_listed()
        if ok:
            progress.listed_s = initial_s
            progress.listed_at_fetched = -1
    stored = messages.count()
    with_raw = messages.filter(blob__size__gt=0).count()
    emit(
        "initial",
        seconds=initial_s,
        newest50_s=progress.listed_s,
        newest50_detail=progress.last_detail,
        newest50_at_fetched=progress.listed_at_fetched,
        first_batch_s=progress.first_batch_s,
        callbacks=progress.callbacks,
        check_seconds=progress.check_seconds,
        stored=stored,
        with_raw=with_raw,
        busy=result.busy_folders,
        missing=result.missing_folders,
        reports=report_dicts(result),
        hwm_kib=hwm_after_initial,
    )

    # -- 3. text extraction ----------------------------------------------------------------
    extract, mode = find_extraction(runner)
    extract_s: float | None = None
    if config.get("skip_text"):
        extract, mode = None, "skipped (--skip-text)"
    if extract is not None:
        if profile_prefix:
            profile_extraction(messages, f"{profile_prefix}.extract")
        started = time.perf_counter()
        extract(mailbox)
        extract_s = time.perf_counter() - started
    pending = 0
    if any(f.name == "extracted_at" for f in Message._meta.get_fields()):
        pending = messages.filter(extracted_at__isnull=True).count()
    no_text = messages.filter(text_body="", html_body="").count()
    emit(
        "text",
        seconds=initial_s + (extract_s or 0.0),
        extract_s=extract_s,
        mode=mode,
        without_text=no_text,
        pending=pending,
        hwm_kib=vm_hwm_kib(),
    )

    # -- 4. no-change resyncs --------------------------------------------------------------
    runs = []
    changes = []
    for run in range(int(config.get("nochange_runs", 3))):
        profiler = cProfile.Profile() if profile_prefix and run == 2 else None
        if profiler is not None:  # the third run: the first two warm the caches
            profiler.enable()
        started = time.perf_counter()
        result = runner.sync_mailbox(mailbox, **sync_kwargs)
        runs.append(time.perf_counter() - started)
        if profiler is not None:
            profiler.disable()
            dump_profile(profiler, f"{profile_prefix}.nochange")
        changes.append(
            {
                key: sum(getattr(r, key) for r in result.reports)
                for key in ("new_messages", "flag_updates", "expunged")
            }
        )
    emit("nochange", seconds=statistics.median(runs), runs=runs, changes=changes)

    # -- 5. ten flags set by another client ------------------------------------------------
    emit("await_flags")
    command = read_command()
    flagged_uids = [int(uid) for uid in command["uids"]]
    profiler = cProfile.Profile() if profile_prefix else None
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    result = runner.sync_mailbox(mailbox, **sync_kwargs)
    flags_s = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        dump_profile(profiler, f"{profile_prefix}.flags")
    arrived = messages.filter(uid__in=flagged_uids, flagged=True).count()
    flagged_total = messages.filter(flagged=True).count()
    emit(
        "flags",
        seconds=flags_s,
        arrived=arrived,
        expected=len(flagged_uids),
        flagged_total=flagged_total,
        expected_flagged_total=command["flagged_total"],
        reports=report_dicts(result),
    )

    emit("done", ru_maxrss_kib=peak_kib(), vm_hwm_kib=vm_hwm_kib(), pid=os.getpid())


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # report, then fail: the parent turns it into a row
        if not isinstance(exc, SystemExit):
            emit("error", error=repr(exc), traceback=traceback.format_exc())
        raise
