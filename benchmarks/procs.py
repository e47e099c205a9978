"""Child processes for the benchmark: timed runs with their own peak RSS, and cleanup.

Every process the benchmark starts is registered here, in its own process group, so that
a timeout, an error or Ctrl-C ends exactly those processes (by their id) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_started: dict[int, subprocess.Popen[bytes]] = {}


class StepTimeout(RuntimeError):
    """A measured step ran longer than its bound and was killed."""


@dataclass(frozen=True)
class TimedRun:
    seconds: float
    returncode: int
    peak_rss_kib: int  # VmHWM of that one process, sampled while it ran
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set of a live process since its last exec (0 once it is gone).

    Why not ``wait4``'s ``ru_maxrss``: Linux carries the high-water mark across exec, so a
    process forked from this (large) Python interpreter reports at least our own RSS."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class HighWaterSampler:
    """Samples a process's VmHWM every few ms in a thread; `peak_kib` is the last (highest)
    value seen -- exact unless the peak was reached in the final few ms of its life."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, vm_hwm_kib(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def register(process: subprocess.Popen[bytes]) -> None:
    _started[process.pid] = process


def unregister(process: subprocess.Popen[bytes]) -> None:
    _started.pop(process.pid, None)


def kill_group(pid: int) -> None:
    """SIGKILL the process group that one of our children leads (it was started with
    ``start_new_session=True``, so the group is exactly that child and its own children)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def kill_all_started() -> None:
    for pid, process in list(_started.items()):
        if process.poll() is None:
            kill_group(pid)
            with contextlib.suppress(Exception):
                process.wait(timeout=5)
        _started.pop(pid, None)


def run_timed(
    cmd: Sequence[str],
    *,
    timeout: float,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> TimedRun:
    """Run ``cmd`` to completion: wall time from spawn to exit (``wait4`` blocks, so the
    end is exact), and the process's peak RSS (`HighWaterSampler`). Output goes to
    ``log_path`` (appended). Raises `StepTimeout`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        started = time.perf_counter()
        process = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        register(process)
        sampler = HighWaterSampler(process.pid)
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            kill_group(process.pid)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            _pid, status, _usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - started
        peak = sampler.stop()
        # wait4 reaped it: tell the Popen object, so it never waits for a pid reused later.
        process.returncode = os.waitstatus_to_exitcode(status)
        unregister(process)
    if timed_out.is_set():
        raise StepTimeout(f"{cmd[0]} ran longer than {timeout:.0f} s and was killed")
    return TimedRun(
        seconds=elapsed,
        returncode=process.returncode,
        peak_rss_kib=peak,
        log_path=log_path,
    )


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (e.g. a multiprocessing pool's workers)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def _rollup_kib(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process, from smaps_rollup; (0, 0) once it is gone."""
    rss = pss = 0
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    return rss, pss


class TreeSampler:
    """Peak memory of a process and its descendants, sampled every ``interval`` seconds:
    the sum of PSS (shared pages split between the processes that share them, so a forked
    pool is not counted twice) and, for reference, the plain sum of RSS."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_pss_kib = 0
        self.peak_rss_sum_kib = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = process_tree(self.pid)
            rollups = [_rollup_kib(pid) for pid in tree]
            self.peak_rss_sum_kib = max(self.peak_rss_sum_kib, sum(r for r, _ in rollups))
            self.peak_pss_kib = max(self.peak_pss_kib, sum(p for _, p in rollups))
            self.max_processes = max(self.max_processes, sum(1 for r, _ in rollups if r))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
