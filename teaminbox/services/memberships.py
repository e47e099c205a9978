"""Who may work in which shared mailbox: one service for the admin site and the commands."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from mailsync.models import Activity, Mailbox
from teaminbox.models import Membership
from teaminbox.services.access import Actor, actor_id_of


@transaction.atomic
def set_membership(
    *, user: AbstractBaseUser, mailbox: Mailbox, role: str, actor: Actor
) -> Membership:
    if role not in Membership.Role.values:
        raise ValueError(f"unknown role {role!r}")
    membership, created = Membership.objects.update_or_create(
        user=user, mailbox=mailbox, defaults={"role": role}
    )
    Activity.objects.create(
        mailbox=mailbox,
        actor_id=actor_id_of(actor),
        source=Activity.Source.APP if actor is not None else Activity.Source.SYSTEM,
        verb="member_added" if created else "member_role_changed",
        detail={"user": user.get_username(), "role": role},
    )
    return membership
