"""A pusher that dies mid-push: its changes reach the server within half a minute, once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.db.models import F

from mailsync import outbox
from mailsync.engine.flags import FLAGGED
from mailsync.engine.imap import ImapSession
from mailsync.models import FlagChange, Folder, Message
from mailsync.runner import open_session, sync_mailbox
from mailsync.tasks import sweep_flag_outbox
from teaminbox.celery import app
from teaminbox.services import set_flag
from tests.support.rawlog import stores_per_uid
from tests.test_sync import make_mail

pytestmark = pytest.mark.django_db


class Killed(BaseException):
    """kill -9: nothing after this line runs, no handler records anything."""


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Tasks the sweeper enqueues run in this process, as a worker would run them."""
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


def staff_flagged_everything(mailbox, user, bob, count=50) -> list[Message]:
    user.deliver_bulk(make_mail(f"Change {n}") for n in range(count))
    sync_mailbox(mailbox)
    messages = list(Message.objects.filter(folder__mailbox=mailbox))
    assert len(messages) == count
    for message in messages:
        set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
    return messages


def push_and_die(imap: ImapSession, folder: Folder, *, store_reaches_server: bool) -> None:
    """A worker claims the folder's changes and is killed just as its STORE reaches the
    server (or just before), with nothing recorded in the database."""
    real_store = imap.store_flags

    def store_then_die(*args, **kwargs):
        if store_reaches_server:
            real_store(*args, **kwargs)
        raise Killed

    imap.store_flags = store_then_die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        outbox.push_flag_changes(imap, folder)
    imap.close()


def time_passes_since_the_death(seconds: float) -> None:
    FlagChange.objects.filter(state=FlagChange.State.SENDING).update(
        claimed_at=F("claimed_at") - timedelta(seconds=seconds)
    )


def worst_case_wait() -> timedelta:
    """From the death to the sweep that finds the expired claims: the claim runs out, then
    the sweeper may run up to one interval later."""
    sweep_every = settings.CELERY_BEAT_SCHEDULE["sweep-flag-outbox"]["schedule"]
    assert isinstance(sweep_every, timedelta)
    return timedelta(seconds=settings.OUTBOX_CLAIM_SECONDS) + sweep_every


@pytest.mark.parametrize("store_reaches_server", [True, False], ids=["stored", "not-stored"])
def test_a_dead_pushers_changes_reach_the_server_once_within_half_a_minute(
    store_reaches_server, make_mailbox, recorded_user, bob, eager_tasks
):
    mailbox = make_mailbox(recorded_user, agents=(bob,))
    messages = staff_flagged_everything(mailbox, recorded_user, bob)
    folder = messages[0].folder
    push_and_die(open_session(mailbox), folder, store_reaches_server=store_reaches_server)
    assert FlagChange.objects.filter(state=FlagChange.State.SENDING).count() == 50

    assert worst_case_wait() <= timedelta(seconds=30)
    time_passes_since_the_death(worst_case_wait().total_seconds())
    sweep_flag_outbox()  # its latest run after the claims expired

    assert all(FLAGGED in flags for flags in recorded_user.flags().values())
    assert not FlagChange.objects.exclude(state=FlagChange.State.DONE).exists()
    stored = stores_per_uid(recorded_user.rawlog_commands(), FLAGGED)
    assert sorted(stored) == sorted(m.uid for m in messages)
    assert set(stored.values()) == {1}, "a change was sent more than once"


def test_a_dead_pushers_unsent_changes_go_out_once_on_the_servers_modseq(
    make_mailbox, recorded_user, bob, eager_tasks
):
    mailbox = make_mailbox(recorded_user, agents=(bob,))
    messages = staff_flagged_everything(mailbox, recorded_user, bob, count=5)
    push_and_die(open_session(mailbox), messages[0].folder, store_reaches_server=False)
    # Meanwhile the app's own earlier push (or another client) moved every modseq.
    recorded_user.add_flags([m.uid for m in messages], ["$Seen-by-outlook"])

    time_passes_since_the_death(worst_case_wait().total_seconds())
    sweep_flag_outbox()

    assert all(FLAGGED in flags for flags in recorded_user.flags().values())
    assert not FlagChange.objects.exclude(state=FlagChange.State.DONE).exists()
    stored = stores_per_uid(recorded_user.rawlog_commands(), FLAGGED)
    assert set(stored.values()) == {1}, "a change was refused as [MODIFIED] and sent again"


def test_a_sync_of_the_folder_takes_over_an_expired_claim(make_mailbox, recorded_user, bob):
    mailbox = make_mailbox(recorded_user, agents=(bob,))
    messages = staff_flagged_everything(mailbox, recorded_user, bob, count=3)
    push_and_die(open_session(mailbox), messages[0].folder, store_reaches_server=True)

    sync_mailbox(mailbox)  # too early: the dead pusher's claim still holds
    assert FlagChange.objects.filter(state=FlagChange.State.SENDING).count() == 3
    time_passes_since_the_death(settings.OUTBOX_CLAIM_SECONDS + 1)
    sync_mailbox(mailbox)

    assert not FlagChange.objects.exclude(state=FlagChange.State.DONE).exists()
    stored = stores_per_uid(recorded_user.rawlog_commands(), FLAGGED)
    assert set(stored.values()) == {1}


def test_a_live_pusher_keeps_its_claim_by_renewing_it(make_mailbox, mail_user, bob):
    mailbox = make_mailbox(mail_user, agents=(bob,))
    messages = staff_flagged_everything(mailbox, mail_user, bob, count=2)
    folder = messages[0].folder
    claimed = outbox.claim_flag_changes(folder)
    time_passes_since_the_death(settings.OUTBOX_CLAIM_SECONDS - 5)

    outbox.renew_claim(claimed)  # what the pusher does after each command
    time_passes_since_the_death(10)

    assert outbox.claim_flag_changes(folder) == []
    assert outbox.release_stale_claims() == 0
