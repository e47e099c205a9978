"""The one module that reaches into imaplib's and imapclient's private parts.

imapclient has no way to send a command with modifiers it does not know (``UNCHANGEDSINCE``,
``CHANGEDSINCE ... VANISHED``), to read the untagged responses a NOOP brought, or to wait for
IDLE news without its bugs (IMAP-NOTES §3: ``idle_check`` returns ``[]`` at once, forever,
once the server has closed the connection, #565). Each such access is a method here, so an
upgrade of either library is checked in one file.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import select
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from imapclient import IMAPClient

from mailsync.engine.errors import ProtocolError, ServerUnreachable


class Wire:
    """An IMAPClient and what its imaplib connection offers beyond imapclient's API."""

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        self._idle_tag: str | None = None

    @property
    def _imap(self) -> Any:  # imaplib.IMAP4, untyped in imapclient
        return self.client._imap

    # -- connection state ------------------------------------------------------------

    def quiet(self) -> None:
        """imapclient turns imaplib's debug output up to its highest level and sends it to
        a logger, so imaplib formats the repr of every response -- every message's bytes,
        and the whole list of a batch's answers -- even when that logger discards it: more
        than a third of a sync's time. Only when the logger would keep it."""
        if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
            self._imap.debug = 0

    def forget_capabilities(self) -> None:
        """Servers may announce more after authentication (M365 does): ask again."""
        self.client._cached_capabilities = None

    def logged_in(self) -> bool:
        return self._imap.state in ("AUTH", "SELECTED")

    # -- commands and their untagged responses ----------------------------------------

    def command(self, *words: str) -> tuple[str, list[Any]]:
        """Send a command as imaplib joins its words (``"UID", "FETCH", "1:5", "(FLAGS)"``)
        and wait for its tagged answer: (``"OK"``/``"NO"``/``"BAD"``, the answer's text).
        Untagged responses stay collected for ``take``."""
        typ, data = self._imap._simple_command(*words)
        return str(typ), list(data)

    def take(self, name: str) -> list[Any]:
        """The untagged responses of this kind collected so far (removed)."""
        return list(self._imap.untagged_responses.pop(name, None) or [])

    def collected(self) -> set[str]:
        """The kinds of untagged responses collected and not taken yet."""
        return set(self._imap.untagged_responses)

    def forget_collected(self) -> None:
        self._imap.untagged_responses.clear()

    # -- IDLE (RFC 2177) ---------------------------------------------------------------

    def idle_start(self, timeout: float) -> list[bytes]:
        """Send IDLE and wait (at most ``timeout`` seconds per line) for the server's go
        ahead; returns the untagged lines that came before it (news already)."""
        lines: list[bytes] = []
        with self._read_timeout(timeout):
            self._idle_tag = tag = self._imap._command("IDLE")
            while True:
                line = self._imap._get_response()
                if line is None:  # "+ idling": the continuation
                    return lines
                if self._imap.tagged_commands.get(tag):
                    self._idle_tag = None
                    typ, data = self._imap.tagged_commands.pop(tag)
                    text = data[0] if data else typ
                    raise ProtocolError(f"IDLE refused: {_text(text)}")
                lines.append(bytes(line))

    def idle_wait(self, timeout: float) -> list[bytes]:
        """The next line the server sends during IDLE, or ``[]`` when ``timeout`` seconds
        pass in silence. A connection the server closed raises ServerUnreachable (where
        imapclient's ``idle_check`` would return ``[]`` again and again)."""
        if not self._line_waiting():
            poller = select.poll()
            poller.register(self.client.socket().fileno(), select.POLLIN | select.POLLPRI)
            if not poller.poll(max(0.0, timeout) * 1000):
                return []
        # Readable: a line, the rest of one, or the end of the stream. A server that sent
        # half a line and went silent is dead: the normal read timeout covers that.
        try:
            line = self._imap._get_response()
        except imaplib.IMAP4.abort as exc:
            raise ServerUnreachable(f"IDLE: the connection was closed ({_text(exc)})") from exc
        if line is None:  # a stray continuation: nothing to report
            return []
        if self._idle_tag is not None and self._imap.tagged_commands.get(self._idle_tag):
            self._idle_tag = None
            raise ServerUnreachable(f"IDLE: the server ended it ({_text(line)})")
        return [bytes(line)]

    def idle_done(self, timeout: float) -> list[bytes]:
        """End IDLE with DONE and wait at most ``timeout`` seconds for its tagged answer;
        returns the untagged lines that came meanwhile. No answer in time means the
        connection is dead (imapclient's ``idle_done`` waits forever, #449)."""
        tag, self._idle_tag = self._idle_tag, None
        if tag is None:
            return []
        lines: list[bytes] = []
        with self._read_timeout(timeout):
            self._imap.send(b"DONE\r\n")
            while not self._imap.tagged_commands.get(tag):
                line = self._imap._get_response()
                if line is not None and not self._imap.tagged_commands.get(tag):
                    lines.append(bytes(line))
        typ, data = self._imap.tagged_commands.pop(tag)
        if typ != "OK":
            raise ProtocolError(f"IDLE ended with {typ}: {_text(data[0] if data else b'')}")
        return lines

    def _line_waiting(self) -> bool:
        """Whether imaplib's reader already holds bytes (read along with an earlier line,
        so ``poll`` on the socket would not see them)."""
        sock = self.client.socket()
        before = sock.gettimeout()
        try:
            sock.setblocking(False)
            return bool(self._imap.file.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (OSError, ValueError):
            return True  # let the read find out what is wrong with the connection
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(before)

    @contextmanager
    def _read_timeout(self, seconds: float) -> Iterator[None]:
        sock = self.client.socket()
        before = sock.gettimeout()
        sock.settimeout(seconds)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(before)

    @contextmanager
    def read_timeout_at_most(self, seconds: float) -> Iterator[None]:
        """The socket's read timeout lowered to ``seconds`` for a while (a kept session's
        NOOP: a connection a NAT forgot never answers)."""
        sock = self.client.socket()
        before = sock.gettimeout()
        try:
            sock.settimeout(min(seconds, before) if before else seconds)
            yield
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(before)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
