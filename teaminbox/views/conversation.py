"""A conversation: its messages in order, and its history. The full page comes with
issue 12; this one already answers the URL a conversation keeps for good."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render

from mailsync.conversations import resolve
from mailsync.models import Activity, Conversation
from teaminbox.queries import get_mailbox_for
from teaminbox.views.types import HtmxHttpRequest


@login_required
def conversation_page(request: HtmxHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    box = get_mailbox_for(request.user, mailbox)
    conversation = Conversation.objects.filter(pk=conversation_id, mailbox=box).first()
    if conversation is None:
        raise Http404("No such conversation")
    if conversation.merged_into_id is not None:  # a later message showed it is part of another
        survivor = resolve(conversation)
        return redirect("conversation", mailbox=box.name, conversation_id=survivor.pk)
    thread = (
        conversation.messages.filter(expunged_at__isnull=True)
        .select_related("folder")
        .order_by("date", "pk")
    )
    activities = Activity.objects.filter(
        Q(conversation=conversation) | Q(message__conversation=conversation)
    ).select_related("actor")[:50]
    return render(
        request,
        "teaminbox/conversation.html",
        {"mailbox": box, "conversation": conversation, "thread": thread, "activities": activities},
    )
