"""Who is acting: the actor every service takes, and the id its history rows keep."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

# None is the system itself (a worker, the command line): no person to check or name.
Actor = AbstractBaseUser | AnonymousUser | None


def actor_id_of(actor: Actor) -> int | None:
    if actor is None or not actor.is_authenticated:
        return None
    return int(actor.pk)
