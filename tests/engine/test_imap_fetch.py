"""Our FETCH response parser reads what imapclient's reads, and refuses what it cannot."""

from __future__ import annotations

import random
from typing import Any

import pytest
from imapclient.response_parser import gen_parsed_response

from mailsync.engine.imap.fetch_parser import FetchParseError, parse_fetch_responses

Data = list[Any]


def imapclient_reading(data: Data) -> list[tuple[int, dict[bytes, Any]]]:
    parsed = list(gen_parsed_response(data))
    responses = []
    for seq, items in zip(parsed[::2], parsed[1::2], strict=True):
        responses.append((seq, {items[j].upper(): items[j + 1] for j in range(0, len(items), 2)}))
    return responses


CASES: dict[str, Data] = {
    "whole message as Dovecot sends it": [
        (
            b'1 (UID 5 MODSEQ (12) FLAGS (\\Seen $Forwarded) INTERNALDATE "29-Nov-2026 '
            b'10:00:00 +0000" RFC822.SIZE 11 BODY[] {11}',
            b"hello\r\nNIL1",
        ),
        b")",
    ],
    "flags only, no literal": [b"2 (UID 9 FLAGS ())", b"3 (UID 10 FLAGS (\\Answered))"],
    "unsolicited FETCH without UID": [b"4 (FLAGS (\\Deleted))"],
    "section with spaces, quoted escapes, NIL": [
        b'3 (UID 7 BODY[HEADER.FIELDS (FROM TO)] "a \\"q\\" \\\\" X NIL)'
    ],
    "a partial body": [(b"1 (UID 3 BODY[]<1048576> {4}", b"abcd"), b")"],
    "two literals in one response": [
        (b"1 (UID 3 BODY[HEADER] {3}", b"a\r\n"),
        (b" BODY[TEXT] {2}", b"()"),
        b" FLAGS (\\Seen))",
    ],
    "a literal that looks like a number or NIL": [(b"1 (UID 3 BODY[] {3}", b"NIL"), b")"],
    "a quoted number stays bytes": [b'1 (UID 3 X "123")'],
    "nested lists": [b"1 (UID 3 X ((a b) (c (d))) Y ())"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_it_reads_what_imapclient_reads(name: str) -> None:
    assert parse_fetch_responses(CASES[name]) == imapclient_reading(CASES[name])


def test_literal_bytes_are_never_scanned() -> None:
    body = b'(unbalanced "quote {99}\r\n)) NIL 12'
    [(seq, items)] = parse_fetch_responses([(b"1 (UID 3 BODY[] {%d}" % len(body), body), b")"])
    assert (seq, items[b"BODY[]"]) == (1, body)


def test_random_flag_responses_agree_with_imapclient() -> None:
    rng = random.Random(7)
    words = [b"\\Seen", b"\\Answered", b"$Label1", b"Junk", b"NonJunk", b"\\Flagged"]
    for _ in range(200):
        data: Data = []
        for seq in range(1, rng.randint(1, 6)):
            flags = b" ".join(rng.sample(words, rng.randint(0, len(words))))
            parts = [b"UID %d" % rng.randint(1, 10**9), b"FLAGS (" + flags + b")"]
            if rng.random() < 0.5:
                parts.append(b"MODSEQ (%d)" % rng.randint(1, 10**12))
            rng.shuffle(parts)
            data.append(b"%d (" % seq + b" ".join(parts) + b")")
        assert parse_fetch_responses(data) == imapclient_reading(data)


@pytest.mark.parametrize(
    "data",
    [
        [b"1 (UID 3 FLAGS (\\Seen)"],  # never closed
        [b"(UID 3)"],  # no sequence number
        [b"1 (UID)"],  # an item without a value
        [b"1 (UID 3 BODY[] {5}"],  # a literal announced but not read
        [b'1 (UID 3 X "unterminated)'],
    ],
)
def test_what_it_cannot_read_it_refuses_so_imapclient_takes_over(data: Data) -> None:
    with pytest.raises(FetchParseError):
        parse_fetch_responses(data)


def test_the_session_falls_back_to_imapclient_for_what_ours_refuses() -> None:
    from mailsync.engine.imap.fetch_parser import fetch_items as _fetch_items

    odd: Data = [b"1 (UID 3 X a]b FLAGS (\\Seen))"]  # "]" inside an atom: legal, rare
    with pytest.raises(FetchParseError):
        parse_fetch_responses(odd)
    assert _fetch_items(odd) == [{b"UID": 3, b"X": b"a]b", b"FLAGS": (b"\\Seen",)}]


@pytest.mark.parametrize("name", list(CASES))
def test_the_flat_fast_path_agrees_with_the_tokenizer(name: str) -> None:
    from mailsync.engine.imap.fetch_parser import _parse_flat, _parse_tokens

    try:
        flat = _parse_flat(CASES[name])
    except FetchParseError:
        return  # not flat: the tokenizer alone reads it (compared with imapclient above)
    assert flat == _parse_tokens(CASES[name])


@pytest.mark.parametrize(
    "text",
    [
        "29-Nov-2026 10:00:00 +0100",
        " 1-Jan-2020 00:00:01 -0530",  # RFC 3501 pads the day with a space
        "07-jul-1999 23:59:59 +1400",
        "31-Feb-2020 00:00:00 +0000",
        "01-Xyz-2020 00:00:00 +0000",
        "29-Nov-2026 10:00:00",
        "garbage",
    ],
)
def test_internaldate_reads_as_strptime_does(text: str) -> None:
    from datetime import datetime

    from mailsync.engine.imap.data import parse_internaldate

    try:
        expected: datetime | None = datetime.strptime(text, "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        expected = None
    assert parse_internaldate(text.encode()) == expected
