"""A strict Content-Security-Policy for every page that does not set its own.

Pages load only our own static files: no inline script or style (htmx's indicator style is
turned off by its config in base.html), no eval. The message body frame and attachments set
stricter policies of their own, which this middleware leaves alone. No page of ours is
framed except the body frame, so everything else also refuses to be framed.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest
from django.http.response import HttpResponseBase

POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "frame-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = POLICY
            # For browsers without CSP level 2; the body frame keeps SAMEORIGIN.
            response["X-Frame-Options"] = "DENY"
        return response
