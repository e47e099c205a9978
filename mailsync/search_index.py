"""Search documents: one normaliser, and the rows the full-text indexes are built from.

The same normalised words go to PostgreSQL (a generated tsvector, ``simple`` config) and to
SQLite (FTS5, ``unicode61``), and queries are normalised the same way, so a query finds the
same messages on both: neither database's own idea of case, accents or punctuation is used.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from django.db import connection

from mailsync.engine.mime import html_to_text
from mailsync.models import Attachment, Message, MessageSearch

# A tsvector holds at most 1 MB (about 1.4 bytes per character of text here): each part of
# the document is cut to its first characters, so that together they stay far below it (a
# 1 MB header line is real mail too).
MAX_BODY_CHARS = 300_000
MAX_HEADER_CHARS = 20_000  # subject, sender
MAX_LIST_CHARS = 60_000  # To, Cc, attachment names

_NOT_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Lower case, accents removed (NFKD without marks), anything not a letter or a digit
    made a space: ``"Crème-Brûlée, S.A."`` -> ``"creme brulee s a"``."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    if not decomposed.isascii():  # (a character loop, only for text that needs it)
        decomposed = "".join(
            ch for ch in decomposed if ch.isascii() or not unicodedata.category(ch).startswith("M")
        )
    return _NOT_WORD.sub(" ", decomposed).strip()  # \w is str.isalnum() and "_"


def words(text: str) -> list[str]:
    """The words of ``text`` as the indexes hold them."""
    return normalise(text).split()


def _document(message: Message, filenames: list[str]) -> MessageSearch:
    body = message.text_body or (html_to_text(message.html_body) if message.html_body else "")
    return MessageSearch(
        message_id=message.pk,
        subject=normalise(message.subject[:MAX_HEADER_CHARS]),
        sender=normalise(f"{message.from_name} {message.from_address}"[:MAX_HEADER_CHARS]),
        recipients_to=normalise(message.to_display[:MAX_LIST_CHARS]),
        recipients_cc=normalise(message.cc_display[:MAX_LIST_CHARS]),
        body=normalise(body[:MAX_BODY_CHARS]),
        filenames=normalise(" ".join(filenames)[:MAX_LIST_CHARS]),
    )


def write_documents(messages: Iterable[Message], *, new: bool = False) -> None:
    """Write (or rewrite) the search documents of these messages, in one statement.

    Called with the rows just stored (``new``: headers only, no document yet) and with rows
    just extracted (headers, text and attachment names); inside the caller's transaction,
    so a document commits with the text it was made from."""
    rows = list(messages)
    if not rows:
        return
    names: dict[int, list[str]] = {}
    extracted = [m.pk for m in rows if m.extracted_at is not None]
    if extracted:
        for message_id, filename in (
            Attachment.objects.filter(message_id__in=extracted)
            .order_by("message_id", "position")
            .values_list("message_id", "filename")
        ):
            names.setdefault(message_id, []).append(filename)
    documents = [_document(m, names.get(m.pk, [])) for m in rows]
    if new and connection.vendor == "postgresql":
        from mailsync.ingest import insert_rows  # (ingest calls this module)

        insert_rows(documents, with_pk=True)  # COPY: a third of an INSERT's time at ingest
        return
    MessageSearch.objects.bulk_create(
        documents,
        update_conflicts=True,
        unique_fields=["message"],
        update_fields=["subject", "sender", "recipients_to", "recipients_cc", "body", "filenames"],
    )


def text_filter_sql(tokens: list[str], *, phrase: bool) -> tuple[str, list[str]]:
    """A subquery of the message ids whose document holds all ``tokens`` (normalised words),
    next to each other in order for a phrase."""
    if connection.vendor == "postgresql":
        joiner = " <-> " if phrase else " & "
        query = joiner.join(f"'{token}'" for token in tokens)  # words: letters and digits only
        return (
            "SELECT message_id FROM mailsync_messagesearch"
            " WHERE document @@ to_tsquery('simple', %s)",
            [query],
        )
    match = '"' + " ".join(tokens) + '"' if phrase else " ".join(f'"{t}"' for t in tokens)
    return (
        "SELECT rowid FROM mailsync_messagesearch_fts WHERE mailsync_messagesearch_fts MATCH %s",
        [match],
    )
