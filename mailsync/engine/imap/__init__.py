"""IMAP for the engine, one module per part:

- ``connection``: TLS, login, capabilities, SELECT, errors mapped to the engine's own;
- ``commands``: what a sync and the outbox send (``ImapSession``, the whole API);
- ``news``: what the server tells unasked: the NOOP poll of a kept session, and IDLE;
- ``fetch_parser``: FETCH responses into dicts;
- ``data``: the frozen dataclasses and codecs that cross the boundary;
- ``adapter``: every access to private imaplib/imapclient parts, and nothing else.
"""

from __future__ import annotations

from mailsync.engine.imap.commands import (
    FLAGS_RANGE,
    LARGE_CHUNK,
    LARGE_MESSAGE,
    SEARCH_RANGE,
    SMALLEST_PIECE,
    ImapSession,
    uid_ranges,
)
from mailsync.engine.imap.data import (
    FetchedMessage,
    FlagState,
    FolderStatus,
    HeldFolderNews,
    RemoteFolder,
    SelectedFolder,
    format_uid_set,
    parse_uid_set,
    uid_windows,
)
from mailsync.engine.imap.news import ALIVE_TIMEOUT, IdleNews, parse_idle_line

__all__ = [
    "ALIVE_TIMEOUT",
    "FLAGS_RANGE",
    "LARGE_CHUNK",
    "LARGE_MESSAGE",
    "SEARCH_RANGE",
    "SMALLEST_PIECE",
    "FetchedMessage",
    "FlagState",
    "FolderStatus",
    "HeldFolderNews",
    "IdleNews",
    "ImapSession",
    "RemoteFolder",
    "SelectedFolder",
    "format_uid_set",
    "parse_idle_line",
    "parse_uid_set",
    "uid_ranges",
    "uid_windows",
]
