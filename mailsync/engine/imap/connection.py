"""Connecting: TLS, login, capabilities, SELECT, and the mapping of the libraries'
exceptions to the engine's typed errors. The commands are in ``commands``, the server's
news (NOOP on a kept session, IDLE) in ``news``."""

from __future__ import annotations

import contextlib
import imaplib
import ssl
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Self, TypeVar

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError

from mailsync.engine.accounts import MailAccount
from mailsync.engine.errors import (
    AuthenticationFailed,
    FolderMissing,
    MailError,
    ProtocolError,
    ServerUnreachable,
    TlsError,
    describe_os_error,
    server_sentence,
    tls_failure,
)
from mailsync.engine.imap.adapter import Wire
from mailsync.engine.imap.data import SelectedFolder
from mailsync.engine.tls import default_context

T = TypeVar("T")


def text_of(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ImapConnection:
    """One logged-in IMAP connection. Not thread-safe (neither is imapclient, #334).

    Use as a context manager: ``with ImapSession.open(account) as imap: ...``.
    """

    def __init__(self, client: IMAPClient, capabilities: frozenset[str]) -> None:
        self._wire = Wire(client)
        self.capabilities = capabilities
        self.selected: SelectedFolder | None = None
        self._reconnect: Callable[[], Self] | None = None
        # The selected folder, while everything up to its SELECT is stored and no change
        # the server reported since has gone unread (see ``poll_held``).
        self._held: str | None = None
        self._news_dropped = False  # since the last SELECT
        self._selected_this_loan = False  # see ``current_selection``

    @property
    def _client(self) -> IMAPClient:
        return self._wire.client

    def reopen(self) -> None:
        """Log in again on a fresh connection and select the same folder: after the
        server dropped us. Raises ServerUnreachable/AuthenticationFailed if it cannot, and
        ServerUnreachable if the folder was renumbered meanwhile (its UIDs would name other
        messages now: the next sync starts over)."""
        if self._reconnect is None:
            raise ServerUnreachable("the connection was lost and cannot be reopened")
        safe_shutdown(self._client)
        fresh = self._reconnect()
        self._wire, self.capabilities = fresh._wire, fresh.capabilities
        self._held = None
        if self.selected is not None:
            before = self.selected
            if self._select(before.name).uidvalidity != before.uidvalidity:
                raise ServerUnreachable(
                    f"{before.name}: the server renumbered the folder (UIDVALIDITY changed) "
                    "while we reconnected"
                )

    def _again_if_cut(self, read: Callable[[], T]) -> T:
        """A read-only command whose connection was lost is sent once more on a fresh one:
        a middlebox that cuts each connection after so many bytes cuts the one that carried
        earlier answers, not this answer (each is bounded, see FLAGS_RANGE). A server that
        is really gone fails the reconnect."""
        try:
            return read()
        except ServerUnreachable:
            if self._reconnect is None:
                raise
            self.reopen()
            return read()

    # -- connecting ----------------------------------------------------------------

    @classmethod
    @contextmanager
    def open(
        cls,
        account: MailAccount,
        *,
        timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        ignore_capabilities: Iterable[str] = (),
    ) -> Iterator[Self]:
        session = cls.connect(
            account,
            timeout=timeout,
            ssl_context=ssl_context,
            ignore_capabilities=ignore_capabilities,
        )
        try:
            yield session
        finally:
            session.close()

    @classmethod
    def connect(
        cls,
        account: MailAccount,
        *,
        timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        ignore_capabilities: Iterable[str] = (),
    ) -> Self:
        where = f"{account.host}:{account.port}"
        context = ssl_context or default_context()
        try:
            client = IMAPClient(
                account.host,
                port=account.port,
                ssl=account.security == "tls",
                ssl_context=context,
                timeout=SocketTimeout(connect=min(15.0, timeout), read=timeout),
            )
        except ssl.SSLError as exc:
            raise tls_failure(where, exc) from exc
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ServerUnreachable(f"cannot connect to {where}: {describe_os_error(exc)}") from exc
        client.normalise_times = False  # keep INTERNALDATE timezone-aware
        Wire(client).quiet()
        try:
            if account.security == "starttls":
                # Never fall back to plaintext: no STARTTLS (or a man in the middle that
                # stripped it) is a permanent TLS failure, and the password stays unsent.
                if not client.has_capability("STARTTLS"):
                    safe_shutdown(client)
                    raise TlsError(
                        f"{where}: the server does not offer STARTTLS; "
                        "refusing to send the password in clear"
                    )
                client.starttls(context)
            client.login(account.username, account.password)
        except LoginError as exc:
            safe_shutdown(client)
            raise AuthenticationFailed(
                f"login refused for {account.username!r} by {where} ({server_text(exc)}); "
                "check the user name and password"
            ) from exc
        except ssl.SSLError as exc:
            safe_shutdown(client)
            raise tls_failure(where, exc) from exc
        except (OSError, IMAPClientError) as exc:
            safe_shutdown(client)
            raise ServerUnreachable(
                f"{where}: connection lost during login ({server_text(exc)})"
            ) from exc

        try:
            # Servers may announce more after authentication (M365 does): ask again.
            Wire(client).forget_capabilities()
            ignored = {cap.upper() for cap in ignore_capabilities}
            capabilities = frozenset(
                cap
                for cap in (text_of(c).upper() for c in client.capabilities())
                if cap not in ignored
            )
            # ENABLE must precede the first SELECT; with QRESYNC Dovecot also puts the UID
            # into unsolicited FETCH responses, which keeps them from being mistaken for
            # answers about another message (IMAP-NOTES §3).
            if "QRESYNC" in capabilities:
                client.enable("QRESYNC")
            elif "CONDSTORE" in capabilities:
                client.enable("CONDSTORE")
        except (OSError, IMAPClientError) as exc:
            safe_shutdown(client)
            raise ServerUnreachable(
                f"{where}: connection lost after login ({server_text(exc)})"
            ) from exc
        session = cls(client, capabilities)
        session._reconnect = lambda: cls.connect(
            account,
            timeout=timeout,
            ssl_context=ssl_context,
            ignore_capabilities=ignore_capabilities,
        )
        return session

    def close(self) -> None:
        try:
            self._client.logout()
        except Exception:
            safe_shutdown(self._client)

    def abandon(self) -> None:
        """Close the socket without LOGOUT: a connection that failed may never answer one."""
        safe_shutdown(self._client)

    @property
    def has_condstore(self) -> bool:
        return "CONDSTORE" in self.capabilities or "QRESYNC" in self.capabilities

    def select(self, folder: str) -> SelectedFolder:
        return self._again_if_cut(partial(self._select, folder))

    def _select(self, folder: str) -> SelectedFolder:
        with self._guard(f"SELECT {folder}", folder=folder):
            answer = self._client.select_folder(folder)
        modseq = answer.get(b"HIGHESTMODSEQ")
        uidnext = answer.get(b"UIDNEXT")
        selected = SelectedFolder(
            name=folder,
            uidvalidity=int(answer[b"UIDVALIDITY"]),
            # A server may omit UIDNEXT (RFC 3501 lets it); 0 means "unknown", and the
            # search for new mail then runs unbounded.
            uidnext=int(uidnext) if uidnext is not None else 0,
            exists=int(answer[b"EXISTS"]),
            highestmodseq=int(modseq) if modseq is not None and self.has_condstore else None,
            permanent_flags=frozenset(text_of(f) for f in answer.get(b"PERMANENTFLAGS", ())),
        )
        self.selected = selected
        self._held = None
        self._news_dropped = False
        self._selected_this_loan = True
        # What SELECT said is in ``selected``: from here on the untagged responses imaplib
        # collects are the server's news about this folder (see ``poll_held``).
        self._wire.forget_collected()
        return selected

    # -- holding a folder between syncs ----------------------------------------------

    def lent_again(self) -> None:
        """This kept session starts serving a new caller (``mailsync.sessions``)."""
        self._selected_this_loan = False

    def current_selection(self, folder: str) -> SelectedFolder | None:
        """The selected folder if it is ``folder`` and was selected for the current caller:
        a selection kept from an earlier sync may be of a folder deleted and recreated
        since, and a write must never land there (only ``poll_held`` reads it)."""
        if self.selected is not None and self.selected.name == folder:
            return self.selected if self._selected_this_loan else None
        return None

    @contextmanager
    def _guard(self, what: str, *, folder: str | None = None) -> Iterator[None]:
        try:
            yield
        except MailError:
            raise
        except TimeoutError as exc:
            raise ServerUnreachable(f"{what}: the server did not answer in time") from exc
        except IMAPClientError as exc:
            text = server_text(exc)
            if isinstance(exc, imaplib.IMAP4.abort):
                raise ServerUnreachable(f"{what}: connection lost ({text})") from exc
            lowered = text.lower()
            if folder is not None and ("nonexistent" in lowered or "doesn't exist" in lowered):
                raise FolderMissing(f"folder {folder!r} does not exist on the server") from exc
            raise ProtocolError(f"{what} refused: {text}") from exc
        except OSError as exc:
            raise ServerUnreachable(f"{what}: connection lost ({describe_os_error(exc)})") from exc


def server_text(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return server_sentence(exc.args[0] if exc.args else exc) or exc.__class__.__name__


def safe_shutdown(client: IMAPClient) -> None:
    # best effort on an already broken connection: there is nothing left to save
    with contextlib.suppress(Exception):
        client.shutdown()
