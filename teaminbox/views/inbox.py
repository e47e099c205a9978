from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import PermissionsMixin
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render

from teaminbox.queries import get_mailbox_for, inbox_folder, inbox_messages, mailboxes_for
from teaminbox.views.types import AuthenticatedHttpRequest

PAGE_SIZE = 50


@login_required
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    mailboxes = list(mailboxes_for(request.user))
    if len(mailboxes) == 1:
        return redirect("inbox", mailbox=mailboxes[0].name)
    # Whoever may open the admin can add the first mailbox: tell them where, not to ask.
    user = request.user
    can_add_mailbox = isinstance(user, PermissionsMixin) and user.has_perm("mailsync.add_mailbox")
    return render(
        request,
        "teaminbox/home.html",
        {"mailboxes": mailboxes, "can_add_mailbox": can_add_mailbox},
    )


@login_required
def sync_status(request: AuthenticatedHttpRequest, mailbox: str) -> HttpResponse:
    """The sync status line, polled by the page while a sync runs."""
    box = get_mailbox_for(request.user, mailbox)
    response = render(request, "_partials/sync_status.html", {"mailbox": box})
    if box.sync_status != box.SyncStatus.SYNCING:
        response["HX-Trigger"] = "mailbox-synced"  # the list reloads once, at the end
    return response


@login_required
def inbox(request: AuthenticatedHttpRequest, mailbox: str) -> HttpResponse:
    box = get_mailbox_for(request.user, mailbox)
    folder = inbox_folder(box, request.GET.get("folder"))
    page = None
    if folder is not None and folder.uidvalidity is not None:
        paginator = Paginator(inbox_messages(folder), PAGE_SIZE)
        page = paginator.get_page(request.GET.get("page"))
    context = {
        "mailbox": box,
        "folder": folder,
        "folders": box.folders.filter(name__in=box.chosen_folder_names()).order_by("name"),
        "page": page,
    }
    template = "teaminbox/inbox.html"
    if request.htmx and request.htmx.target == "message-list":
        template += "#message-list"
    return render(request, template, context)
