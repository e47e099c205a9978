"""The threading rules, without a database: the same conversations in any arrival order."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from mailsync.engine.threader import (
    SUBJECT_WINDOW,
    ThreadFacts,
    link,
    normalize_subject,
    thread_references,
    topic_for,
)

SUPPORT = "support@example.test"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def mail(
    key: str,
    subject: str,
    *,
    message_id: str | None = None,
    references: Sequence[str] = (),
    in_reply_to: str = "",
    sender: str = "carol@example.org",
    to: str = SUPPORT,
    hours: float = 0,
) -> ThreadFacts:
    """A message as threading sees it; its Message-ID is ``<key>@x`` unless given."""
    own_id = f"{key}@x" if message_id is None else message_id
    subject_key = normalize_subject(subject)
    return ThreadFacts(
        key=key,
        message_id=own_id,
        references=thread_references(list(references), in_reply_to, own_id),
        subject_key=subject_key,
        sender=sender,
        address_lines=f"{sender}, {to}",
        topic=topic_for(sender, subject_key, frozenset([SUPPORT])),
        date=T0 + timedelta(hours=hours),
        digest=f"sha-{key}",
    )


def arrive(messages: Sequence[ThreadFacts], batch: int = 3) -> set[frozenset[str]]:
    """Store ``messages`` in this order, ``batch`` at a time, as ingest does (new
    conversations numbered in creation order, merges into the lowest id); the groups."""
    stored: dict[str, ThreadFacts] = {}
    next_id = iter(range(1, 10_000))
    for start in range(0, len(messages), batch):
        new = list(messages[start : start + batch])
        for group in link(new, list(stored.values())):
            conversation = group.survivor or next(next_id)
            for key, fact in list(stored.items()):
                if fact.conversation in group.merged:
                    stored[key] = replace(fact, conversation=conversation)
            for fact in new:
                if fact.key in group.new:
                    stored[str(fact.key)] = replace(fact, conversation=conversation)
    together: dict[int | None, set[str]] = {}
    for key, fact in stored.items():
        together.setdefault(fact.conversation, set()).add(key)
    return {frozenset(keys) for keys in together.values()}


def conversations(*groups: str) -> set[frozenset[str]]:
    return {frozenset(group.split()) for group in groups}


# A thread of 8 whose links are thin: each message names only its parent, and the root
# arrives last in a newest-first sync.
THREAD = [
    mail("t1", "Printer", hours=0),
    *(
        mail(f"t{n}", "Re: Printer", in_reply_to=f"t{n - 1}@x", hours=n, sender=sender, to=to)
        for n, sender, to in [
            (2, SUPPORT, "carol@example.org"),
            (3, "carol@example.org", SUPPORT),
            (4, SUPPORT, "carol@example.org"),
            (5, "carol@example.org", SUPPORT),
            (6, SUPPORT, "carol@example.org"),
            (7, "carol@example.org", SUPPORT),
            (8, SUPPORT, "carol@example.org"),
        ]
    ),
]
MIXED = [
    *THREAD,
    mail("a", "Invoice", message_id="dup@x", sender="alice@example.org"),
    mail("b", "Hello", message_id="dup@x", sender="bob@example.org", hours=1),
    mail("ra", "Re: Invoice", references=["dup@x"], sender=SUPPORT, to="alice@example.org"),
    mail("rb", "Re: Hello", references=["dup@x"], sender=SUPPORT, to="bob@example.org"),
    mail("q1", "Question", message_id="", sender="dan@example.org", hours=2),
    mail("q2", "Question", message_id="", sender="erin@example.org", hours=3),
    mail("q3", "RE: question", message_id="", sender="dan@example.org", hours=30),
]
MIXED_GROUPS = conversations("t1 t2 t3 t4 t5 t6 t7 t8", "a ra", "b rb", "q1 q3", "q2")


def test_it_links_a_thread_of_eight_in_date_order_and_newest_first() -> None:
    expected = conversations("t1 t2 t3 t4 t5 t6 t7 t8")
    assert arrive(THREAD) == expected
    assert arrive(THREAD[::-1]) == expected
    assert arrive(THREAD[::-1], batch=1) == expected


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), batch=st.integers(1, 6))
def test_it_gives_the_same_conversations_in_any_arrival_order(seed: int, batch: int) -> None:
    messages = list(MIXED)
    random.Random(seed).shuffle(messages)
    assert arrive(messages, batch=batch) == MIXED_GROUPS


def test_it_merges_two_stored_conversations_a_later_message_links_into_the_lowest_id() -> None:
    stored = [
        replace(mail("c", "Re: Printer", in_reply_to="b@x"), conversation=7),
        replace(mail("a", "Printer"), conversation=3),
    ]
    [group] = link([mail("b", "Re: Printer", in_reply_to="a@x")], stored)
    assert (group.new, group.survivor, group.merged) == (("b",), 3, (7,))


def test_it_keeps_two_unrelated_messages_with_one_message_id_apart() -> None:
    first = mail("a", "Invoice", message_id="same@x", sender="alice@example.org")
    second = mail("b", "Hello", message_id="same@x", sender="bob@example.org")
    assert arrive([first, second], batch=1) == conversations("a", "b")
    assert arrive([first, second], batch=2) == conversations("a", "b")


def test_it_joins_one_message_id_with_the_same_subject_and_sender() -> None:
    first = mail("a", "Invoice", message_id="same@x", sender="alice@example.org")
    again = mail("b", "Invoice", message_id="same@x", sender="alice@example.org", hours=100)
    assert arrive([first, again]) == conversations("a b")


def test_it_follows_references_over_a_broken_in_reply_to() -> None:
    root = mail("r", "Printer")
    other = mail("o", "Lunch", sender="frank@example.org")
    reply = mail("x", "Re: Printer", references=["r@x"], in_reply_to="o@x")
    assert arrive([reply, root, other], batch=1) == conversations("r x", "o")


def test_it_joins_a_reply_whose_subject_was_edited_by_who_it_answers() -> None:
    root = mail("r", "Printer")
    edited = mail("e", "Ticket 42", in_reply_to="r@x", sender=SUPPORT, to="carol@example.org")
    stranger = mail("s", "Lunch", in_reply_to="r@x", sender="zed@example.org", to="z@x")
    assert arrive([edited, stranger, root], batch=1) == conversations("r e", "s")


def test_it_joins_replies_to_a_parent_it_does_not_have() -> None:
    one = mail("a", "Re: Printer", references=["gone@x"], hours=1)
    two = mail("b", "Re: Printer", references=["gone@x"], sender=SUPPORT, hours=2)
    assert arrive([one, two], batch=1) == conversations("a b")


def test_it_threads_by_subject_only_for_the_same_customer_within_the_window() -> None:
    first = mail("a", "Question", message_id="")
    later = mail("b", "Re: Question", message_id="", hours=SUBJECT_WINDOW / timedelta(hours=1))
    too_late = mail("c", "Question", message_id="", hours=24 * 30)
    other = mail("d", "Question", message_id="", sender="dan@example.org", hours=1)
    assert arrive([too_late, other, later, first], batch=1) == conversations("a b", "c", "d")


def test_it_never_threads_mail_from_the_mailbox_itself_by_subject() -> None:
    one = mail("a", "Your order", message_id="", sender=SUPPORT, to="x@example.org")
    two = mail("b", "Your order", message_id="", sender=SUPPORT, to="y@example.org")
    assert arrive([one, two]) == conversations("a", "b")


def test_it_links_by_subject_across_a_run_of_messages_without_headers() -> None:
    """Rule 5's sweep: each is within the window of the next, not of the first."""
    step = SUBJECT_WINDOW / timedelta(hours=1) * 0.9
    chain = [mail(f"m{n}", "Question", message_id="", hours=n * step) for n in range(5)]
    assert arrive(chain[::-1], batch=2) == conversations("m0 m1 m2 m3 m4")


def test_it_normalizes_reply_and_forward_prefixes() -> None:
    assert normalize_subject("Re: AW: Fwd:  Question ") == "question"
    assert normalize_subject("RE[2]: Sv: WG: question") == "question"
    assert normalize_subject("回复\uff1a问题") == "问题"  # (a full-width colon)
    assert normalize_subject("Re: [ticket] Re: x") == "[ticket] re: x"
    assert normalize_subject("Remarks") == "remarks"


def test_it_takes_references_before_in_reply_to_and_never_its_own_id() -> None:
    assert thread_references(["a@x", "b@x"], "zzz@x", "c@x") == ("a@x", "b@x")
    assert thread_references([], "b@x", "c@x") == ("b@x",)
    assert thread_references(["c@x", "a@x", "a@x"], "", "c@x") == ("a@x",)
    assert thread_references(["x" * 1000 + "@x"], "", "c@x") == ()
