"""The search box's query language: queries to trees, and malformed queries to sentences."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from teaminbox.search_parser import (
    And,
    Assignee,
    HasAttachment,
    Header,
    In,
    Node,
    Not,
    Or,
    SearchSyntaxError,
    Size,
    State,
    Status,
    Text,
    When,
    parse,
)

TREES: list[tuple[str, Node | None]] = [
    ("", None),
    ("   ", None),
    ("invoice", Text("invoice")),
    ("from:alice@example.com", Header("from", "alice@example.com")),
    ("FROM:Alice", Header("from", "Alice")),
    ("to:bob cc:carol", And((Header("to", "bob"), Header("cc", "carol")))),
    ('subject:"late payment"', Header("subject", "late payment")),
    ('"late payment"', Text("late payment", phrase=True)),
    ("-spam", Not(Text("spam"))),
    ('-"out of office"', Not(Text("out of office", phrase=True))),
    ("a OR b", Or((Text("a"), Text("b")))),
    ("a | b", Or((Text("a"), Text("b")))),
    # OR binds tighter than the implicit AND, as in Gmail
    ("a b OR c", And((Text("a"), Or((Text("b"), Text("c")))))),
    ("a OR b c", And((Or((Text("a"), Text("b"))), Text("c")))),
    ("a AND b", And((Text("a"), Text("b")))),
    ("(a b) OR c", Or((And((Text("a"), Text("b"))), Text("c")))),
    ("-(a OR b)", Not(Or((Text("a"), Text("b"))))),
    ("is:unread", State("unread")),
    ("is:Replied -is:flagged", And((State("replied"), Not(State("flagged"))))),
    ("has:attachment", HasAttachment()),
    ("filename:report.pdf", Header("filename", "report.pdf")),
    ("larger:5M", Size(">", 5 * 1024 * 1024)),
    ("smaller:200K", Size("<", 200 * 1024)),
    ("larger:1.5m", Size(">", int(1.5 * 1024 * 1024))),
    ("larger:300", Size(">", 300)),
    ("before:2026-03-31", When("before", day=date(2026, 3, 31))),
    ("after:2026/1/5", When("after", day=date(2026, 1, 5))),
    ("on:2026-02-28", When("on", day=date(2026, 2, 28))),
    ("after:7d", When("after", age=timedelta(days=7))),
    ("before:2w", When("before", age=timedelta(days=14))),
    ("in:Trash", In("trash")),
    ("in:anywhere", In("anywhere")),
    ("assignee:me", Assignee("me")),
    ("assignee:none", Assignee("none")),
    ("assignee:Bob", Assignee("Bob")),
    ("status:Pending", Status("pending")),
    ('note:"call back"', Header("note", "call back")),
    # a word: that is not an operator is text
    ("Re: invoice", And((Text("Re:"), Text("invoice")))),
    ("https://example.com/x", Text("https://example.com/x")),
    ("ticket:42", Text("ticket:42")),
]


@pytest.mark.parametrize(("query", "tree"), TREES)
def test_it_parses_each_query_to_its_tree(query: str, tree: Node | None) -> None:
    assert parse(query) == tree


MALFORMED = [
    ("before:yesterdayish", "“before:yesterdayish” is not a date"),
    ("after:soon", "“after:soon” is not a date"),
    ("on:7d", "on: takes a day"),
    ("before:2026-02-30", "there is no such day"),
    ("is:sleepy", "“is:sleepy” is not a state"),
    ("has:dog", "has:attachment is"),
    ("larger:big", "“larger:big” is not a size"),
    ("smaller:5T", "“smaller:5T” is not a size"),
    ("status:done", "“status:done” is not a status"),
    ("from:", "“from:” needs a value"),
    ('"late payment', "is not closed"),
    ('subject:"late', "is not closed"),
    ("(a b", "“(” is not closed"),
    ("a b)", "“)” has no matching “(”"),
    ("()", "is empty"),
    ("OR a", "“OR” needs something on both sides"),
    ("a OR", "“OR” needs something on both sides"),
    ("a OR OR b", "“OR” needs something on both sides"),
    ("AND a", "“AND” needs something on both sides"),
    ("- a", "A “-” must be followed"),
]


@pytest.mark.parametrize(("query", "message"), MALFORMED)
def test_it_refuses_a_malformed_query_with_a_sentence(query: str, message: str) -> None:
    with pytest.raises(SearchSyntaxError) as refused:
        parse(query)
    assert message in str(refused.value)
    assert str(refused.value).endswith(".")
