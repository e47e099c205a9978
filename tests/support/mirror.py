"""Compare what the app holds with what the server has, message by message."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from tests.support.dovecot import MailUser


def server_state(user: MailUser, folders: Iterable[str] = ("INBOX",)) -> list[dict[str, Any]]:
    """(folder, uidvalidity, uid, sorted flags, sha256 of BODY.PEEK[]) read over IMAP."""
    rows: list[dict[str, Any]] = []
    with user.imap() as client:
        for folder in folders:
            selected = client.select_folder(folder, readonly=True)
            uidvalidity = int(selected[b"UIDVALIDITY"])
            uids = client.search(["ALL"])
            if not uids:
                continue
            answer = client.fetch(list(uids), ["FLAGS", "BODY.PEEK[]"])
            for uid in sorted(answer):
                data = answer[uid]
                flags = sorted(
                    f.decode() if isinstance(f, bytes) else f
                    for f in data[b"FLAGS"]
                    if (f.decode() if isinstance(f, bytes) else f) != "\\Recent"
                )
                rows.append(
                    {
                        "folder": folder,
                        "uidvalidity": uidvalidity,
                        "uid": uid,
                        "flags": flags,
                        "sha256": hashlib.sha256(data[b"BODY[]"]).hexdigest(),
                    }
                )
    return rows


def parse_export(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def comparable(rows: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (r["folder"], r["uidvalidity"], r["uid"], tuple(r["flags"]), r["sha256"]) for r in rows
    )
