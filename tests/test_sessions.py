"""Kept IMAP sessions (mailsync.sessions) as a pure unit: a stand-in session that only
says whether it is alive and counts its closing (tests/test_sync_held.py has Dovecot)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from mailsync import sessions
from mailsync.engine.accounts import MailAccount
from mailsync.engine.imap import ImapSession

ACCOUNT = MailAccount("imap", "tls", "imap.example.org", 993, "support", "secret")


class StandIn:
    def __init__(self) -> None:
        self.closed = 0
        self.healthy = True

    def alive(self) -> bool:
        return self.healthy

    def lent_again(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    now = [1000.0]
    monkeypatch.setattr(sessions, "clock", lambda: now[0])
    sessions.close_all()
    yield now
    sessions.close_all()


def borrow(mailbox_id: int = 1, account: MailAccount = ACCOUNT) -> tuple[StandIn, list[StandIn]]:
    """Borrow and give back; returns the session lent and the ones connected for it."""
    made: list[StandIn] = []

    def connect() -> ImapSession:
        made.append(StandIn())
        return cast(ImapSession, made[-1])

    with sessions.lent_session(mailbox_id, account, connect) as lent:
        pass
    return cast(Any, lent), made


def test_a_session_given_back_is_lent_again(clock: list[float]) -> None:
    first, made = borrow()
    second, made_again = borrow()
    assert second is first and len(made) == 1 and made_again == []
    assert first.closed == 0


def test_a_changed_password_or_a_dead_connection_gets_a_new_session(clock: list[float]) -> None:
    first, _ = borrow()
    other = MailAccount("imap", "tls", "imap.example.org", 993, "support", "new secret")
    second, made = borrow(account=other)
    assert second is not first and first.closed == 1 and len(made) == 1

    second.healthy = False  # e.g. the server logged it out meanwhile
    third, _ = borrow(account=other)
    assert third is not second and second.closed == 1


def test_a_session_unused_too_long_is_closed_not_lent(clock: list[float]) -> None:
    first, _ = borrow(1)
    idle, _ = borrow(2)
    clock[0] += sessions.IDLE_SECONDS + 1
    again, _ = borrow(1)
    assert again is not first and first.closed == 1
    assert idle.closed == 1  # another mailbox's idle session was logged out as well


def test_a_session_whose_user_raised_is_closed_and_not_kept(clock: list[float]) -> None:
    lent: list[StandIn] = []

    def connect() -> ImapSession:
        lent.append(StandIn())
        return cast(ImapSession, lent[-1])

    with pytest.raises(RuntimeError), sessions.lent_session(1, ACCOUNT, connect):
        raise RuntimeError("the database went away mid-sync")
    assert lent[0].closed == 1
    fresh, made = borrow()
    assert fresh is not lent[0] and len(made) == 1


def test_at_most_max_sessions_are_kept(clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 2)
    oldest, _ = borrow(1)
    clock[0] += 1
    borrow(2)
    clock[0] += 1
    borrow(3)
    assert oldest.closed == 1
