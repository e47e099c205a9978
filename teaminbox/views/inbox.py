from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import PermissionsMixin
from django.core.paginator import Paginator
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_POST
from django_htmx.http import reswap, retarget, trigger_client_event

from mailsync.models import Conversation, Mailbox
from teaminbox.conversation_queries import (
    DEFAULT_VIEW,
    FOLDER_PREFIX,
    VIEW_LABELS,
    VIEWS,
    BadListRequest,
    folder_of_view,
    in_view,
    list_conversations,
    list_rows,
    view_counts,
)
from teaminbox.queries import get_mailbox_for, inbox_folder, inbox_messages, mailboxes_for
from teaminbox.services import ActionRefused
from teaminbox.services import conversations as workflow
from teaminbox.services.access import Role, may
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
    """The conversation list of a view (``?view=``, a team view or ``folder:<name>``) in
    the chosen order (``?sort=newest|waiting``), a page at a time by keyset (``?after=``).
    The old per-message list of a folder stays at ``?folder=<name>``."""
    box = get_mailbox_for(request.user, mailbox)
    if "folder" in request.GET:
        return _message_list(request, box)
    view = request.GET.get("view") or DEFAULT_VIEW
    sort = request.GET.get("sort") or "newest"
    try:
        context = _list_context(request, box, view, sort, request.GET.get("after"))
    except BadListRequest as bad:
        return HttpResponseBadRequest(str(bad), content_type="text/plain")
    template = "teaminbox/inbox.html"
    if request.htmx and request.htmx.target == "conversation-list":
        template += "#conversation-list"
        context["oob"] = True  # the sidebar's counts come along (after a sync, a page turn)
    return render(request, template, context)


def _list_context(
    request: AuthenticatedHttpRequest, box: Mailbox, view: str, sort: str, after: str | None
) -> dict[str, Any]:
    rows, next_cursor = list_conversations(
        mailbox=box, user=request.user, view=view, sort=sort, after=after
    )
    folder = folder_of_view(box, view)
    now = timezone.now()
    url_prefix = reverse("inbox", kwargs={"mailbox": box.name})
    return {
        **_sidebar(request, box, view),
        "folder": folder,
        "view_label": VIEW_LABELS.get(view, folder.name if folder else view),
        "sort": sort,
        "rows": list_rows(rows, url_prefix=url_prefix, now=now),
        "next_cursor": next_cursor,
        "first_page": not after,
        "can_act": may(request.user, box, Role.AGENT),
        "teammates": _teammates(box),
        "now": now,
    }


BULK_ACTIONS = ("read", "unread", "assign", "status", "delete")
BULK_DONE = {
    "read": "Marked {n} read.",
    "unread": "Marked {n} unread.",
    "status:open": "Reopened {n}.",
    "status:pending": "Set {n} to pending.",
    "status:closed": "Closed {n}.",
    "delete": "Deleted {n}.",
}


@login_required
@require_POST
def bulk(request: AuthenticatedHttpRequest, mailbox: str) -> HttpResponse:
    """One action on the selected conversations (the ``c`` checkboxes), or on every
    conversation of the view (``all_in_view``): read, unread, assign (``assignee``: me,
    a teammate's id, or empty for nobody), ``status:<open|pending|closed>``, delete.
    A viewer is refused (403) here, not only by the missing checkboxes."""
    box = get_mailbox_for(request.user, mailbox, role=Role.AGENT)
    view = request.POST.get("view") or DEFAULT_VIEW
    sort = request.POST.get("sort") or "newest"
    action, _, status = request.POST.get("action", "").partition(":")
    try:
        if action not in BULK_ACTIONS:
            raise BadListRequest("Unknown action: use read, unread, assign, status or delete.")
        if action == "status" and status not in Conversation.Status.values:
            raise BadListRequest("Unknown status: use open, pending or closed.")
        assignee = _assignee(request, box) if action == "assign" else None
        if request.POST.get("all_in_view"):
            ids = list(in_view(box, user=request.user, view=view).values_list("id", flat=True))
        else:
            ids = [int(value) for value in request.POST.getlist("c")]
    except (BadListRequest, ValueError) as bad:
        sentence = str(bad) if isinstance(bad, BadListRequest) else "Bad conversation id."
        return HttpResponseBadRequest(sentence, content_type="text/plain")
    undo: dict[str, Any] | None = None
    if not ids:
        sentence = "Select at least one conversation first."
    else:
        undo = _undo(box, action, ids, view, sort)
        try:
            done = workflow.bulk_act(
                conversation_ids=ids,
                mailbox=box,
                action=action,
                actor=request.user,
                assignee=assignee,
                status=status or None,
            )
        except ActionRefused as refused:
            return HttpResponseBadRequest(str(refused), content_type="text/plain")
        n = f"{done} conversation" if done == 1 else f"{done} conversations"
        if action == "assign":
            whom = "you" if assignee == request.user else assignee and assignee.get_username()
            sentence = f"Assigned {n} to {whom}." if whom else f"Unassigned {n}."
        else:
            sentence = BULK_DONE[f"{action}:{status}" if status else action].format(n=n)
    if not request.htmx:
        messages.info(request, sentence)
        query = urlencode({"view": view, "sort": sort})
        return redirect(f"{reverse('inbox', kwargs={'mailbox': box.name})}?{query}")
    try:
        context = {**_list_context(request, box, view, sort, None), "oob": True}
    except BadListRequest as bad:
        return HttpResponseBadRequest(str(bad), content_type="text/plain")
    response = render(request, "teaminbox/inbox.html#conversation-list", context)
    # The toast's Undo posts here without a target of its own: its answer lands in the list.
    retarget(response, "#conversation-list")
    reswap(response, "innerHTML")
    toast: dict[str, Any] = {"message": sentence}
    if undo is not None:
        toast["undo"] = undo
    # after the settle: the toast (and a keyboard user's next key) meets the redrawn list
    return trigger_client_event(response, "toast", toast, after="settle")


