"""parse_message against the hand-checked table in tests/corpus_expectations.py."""

from __future__ import annotations

import pytest

from mailsync.engine.mime import parse_message
from tests.corpus_expectations import EXPECTATIONS, CorpusExpectation
from tests.support.corpus import corpus_path


def test_it_has_at_least_twenty_expectations() -> None:
    assert len(EXPECTATIONS) >= 20
    assert len({e.path for e in EXPECTATIONS}) == len(EXPECTATIONS)


@pytest.mark.corpus
@pytest.mark.parametrize("expected", EXPECTATIONS, ids=lambda e: e.path)
def test_it_matches_the_hand_checked_expectation(expected: CorpusExpectation) -> None:
    parsed = parse_message((corpus_path() / expected.path).read_bytes())
    assert parsed.subject == expected.subject
    if expected.sender:
        assert parsed.sender is not None
        assert expected.sender in parsed.sender.display()
    if expected.body_snippet is not None:
        assert expected.body_snippet in parsed.text
    assert parsed.shown_raw == expected.shown_raw
    if expected.shown_raw:
        assert any("boundary" in notice for notice in parsed.notices)
