"""The sync's batching and its read-ahead thread, as pure units (the Dovecot scenarios in
tests/test_sync*.py show the whole)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from mailsync.engine.imap import LARGE_MESSAGE
from mailsync.engine.sync import SyncLimits, _batches, read_ahead


def test_batches_start_small_and_double_up_to_the_limit() -> None:
    limits = SyncLimits(batch_messages=200, batch_bytes=10**9, first_batch_messages=50)
    sizes = {uid: 1000 for uid in range(1, 1001)}
    lengths = [len(b) for b in _batches(sorted(sizes), sizes, limits, first=50)]
    assert lengths == [50, 100, 200, 200, 200, 200, 50]


def test_batches_respect_bytes_and_fetch_a_huge_message_alone() -> None:
    limits = SyncLimits(batch_messages=100, batch_bytes=3000, first_batch_messages=100)
    sizes = {1: 1000, 2: 1000, 3: 1000, 4: 1000, 5: LARGE_MESSAGE + 1, 6: 10}
    assert list(_batches(sorted(sizes), sizes, limits, first=100)) == [[1, 2, 3], [4], [5], [6]]


def test_read_ahead_yields_everything_in_order_from_another_thread() -> None:
    threads: set[str] = set()

    def produce() -> Iterator[int]:
        for i in range(20):
            threads.add(threading.current_thread().name)
            yield i

    assert list(read_ahead(produce())) == list(range(20))
    assert threading.current_thread().name not in threads


def test_a_producer_error_reaches_the_consumer_at_its_item() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("server gone")

    seen = []
    with pytest.raises(ConnectionError):
        for item in read_ahead(produce()):
            seen.append(item)
    assert seen == [1, 2]


def test_a_consumer_that_stops_early_waits_for_the_item_in_flight() -> None:
    started = threading.Event()
    release = threading.Event()
    finished: list[int] = []

    def produce() -> Iterator[int]:
        yield 1
        started.set()
        release.wait(5)  # the next "FETCH" is still on the wire
        finished.append(2)
        yield 2

    items = read_ahead(produce())
    assert next(items) == 1
    assert started.wait(5)
    # e.g. the database write of item 1 failed: the consumer closes the generator
    closer = threading.Thread(target=items.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "returned while the IMAP command was still in flight"
    release.set()
    closer.join(5)
    assert finished == [2]  # the command in flight was completed, never abandoned half-read
