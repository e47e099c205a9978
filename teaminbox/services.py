"""Every staff write with side effects: keyword-only functions, one transaction each.

Views call these and never save domain models themselves. Work for the mail server is
enqueued on commit, so a rolled-back action never reaches the server, and the outbox row
written in the same transaction means a lost task only delays the change.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction

from mailsync.engine.flags import DELETED, SEEN, SYSTEM_FLAGS
from mailsync.models import Activity, FlagChange, Mailbox, Message
from teaminbox.models import Membership

Actor = AbstractBaseUser | AnonymousUser | None

# staff action -> (IMAP flag, on)
FLAG_ACTIONS: dict[str, tuple[str, bool]] = {
    "read": (SEEN, True),
    "unread": (SEEN, False),
    "delete": (DELETED, True),
    "undelete": (DELETED, False),
}


def _actor_id(actor: Actor) -> int | None:
    if actor is None or not actor.is_authenticated:
        return None
    return int(actor.pk)


@transaction.atomic
def set_flag(*, message: Message, flag: str, on: bool, actor: Actor) -> FlagChange | None:
    """Set or clear one flag as a person: local state now, the server soon.

    Returns None when the message already has that state (nothing to send).
    """
    if flag not in SYSTEM_FLAGS and (not flag or " " in flag or "\\" in flag):
        raise ValueError(f"not a flag we can set: {flag!r}")
    message = Message.objects.select_for_update().select_related("folder").get(pk=message.pk)
    if message.has_flag(flag) == on:
        return None
    field = Message.FLAG_FIELDS.get(flag)
    if field is not None:
        setattr(message, field, on)
        message.save(update_fields=[field])
    else:
        keywords = set(message.keywords)
        (keywords.add if on else keywords.discard)(flag)
        message.keywords = sorted(keywords)
        message.save(update_fields=["keywords"])
    change = FlagChange.objects.create(
        message=message,
        folder=message.folder,
        uidvalidity=message.uidvalidity,
        uid=message.uid,
        flag=flag,
        add=on,
        actor_id=_actor_id(actor),
    )
    Activity.objects.create(
        mailbox_id=message.folder.mailbox_id,
        message=message,
        actor_id=_actor_id(actor),
        source=Activity.Source.APP,
        verb="flag_added" if on else "flag_removed",
        detail={"flag": flag},
    )
    folder_id = message.folder_id
    transaction.on_commit(lambda: _enqueue_push(folder_id))
    return change


def _enqueue_push(folder_id: int) -> None:
    from mailsync.tasks import push_flag_changes

    try:
        push_flag_changes.delay(folder_id)
    except Exception:
        import logging

        logging.getLogger(__name__).warning(
            "could not enqueue the push for folder %s; the outbox sweeper will", folder_id
        )


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
        actor_id=_actor_id(actor),
        source=Activity.Source.APP if actor is not None else Activity.Source.SYSTEM,
        verb="member_added" if created else "member_role_changed",
        detail={"user": user.get_username(), "role": role},
    )
    return membership
