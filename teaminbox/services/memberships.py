"""Who may work in which shared mailbox: one service for the admin site and the commands."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from mailsync import changes
from mailsync.models import Activity, Mailbox
from teaminbox.models import Membership
from teaminbox.services.access import Actor, Role, actor_id_of, require_role


@transaction.atomic
def set_membership(
    *, user: AbstractBaseUser, mailbox: Mailbox, role: str, actor: Actor
) -> Membership:
    """Give ``user`` this role in the mailbox (a mailbox admin's act, or the command line's
    with ``actor`` None)."""
    if role not in Membership.Role.values:
        raise ValueError(f"unknown role {role!r}")
    require_role(actor, mailbox, Role.ADMIN)
    membership, created = Membership.objects.update_or_create(
        user=user, mailbox=mailbox, defaults={"role": role}
    )
    changes.record(
        mailbox=mailbox,
        actor=actor_id_of(actor),
        source=Activity.Source.APP if actor is not None else Activity.Source.SYSTEM,
        verb=Activity.Verb.MEMBER_ADDED if created else Activity.Verb.MEMBER_ROLE_CHANGED,
        detail={"user": user.get_username(), "role": role},
    )
    return membership


@transaction.atomic
def remove_membership(*, membership: Membership, actor: Actor) -> None:
    """Take ``membership``'s user off the mailbox (a mailbox admin's act)."""
    require_role(actor, membership.mailbox_id, Role.ADMIN)
    changes.record(
        mailbox=membership.mailbox_id,
        actor=actor_id_of(actor),
        source=Activity.Source.APP if actor is not None else Activity.Source.SYSTEM,
        verb=Activity.Verb.MEMBER_REMOVED,
        detail={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()
