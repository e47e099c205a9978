"""Sign-in throttling: a lock per (account, address), a slow-down per account, both logins."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from teaminbox import throttle
from tests.support.personas import PASSWORD

pytestmark = pytest.mark.django_db

LOCKED = "Too many failed sign-ins from this address for this account. Try again in 15 minutes"
SLOWED = "Too many failed sign-ins for this account. Try again in"
ATTACKER = "198.51.100.66"
OWNER = "192.0.2.10"


@pytest.fixture(autouse=True)
def fresh_throttle():
    # The slow-down lives in the cache (Redis or files), which outlives a test's transaction.
    cache.clear()
    yield
    cache.clear()


def sign_in(address, password, *, username="alice", path="/login/", **headers):
    client = Client(REMOTE_ADDR=address, **headers)
    response = client.post(path, {"username": username, "password": password})
    return client, response


def signed_in(client):
    return "_auth_user_id" in client.session


def guess(address, times, *, username="alice", path="/login/", **headers):
    responses = [
        sign_in(address, f"wrong-{i}", username=username, path=path, **headers)[1]
        for i in range(times)
    ]
    return responses[-1]


def test_it_locks_an_account_and_address_after_five_wrong_passwords(alice):
    for _ in range(4):
        assert guess(ATTACKER, 1).status_code == 200  # the form again, nothing locked yet

    fifth = guess(ATTACKER, 1)
    assert fifth.status_code == 429
    assert LOCKED in fifth.content.decode()
    assert "ask an administrator to unlock it" in fifth.content.decode()

    client, response = sign_in(ATTACKER, PASSWORD)
    assert not signed_in(client)
    assert LOCKED in response.content.decode()


def test_another_address_still_signs_in_to_an_account_locked_elsewhere(alice):
    guess(ATTACKER, 5)
    attacker, _ = sign_in(ATTACKER, PASSWORD)
    assert not signed_in(attacker)

    client, response = sign_in(OWNER, PASSWORD)

    assert response.status_code == 302
    assert signed_in(client)


def test_it_slows_an_account_guessed_at_from_many_addresses_but_never_locks_it(alice, monkeypatch):
    guess("198.51.100.1", 5)
    guess("198.51.100.2", 5)  # ten wrong passwords for alice, from two addresses

    now = throttle._clock()
    monkeypatch.setattr(throttle, "_clock", lambda: now)
    for _ in range(10):  # refused unchecked while the account waits: not counted
        client, response = sign_in(OWNER, PASSWORD)
        assert not signed_in(client)
        assert f"{SLOWED} 1 second." in response.content.decode()

    monkeypatch.setattr(throttle, "_clock", lambda: now + 1)
    client, response = sign_in(OWNER, PASSWORD)
    assert signed_in(client)


def test_the_wait_grows_with_each_further_wrong_password(alice, monkeypatch):
    guess("198.51.100.1", 5)
    guess("198.51.100.2", 5)
    now = throttle._clock()
    for step, wait in enumerate([2, 4, 8], start=1):
        monkeypatch.setattr(throttle, "_clock", lambda step=step: now + 100 * step)
        guess(f"198.51.100.{10 + step}", 1)
        _, response = sign_in(OWNER, PASSWORD)
        assert f"{SLOWED} {wait} seconds." in response.content.decode()


def test_it_ignores_x_forwarded_for_from_an_address_that_is_not_our_proxy(alice):
    for i in range(5):  # a different forged client address each time
        guess(ATTACKER, 1, HTTP_X_FORWARDED_FOR=f"10.0.0.{i}")

    client, response = sign_in(ATTACKER, PASSWORD, HTTP_X_FORWARDED_FOR="10.0.0.99")
    assert not signed_in(client)
    assert LOCKED in response.content.decode()
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


def test_it_reads_the_client_from_x_forwarded_for_set_by_our_proxy(alice, settings):
    settings.TRUSTED_PROXIES = ["172.18.0.0/16"]
    proxy = "172.18.0.2"
    # The client may send its own X-Forwarded-For; our proxy appends the real address.
    for i in range(5):
        guess(proxy, 1, HTTP_X_FORWARDED_FOR=f"10.0.0.{i}, {ATTACKER}")

    client, response = sign_in(proxy, PASSWORD, HTTP_X_FORWARDED_FOR=ATTACKER)
    assert not signed_in(client)
    assert LOCKED in response.content.decode()
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}

    client, _ = sign_in(proxy, PASSWORD, HTTP_X_FORWARDED_FOR=OWNER)
    assert signed_in(client)


def test_an_administrator_unlocks_an_account_in_the_admin(alice):
    guess(ATTACKER, 5)
    root = User.objects.create_superuser("root", "root@example.test", PASSWORD)
    admin = Client()
    admin.force_login(root)
    attempts = admin.get(reverse("admin:axes_accessattempt_changelist"))
    assert "alice" in attempts.content.decode()

    admin.post(
        reverse("admin:axes_accessattempt_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": list(AccessAttempt.objects.values_list("pk", flat=True)),
            "post": "yes",
        },
    )

    client, _ = sign_in(ATTACKER, PASSWORD)
    assert signed_in(client)


def test_an_administrator_unlocks_an_account_from_the_command_line(alice):
    guess(ATTACKER, 5)

    call_command("axes_reset_username", "alice", verbosity=0)

    client, _ = sign_in(ATTACKER, PASSWORD)
    assert signed_in(client)


def test_the_admin_login_is_throttled_too(db):
    User.objects.create_superuser("root", "root@example.test", PASSWORD)
    admin_login = reverse("admin:login")

    fifth = guess(ATTACKER, 5, username="root", path=admin_login)
    assert fifth.status_code == 429

    client, response = sign_in(ATTACKER, PASSWORD, username="root", path=admin_login)
    assert not signed_in(client)
    assert LOCKED in response.content.decode()

    client, _ = sign_in(OWNER, PASSWORD, username="root", path=admin_login)
    assert signed_in(client)


def test_a_right_password_starts_the_count_for_its_address_again(alice):
    guess(OWNER, 4)
    client, _ = sign_in(OWNER, PASSWORD)
    assert signed_in(client)

    assert guess(OWNER, 4).status_code == 200
    assert guess(OWNER, 1).status_code == 429


def test_the_lock_says_how_long_it_still_holds_and_then_lifts(alice):
    guess(ATTACKER, 5)
    attempts = AccessAttempt.objects.filter(username="alice", ip_address=ATTACKER)

    attempts.update(attempt_time=timezone.now() - timedelta(minutes=10, seconds=30))
    client, response = sign_in(ATTACKER, PASSWORD)
    assert not signed_in(client)
    assert "Try again in 5 minutes, or ask an administrator" in response.content.decode()

    attempts.update(attempt_time=timezone.now() - timedelta(minutes=16))
    client, _ = sign_in(ATTACKER, PASSWORD)
    assert signed_in(client)
