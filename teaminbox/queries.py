"""Reads that views share: which mailboxes a person may see, and the inbox listing.

Every lookup that touches a mailbox goes through these helpers, so a non-member gets 404
(not 403: a stranger learns nothing about which mailboxes exist), and a member whose role
is below what the page needs gets ``AccessRefused`` (403), as healthchecks'
``_get_rw_check_for_user`` does; the rule itself is ``teaminbox.services.access``.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from mailsync.models import Attachment, Folder, Mailbox, Message
from teaminbox.models import OutgoingMessage
from teaminbox.services.access import Role, require_author, require_role

User = AbstractBaseUser | AnonymousUser


def mailboxes_for(user: User) -> QuerySet[Mailbox]:
    if not user.is_authenticated:
        return Mailbox.objects.none()
    if getattr(user, "is_superuser", False):
        return Mailbox.objects.all()
    return Mailbox.objects.filter(memberships__user_id=int(user.pk))


def get_mailbox_for(user: User, name: str, *, role: str = Role.VIEWER) -> Mailbox:
    """The mailbox, if ``user`` holds at least ``role`` in it: 404 for a non-member, 403
    (``AccessRefused``) for a member with a lower role."""
    mailbox = mailboxes_for(user).filter(name=name).first()
    if mailbox is None:
        raise Http404("No such mailbox")
    require_role(user, mailbox, role)
    return mailbox


def get_message_for(user: User, mailbox: Mailbox, message_id: int) -> Message:
    message = (
        Message.objects.select_related("folder", "conversation")
        .filter(pk=message_id, folder__mailbox=mailbox)
        .first()
    )
    if message is None:
        raise Http404("No such message")
    return message


def get_draft_for(user: User, mailbox: Mailbox, outgoing_id: int) -> OutgoingMessage:
    """Outgoing mail of this mailbox; a draft only for its author (403 for a colleague)."""
    outgoing = (
        OutgoingMessage.objects.select_related("mailbox", "in_reply_to", "author")
        .filter(pk=outgoing_id, mailbox=mailbox)
        .first()
    )
    if outgoing is None:
        raise Http404("No such draft")
    if outgoing.is_draft:
        require_author(user, outgoing)
    return outgoing


def get_outgoing_for(user: User, mailbox: Mailbox, outgoing_id: int) -> OutgoingMessage:
    """Mail this mailbox sent (or tried to): for its retry and "Save to Sent"."""
    outgoing = (
        OutgoingMessage.objects.select_related("mailbox", "in_reply_to", "author")
        .filter(pk=outgoing_id, mailbox=mailbox)
        .first()
    )
    if outgoing is None:
        raise Http404("No such message")
    return outgoing


def get_attachment_for(user: User, mailbox: Mailbox, attachment_id: int) -> Attachment:
    attachment = (
        Attachment.objects.select_related("message", "blob")
        .filter(pk=attachment_id, message__folder__mailbox=mailbox)
        .first()
    )
    if attachment is None:
        raise Http404("No such attachment")
    return attachment


def inbox_folder(mailbox: Mailbox, name: str | None = None) -> Folder | None:
    folders = mailbox.folders.all()
    if name:
        return folders.filter(name=name).first()
    return folders.filter(name="INBOX").first() or folders.order_by("name").first()


def inbox_messages(folder: Folder) -> QuerySet[Message]:
    if folder.uidvalidity is None:  # never synced
        return Message.objects.none()
    return (
        Message.objects.filter(
            folder=folder,
            uidvalidity=folder.uidvalidity,
            expunged_at__isnull=True,
            moving_to__isnull=True,  # deleted to Trash, the MOVE on its way
        )
        .order_by("-date", "-uid")
        .only(
            "id",
            "subject",
            "from_name",
            "from_address",
            "date",
            "seen",
            "flagged",
            "deleted",
            "answered",
            "has_attachments",
            "folder_id",
        )
    )
