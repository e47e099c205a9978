"""Search documents (issue 15): the MessageSearch rows, and the full-text index over them.

PostgreSQL: a generated tsvector, subject (A) and people (B) weighted above body and
attachment names (C), ``simple`` config (no language's stemming: names and non-English mail
match as written), with a GIN index. SQLite: an FTS5 table over the same columns, kept in
step by triggers; its tokenizer folds no accents (our normaliser has: what it leaves, like
``ø``, stays as on PostgreSQL). Existing messages get their documents here."""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

PG_FORWARD = [
    """
    ALTER TABLE mailsync_messagesearch ADD COLUMN document tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple'::regconfig, subject), 'A')
        || setweight(to_tsvector('simple'::regconfig,
                                 sender || ' ' || recipients_to || ' ' || recipients_cc), 'B')
        || setweight(to_tsvector('simple'::regconfig, body || ' ' || filenames), 'C')
    ) STORED
    """,
    "CREATE INDEX mailsync_messagesearch_document ON mailsync_messagesearch USING GIN (document)",
]
SQLITE_COLUMNS = "subject, sender, recipients_to, recipients_cc, body, filenames"
SQLITE_NEW = ", ".join(f"new.{c}" for c in SQLITE_COLUMNS.split(", "))
SQLITE_OLD = ", ".join(f"old.{c}" for c in SQLITE_COLUMNS.split(", "))
SQLITE_FORWARD = [
    f"""CREATE VIRTUAL TABLE mailsync_messagesearch_fts USING fts5(
        {SQLITE_COLUMNS}, content='mailsync_messagesearch', content_rowid='message_id',
        tokenize='unicode61 remove_diacritics 0')""",
    f"""CREATE TRIGGER mailsync_messagesearch_ai AFTER INSERT ON mailsync_messagesearch BEGIN
        INSERT INTO mailsync_messagesearch_fts(rowid, {SQLITE_COLUMNS})
        VALUES (new.message_id, {SQLITE_NEW});
    END""",
    f"""CREATE TRIGGER mailsync_messagesearch_ad AFTER DELETE ON mailsync_messagesearch BEGIN
        INSERT INTO mailsync_messagesearch_fts(mailsync_messagesearch_fts, rowid, {SQLITE_COLUMNS})
        VALUES ('delete', old.message_id, {SQLITE_OLD});
    END""",
    f"""CREATE TRIGGER mailsync_messagesearch_au AFTER UPDATE ON mailsync_messagesearch BEGIN
        INSERT INTO mailsync_messagesearch_fts(mailsync_messagesearch_fts, rowid, {SQLITE_COLUMNS})
        VALUES ('delete', old.message_id, {SQLITE_OLD});
        INSERT INTO mailsync_messagesearch_fts(rowid, {SQLITE_COLUMNS})
        VALUES (new.message_id, {SQLITE_NEW});
    END""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS mailsync_messagesearch_ai",
    "DROP TRIGGER IF EXISTS mailsync_messagesearch_ad",
    "DROP TRIGGER IF EXISTS mailsync_messagesearch_au",
    "DROP TABLE IF EXISTS mailsync_messagesearch_fts",
]


def create_index(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    statements = {"postgresql": PG_FORWARD, "sqlite": SQLITE_FORWARD}.get(vendor, [])
    for statement in statements:
        schema_editor.execute(statement)


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_BACKWARD:
            schema_editor.execute(statement)


def fill_documents(apps: Any, schema_editor: Any) -> None:
    """Documents for the messages stored before this migration, a batch at a time."""
    from mailsync.engine.mime import html_to_text
    from mailsync.search_index import (
        MAX_BODY_CHARS,
        MAX_HEADER_CHARS,
        MAX_LIST_CHARS,
        normalise,
    )

    message_model = apps.get_model("mailsync", "Message")
    search_model = apps.get_model("mailsync", "MessageSearch")
    attachment_model = apps.get_model("mailsync", "Attachment")
    last = 0
    while True:
        batch = list(message_model.objects.filter(pk__gt=last).order_by("pk")[:1000])
        if not batch:
            return
        last = batch[-1].pk
        names: dict[int, list[str]] = {}
        for message_id, filename in attachment_model.objects.filter(
            message_id__in=[m.pk for m in batch]
        ).values_list("message_id", "filename"):
            names.setdefault(message_id, []).append(filename)
        search_model.objects.bulk_create(
            [
                search_model(
                    message_id=m.pk,
                    subject=normalise(m.subject[:MAX_HEADER_CHARS]),
                    sender=normalise(f"{m.from_name} {m.from_address}"[:MAX_HEADER_CHARS]),
                    recipients_to=normalise(m.to_display[:MAX_LIST_CHARS]),
                    recipients_cc=normalise(m.cc_display[:MAX_LIST_CHARS]),
                    body=normalise(
                        (m.text_body or (html_to_text(m.html_body) if m.html_body else ""))[
                            :MAX_BODY_CHARS
                        ]
                    ),
                    filenames=normalise(" ".join(names.get(m.pk, []))[:MAX_LIST_CHARS]),
                )
                for m in batch
            ],
            ignore_conflicts=True,
        )


class Migration(migrations.Migration):
    dependencies = [
        ("mailsync", "0010_conversation_summaries_fill"),
    ]

    operations = [
        migrations.CreateModel(
            name="MessageSearch",
            fields=[
                (
                    "message",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="search",
                        serialize=False,
                        to="mailsync.message",
                    ),
                ),
                ("subject", models.TextField(blank=True)),
                ("sender", models.TextField(blank=True)),
                ("recipients_to", models.TextField(blank=True)),
                ("recipients_cc", models.TextField(blank=True)),
                ("body", models.TextField(blank=True)),
                ("filenames", models.TextField(blank=True)),
            ],
        ),
        migrations.RunPython(create_index, drop_index),
        migrations.RunPython(fill_documents, migrations.RunPython.noop),
    ]
