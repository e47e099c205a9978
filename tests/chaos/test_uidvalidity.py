"""A UIDVALIDITY reset in the middle of a first sync, with staff changes waiting across it
and another client appending, expunging, moving and flagging before and after."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mailsync.engine.flags import FLAGGED
from mailsync.models import FlagChange, Folder, Mailbox, Message
from mailsync.tasks import sync_mailbox as sync_mailbox_task
from teaminbox.services import set_flag
from tests.support.chaos import (
    OtherClient,
    Production,
    assert_mirror_promise,
    replay_hint,
    scaled,
    scenario_rng,
    staff_mailbox,
    wait_until,
)
from tests.support.mirror import comparable, server_state
from tests.support.rawlog import stores_per_uid
from tests.test_sync import app_state, make_mail

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]


def stored(mailbox: Mailbox) -> int:
    return Message.objects.filter(folder__mailbox=mailbox).count()


def caught_up(mailbox: Mailbox, user, folders: list[str]) -> bool:
    """Everything the server has is mirrored, extracted, and no change is waiting."""
    live = Message.objects.filter(folder__mailbox=mailbox, expunged_at__isnull=True)
    return (
        Mailbox.objects.get(pk=mailbox.pk).sync_status == Mailbox.SyncStatus.OK
        and not live.filter(extracted_at__isnull=True).exists()
        and not FlagChange.objects.filter(
            folder__mailbox=mailbox,
            state__in=[FlagChange.State.PENDING, FlagChange.State.SENDING],
        ).exists()
        and not Folder.objects.filter(mailbox=mailbox).exclude(lease_owner="").exists()
        and comparable(app_state(mailbox)) == comparable(server_state(user, folders))
    )


def test_a_uidvalidity_reset_mid_sync_with_staff_changes_waiting_and_another_client_busy(
    manage, production: Callable[..., Production], make_mailbox, recorded_user, bob
):
    rng = scenario_rng("uidvalidity")
    user, folders = recorded_user, ["INBOX", "Archive"]
    user.create_folder("Archive")
    total = scaled(600, 2000)
    user.deliver_bulk(make_mail(f"Renumbered {n}", body=f"body {n}") for n in range(total))
    mailbox = staff_mailbox(make_mailbox, user, bob, folders=folders)
    other = OtherClient(user, rng)
    # a sync every 5 s: the other client's last changes are fetched without a push of ours
    running = production(SYNC_BATCH_MESSAGES="10", SYNC_INTERVAL_SECONDS="5")
    sync_mailbox_task.delay(mailbox.pk)

    first, second = sorted(rng.sample(range(60, total // 2), 2))
    wait_until(lambda: stored(mailbox) >= first, timeout=60, what=f"{first} messages")
    other.act(times=4)
    # staff flag stored messages while the worker is busy with the sync: their changes
    # wait in the outbox until after the reset
    untouched = Message.objects.filter(folder__mailbox=mailbox).exclude(uid__in=other.touched)
    changed = rng.sample(list(untouched), 10)
    for message in changed:
        set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
    wait_until(lambda: stored(mailbox) >= second, timeout=60, what=f"{second} messages")
    assert stored(mailbox) < total, "the first sync was over before the reset"
    old = user.uidvalidity()
    user.set_uidvalidity(old + rng.randint(1, 10_000))
    other.act(hands_off=[m.uid for m in changed], times=4)

    wait_until(lambda: caught_up(mailbox, user, folders), timeout=scaled(90, 300), what="caught up")
    context = f"reset at {second} of {total}; other client: {other.done}"
    assert (
        Message.objects.filter(
            folder__mailbox=mailbox, folder__name="INBOX", uidvalidity=old, expunged_at__isnull=True
        ).count()
        == 0
    ), f"rows of the old UIDVALIDITY are still live\n{replay_hint()}"
    running.settle()
    assert_mirror_promise(manage, mailbox, user, folders=folders, context=context)
    stores = stores_per_uid(user.rawlog_commands(), FLAGGED)
    assert stores == {m.uid: 1 for m in changed}, f"STOREs per change: {stores}\n{context}"
