"""What the server tells about a folder without being asked: the NOOP poll of a kept
session between syncs, and IDLE (RFC 2177) for the watcher.

Whatever arrives is a hint (IMAP-NOTES §1 IDLE): Dovecot coalesces events, and a line can
only say "something changed here", which the folder's sync then reads in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailsync.engine.errors import MailError, ProtocolError, ServerUnreachable
from mailsync.engine.imap.connection import ImapConnection, text_of
from mailsync.engine.imap.data import FlagState, HeldFolderNews
from mailsync.engine.imap.fetch_parser import fetch_items, flag_state

ALIVE_TIMEOUT = 10.0  # seconds a kept session has to answer its NOOP
# Untagged responses that mean the held folder changed beyond flags (or in a way the held
# state cannot follow): the next sync selects it again.
_FOLDER_NEWS = frozenset(
    {"EXISTS", "EXPUNGE", "VANISHED", "RECENT", "FLAGS", "HIGHESTMODSEQ", "BYE"}
)
# Untagged responses during IDLE that say nothing about the folder: Dovecot's "* OK Still
# here" every imap_idle_notify_interval (2 min), or a warning.
_NOT_NEWS = frozenset({"OK", "NO", "BAD", "CAPABILITY"})
_UNTAGGED = re.compile(rb"\* (?:(\d+) )?([A-Za-z][A-Za-z0-9.-]*)")


@dataclass(frozen=True)
class IdleNews:
    """One untagged line received during IDLE: ``* 4 EXISTS`` is kind ``EXISTS``."""

    kind: str
    line: str

    @property
    def is_change(self) -> bool:
        """The folder may have changed: its sync should run (a hint, never the data)."""
        return self.kind not in _NOT_NEWS and self.kind != "BYE"


def parse_idle_line(line: bytes) -> IdleNews:
    """The kind of an untagged line; an unreadable line counts as a change (a needless
    sync costs little, a missed one leaves the mirror behind until beat's)."""
    match = _UNTAGGED.match(line)
    kind = match.group(2).decode("ascii").upper() if match else "UNKNOWN"
    return IdleNews(kind=kind, line=text_of(line).strip())


class NewsConnection(ImapConnection):
    """A connection that also reads the server's news: NOOP polls and IDLE."""

    # -- holding a folder between syncs ----------------------------------------------

    def alive(self) -> bool:
        """A NOOP answered OK on a logged-in connection: a kept session is still usable
        (the server may have logged it out, or dropped it when its folder was deleted).
        What the NOOP brings stays collected for ``poll_held``."""
        if not self._wire.logged_in():
            return False
        # A connection a NAT or firewall forgot never answers: give up after seconds, not
        # after the full read timeout, and let the caller connect anew.
        try:
            with self._wire.read_timeout_at_most(ALIVE_TIMEOUT):
                self._noop()
        except (MailError, OSError):
            return False
        return self._wire.logged_in()

    def hold(self) -> None:
        """The selected folder is stored as of its SELECT: keep it selected, so the next
        sync can ask for news with a NOOP instead of opening the folder again (STATUS and
        SELECT read the folder's whole index: ≈65 ms at 100k messages on Dovecot)."""
        if self.selected is not None and "QRESYNC" in self.capabilities:
            # not when a change the server reported since SELECT was dropped unread: it
            # would never be reported again
            self._held = None if self._news_dropped else self.selected.name

    def poll_held(self, folder: str) -> HeldFolderNews | None:
        """NOOP on a held folder and what the server reported since its SELECT; None when
        ``folder`` is not held (never synced on this connection, selected again since, or
        a write of ours came between).

        With QRESYNC enabled the server reports every change to the selected folder, by
        any client: new mail as EXISTS, expunges as VANISHED, flag changes as FETCH with
        UID and MODSEQ (RFC 7162 §3.2.10). Only flag changes are returned as such; any
        other news (or a flag change we cannot read) means "changed": sync in full."""
        if self._held != folder or self.selected is None:
            return None
        try:
            self._noop()
        except ServerUnreachable:
            # a kept connection cut since: what it would have told is lost with it
            self.reopen()
            return None
        fetched = self._wire.take("FETCH")
        if self._wire.collected() & _FOLDER_NEWS:
            self._held = None  # the full sync selects the folder again
            return HeldFolderNews(changed=True)
        flags: dict[int, FlagState] = {}
        for items in fetch_items(fetched):
            uid = items.get(b"UID")
            if uid is None or b"FLAGS" not in items:
                self._held = None
                return HeldFolderNews(changed=True)
            flags[int(uid)] = flag_state(int(uid), items)
        return HeldFolderNews(changed=False, flags=flags)

    def _noop(self) -> None:
        """NOOP: the server's news arrive in imaplib's untagged responses."""
        with self._guard("NOOP"):
            typ, data = self._wire.command("NOOP")
        if typ != "OK":
            raise ProtocolError(f"NOOP refused: {text_of(data[0]) if data else typ}")

    # -- IDLE ----------------------------------------------------------------------

    @property
    def has_idle(self) -> bool:
        return "IDLE" in self.capabilities

    def idle_start(self, *, timeout: float) -> list[IdleNews]:
        """Enter IDLE on the selected folder; returns what the server said before it
        agreed (news already). ``timeout``: seconds the server has to agree."""
        if not self.has_idle:
            raise ProtocolError("the server does not offer IDLE")
        self._held = None  # the news go to the watcher, not to a held folder's poll
        with self._guard("IDLE"):
            lines = self._wire.idle_start(timeout)
        return self._idle_news(lines)

    def idle_wait(self, timeout: float) -> list[IdleNews]:
        """What the server says during IDLE within ``timeout`` seconds ([] after silence).
        Raises ServerUnreachable when the connection is closed or the server says BYE:
        a closed socket never reads as endless empty news (imapclient #565)."""
        with self._guard("IDLE"):
            lines = self._wire.idle_wait(timeout)
        return self._idle_news(lines)

    def idle_done(self, *, timeout: float) -> list[IdleNews]:
        """Leave IDLE; the server has ``timeout`` seconds to confirm, else the connection
        counts as dead (ServerUnreachable). Returns the news that came meanwhile."""
        with self._guard("DONE"):
            lines = self._wire.idle_done(timeout)
        return self._idle_news(lines)

    def _idle_news(self, lines: list[bytes]) -> list[IdleNews]:
        # imaplib collects every untagged response; a watcher IDLEs for days
        self._wire.forget_collected()
        news = [parse_idle_line(line) for line in lines]
        bye = next((item for item in news if item.kind == "BYE"), None)
        if bye is not None:
            raise ServerUnreachable(f"the server closed the connection ({bye.line})")
        return news
