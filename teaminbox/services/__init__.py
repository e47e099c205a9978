"""Every staff write with side effects: keyword-only functions, one transaction each, one
module per noun (``flags``, ``memberships``, ``outgoing``); ``access`` says who acts.

Views call these and never save domain models themselves. Work for the mail server is
enqueued on commit, so a rolled-back action never reaches the server, and the outbox row
written in the same transaction means a lost task only delays the change: the enqueue
never waits for a broker that is down (``mailsync.enqueue``), the outbox sweeper catches up.

The flag, conversation and membership services are re-exported here
(``from teaminbox.services import set_flag``). ``outgoing`` is not: it enqueues
``teaminbox.tasks``, whose worker side (``teaminbox.delivery``) uses the flag services,
so it is imported by its own name.
"""

from __future__ import annotations

from teaminbox.services.access import AccessRefused, Actor, actor_id_of
from teaminbox.services.conversations import (
    BULK_ACTIONS,
    add_note,
    assign_conversation,
    bulk_act,
    mark_conversation,
    open_conversation,
    set_conversation_status,
    snooze_conversation,
    wake_snoozed,
)
from teaminbox.services.flags import (
    MESSAGE_ACTIONS,
    ActionRefused,
    act_on_message,
    delete_message,
    purge_message,
    restore_message,
    set_flag,
    trash_folder,
)
from teaminbox.services.memberships import remove_membership, set_membership

__all__ = [
    "BULK_ACTIONS",
    "MESSAGE_ACTIONS",
    "AccessRefused",
    "ActionRefused",
    "Actor",
    "act_on_message",
    "actor_id_of",
    "add_note",
    "assign_conversation",
    "bulk_act",
    "delete_message",
    "mark_conversation",
    "open_conversation",
    "purge_message",
    "remove_membership",
    "restore_message",
    "set_conversation_status",
    "set_flag",
    "set_membership",
    "snooze_conversation",
    "trash_folder",
    "wake_snoozed",
]
