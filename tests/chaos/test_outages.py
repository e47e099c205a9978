"""Outages under a worker and beat of the test's own, as production runs them: a stalled
server, Dovecot restarted mid-sync with staff changes pending, the test database's
connections terminated mid-sync, the broker (Redis) down for 30 s under 100 staff changes.
After each, the mirror's promise; during each outage over 10 s, the mailbox says "error"
within 10 s, and "ok" after recovery."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import pytest

from mailsync.engine.flags import FLAGGED
from mailsync.models import FlagChange, Mailbox, Message
from mailsync.runner import sync_mailbox
from mailsync.tasks import sync_mailbox as sync_mailbox_task
from teaminbox.services import set_flag
from tests.support.chaos import (
    OwnRedis,
    Production,
    StatusTimeline,
    assert_mirror_promise,
    replay_hint,
    scaled,
    scenario_rng,
    staff_mailbox,
    stop_dovecot_with_its_sessions,
    terminate_test_database_connections,
    wait_until,
)
from tests.support.dovecot import RAWLOG_CONFIG, MailUser
from tests.support.faultproxy import FaultProxy
from tests.support.rawlog import stores_per_uid
from tests.test_sync import make_mail

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

# What "within 10 s" and "after recovery" allow: a failing sync is retried after 5, then
# 15 s (mailsync.tasks.RETRY_BACKOFF), so the first retry after the outage is at most
# about 20 s later.
ERROR_WITHIN = 10
OK_WITHIN = 40


def stored(mailbox: Mailbox) -> int:
    return Message.objects.filter(folder__mailbox=mailbox).count()


def stored_at_least(mailbox: Mailbox, count: int) -> Callable[[], bool]:
    return lambda: stored(mailbox) >= count


def in_step(mailbox: Mailbox, total: int) -> bool:
    extracted = Message.objects.filter(
        folder__mailbox=mailbox, expunged_at__isnull=True, extracted_at__isnull=False
    ).count()
    open_changes = FlagChange.objects.filter(
        folder__mailbox=mailbox, state__in=[FlagChange.State.PENDING, FlagChange.State.SENDING]
    ).exists()
    status = Mailbox.objects.get(pk=mailbox.pk).sync_status
    return extracted >= total and not open_changes and status == Mailbox.SyncStatus.OK


def wait_in_step(timeline: StatusTimeline, mailbox: Mailbox, total: int, timeout: float) -> None:
    """Until the mailbox is in step, the status polled on the way (the last one "ok")."""
    wait_until(
        lambda: timeline.poll() == Mailbox.SyncStatus.OK and in_step(mailbox, total),
        timeout=timeout,
        what="in step",
    )


def assert_outage_shown(timeline: StatusTimeline, outage: float, recovered_by: float) -> None:
    """An outage over 10 s shows as "error" within 10 s of its start, and "ok" follows."""
    seen = timeline.summary()
    print(f"status during the outage of {outage:.0f} s: {seen}")
    if outage > 10:
        error_at = timeline.first(Mailbox.SyncStatus.ERROR)
        assert error_at is not None and error_at <= ERROR_WITHIN, (
            f"a {outage:.0f} s outage: no error shown within {ERROR_WITHIN} s ({seen})\n"
            f"{replay_hint()}"
        )
    last_time, last_status = timeline.seen[-1]
    assert last_status == Mailbox.SyncStatus.OK and last_time <= recovered_by, (
        f"not ok within {OK_WITHIN} s of the recovery ({seen})\n{replay_hint()}"
    )


def rawlog_user(dovecot_factory, name: str) -> MailUser:
    server = dovecot_factory(name, RAWLOG_CONFIG)
    user: MailUser = server.add_user(f"{name}-{secrets.token_hex(4)}@example.test", "pw")
    user.enable_rawlog()
    return user


def test_a_stalled_server_is_detected_by_timeout_and_shown_then_synced(
    manage, production: Callable[..., Production], make_mailbox, mail_user, bob
):
    rng = scenario_rng("stall")
    total = 400
    mail_user.deliver_bulk(make_mail(f"Stall {n}", body=f"body {n}") for n in range(total))
    mailbox = staff_mailbox(make_mailbox, mail_user, bob)
    outage = scaled(12.0, 70.0) + rng.uniform(0, 2)
    with FaultProxy(mail_user.server.host, mail_user.server.imap_port) as proxy:
        Mailbox.objects.filter(pk=mailbox.pk).update(port=proxy.port)
        running = production(IMAP_TIMEOUT_SECONDS="2", SYNC_BATCH_MESSAGES="10")
        sync_mailbox_task.delay(mailbox.pk)
        point = rng.randint(50, 250)
        wait_until(lambda: stored(mailbox) >= point, timeout=60, what=f"{point} messages")

        proxy.stall()  # accepts, never answers; the kept connection goes silent too
        timeline = StatusTimeline(mailbox.pk)
        timeline.poll_for(outage)
        proxy.heal()
        healed = time.monotonic()
        wait_in_step(timeline, mailbox, total, timeout=OK_WITHIN + 60)
        running.settle()  # while the proxy is still there

    assert_outage_shown(timeline, outage, recovered_by=healed - timeline.started + OK_WITHIN)
    assert_mirror_promise(manage, mailbox, mail_user, context=f"stall of {outage:.0f} s")


def test_dovecot_restarted_during_a_sync_and_with_staff_changes_pending(
    manage, production: Callable[..., Production], make_mailbox, dovecot_factory, bob
):
    rng = scenario_rng("dovecot-restart")
    user = rawlog_user(dovecot_factory, "chaos-restart")
    total = 1000
    user.deliver_bulk(make_mail(f"Restart {n}", body=f"body {n}") for n in range(total))
    mailbox = staff_mailbox(make_mailbox, user, bob)
    running = production(SYNC_BATCH_MESSAGES="10")
    sync_mailbox_task.delay(mailbox.pk)
    point = rng.randint(50, 120)
    wait_until(stored_at_least(mailbox, point), timeout=60, what=f"{point} messages")

    # 1. A short restart in the middle of the first sync.
    stop_dovecot_with_its_sessions(user.server)
    assert stored(mailbox) < total, "the sync was over before Dovecot stopped"
    short = rng.uniform(1, 3)  # within the first retry (5 s)
    StatusTimeline(mailbox.pk).poll_for(short)
    user.server.start_again()
    wait_until(lambda: in_step(mailbox, total), timeout=OK_WITHIN + 60, what="in step")

    # 2. Down for longer while the mailbox is idle: staff act meanwhile, their changes
    # wait in the outbox.
    stop_dovecot_with_its_sessions(user.server)
    timeline = StatusTimeline(mailbox.pk)
    outage = scaled(11.0, 30.0) + rng.uniform(0, 2)
    changed = rng.sample(list(Message.objects.filter(folder__mailbox=mailbox)), 20)
    for message in changed:
        set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
    timeline.poll_for(outage)
    user.server.start_again()
    restarted = time.monotonic()
    wait_in_step(timeline, mailbox, total, timeout=OK_WITHIN + 60)

    assert_outage_shown(timeline, outage, recovered_by=restarted - timeline.started + OK_WITHIN)
    context = f"Dovecot down {short:.0f} s mid-sync, then {outage:.0f} s"
    running.settle()
    assert_mirror_promise(manage, mailbox, user, context=context)
    stores = stores_per_uid(user.rawlog_commands(), FLAGGED)
    assert stores == {m.uid: 1 for m in changed}, f"STOREs per change: {stores}\n{replay_hint()}"


def test_the_test_databases_connections_terminated_during_a_sync(
    manage, production: Callable[..., Production], make_mailbox, mail_user, bob
):
    rng = scenario_rng("postgresql")
    total = 1000
    mail_user.deliver_bulk(make_mail(f"Terminated {n}", body=f"body {n}") for n in range(total))
    mailbox = staff_mailbox(make_mailbox, mail_user, bob)
    running = production(SYNC_BATCH_MESSAGES="10")
    sync_mailbox_task.delay(mailbox.pk)
    terminated: list[int] = []
    since = 0
    for point in sorted(rng.sample(range(50, total - 300), scaled(1, 4))):
        # each time while the worker is storing again (it retries a few seconds later)
        wait_until(
            stored_at_least(mailbox, max(point, since + 1)), timeout=60, what=f"{point} messages"
        )
        terminated.append(terminate_test_database_connections())
        since = stored(mailbox)
    assert all(terminated), f"nothing to terminate at some point: {terminated}"

    wait_until(lambda: in_step(mailbox, total), timeout=90, what="in step")
    running.settle()
    assert_mirror_promise(manage, mailbox, mail_user, context=f"terminated: {terminated}")


def test_redis_down_for_30_seconds_while_staff_make_100_changes(
    manage,
    production: Callable[..., Production],
    own_redis: OwnRedis,
    make_mailbox,
    dovecot_factory,
    bob,
):
    rng = scenario_rng("redis")
    user = rawlog_user(dovecot_factory, "chaos-redis")
    user.deliver_bulk(make_mail(f"Broker {n}", body=f"body {n}") for n in range(150))
    mailbox = staff_mailbox(make_mailbox, user, bob)
    sync_mailbox(mailbox)
    # production settings, on the test's own Redis; beat connected before the outage
    running = production()
    running.wait_until_beat_tasks_run()
    messages = rng.sample(list(Message.objects.filter(folder__mailbox=mailbox)), 100)
    outage = scaled(30.0, 62.0)

    own_redis.stop()
    timeline = StatusTimeline(mailbox.pk)
    slowest = 0.0
    for message in messages:
        started = time.monotonic()
        set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
        slowest = max(slowest, time.monotonic() - started)
        timeline.poll()
    print(f"100 staff changes in {time.monotonic() - timeline.started:.1f} s")
    timeline.poll_for(outage)
    own_redis.start()
    back = time.monotonic()
    wait_in_step(timeline, mailbox, 150, timeout=OK_WITHIN + 30)

    assert slowest < 0.5, f"a staff change waited {slowest:.2f} s for the broker"
    assert_outage_shown(timeline, outage, recovered_by=back - timeline.started + OK_WITHIN)
    running.settle()
    assert_mirror_promise(manage, mailbox, user, context=f"Redis down {outage:.0f} s")
    stores = stores_per_uid(user.rawlog_commands(), FLAGGED)
    assert stores == {m.uid: 1 for m in messages}, f"STOREs per change: {stores}"
