"""One sync per folder at a time, by a lease taken with a conditional UPDATE.

A plain ``UPDATE ... WHERE lease_expires_at IS NULL OR lease_expires_at < now`` is atomic
on SQLite and PostgreSQL alike (no ``SELECT FOR UPDATE``, which SQLite lacks), and a lease
that a crashed worker never released simply expires.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from mailsync.models import Folder


class FolderBusy(Exception):
    """Another worker holds this folder's lease."""


def take_folder_lease(folder_id: int, *, seconds: int | None = None) -> str | None:
    token = secrets.token_hex(16)
    now = timezone.now()
    ttl = timedelta(seconds=seconds or settings.SYNC_LEASE_SECONDS)
    taken = (
        Folder.objects.filter(pk=folder_id)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(lease_owner=token, lease_expires_at=now + ttl)
    )
    return token if taken else None


def renew_folder_lease(
    folder_id: int, token: str, *, fetched: int = 0, total: int = 0, seconds: int | None = None
) -> bool:
    """Extend the lease (after each batch); the same UPDATE records the fetch progress."""
    ttl = timedelta(seconds=seconds or settings.SYNC_LEASE_SECONDS)
    return bool(
        Folder.objects.filter(pk=folder_id, lease_owner=token).update(
            lease_expires_at=timezone.now() + ttl, sync_fetched=fetched, sync_total=total
        )
    )


def release_folder_lease(folder_id: int, token: str) -> None:
    Folder.objects.filter(pk=folder_id, lease_owner=token).update(
        lease_owner="", lease_expires_at=None
    )


@contextmanager
def folder_lease(folder_id: int, *, wait: float = 0) -> Iterator[str]:
    """Hold the folder's lease; with ``wait``, poll for it that many seconds first."""
    deadline = time.monotonic() + wait
    token = take_folder_lease(folder_id)
    while token is None and time.monotonic() < deadline:
        time.sleep(0.5)
        token = take_folder_lease(folder_id)
    if token is None:
        raise FolderBusy(f"folder {folder_id} is being synced by another worker")
    try:
        yield token
    finally:
        release_folder_lease(folder_id, token)
