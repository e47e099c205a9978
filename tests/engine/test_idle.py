"""IDLE lines and the watch loop (engine/imap/news.py, engine/imap/watch.py) with a fake
session and a fake clock; the same loop against Dovecot is in tests/test_watcher.py."""

from __future__ import annotations

import itertools

from mailsync.engine.errors import AuthenticationFailed, ServerUnreachable
from mailsync.engine.imap.news import IdleNews, parse_idle_line
from mailsync.engine.imap.watch import (
    BACKING_OFF,
    CONNECTED,
    FolderWatch,
    WatchTiming,
    backoff_delay,
)


def test_it_reads_every_folder_change_as_a_hint_and_keepalives_as_none():
    assert parse_idle_line(b"* 4 EXISTS").kind == "EXISTS"
    assert parse_idle_line(b"* 4 EXISTS").is_change
    assert parse_idle_line(b"* 3 FETCH (UID 7 MODSEQ (12) FLAGS (\\Seen))").is_change
    assert parse_idle_line(b"* VANISHED 7:9").is_change
    assert parse_idle_line(b"* 2 EXPUNGE").is_change
    assert parse_idle_line(b"* garbled").is_change  # a needless sync beats a missed one
    assert not parse_idle_line(b"* OK Still here").is_change
    assert parse_idle_line(b"* BYE Server shutting down.").kind == "BYE"


def test_backoff_doubles_from_a_second_up_to_its_cap_with_jitter():
    timing = WatchTiming(backoff_min_seconds=1, backoff_max_seconds=300)
    lowest = [backoff_delay(n, timing, lambda: 0.0) for n in range(1, 12)]
    highest = [backoff_delay(n, timing, lambda: 1.0) for n in range(1, 12)]
    assert highest[:5] == [1, 2, 4, 8, 16]
    assert highest[-1] == 300
    assert lowest == [h / 2 for h in highest]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStop:
    """A stop flag whose waits pass on the fake clock; set once ``until`` is reached."""

    def __init__(self, clock: FakeClock, until: float) -> None:
        self.clock, self.until = clock, until
        self.waits: list[float | None] = []

    def is_set(self) -> bool:
        return self.clock.now >= self.until

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        self.clock.now += timeout if timeout is not None else self.until
        return self.is_set()


class FakeSession:
    has_idle = True

    def __init__(self, clock: FakeClock, news_at: dict[float, list[IdleNews]]) -> None:
        self.clock, self.news_at = clock, dict(news_at)
        self.log: list[tuple[str, float]] = []

    def select(self, folder: str) -> None:
        self.log.append(("SELECT", self.clock.now))

    def idle_start(self, *, timeout: float) -> list[IdleNews]:
        self.log.append(("IDLE", self.clock.now))
        return []

    def idle_wait(self, timeout: float) -> list[IdleNews]:
        if timeout == 0:
            return []
        due = [t for t in self.news_at if t <= self.clock.now + timeout]
        if due:
            self.clock.now = max(self.clock.now, min(due))
            return self.news_at.pop(min(due))
        self.clock.now += timeout
        return []

    def idle_done(self, *, timeout: float) -> list[IdleNews]:
        self.log.append(("DONE", self.clock.now))
        return []

    def close(self) -> None:
        self.log.append(("LOGOUT", self.clock.now))

    def abandon(self) -> None:
        self.log.append(("ABANDON", self.clock.now))


def watch(connect, clock, stop, hints, states, timing=None):
    return FolderWatch(
        connect=connect,
        folder="INBOX",
        on_hint=hints.append,
        on_state=lambda state, detail: states.append((state, detail)),
        stop=stop,
        timing=timing or WatchTiming(),
        clock=clock,
        rand=lambda: 1.0,
    )


def test_it_re_issues_idle_well_inside_the_servers_timeout():
    clock = FakeClock()
    session = FakeSession(clock, {})
    hints: list[str] = []
    watch(lambda: session, clock, FakeStop(clock, 3600), hints, []).run()

    starts = [at for command, at in session.log if command == "IDLE"]
    assert len(starts) >= 3600 // 240
    assert all(later - earlier <= 240 for earlier, later in itertools.pairwise(starts))
    # each renewal ends the running IDLE first, and the last one ends with the watch
    assert [c for c, _ in session.log].count("DONE") == len(starts)
    assert session.log[-1][0] == "LOGOUT"


def test_whatever_the_server_says_about_the_folder_becomes_one_hint():
    clock = FakeClock()
    session = FakeSession(
        clock,
        {
            5.0: [parse_idle_line(b"* 9 EXISTS"), parse_idle_line(b"* 1 RECENT")],
            7.0: [parse_idle_line(b"* OK Still here")],
            9.0: [parse_idle_line(b"* 3 FETCH (UID 3 FLAGS (\\Flagged))")],
        },
    )
    hints: list[str] = []
    states: list[tuple[str, str]] = []
    watch(lambda: session, clock, FakeStop(clock, 20), hints, states).run()

    # one after connecting (changes while unwatched), one per change; none for "Still here"
    assert hints == ["INBOX", "INBOX", "INBOX"]
    assert (CONNECTED, "") in states


def test_a_server_that_is_down_is_asked_again_less_and_less_often():
    clock = FakeClock()
    stop = FakeStop(clock, 600)
    states: list[tuple[str, str]] = []

    def refused():
        raise ServerUnreachable("cannot connect to imap:993: connection refused")

    watch(refused, clock, stop, [], states).run()

    assert stop.waits[:6] == [1, 2, 4, 8, 16, 32]
    assert len(stop.waits) < 15  # ten minutes, not a loop
    assert states == [
        ("starting", ""),
        (BACKING_OFF, "no connection: cannot connect to imap:993: connection refused"),
    ]


def test_a_refused_login_says_so():
    clock = FakeClock()
    states: list[tuple[str, str]] = []

    def refused():
        raise AuthenticationFailed("login refused for 'support'")

    watch(refused, clock, FakeStop(clock, 10), [], states).run()
    assert states[-1] == (BACKING_OFF, "login refused: login refused for 'support'")


def test_a_connection_that_drops_is_closed_without_logout_and_opened_again():
    clock = FakeClock()
    sessions: list[FakeSession] = []

    class Dropping(FakeSession):
        def idle_wait(self, timeout: float) -> list[IdleNews]:
            if self.clock.now >= 30:
                raise ServerUnreachable("IDLE: the connection was closed")
            return super().idle_wait(timeout)

    def connect():
        sessions.append(Dropping(clock, {}) if not sessions else FakeSession(clock, {}))
        return sessions[-1]

    hints: list[str] = []
    watch(connect, clock, FakeStop(clock, 60), hints, []).run()

    assert len(sessions) == 2
    assert sessions[0].log[-1][0] == "ABANDON"
    assert hints == ["INBOX", "INBOX"]  # each connection starts with a sync
