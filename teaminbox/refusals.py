"""A refused action (``AccessRefused`` from a service or an access helper) answered as 403
with its sentence: a small fragment for htmx, which the page swaps where the action's
result would have gone (``responseHandling`` in base.html), the 403 page otherwise."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from teaminbox.services.access import AccessRefused


class RefusalMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, AccessRefused):
            return None  # Django's handlers answer everything else
        htmx = getattr(request, "htmx", False)
        template = "_partials/refused.html" if htmx else "403.html"
        html = render_to_string(template, {"exception": str(exception)}, request)
        return HttpResponse(html, status=403)
