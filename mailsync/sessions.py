"""IMAP connections kept open between the syncs of one worker process.

Opening a session costs a TCP (and TLS) handshake and a LOGIN -- hundreds of milliseconds
to a provider across the internet, and providers throttle frequent logins -- and the
folder's index has to be read again at STATUS or SELECT. A session kept from the last sync
still holds its folder selected, and the next sync only asks for news with a NOOP
(``ImapSession.poll_held``).

One session per mailbox per process, lent to one caller at a time. A session is returned
only by a caller that finished without a connection error; it is dropped when the mailbox's
account changed (server, user, password), after ``IDLE_SECONDS`` unused (servers log idle
clients out after 30 minutes), and in a forked child (the parent keeps the socket).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mailsync.engine.accounts import MailAccount
from mailsync.engine.imap import ImapSession

IDLE_SECONDS = 600
MAX_SESSIONS = 20
clock = time.monotonic  # (tests turn it)


@dataclass
class _Kept:
    account: MailAccount
    session: ImapSession
    returned_at: float


_lock = threading.Lock()
_kept: dict[int, _Kept] = {}


@contextmanager
def lent_session(
    mailbox_id: int, account: MailAccount, connect: Callable[[], ImapSession]
) -> Iterator[ImapSession]:
    """A kept session for this mailbox if there is a fresh one, else ``connect()``; kept
    again afterwards unless the block raised (a broken or confused connection is closed,
    never lent again)."""
    session = _take(mailbox_id, account) or connect()
    try:
        yield session
    except BaseException:
        # a connection error, or an interruption mid-command: its state is unknown
        session.close()
        raise
    _keep(mailbox_id, account, session)


def close_all() -> None:
    """Log every kept session out (tests, shutdown)."""
    with _lock:
        kept = list(_kept.values())
        _kept.clear()
    for entry in kept:
        entry.session.close()


def _take(mailbox_id: int, account: MailAccount) -> ImapSession | None:
    with _lock:
        entry = _kept.pop(mailbox_id, None)
        expired = _pop_expired()
    for old in expired:
        old.session.close()
    if entry is None:
        return None
    stale = clock() - entry.returned_at > IDLE_SECONDS
    if stale or entry.account != account or not entry.session.alive():
        entry.session.close()
        return None
    entry.session.lent_again()
    return entry.session


def _pop_expired() -> list[_Kept]:
    """Sessions of mailboxes no longer synced here (deactivated, moved to another worker):
    logged out when any session is next taken, not left to the server's timeout."""
    now = clock()
    expired = [key for key, entry in _kept.items() if now - entry.returned_at > IDLE_SECONDS]
    return [_kept.pop(key) for key in expired]


def _keep(mailbox_id: int, account: MailAccount, session: ImapSession) -> None:
    evicted: list[_Kept] = []
    with _lock:
        previous = _kept.pop(mailbox_id, None)
        if previous is not None:
            evicted.append(previous)
        _kept[mailbox_id] = _Kept(account, session, clock())
        while len(_kept) > MAX_SESSIONS:  # the longest unused go first
            oldest = min(_kept, key=lambda key: _kept[key].returned_at)
            evicted.append(_kept.pop(oldest))
    for entry in evicted:
        entry.session.close()


def _forget_in_child() -> None:
    # The socket is shared with the parent after fork: never LOGOUT from here.
    _kept.clear()


os.register_at_fork(after_in_child=_forget_in_child)
