"""Who is acting, and what their role in a mailbox lets them do: the one copy of the rule.

Every service checks its actor here (``require_role``, ``require_author``), so a second
caller (an API view, a command) cannot skip a rule; the views' access helpers in
``teaminbox.queries`` ask the same functions. A refusal is ``AccessRefused``, a
``PermissionDenied``: a view answers 403 with its sentence (``teaminbox.refusals``).

Roles rank viewer < agent < mailbox admin; a superuser counts as a mailbox admin of every
mailbox. ``None`` as the actor is the system itself (a worker, the command line), which
acts for a person already checked or for the install's operator.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied

from mailsync.models import Mailbox
from teaminbox.models import Membership, OutgoingMessage

Actor = AbstractBaseUser | AnonymousUser | None
Role = Membership.Role

RANK = {Role.VIEWER: 1, Role.AGENT: 2, Role.ADMIN: 3}
REFUSALS = {
    Role.VIEWER: "You are not a member of this mailbox.",
    Role.AGENT: "Viewers cannot change anything in this mailbox; a mailbox admin can make "
    "you an agent.",
    Role.ADMIN: "Only a mailbox admin can do this.",
}


class AccessRefused(PermissionDenied):
    """The actor may not do this; str() is the sentence to show them."""


def actor_id_of(actor: Actor) -> int | None:
    if actor is None or not actor.is_authenticated:
        return None
    return int(actor.pk)


def role_in(user: AbstractBaseUser | AnonymousUser, mailbox: Mailbox) -> str | None:
    """The user's role in the mailbox, None for an outsider."""
    if not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    membership = Membership.objects.filter(user_id=int(user.pk), mailbox=mailbox).first()
    return membership.role if membership else None


def may(user: AbstractBaseUser | AnonymousUser, mailbox: Mailbox, role: str) -> bool:
    """Whether ``user`` has at least ``role`` in the mailbox (for showing buttons)."""
    held = role_in(user, mailbox)
    return held is not None and RANK[Role(held)] >= RANK[Role(role)]


def require_role(actor: Actor, mailbox: Mailbox | int, role: str) -> None:
    """Raise ``AccessRefused`` unless the actor has at least ``role`` in the mailbox."""
    if actor is None:
        return
    if isinstance(mailbox, int):
        mailbox = Mailbox.objects.get(pk=mailbox)
    if not may(actor, mailbox, role):
        needed = Role.VIEWER if role_in(actor, mailbox) is None else Role(role)
        raise AccessRefused(REFUSALS[needed])


def require_author(actor: Actor, draft: OutgoingMessage) -> None:
    """A draft is its author's alone: colleagues never overwrite each other's autosaves."""
    require_role(actor, draft.mailbox_id, Role.AGENT)
    if actor is not None and draft.author_id != actor_id_of(actor):
        raise AccessRefused("This draft belongs to a colleague.")
