"""kill -9 at seeded points of a first sync: of ``syncmailbox --once`` and of a Celery
worker (beat running, as in production), each restarted at once. Nothing lost, nothing
duplicated, every message extracted, and each restart goes on within about a lease."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailsync.models import Mailbox, Message
from tests.support.chaos import (
    Child,
    OwnRedis,
    assert_mirror_promise,
    child_env,
    replay_hint,
    scaled,
    scenario_rng,
    start_beat,
    start_syncmailbox,
    start_worker,
    wait_until,
)
from tests.test_sync import make_mail

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

TOTAL = scaled(2000, 5000)
KILLS = scaled(10, 30)
LEASE_SECONDS = 10  # the shortest lease settings allow: each kill costs one
# From a death to the next stored batch: the lease runs out, beat's resume (every 5 s) or
# the rerun's wait notices, a worker starts (≈3 s), a batch is fetched.
TAKEOVER_SECONDS = LEASE_SECONDS + 20


def stored(mailbox: Mailbox) -> int:
    return Message.objects.filter(folder__mailbox=mailbox).count()


def run_until_killed(
    child: Child,
    mailbox: Mailbox,
    point: int,
    label: str,
    on_resumed: Callable[[], object] = lambda: None,
) -> float:
    """Wait until ``child`` stores something (after the previous victim's lease ran out),
    then until ``point`` messages are stored, and kill -9 it. Returns how long after the
    start (the previous death) the sync went on."""
    started, before = time.monotonic(), stored(mailbox)
    wait_until(
        lambda: stored(mailbox) > before or not child.alive(),
        timeout=TAKEOVER_SECONDS + 30,
        what=f"{label}: the sync to go on",
    )
    resumed_after = time.monotonic() - started
    assert child.alive(), f"{label}: the process ended early"
    on_resumed()
    assert resumed_after < TAKEOVER_SECONDS, (
        f"{label}: the sync went on only {resumed_after:.0f} s after the previous death"
    )
    wait_until(
        lambda: stored(mailbox) >= point or not child.alive(),
        timeout=120,
        what=f"{label}: {point} messages stored",
    )
    assert child.alive(), f"{label}: the process ended before its kill point"
    child.kill9()
    return resumed_after


def fully_extracted(mailbox: Mailbox) -> bool:
    done = Message.objects.filter(folder__mailbox=mailbox, extracted_at__isnull=False)
    return done.count() >= TOTAL and Mailbox.objects.get(pk=mailbox.pk).sync_status == "ok"


def test_a_first_sync_survives_seeded_kill_9s_of_syncmailbox_and_of_a_worker(
    manage, shared_mailbox, mail_user, own_redis: OwnRedis, tmp_path: Path
):
    rng = scenario_rng("kills")
    mail_user.deliver_bulk(make_mail(f"Kill {n}", body=f"body {n}") for n in range(TOTAL))
    # Seeded kill points (messages stored), one victim after the other: a rerun of
    # syncmailbox takes over from a killed worker and the other way round.
    points = sorted(rng.sample(range(60, TOTAL - 300), KILLS))  # room to be killed before the end
    victims = ["syncmailbox", "worker"] * (KILLS // 2) + ["syncmailbox"] * (KILLS % 2)
    env = child_env(
        redis_url=own_redis.url, SYNC_BATCH_MESSAGES="20", SYNC_LEASE_SECONDS=str(LEASE_SECONDS)
    )
    logs = tmp_path / "logs"
    children: list[Child] = []
    kills: list[str] = []
    warm: list[Child] = []  # the next worker and beat, up before the death they follow

    def start_next_worker(number: int) -> None:
        warm[:] = [start_worker(env, logs, f"worker-{number}"), start_beat(env, logs)]
        children.extend(warm)

    try:
        for number, (point, victim) in enumerate(zip(points, victims, strict=True), start=1):
            label = f"kill {number} ({victim} at {point})"
            if victim == "syncmailbox":
                child = start_syncmailbox(shared_mailbox.name, env, logs, f"syncmailbox-{number}")
                children.append(child)
                # a worker started once this one holds the lease: it waits for its death
                run_until_killed(
                    child,
                    shared_mailbox,
                    point,
                    label,
                    functools.partial(start_next_worker, number + 1),
                )
            else:
                if not warm:
                    start_next_worker(number)
                child, beat = warm
                warm.clear()
                try:
                    # beat starts the abandoned sync again once the lease has run out
                    run_until_killed(child, shared_mailbox, point, label)
                finally:
                    beat.stop()
            kills.append(f"{victim}@{stored(shared_mailbox)}")
        assert stored(shared_mailbox) < TOTAL, "the sync finished before the last kill"

        # The end, as production runs it: a worker and beat take over the last lease.
        children += [start_worker(env, logs, "worker-final"), start_beat(env, logs)]
        wait_until(
            lambda: fully_extracted(shared_mailbox),
            timeout=scaled(180, 600),
            what=f"{TOTAL} messages stored and extracted, and the mailbox ok",
        )
    except AssertionError as exc:
        tails = "\n".join(c.log_tail() for c in children)
        raise AssertionError(f"{exc}\n{replay_hint()}\nkills: {kills}\n{tails}") from None
    finally:
        for child in children:
            child.stop(timeout=10)

    assert len(kills) >= 10
    print(f"kills (victim@stored): {kills}")
    assert_mirror_promise(manage, shared_mailbox, mail_user, context=f"kills: {kills}")
