"""Sign-in throttling: a lock per (account, client address), a slow-down per account.

django-axes keeps the lock: after ``AXES_FAILURE_LIMIT`` wrong passwords for one account
from one address, that pair is refused until ``AXES_COOLOFF_TIME`` passes or an
administrator deletes its row under "Access attempts" in the admin (or runs
``manage.py axes_reset_username``). Other addresses are never locked by it, so an outsider
who guesses at an account cannot lock its owner out.

Guessing from many addresses is met by a slow-down kept in the cache: after
``LOGIN_SLOWDOWN_AFTER`` wrong passwords for an account from any address, each further
wrong password makes the account wait a little longer (doubling, at most
``LOGIN_SLOWDOWN_MAX_SECONDS``) before the next password is checked. Attempts refused
while waiting are not checked and not counted, so the wait never grows into a lock.

Both login pages (ours and the admin's) use the forms below, which check before any
password is; ``LoginThrottleBackend`` holds the lock for any other caller of
``authenticate()`` that passes a request.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from datetime import timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.proxy import AxesProxyHandler
from axes.models import AccessAttempt
from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

_SLOWDOWN_PREFIX = "login-slowdown"


def _clock() -> float:
    """The time the slow-down reads; tests turn it instead of sleeping."""
    return time.time()


# --- the client's address ------------------------------------------------------------------


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted_proxies() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(proxy, strict=False) for proxy in settings.TRUSTED_PROXIES]


def client_ip(request: HttpRequest) -> str | None:
    """The address a sign-in comes from (``AXES_CLIENT_IP_CALLABLE``).

    ``REMOTE_ADDR``, unless it is one of ``TRUSTED_PROXIES``: then X-Forwarded-For is read
    from the right, past our own proxies, and the first address they did not add is the
    client's. Anything left of it was written by the client and could be forged.
    """
    remote = request.META.get("REMOTE_ADDR", "")
    remote_ip = _parse_ip(remote)
    if remote_ip is None:
        return remote or None
    proxies = _trusted_proxies()

    def trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in network for network in proxies)

    if not trusted(remote_ip):
        return str(remote_ip)
    hops = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    for hop in reversed(hops):
        hop_ip = _parse_ip(hop)
        if hop_ip is None:
            # Our proxy writes well-formed addresses; a malformed one is not to be trusted,
            # nor anything left of it.
            break
        if not trusted(hop_ip):
            return str(hop_ip)
    return str(remote_ip)


# --- the per-account slow-down ---------------------------------------------------------------


def _slowdown_keys(username: str) -> tuple[str, str]:
    # Hashed: a user name may hold characters that memcached-style keys refuse.
    digest = hashlib.sha256(username.encode()).hexdigest()
    return f"{_SLOWDOWN_PREFIX}:failures:{digest}", f"{_SLOWDOWN_PREFIX}:until:{digest}"


def slowdown_seconds(username: str) -> int:
    """Seconds this account must still wait before its next password is checked."""
    _, until_key = _slowdown_keys(username)
    until = cache.get(until_key)
    if until is None:
        return 0
    return max(0, math.ceil(float(until) - _clock()))


def record_failure(username: str) -> None:
    """Count a wrong password for the account, from whichever address."""
    failures_key, until_key = _slowdown_keys(username)
    window = settings.LOGIN_SLOWDOWN_WINDOW_SECONDS
    cache.add(failures_key, 0, timeout=window)
    try:
        failures = cache.incr(failures_key)
    except ValueError:  # expired between add() and incr()
        cache.set(failures_key, 1, timeout=window)
        failures = 1
    # incr() keeps (Redis) or resets to the default (file cache) the expiry: renew it.
    cache.touch(failures_key, window)
    beyond = failures - settings.LOGIN_SLOWDOWN_AFTER
    if beyond >= 0:
        delay = min(2**beyond, settings.LOGIN_SLOWDOWN_MAX_SECONDS)
        cache.set(until_key, _clock() + delay, timeout=delay + 1)


def forget_failures(username: str) -> None:
    cache.delete_many(list(_slowdown_keys(username)))


# --- messages and forms ----------------------------------------------------------------------


def _minutes(cooloff: timedelta) -> str:
    minutes = max(1, math.ceil(cooloff.total_seconds() / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def lockout_message(remaining: timedelta | None = None) -> str:
    return (
        "Too many failed sign-ins from this address for this account. "
        f"Try again in {_minutes(remaining or settings.AXES_COOLOFF_TIME)}, "
        "or ask an administrator to unlock it."
    )


def _lock_remaining(request: HttpRequest, username: str) -> timedelta | None:
    """How long the (account, address) lock still holds: from its latest wrong password."""
    latest = AccessAttempt.objects.filter(
        username=username, ip_address=getattr(request, "axes_ip_address", None)
    ).aggregate(latest=Max("attempt_time"))["latest"]
    if latest is None:
        return None
    remaining: timedelta = latest + settings.AXES_COOLOFF_TIME - timezone.now()
    return remaining if remaining > timedelta(0) else None


def slowdown_message(seconds: int) -> str:
    return (
        "Too many failed sign-ins for this account. "
        f"Try again in {seconds} second{'s' if seconds != 1 else ''}."
    )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any
) -> HttpResponse:
    """What the wrong password that reaches the limit gets (``AXES_LOCKOUT_CALLABLE``)."""
    return render(
        request,
        "registration/locked_out.html",
        {"message": lockout_message(), "login_path": request.get_full_path()},
        status=429,
    )


class _ThrottledLogin(AuthenticationForm):
    """Refuses before the password is checked; counts wrong passwords for the account."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        if username and self.request is not None:
            if not AxesProxyHandler.is_allowed(self.request, {"username": username}):
                remaining = _lock_remaining(self.request, username)
                raise forms.ValidationError(lockout_message(remaining), code="locked_out")
            wait = slowdown_seconds(username)
            if wait:
                raise forms.ValidationError(slowdown_message(wait), code="slowed_down")
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            # A right password refused for another reason (an inactive or non-staff
            # account) is not a guess.
            if username and self.get_user() is None:
                record_failure(username)
            raise
        if username:
            forget_failures(username)
        return cleaned


class LoginForm(_ThrottledLogin):
    pass


class AdminLoginForm(_ThrottledLogin, AdminAuthenticationForm):
    pass


class LoginThrottleBackend(AxesStandaloneBackend):  # type: ignore[misc]  # axes is untyped
    """axes' lock for every ``authenticate()`` given a request.

    Without a request (``Client.login()`` in tests, the shell) there is no address to
    throttle; axes would raise, so this backend steps aside instead.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        super().authenticate(request, username, password, **kwargs)
        return None
