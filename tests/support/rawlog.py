"""Reading what a client sent, from Dovecot's rawlog."""

from __future__ import annotations

import re

from mailsync.engine.imap import parse_uid_set


def stores_per_uid(commands: list[str], flag: str) -> dict[int, int]:
    """How many ``UID STORE ... +FLAGS.SILENT (<flag>)`` commands named each UID."""
    pattern = re.compile(r"UID STORE (\S+) .*\+FLAGS\.SILENT \(" + re.escape(flag) + r"\)")
    counts: dict[int, int] = {}
    for command in commands:
        match = pattern.match(command)
        if match:
            for uid in parse_uid_set(match.group(1)):
                counts[uid] = counts.get(uid, 0) + 1
    return counts
