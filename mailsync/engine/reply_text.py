"""What a reply or forward says before anyone types: recipients, attribution, quoted text.

Pure functions over a parsed message, no Django: the caller gives times already in the
reader's time zone. ``compose`` builds the bytes that are finally sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from mailsync.engine.compose import Recipient, one_line, quote_body, unique_recipients
from mailsync.engine.mime import ParsedAddress, ParsedMessage, html_to_text

__all__ = ["forward_body", "quoted_reply", "reply_recipients"]


def reply_recipients(
    parsed: ParsedMessage, *, own: set[str], reply_all: bool
) -> tuple[tuple[Recipient, ...], tuple[Recipient, ...]]:
    """(To, Cc) of a reply: Reply-To else the sender; reply-all adds the other recipients.

    ``own`` are the team's addresses (lowercase): never a recipient of its own reply. A
    reply to our own sent message goes to whoever it was sent to.
    """
    sender = parsed.sender
    targets = _recipients(parsed.reply_to) or _recipients([sender] if sender else [])
    if sender and sender.address.lower() in own and not parsed.reply_to:
        targets = _recipients(parsed.to)
    to = unique_recipients(targets, exclude=own)
    cc: tuple[Recipient, ...] = ()
    if reply_all:
        others = _recipients([*parsed.to, *parsed.cc])
        cc = unique_recipients(others, exclude=own | {r.address.lower() for r in to})
    return to, cc


def quoted_reply(parsed: ParsedMessage, *, sender: str, when: datetime | None) -> str:
    """The body a reply starts with: an empty line to type on, then the quoted original."""
    return quote_body(original_text(parsed), attribution=_attribution(sender, when))


def forward_body(parsed: ParsedMessage, *, subject: str, when: datetime | None) -> str:
    """The body a forward starts with: the original's headers, then its text."""
    lines = ["", "", "---------- Forwarded message ----------"]
    if parsed.sender:
        lines.append(f"From: {one_line(parsed.sender.display())}")
    if when is not None:
        lines.append(f"Date: {when:%a, %d %b %Y at %H:%M}")
    lines.append(f"Subject: {one_line(subject)}")
    if parsed.to:
        lines.append("To: " + one_line(", ".join(a.display() for a in parsed.to)))
    if parsed.cc:
        lines.append("Cc: " + one_line(", ".join(a.display() for a in parsed.cc)))
    lines.append("")
    return "\n".join(lines) + "\n" + original_text(parsed).rstrip("\n") + "\n"


def original_text(parsed: ParsedMessage) -> str:
    return parsed.text or (html_to_text(parsed.html) if parsed.html else "")


def _attribution(sender: str, when: datetime | None) -> str:
    if when is None:
        return f"{one_line(sender)} wrote:"
    return f"On {when:%a, %d %b %Y at %H:%M}, {one_line(sender)} wrote:"


def _recipients(addresses: Iterable[ParsedAddress | None]) -> tuple[Recipient, ...]:
    found: list[Recipient] = []
    for item in addresses:
        if item is not None and item.address:
            found.append(Recipient(name=one_line(item.name), address=item.address.strip()))
    return tuple(found)
