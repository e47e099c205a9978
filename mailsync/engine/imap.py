"""A typed IMAP session: the only module that imports imapclient.

imapclient returns bytes-keyed dicts and has traps verified against Dovecot (see
IMAP-NOTES.md §3); this wrapper turns its answers into the engine's dataclasses and its
exceptions into the engine's typed errors.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.response_parser import gen_parsed_response

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
from mailsync.engine.flags import normalize_flags
from mailsync.engine.imap_data import (
    FetchedMessage,
    FlagState,
    FolderStatus,
    HeldFolderNews,
    RemoteFolder,
    SelectedFolder,
    copyuid_map,
    format_uid_set,
    parse_internaldate,
    parse_uid_set,
    uid_windows,
)
from mailsync.engine.imap_fetch import FetchParseError, parse_fetch_responses
from mailsync.engine.tls import default_context

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "LARGE_MESSAGE",
    "FetchedMessage",
    "FlagState",
    "FolderStatus",
    "ImapSession",
    "RemoteFolder",
    "SelectedFolder",
    "parse_uid_set",
    "uid_ranges",
    "uid_windows",
]

# Messages above LARGE_MESSAGE are fetched in LARGE_CHUNK pieces (IMAP-NOTES §1.5).
LARGE_MESSAGE = 8 * 1024 * 1024
LARGE_CHUNK = 1024 * 1024
# A piece that dies on a fresh connection (a middlebox that cuts every download past some
# size) is halved, down to this.
SMALLEST_PIECE = 4 * 1024
# Listings are asked for in UID ranges of about this many messages, so no single answer
# is large: a connection cut after some bytes still lets each through (about 60 bytes per
# FLAGS line, 7 per UID in a SEARCH answer).
FLAGS_RANGE = 400
SEARCH_RANGE = 4000
ALIVE_TIMEOUT = 10.0  # seconds a kept session has to answer its NOOP
SPECIAL_USES = ("\\Sent", "\\Trash", "\\Drafts", "\\Junk", "\\Archive", "\\All", "\\Flagged")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ImapSession:
    """One logged-in IMAP connection. Not thread-safe (neither is imapclient, #334).

    Use as a context manager: ``with ImapSession.open(account) as imap: ...``.
    """

    def __init__(self, client: IMAPClient, capabilities: frozenset[str]) -> None:
        self._client = client
        self.capabilities = capabilities
        self.selected: SelectedFolder | None = None
        self._reconnect: Callable[[], ImapSession] | None = None
        # The selected folder, while everything up to its SELECT is stored and no change
        # the server reported since has gone unread (see ``poll_held``).
        self._held: str | None = None
        self._news_dropped = False  # since the last SELECT
        self._selected_this_loan = False  # see ``current_selection``

    def reopen(self) -> None:
        """Log in again on a fresh connection and select the same folder: after the
        server dropped us. Raises ServerUnreachable/AuthenticationFailed if it cannot, and
        ServerUnreachable if the folder was renumbered meanwhile (its UIDs would name other
        messages now: the next sync starts over)."""
        if self._reconnect is None:
            raise ServerUnreachable("the connection was lost and cannot be reopened")
        _safe_shutdown(self._client)
        fresh = self._reconnect()
        self._client, self.capabilities = fresh._client, fresh.capabilities
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
    ) -> Iterator[ImapSession]:
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
    ) -> ImapSession:
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
        _quiet_imaplib(client)
        try:
            if account.security == "starttls":
                # Never fall back to plaintext: no STARTTLS (or a man in the middle that
                # stripped it) is a permanent TLS failure, and the password stays unsent.
                if not client.has_capability("STARTTLS"):
                    _safe_shutdown(client)
                    raise TlsError(
                        f"{where}: the server does not offer STARTTLS; "
                        "refusing to send the password in clear"
                    )
                client.starttls(context)
            client.login(account.username, account.password)
        except LoginError as exc:
            _safe_shutdown(client)
            raise AuthenticationFailed(
                f"login refused for {account.username!r} by {where} ({_server_text(exc)}); "
                "check the user name and password"
            ) from exc
        except ssl.SSLError as exc:
            _safe_shutdown(client)
            raise tls_failure(where, exc) from exc
        except (OSError, IMAPClientError) as exc:
            _safe_shutdown(client)
            raise ServerUnreachable(
                f"{where}: connection lost during login ({_server_text(exc)})"
            ) from exc

        try:
            # Servers may announce more after authentication (M365 does): ask again.
            client._cached_capabilities = None
            ignored = {cap.upper() for cap in ignore_capabilities}
            capabilities = frozenset(
                cap
                for cap in (_text(c).upper() for c in client.capabilities())
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
            _safe_shutdown(client)
            raise ServerUnreachable(
                f"{where}: connection lost after login ({_server_text(exc)})"
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
            _safe_shutdown(self._client)

    @property
    def has_condstore(self) -> bool:
        return "CONDSTORE" in self.capabilities or "QRESYNC" in self.capabilities

    # -- folders -------------------------------------------------------------------

    def list_folders(self) -> list[RemoteFolder]:
        def ask() -> list[Any]:
            with self._guard("LIST"):
                return list(self._client.list_folders())

        rows = self._again_if_cut(ask)
        folders = []
        for flags, _delimiter, name in rows:
            flag_names = {_text(f) for f in flags}
            lowered = {f.lower() for f in flag_names}
            special = next((s for s in SPECIAL_USES if s.lower() in lowered), "")
            folders.append(
                RemoteFolder(
                    name=_text(name),
                    special_use=special,
                    selectable="\\noselect" not in lowered and "\\nonexistent" not in lowered,
                )
            )
        return folders

    def status(self, folder: str) -> FolderStatus:
        items = ["UIDVALIDITY", "UIDNEXT", "MESSAGES"]
        if self.has_condstore:
            items.append("HIGHESTMODSEQ")

        def ask() -> dict[bytes, Any]:
            with self._guard(f"STATUS {folder}", folder=folder):
                return dict(self._client.folder_status(folder, items))

        answer = self._again_if_cut(ask)
        modseq = answer.get(b"HIGHESTMODSEQ")
        return FolderStatus(
            uidvalidity=int(answer[b"UIDVALIDITY"]),
            uidnext=int(answer[b"UIDNEXT"]),
            messages=int(answer[b"MESSAGES"]),
            highestmodseq=int(modseq) if modseq is not None else None,
        )

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
            permanent_flags=frozenset(_text(f) for f in answer.get(b"PERMANENTFLAGS", ())),
        )
        self.selected = selected
        self._held = None
        self._news_dropped = False
        self._selected_this_loan = True
        # What SELECT said is in ``selected``: from here on the untagged responses imaplib
        # collects are the server's news about this folder (see ``poll_held``).
        self._client._imap.untagged_responses.clear()
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

    def alive(self) -> bool:
        """A NOOP answered OK on a logged-in connection: a kept session is still usable
        (the server may have logged it out, or dropped it when its folder was deleted).
        What the NOOP brings stays collected for ``poll_held``."""
        imap = self._client._imap
        if imap.state not in ("AUTH", "SELECTED"):
            return False
        # A connection a NAT or firewall forgot never answers: give up after seconds, not
        # after the full read timeout, and let the caller connect anew.
        sock = self._client.socket()
        timeout = sock.gettimeout()
        try:
            sock.settimeout(min(ALIVE_TIMEOUT, timeout) if timeout else ALIVE_TIMEOUT)
            self._noop()
        except (MailError, OSError):
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        return imap.state in ("AUTH", "SELECTED")

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
        news = self._client._imap.untagged_responses
        fetched = news.pop("FETCH", None) or []
        if any(key in news for key in _FOLDER_NEWS):
            self._held = None  # the full sync selects the folder again
            return HeldFolderNews(changed=True)
        flags: dict[int, FlagState] = {}
        for items in _fetch_items(fetched):
            uid = items.get(b"UID")
            if uid is None or b"FLAGS" not in items:
                self._held = None
                return HeldFolderNews(changed=True)
            flags[int(uid)] = _flag_state(int(uid), items)
        return HeldFolderNews(changed=False, flags=flags)

    def _noop(self) -> None:
        """NOOP: the server's news arrive in imaplib's untagged responses."""
        with self._guard("NOOP"):
            typ, data = self._client._imap._simple_command("NOOP")
        if typ != "OK":
            raise ProtocolError(f"NOOP refused: {_text(data[0]) if data else typ}")

    # -- reading -------------------------------------------------------------------

    def uids_from(self, first_uid: int) -> list[int]:
        """UIDs >= first_uid in the selected folder, asked in UID ranges of at most about
        SEARCH_RANGE messages (a first sync of 100k messages is not one 700 KB answer).

        ``UID SEARCH UID n:*`` returns the highest UID even when it is below n (``*`` is
        the last message), so the answer is filtered (IMAP-NOTES §1.5).
        """
        first_uid = max(first_uid, 1)
        selected = self.selected
        last = selected.uidnext - 1 if selected is not None and selected.uidnext > 0 else None
        if last is None or last - first_uid < SEARCH_RANGE:
            ranges: list[tuple[int, int | None]] = [(first_uid, None)]
        else:
            ranges = [*uid_ranges(self._range_starts(SEARCH_RANGE), first_uid, last)]
            ranges.append((last + 1, None))  # what arrived since SELECT, as before
        found: set[int] = set()
        for low, high in ranges:
            found.update(self._search_uids(low, high))
        return sorted(uid for uid in found if uid >= first_uid)

    def _search_uids(self, low: int, high: int | None) -> list[int]:
        def ask() -> list[int]:
            with self._guard("UID SEARCH"):
                found = self._client.search(["UID", f"{low}:{'*' if high is None else high}"])
            return [int(uid) for uid in found]

        return self._again_if_cut(ask)

    def _range_starts(self, per_range: int) -> list[int]:
        """The UIDs of every ``per_range``-th message (``FETCH n,2n,... (UID)``, one small
        answer): range boundaries that split the selected folder into ranges of about
        ``per_range`` messages each, wherever its UIDs are sparse. Messages expunged or
        arriving meanwhile only make a range a little smaller or larger."""
        exists = self.selected.exists if self.selected is not None else 0
        if exists <= per_range:
            return []
        positions = ",".join(str(n) for n in range(per_range + 1, exists + 1, per_range))
        imap = self._client._imap

        def ask() -> list[int]:
            with self._guard("FETCH (UID)"):
                typ, data = imap._simple_command("FETCH", positions, "(UID)")
                if typ != "OK":
                    raise ProtocolError(f"FETCH refused: {_text(data[0]) if data else typ}")
                typ, data = imap._untagged_response(typ, data, "FETCH")
            if data == [None]:
                return []
            return [int(items[b"UID"]) for items in _fetch_items(data) if b"UID" in items]

        starts = self._again_if_cut(ask)
        self._held, self._news_dropped = None, True  # other clients' news were among them
        return starts

    def fetch_flags(self, uids: Sequence[int]) -> dict[int, FlagState]:
        items = ["UID", "FLAGS"] + (["MODSEQ"] if self.has_condstore else [])
        result: dict[int, FlagState] = {}
        for window in uid_windows(sorted(uids), FLAGS_RANGE):
            answer = self._again_if_cut(partial(self._uid_fetch, window, items))
            for uid, data in answer.items():
                result[uid] = _flag_state(uid, data)
        return result

    def fetch_changes(
        self, below_uid: int, *, changedsince: int, vanished: bool
    ) -> tuple[dict[int, FlagState], list[int]]:
        """Flags changed since a modseq for UIDs below ``below_uid`` (CONDSTORE), and with
        QRESYNC also the UIDs expunged since then (``VANISHED (EARLIER)``, RFC 7162 §3.2.6).

        Usually a handful, so asked at once; when that answer is lost with its connection
        (another client changed thousands of messages, behind a middlebox that cuts long
        downloads) it is asked again in UID ranges of about FLAGS_RANGE messages.

        Never called with modseq 0: ``CHANGEDSINCE 0`` confuses some servers
        (modern-email/defects #29).
        """
        if below_uid <= 1:
            return {}, []
        if changedsince <= 0:
            raise ValueError("CHANGEDSINCE needs a positive modseq")
        try:
            return self._changes_in(1, below_uid - 1, changedsince, vanished)
        except ServerUnreachable:
            if self._reconnect is None:
                raise
            self.reopen()
        changes: dict[int, FlagState] = {}
        gone: list[int] = []
        for low, high in uid_ranges(self._range_starts(FLAGS_RANGE), 1, below_uid - 1):
            some, some_gone = self._again_if_cut(
                partial(self._changes_in, low, high, changedsince, vanished)
            )
            changes.update(some)
            gone.extend(some_gone)
        return changes, sorted(set(gone))

    def _changes_in(
        self, low: int, high: int, changedsince: int, vanished: bool
    ) -> tuple[dict[int, FlagState], list[int]]:
        imap = self._client._imap
        imap.untagged_responses.pop("VANISHED", None)
        modifiers = f"CHANGEDSINCE {changedsince}" + (" VANISHED" if vanished else "")
        answer = self._uid_fetch(
            f"{low}:{high}",
            ["UID", "FLAGS", "MODSEQ"],
            modifiers=modifiers,
            accept=lambda uid: low <= uid <= high,
        )
        gone: list[int] = []
        for line in imap.untagged_responses.pop("VANISHED", None) or []:
            text = _text(line).strip()
            if text.upper().startswith("(EARLIER)"):
                text = text[len("(EARLIER)") :].strip()
            else:  # news of an expunge after SELECT, perhaps of a UID filtered out below
                self._held, self._news_dropped = None, True
            gone.extend(uid for uid in parse_uid_set(text) if low <= uid <= high)
        changes = {uid: _flag_state(uid, data) for uid, data in answer.items()}
        return changes, sorted(set(gone))

    def all_uids(self) -> list[int]:
        """Every UID in the selected folder (``UID SEARCH``: UIDs only, no flags), in UID
        ranges of about SEARCH_RANGE messages."""
        selected = self.selected
        if selected is None or selected.exists <= SEARCH_RANGE or selected.uidnext <= 0:
            return sorted(self._search_uids(1, None))
        found: set[int] = set()
        for low, high in uid_ranges(self._range_starts(SEARCH_RANGE), 1, selected.uidnext - 1):
            found.update(self._search_uids(low, high))
        found.update(self._search_uids(selected.uidnext, None))
        return sorted(found)

    def fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE per UID; a UID missing from the answer was expunged meanwhile."""
        sizes: dict[int, int] = {}
        for window in uid_windows(sorted(uids)):
            answer = self._again_if_cut(partial(self._uid_fetch, window, ["UID", "RFC822.SIZE"]))
            for uid, data in answer.items():
                sizes[uid] = int(data.get(b"RFC822.SIZE", 0))
        return sizes

    def fetch_messages(self, uids: Sequence[int]) -> list[FetchedMessage]:
        """Whole messages with ``BODY.PEEK[]`` (a plain BODY[] would set \\Seen).

        A UID the server no longer has is simply absent from the answer.
        """
        items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[]"]
        if self.has_condstore:
            items.append("MODSEQ")
        answer = self._uid_fetch(list(uids), items)
        messages = []
        for uid in sorted(answer):
            data = answer[uid]
            raw = data.get(b"BODY[]")
            if raw is None:
                continue
            raw_bytes = bytes(raw)
            state = _flag_state(uid, data)
            internaldate = data.get(b"INTERNALDATE")
            messages.append(
                FetchedMessage(
                    uid=uid,
                    flags=state.flags,
                    internaldate=internaldate if isinstance(internaldate, datetime) else None,
                    size=int(data.get(b"RFC822.SIZE", len(raw_bytes))),
                    raw=raw_bytes,
                    modseq=state.modseq,
                )
            )
        return messages

    def fetch_large_message(
        self, uid: int, size: int, *, piece: int = LARGE_CHUNK
    ) -> FetchedMessage | None:
        """One message in ``BODY.PEEK[]<offset.length>`` pieces, into a buffer allocated
        once at its announced size: memory stays near one copy of the message (a single
        literal would be read and joined by imaplib, twice that). Returns None when the
        server no longer has it.

        Also the way through a connection that dies mid-download (a middlebox or proxy
        that cuts every connection after so many bytes): after a lost connection it
        reconnects and goes on from the last whole piece; a piece lost on a connection
        that had delivered nothing yet is halved, down to SMALLEST_PIECE. Raises
        ServerUnreachable when even that is lost, or when the server cannot be reached."""
        items = ["UID", "FLAGS", "INTERNALDATE"] + (["MODSEQ"] if self.has_condstore else [])
        head = self._again_if_cut(lambda: self._uid_fetch([uid], items))
        if uid not in head:
            return None
        buffer = bytearray(size)
        offset = 0
        delivered = True  # unknown for the connection we were given: do not halve yet
        while True:
            section = f"BODY.PEEK[]<{offset}.{piece}>"
            try:
                answer = self._uid_fetch([uid], ["UID", section])
            except ServerUnreachable as exc:
                if not delivered and piece <= SMALLEST_PIECE:
                    # (the cause, a protocol parser's complaint, stays in the chain)
                    raise ServerUnreachable(
                        "the connection to the server is lost during the download, even in "
                        f"pieces of {SMALLEST_PIECE // 1024} KB"
                    ) from exc
                if not delivered:
                    piece = max(SMALLEST_PIECE, piece // 2)
                log.info(
                    "UID %s: connection lost at byte %s; again in %s-byte pieces",
                    uid,
                    offset,
                    piece,
                )
                self.reopen()
                delivered = False
                continue
            delivered = True
            if uid not in answer:
                return None
            chunk = next(
                (value for key, value in answer[uid].items() if key.startswith(b"BODY[]")), b""
            )
            chunk = chunk or b""
            end = offset + len(chunk)
            if end > len(buffer):  # the server under-announced RFC822.SIZE
                buffer.extend(bytes(end - len(buffer)))
            buffer[offset:end] = chunk
            offset = end
            if len(chunk) < piece:
                break
        del buffer[offset:]  # the server over-announced: keep what it sent
        state = _flag_state(uid, head[uid])
        internaldate = head[uid].get(b"INTERNALDATE")
        return FetchedMessage(
            uid=uid,
            flags=state.flags,
            internaldate=internaldate if isinstance(internaldate, datetime) else None,
            size=offset,
            raw=buffer,
            modseq=state.modseq,
        )

    # -- writing -------------------------------------------------------------------

    def store_flags(
        self,
        uids: Sequence[int],
        flags: Sequence[str],
        *,
        add: bool,
        unchangedsince: int | None = None,
    ) -> list[int]:
        """``UID STORE +FLAGS.SILENT`` / ``-FLAGS.SILENT``: deltas commute with other clients.

        With ``unchangedsince`` (CONDSTORE) the server leaves alone every message whose
        modseq moved past it and names them in ``[MODIFIED ...]``; those UIDs are returned.
        imapclient has no UNCHANGEDSINCE, so the command is sent raw (IMAP-NOTES §3).
        """
        modified: list[int] = []
        imap = self._client._imap
        self._held = None  # its FETCH answers are dropped below, other clients' news with them
        item = ("+" if add else "-") + "FLAGS.SILENT"
        flag_list = "(" + " ".join(flags) + ")"
        for window in uid_windows(sorted(uids)):
            imap.untagged_responses.pop("MODIFIED", None)
            with self._guard("UID STORE"):
                if unchangedsince is None or not self.has_condstore:
                    typ, data = imap.uid("STORE", format_uid_set(window), item, flag_list)
                else:
                    typ, data = imap.uid(
                        "STORE",
                        format_uid_set(window),
                        f"(UNCHANGEDSINCE {unchangedsince})",
                        item,
                        flag_list,
                    )
            if typ != "OK":
                raise ProtocolError(f"UID STORE refused: {_text(data[0]) if data else typ}")
            for line in imap.untagged_responses.pop("MODIFIED", None) or []:
                modified.extend(parse_uid_set(_text(line)))
            # CONDSTORE servers answer a silent STORE with FETCH (MODSEQ) anyway; drop them
            imap.untagged_responses.pop("FETCH", None)
        return sorted(set(modified))

    def move(self, uids: Sequence[int], target: str) -> tuple[int | None, dict[int, int]]:
        """Move messages to another folder; returns the target's UIDVALIDITY and
        {old UID: new UID}, both from COPYUID (empty when the server does not say).

        Without MOVE (RFC 6851): COPY, then ``\\Deleted`` and ``UID EXPUNGE`` of exactly
        these UIDs. Never a bare EXPUNGE: it would purge what another client only marked.
        """
        if not uids:
            return None, {}
        self._held = None
        imap = self._client._imap
        imap.untagged_responses.pop("COPYUID", None)
        if "MOVE" in self.capabilities:
            with self._guard(f"UID MOVE to {target}", folder=target):
                answer = self._client.move(list(uids), target)
        else:
            if "UIDPLUS" not in self.capabilities:
                raise ProtocolError("the server has neither MOVE nor UIDPLUS: cannot move safely")
            with self._guard(f"UID COPY to {target}", folder=target):
                answer = self._client.copy(list(uids), target)
            self.store_flags(list(uids), ["\\Deleted"], add=True)
            self.expunge_uids(list(uids))
        texts = [_text(line) for line in imap.untagged_responses.pop("COPYUID", None) or []]
        if answer:
            texts.append(_text(answer))
        return copyuid_map(texts)

    def expunge_uids(self, uids: Sequence[int]) -> None:
        """``UID EXPUNGE`` (UIDPLUS) of exactly these UIDs."""
        self._held = None
        if "UIDPLUS" not in self.capabilities:
            raise ProtocolError(
                "the server lacks UIDPLUS: purging would need a bare EXPUNGE, which also "
                "removes what other clients only marked deleted"
            )
        for window in uid_windows(sorted(uids)):
            with self._guard("UID EXPUNGE"):
                self._client.uid_expunge(window)

    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> int | None:
        """APPEND; returns the new UID when the server says (UIDPLUS APPENDUID)."""
        self._held = None
        with self._guard(f"APPEND to {folder}", folder=folder):
            answer = self._client.append(folder, raw, flags=tuple(flags))
        match = re.search(r"APPENDUID \d+ (\d+)", _text(answer or b""))
        return int(match.group(1)) if match else None

    def search_header(self, folder: str, name: str, value: str) -> list[int]:
        """UIDs in ``folder`` (selected for it) whose header ``name`` contains ``value``:
        ``UID SEARCH HEADER``, a case-insensitive substring match (RFC 3501 §6.4.4)."""
        self.select(folder)
        charset = None if value.isascii() else "UTF-8"
        with self._guard(f"UID SEARCH in {folder}", folder=folder):
            found = self._client.search(["HEADER", name, value], charset=charset)
        return sorted(int(uid) for uid in found)

    def find_special_folder(self, special_use: str) -> str | None:
        """The name of the folder LIST marks with ``special_use`` (e.g. ``"\\\\Sent"``)."""
        for folder in self.list_folders():
            if folder.special_use == special_use and folder.selectable:
                return folder.name
        return None

    # -- internals -----------------------------------------------------------------

    def _uid_fetch(
        self,
        uids: list[int] | str,
        items: list[str],
        *,
        modifiers: str = "",
        accept: Callable[[int], bool] | None = None,
    ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH that keeps only responses carrying a UID we asked for.

        imapclient keys responses without a UID by sequence number, so an unsolicited
        ``* 3 FETCH (FLAGS ...)`` overwrote the answer for UID 3 (IMAP-NOTES §3). Here a
        response without UID is dropped: it is only a hint, the next sync reads it again.
        ``uids`` is a list, or a UID set string such as ``"1:500"`` with ``accept`` deciding
        which answers count.
        """
        if isinstance(uids, list):
            if not uids:
                return {}
            wanted = set(uids)
            uid_set = format_uid_set(uids)
            accept = wanted.__contains__
        else:
            uid_set = uids
        imap = self._client._imap
        args = ["UID", "FETCH", uid_set, "(" + " ".join(items) + ")"]
        if modifiers:
            args.append(f"({modifiers})")
        with self._guard("UID FETCH"):
            tag = imap._command(*args)
            typ, data = imap._command_complete("FETCH", tag)
            if typ != "OK":
                raise ProtocolError(f"UID FETCH refused: {_text(data[0]) if data else typ}")
            typ, data = imap._untagged_response(typ, data, "FETCH")
        result: dict[int, dict[bytes, Any]] = {}
        if data == [None]:
            return result
        for pairs in _fetch_items(data):
            uid_value = pairs.get(b"UID")
            if uid_value is None or (accept is not None and not accept(int(uid_value))):
                self._held, self._news_dropped = None, True  # another client's change
                continue
            uid = int(uid_value)
            if b"INTERNALDATE" in pairs:
                pairs[b"INTERNALDATE"] = parse_internaldate(pairs[b"INTERNALDATE"])
            result.setdefault(uid, {}).update(pairs)
        return result

    @contextmanager
    def _guard(self, what: str, *, folder: str | None = None) -> Iterator[None]:
        try:
            yield
        except MailError:
            raise
        except TimeoutError as exc:
            raise ServerUnreachable(f"{what}: the server did not answer in time") from exc
        except IMAPClientError as exc:
            text = _server_text(exc)
            if isinstance(exc, imaplib.IMAP4.abort):
                raise ServerUnreachable(f"{what}: connection lost ({text})") from exc
            lowered = text.lower()
            if folder is not None and ("nonexistent" in lowered or "doesn't exist" in lowered):
                raise FolderMissing(f"folder {folder!r} does not exist on the server") from exc
            raise ProtocolError(f"{what} refused: {text}") from exc
        except OSError as exc:
            raise ServerUnreachable(f"{what}: connection lost ({describe_os_error(exc)})") from exc


def uid_ranges(starts: Iterable[int], first: int, last: int) -> list[tuple[int, int]]:
    """``first:last`` cut into consecutive UID ranges, a new one beginning at each of
    ``starts`` that falls inside: together they cover every UID exactly once, so a listing
    asked range by range misses nothing however the messages are spread."""
    if last < first:
        return []
    cuts = sorted({start for start in starts if first < start <= last})
    return list(zip([first, *cuts], [*(cut - 1 for cut in cuts), last], strict=True))


def _fetch_items(data: list[Any]) -> list[dict[bytes, Any]]:
    """The item dicts of FETCH responses: our own parser, else imapclient's (slower, but
    it has seen every server's quirks)."""
    try:
        return [items for _, items in parse_fetch_responses(data)]
    except FetchParseError as exc:
        log.debug("FETCH response left to imapclient's parser: %s", exc)
    found: list[dict[bytes, Any]] = []
    parsed = gen_parsed_response(data)
    while True:
        try:
            next(parsed)  # sequence number
            attributes = next(parsed)
        except StopIteration:
            return found
        if isinstance(attributes, tuple):
            found.append(
                {
                    _text(attributes[i]).upper().encode(): attributes[i + 1]
                    for i in range(0, len(attributes) - 1, 2)
                }
            )


# Untagged responses that mean the held folder changed beyond flags (or in a way the held
# state cannot follow): the next sync selects it again.
_FOLDER_NEWS = ("EXISTS", "EXPUNGE", "VANISHED", "RECENT", "FLAGS", "HIGHESTMODSEQ", "BYE")


def _quiet_imaplib(client: IMAPClient) -> None:
    """imapclient turns imaplib's debug output up to its highest level and sends it to a
    logger, so imaplib formats the repr of every response -- every message's bytes, and
    the whole list of a batch's answers -- even when that logger discards it: more than
    a third of a sync's time. Only when the logger would keep it."""
    if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
        client._imap.debug = 0


def _flag_state(uid: int, data: dict[bytes, Any]) -> FlagState:
    modseq_value = data.get(b"MODSEQ")  # imapclient gives "(123)" as a 1-tuple
    if isinstance(modseq_value, tuple):
        modseq_value = modseq_value[0] if modseq_value else None
    modseq = int(modseq_value) if modseq_value is not None else None
    return FlagState(uid=uid, flags=normalize_flags(data.get(b"FLAGS", ())), modseq=modseq)


def _server_text(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return server_sentence(exc.args[0] if exc.args else exc) or exc.__class__.__name__


def _safe_shutdown(client: IMAPClient) -> None:
    # best effort on an already broken connection: there is nothing left to save
    with contextlib.suppress(Exception):
        client.shutdown()
