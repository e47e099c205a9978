from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """What our views receive: django-htmx's middleware adds ``request.htmx``."""

    htmx: HtmxDetails
    user: AbstractBaseUser | AnonymousUser  # type: ignore[assignment]


class AuthenticatedHttpRequest(HtmxHttpRequest):
    """What a ``@login_required`` view receives (healthchecks' ``hc/accounts/http.py``):
    a signed-in user, so services get a person as their actor."""

    user: AbstractBaseUser
