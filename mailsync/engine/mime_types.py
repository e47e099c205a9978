"""The frozen dataclasses the MIME parser returns: what crosses the parser's boundary.

They live apart from :mod:`mailsync.engine.mime` so that the header and part modules can build them
without importing the public entry module (which imports them: no cycles). Everything else imports
them from :mod:`mailsync.engine.mime`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["ParsedAddress", "ParsedAttachment", "ParsedEnvelope", "ParsedMessage"]


@dataclass(frozen=True)
class ParsedAddress:
    name: str  # decoded display name, "" if none
    address: str  # "user@host", "" if unparseable

    def display(self) -> str:
        if self.name and self.address:
            return f"{self.name} <{self.address}>"
        return self.address or self.name


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str  # decoded, sanitized; generated ("attachment-2.bin") when none
    content_type: str  # lowercased "type/subtype"
    payload: bytes
    content_id: str  # without <>, "" if none
    inline: bool  # Content-Disposition inline, or referenced as cid: from the HTML


@dataclass(frozen=True)
class ParsedMessage:
    subject: str
    sender: ParsedAddress | None
    to: tuple[ParsedAddress, ...]
    cc: tuple[ParsedAddress, ...]
    reply_to: tuple[ParsedAddress, ...]
    date: datetime | None
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
    text: str
    html: str
    attachments: tuple[ParsedAttachment, ...]
    notices: tuple[str, ...]
    shown_raw: bool


@dataclass(frozen=True)
class ParsedEnvelope:
    """What the inbox list needs, read from the header block alone (list first, text later)."""

    subject: str
    sender: ParsedAddress | None
    to: tuple[ParsedAddress, ...]
    cc: tuple[ParsedAddress, ...]
    date: datetime | None
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
