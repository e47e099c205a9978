"""Connections cut every 32 KB and every 512 KB (a flaky middlebox): during the first sync
and during write-back of staff changes (once with the answer to a STORE lost), with
another client busy throughout. Every message arrives, every staff change reaches the
server exactly once."""

from __future__ import annotations

import pytest

from mailsync.engine.flags import FLAGGED
from mailsync.models import Mailbox, Message
from teaminbox.services import set_flag
from tests.support.chaos import (
    OtherClient,
    assert_mirror_promise,
    mail_of_size,
    replay_hint,
    scaled,
    scenario_rng,
    staff_mailbox,
    sync_until_in_step,
)
from tests.support.faultproxy import FaultProxy
from tests.support.rawlog import stores_per_uid

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

KB = 1024
ROUNDS = scaled(3, 10)
STAFF_CHANGES_PER_ROUND = 10


@pytest.mark.parametrize("cut", [32 * KB, 512 * KB], ids=["32KB", "512KB"])
def test_sync_and_write_back_complete_through_a_connection_cut_every_n_bytes(
    cut, manage, make_mailbox, recorded_user, bob
):
    rng = scenario_rng(f"cut-{cut}")
    user = recorded_user
    user.create_folder("Archive")
    sizes = (KB, cut * 3)  # from small to three times the cut
    for n in range(scaled(30, 100)):
        user.append(mail_of_size(rng, f"Before {n}", rng.randint(*sizes)))
    other = OtherClient(user, rng, sizes=sizes)
    mailbox = staff_mailbox(make_mailbox, user, bob, folders=["INBOX", "Archive"])
    changed: list[int] = []
    with FaultProxy(user.server.host, user.server.imap_port) as proxy:
        Mailbox.objects.filter(pk=mailbox.pk).update(port=proxy.port)
        mailbox.refresh_from_db()
        proxy.cut(server_to_client=cut)

        failures = sync_until_in_step(mailbox)
        cuts_in_first_sync = proxy.cuts
        lost_in_round = rng.randrange(ROUNDS)
        for round_number in range(ROUNDS):
            if round_number == lost_in_round:
                # a push whose STORE reaches the server and whose answer is lost with the
                # connection: sent again, it would be a second STORE
                proxy.lose_answer(b"UID STORE")
            # staff flag messages nobody else touches; the other client works meanwhile
            candidates = Message.objects.filter(
                folder__mailbox=mailbox, folder__name="INBOX", expunged_at__isnull=True
            ).exclude(uid__in=changed)
            picked = rng.sample(list(candidates), min(STAFF_CHANGES_PER_ROUND, len(candidates)))
            for message in picked:
                set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
                changed.append(message.uid)
            other.act(hands_off=changed, times=3)
            failures += sync_until_in_step(mailbox)  # pushes first, then syncs
        cuts_in_write_back = proxy.cuts - cuts_in_first_sync
        proxy.heal()
        failures += sync_until_in_step(mailbox)

    context = f"other client: {other.done}\nfailed syncs: {failures}"
    assert cuts_in_first_sync > 0, f"the cut never bit in the first sync\n{replay_hint()}"
    assert cuts_in_write_back > 0, f"the cut never bit in write-back\n{replay_hint()}"
    assert proxy.answers_lost == 1, f"no STORE lost its answer\n{replay_hint()}"
    assert_mirror_promise(manage, mailbox, user, folders=["INBOX", "Archive"], context=context)
    stores = stores_per_uid(user.rawlog_commands(), FLAGGED)
    assert stores == dict.fromkeys(changed, 1), f"STOREs per staff change: {stores}\n{context}"