UNDO_LIMIT = 1000  # ids carried by the toast's Undo; a bigger selection gets no Undo


def _undo(box: Mailbox, action: str, ids: list[int], view: str, sort: str) -> dict[str, Any] | None:
    """The bulk action that puts the selection back, when one does: read <-> unread, and a
    status or assignee the whole selection shared before (else no Undo is offered)."""
    if len(ids) > UNDO_LIMIT or action == "delete":
        return None
    values: dict[str, Any] = {
        "url": reverse("bulk", kwargs={"mailbox": box.name}),
        "view": view,
        "sort": sort,
        "c": ids,
    }
    if action in ("read", "unread"):
        return {**values, "action": "unread" if action == "read" else "read"}
    before = Conversation.objects.filter(mailbox=box, pk__in=ids)
    if action == "status":
        statuses = set(before.values_list("status", flat=True))
        return {**values, "action": f"status:{statuses.pop()}"} if len(statuses) == 1 else None
    assignees = set(before.values_list("assignee_id", flat=True))
    if len(assignees) != 1:
        return None
    previous = assignees.pop()
    return {**values, "action": "assign", "assignee": "" if previous is None else str(previous)}


def _assignee(request: AuthenticatedHttpRequest, box: Mailbox) -> Any:
    """Whom the bulk form names: "me", a teammate's id, or "" for nobody."""
    value = request.POST.get("assignee", "")
    if value == "me":
        return request.user
    if value == "":
        return None
    teammate = next((u for u in _teammates(box) if str(u.pk) == value), None)
    if teammate is None:
        raise BadListRequest("Conversations can only be assigned to an agent of this mailbox.")
    return teammate


def _sidebar(request: AuthenticatedHttpRequest, box: Mailbox, view: str) -> dict[str, Any]:
    counts = view_counts(mailbox=box, user=request.user)
    return {
        "mailbox": box,
        "view": view,
        "views": [(name, VIEW_LABELS[name], counts[name]) for name in VIEWS],
        "folders": box.folders.filter(name__in=box.chosen_folder_names()).order_by("name"),
    }


def _teammates(box: Mailbox) -> list[Any]:
    """Who a conversation can be assigned to: the mailbox's agents and admins."""
    user_model = get_user_model()
    return list(
        user_model.objects.filter(
            memberships__mailbox=box, memberships__role__in=[Role.AGENT, Role.ADMIN]
        ).order_by("username")
    )


def _message_list(request: AuthenticatedHttpRequest, box: Mailbox) -> HttpResponse:
    """The per-message list of one folder (the list before conversations; kept for the
    folder links people saved)."""
    folder = inbox_folder(box, request.GET.get("folder"))
    page = None
    if folder is not None and folder.uidvalidity is not None:
        paginator = Paginator(inbox_messages(folder), PAGE_SIZE)
        page = paginator.get_page(request.GET.get("page"))
    context = {
        **_sidebar(request, box, f"{FOLDER_PREFIX}{folder.name}" if folder else ""),
        "folder": folder,
        "page": page,
        "message_list": True,
    }
    template = "teaminbox/inbox.html"
    if request.htmx and request.htmx.target == "message-list":
        template += "#message-list"
    return render(request, template, context)
