"""The commands a sync and the outbox send: LIST, STATUS, searches, FETCH in bounded
windows, STORE, MOVE, EXPUNGE, APPEND. ``ImapSession`` is the engine's whole IMAP API."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from mailsync.engine.errors import ProtocolError, ServerUnreachable
from mailsync.engine.imap.connection import text_of
from mailsync.engine.imap.data import (
    FetchedMessage,
    FlagState,
    FolderStatus,
    RemoteFolder,
    copyuid_map,
    format_uid_set,
    parse_internaldate,
    parse_uid_set,
    uid_windows,
)
from mailsync.engine.imap.fetch_parser import fetch_items, flag_state
from mailsync.engine.imap.news import NewsConnection

log = logging.getLogger(__name__)

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
SPECIAL_USES = ("\\Sent", "\\Trash", "\\Drafts", "\\Junk", "\\Archive", "\\All", "\\Flagged")


class ImapSession(NewsConnection):
    """One logged-in IMAP connection and every command the engine sends on it. Not
    thread-safe (neither is imapclient, #334).

    Use as a context manager: ``with ImapSession.open(account) as imap: ...``.
    """

    # -- folders -------------------------------------------------------------------

    def list_folders(self) -> list[RemoteFolder]:
        def ask() -> list[Any]:
            with self._guard("LIST"):
                return list(self._client.list_folders())

        rows = self._again_if_cut(ask)
        folders = []
        for flags, _delimiter, name in rows:
            flag_names = {text_of(f) for f in flags}
            lowered = {f.lower() for f in flag_names}
            special = next((s for s in SPECIAL_USES if s.lower() in lowered), "")
            folders.append(
                RemoteFolder(
                    name=text_of(name),
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

        def ask() -> list[int]:
            with self._guard("FETCH (UID)"):
                typ, data = self._wire.command("FETCH", positions, "(UID)")
                if typ != "OK":
                    raise ProtocolError(f"FETCH refused: {text_of(data[0]) if data else typ}")
                data = self._wire.take("FETCH")
            return [int(items[b"UID"]) for items in fetch_items(data) if b"UID" in items]

        starts = self._again_if_cut(ask)
        self._held, self._news_dropped = None, True  # other clients' news were among them
        return starts

    def fetch_flags(self, uids: Sequence[int]) -> dict[int, FlagState]:
        items = ["UID", "FLAGS"] + (["MODSEQ"] if self.has_condstore else [])
        result: dict[int, FlagState] = {}
        for window in uid_windows(sorted(uids), FLAGS_RANGE):
            answer = self._again_if_cut(partial(self._uid_fetch, window, items))
            for uid, data in answer.items():
                result[uid] = flag_state(uid, data)
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
        self._wire.take("VANISHED")
        modifiers = f"CHANGEDSINCE {changedsince}" + (" VANISHED" if vanished else "")
        answer = self._uid_fetch(
            f"{low}:{high}",
            ["UID", "FLAGS", "MODSEQ"],
            modifiers=modifiers,
            accept=lambda uid: low <= uid <= high,
        )
        gone: list[int] = []
        for line in self._wire.take("VANISHED"):
            text = text_of(line).strip()
            if text.upper().startswith("(EARLIER)"):
                text = text[len("(EARLIER)") :].strip()
            else:  # news of an expunge after SELECT, perhaps of a UID filtered out below
                self._held, self._news_dropped = None, True
            gone.extend(uid for uid in parse_uid_set(text) if low <= uid <= high)
        changes = {uid: flag_state(uid, data) for uid, data in answer.items()}
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
            state = flag_state(uid, data)
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
        state = flag_state(uid, head[uid])
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
        self._held = None  # its FETCH answers are dropped below, other clients' news with them
        item = ("+" if add else "-") + "FLAGS.SILENT"
        flag_list = "(" + " ".join(flags) + ")"
        for window in uid_windows(sorted(uids)):
            self._wire.take("MODIFIED")
            with self._guard("UID STORE"):
                if unchangedsince is None or not self.has_condstore:
                    typ, data = self._wire.command(
                        "UID", "STORE", format_uid_set(window), item, flag_list
                    )
                else:
                    typ, data = self._wire.command(
                        "UID",
                        "STORE",
                        format_uid_set(window),
                        f"(UNCHANGEDSINCE {unchangedsince})",
                        item,
                        flag_list,
                    )
            if typ != "OK":
                raise ProtocolError(f"UID STORE refused: {text_of(data[0]) if data else typ}")
            for line in self._wire.take("MODIFIED"):
                modified.extend(parse_uid_set(text_of(line)))
            # CONDSTORE servers answer a silent STORE with FETCH (MODSEQ) anyway; drop them
            self._wire.take("FETCH")
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
        self._wire.take("COPYUID")
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
        texts = [text_of(line) for line in self._wire.take("COPYUID")]
        if answer:
            texts.append(text_of(answer))
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
        match = re.search(r"APPENDUID \d+ (\d+)", text_of(answer or b""))
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
        args = ["UID", "FETCH", uid_set, "(" + " ".join(items) + ")"]
        if modifiers:
            args.append(f"({modifiers})")
        with self._guard("UID FETCH"):
            typ, data = self._wire.command(*args)
            if typ != "OK":
                raise ProtocolError(f"UID FETCH refused: {text_of(data[0]) if data else typ}")
            data = self._wire.take("FETCH")
        result: dict[int, dict[bytes, Any]] = {}
        for pairs in fetch_items(data):
            uid_value = pairs.get(b"UID")
            if uid_value is None or (accept is not None and not accept(int(uid_value))):
                self._held, self._news_dropped = None, True  # another client's change
                continue
            uid = int(uid_value)
            if b"INTERNALDATE" in pairs:
                pairs[b"INTERNALDATE"] = parse_internaldate(pairs[b"INTERNALDATE"])
            result.setdefault(uid, {}).update(pairs)
        return result


def uid_ranges(starts: Iterable[int], first: int, last: int) -> list[tuple[int, int]]:
    """``first:last`` cut into consecutive UID ranges, a new one beginning at each of
    ``starts`` that falls inside: together they cover every UID exactly once, so a listing
    asked range by range misses nothing however the messages are spread."""
    if last < first:
        return []
    cuts = sorted({start for start in starts if first < start <= last})
    return list(zip([first, *cuts], [*(cut - 1 for cut in cuts), last], strict=True))
