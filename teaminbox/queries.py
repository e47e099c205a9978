"""Reads that views share: which mailboxes a person may see, and the inbox listing.

Every lookup that touches a mailbox goes through these helpers, so a non-member gets 404
(not 403: a stranger learns nothing about which mailboxes exist).
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from mailsync.models import Attachment, Folder, Mailbox, Message
from teaminbox.models import Membership

User = AbstractBaseUser | AnonymousUser


def mailboxes_for(user: User) -> QuerySet[Mailbox]:
    if not user.is_authenticated:
        return Mailbox.objects.none()
    if getattr(user, "is_superuser", False):
        return Mailbox.objects.all()
    return Mailbox.objects.filter(memberships__user_id=int(user.pk))


def role_in(user: User, mailbox: Mailbox) -> str | None:
    if getattr(user, "is_superuser", False):
        return Membership.Role.ADMIN
    if not user.is_authenticated:
        return None
    membership = Membership.objects.filter(user_id=int(user.pk), mailbox=mailbox).first()
    return membership.role if membership else None


def get_mailbox_for(user: User, name: str) -> Mailbox:
    mailbox = mailboxes_for(user).filter(name=name).first()
    if mailbox is None:
        raise Http404("No such mailbox")
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
