"""The search page: /m/<mailbox>/search?q=... (issue 15)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode

from mailsync.engine.mime import html_to_text
from mailsync.models import Message
from teaminbox.queries import get_mailbox_for
from teaminbox.search import SearchPage, SearchSyntaxError, search_messages, terms_of
from teaminbox.search_highlight import highlight, snippet
from teaminbox.views.types import AuthenticatedHttpRequest

PAGE_SIZE = 50


@login_required
def search(request: AuthenticatedHttpRequest, mailbox: str) -> HttpResponse:
    box = get_mailbox_for(request.user, mailbox)
    query = request.GET.get("q", "")
    after = request.GET.get("after") or None
    error = ""
    page: SearchPage | None = None
    if query.strip() or after:
        try:
            page = search_messages(
                user=request.user, mailbox=box, query=query, after=after, limit=PAGE_SIZE
            )
        except SearchSyntaxError as refused:
            error = str(refused)
    terms = terms_of(query)
    results = [
        {
            "message": m,
            "subject": highlight(m.subject or "(no subject)", terms),
            "snippet": snippet(_text_of(m), terms),
        }
        for m in (page.messages if page else [])
    ]
    more = (
        f"?{urlencode({'q': query, 'after': page.next_cursor})}"
        if page and page.next_cursor
        else ""
    )
    status = 400 if error else 200
    context = {"mailbox": box, "query": query, "error": error, "page": page, "results": results}
    return render(request, "teaminbox/search.html", {**context, "more": more}, status=status)


def _text_of(message: Message) -> str:
    if message.text_body:
        return message.text_body[:20_000]
    return html_to_text(message.html_body[:100_000]) if message.html_body else ""
