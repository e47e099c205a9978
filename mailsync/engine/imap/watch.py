"""Watching one folder with IDLE: the loop a watcher thread runs (RFC 2177; IMAP-NOTES §1).

Whatever the server says about the folder is a hint: the loop calls ``on_hint`` and the
folder's sync reads what changed. The loop re-issues IDLE every ``renew_seconds`` (RFC 2177
allows 29 minutes; NATs and some servers forget a silent connection sooner), and a DONE not
answered within ``answer_seconds`` means the connection is dead. Failures back off
exponentially with jitter; a closed socket raises at once instead of reading as endless
empty news (imapclient #565), so the loop never spins.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailsync.engine.errors import AuthenticationFailed, FolderMissing, MailError
from mailsync.engine.imap.commands import ImapSession
from mailsync.engine.imap.news import IdleNews

log = logging.getLogger(__name__)

CONNECTING = "starting"
CONNECTED = "connected"
BACKING_OFF = "backing_off"
NOT_SUPPORTED = "not_supported"
# At most this many lines are read at once after a change, so a burst (EXISTS, RECENT,
# FETCH of one append) is one hint, not three.
BURST_LINES = 100


@dataclass(frozen=True)
class WatchTiming:
    renew_seconds: float = 240.0
    answer_seconds: float = 10.0
    backoff_min_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    # A connection that lasted this long resets the backoff: a server that drops every
    # connection right after login is not retried every second forever.
    stable_seconds: float = 60.0
    # How often a waiting IDLE looks at the stop flag.
    slice_seconds: float = 1.0


class IdleUnsupported(MailError):
    """The server has no IDLE: the folder is left to beat's periodic sync."""


def backoff_delay(failures: int, timing: WatchTiming, rand: Callable[[], float]) -> float:
    """Exponential from ``backoff_min_seconds``, capped, with "equal jitter": between half
    and all of it, so watchers cut off together do not come back together."""
    ceiling = min(
        timing.backoff_max_seconds, timing.backoff_min_seconds * 2.0 ** max(0, failures - 1)
    )
    return ceiling / 2 + rand() * ceiling / 2


class FolderWatch:
    """IDLE on one folder until ``stop`` is set. ``on_state(state, detail)`` is called on
    every change of state (not per retry); ``on_hint(folder)`` whenever the folder may
    have changed, including after each (re)connection (changes while unwatched)."""

    def __init__(
        self,
        *,
        connect: Callable[[], ImapSession],
        folder: str,
        on_hint: Callable[[str], None],
        on_state: Callable[[str, str], None],
        stop: threading.Event,
        timing: WatchTiming = WatchTiming(),
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._connect = connect
        self.folder = folder
        self._on_hint = on_hint
        self._on_state = on_state
        self._stop = stop
        self._timing = timing
        self._clock = clock
        self._rand = rand
        self._state: tuple[str, str] | None = None

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = self._clock()
            try:
                self._watch()
                return  # stopped
            except IdleUnsupported as exc:
                self._say(NOT_SUPPORTED, str(exc))
                self._stop.wait()
                return
            except Exception as exc:  # MailError, or the hint's database/broker failing
                if self._clock() - started >= self._timing.stable_seconds:
                    failures = 0
                failures += 1
                delay = backoff_delay(failures, self._timing, self._rand)
                self._say(BACKING_OFF, _why(exc))
                # the state line says it once; the traceback only for who asks
                log.debug("watching %s failed", self.folder, exc_info=True)
                self._stop.wait(delay)

    def _watch(self) -> None:
        if self._state is None:
            self._say(CONNECTING, "")
        session = self._connect()
        try:
            if not session.has_idle:
                raise IdleUnsupported("the server does not offer IDLE")
            session.select(self.folder)
            news = session.idle_start(timeout=self._timing.answer_seconds)
            self._say(CONNECTED, "")
            self._on_hint(self.folder)  # what changed while nobody watched
            self._idle(session, news)
        except BaseException:
            session.abandon()
            raise
        session.close()

    def _idle(self, session: ImapSession, news: list[IdleNews]) -> None:
        timing = self._timing
        renew_at = self._clock() + timing.renew_seconds
        while True:
            if any(item.is_change for item in news):
                for _ in range(BURST_LINES):  # the rest of the burst, if already here
                    if not session.idle_wait(0.0):
                        break
                self._on_hint(self.folder)
            if self._stop.is_set():
                session.idle_done(timeout=timing.answer_seconds)
                return
            now = self._clock()
            if now >= renew_at:
                # DONE answered in time proves the connection alive; a NAT that forgot it
                # never answers, and the timeout says so
                news = session.idle_done(timeout=timing.answer_seconds)
                news += session.idle_start(timeout=timing.answer_seconds)
                renew_at = self._clock() + timing.renew_seconds
                continue
            news = session.idle_wait(min(timing.slice_seconds, renew_at - now))

    def _say(self, state: str, detail: str) -> None:
        if self._state != (state, detail):
            self._state = (state, detail)
            self._on_state(state, detail)


def _why(exc: Exception) -> str:
    if isinstance(exc, AuthenticationFailed):
        return f"login refused: {exc}"
    if isinstance(exc, FolderMissing):
        return str(exc)
    if isinstance(exc, MailError):
        return f"no connection: {exc}"
    return f"cannot enqueue the sync: {exc.__class__.__name__}: {exc}"
