"""Mail already sent: "Save to Sent" for a copy the IMAP server did not take.

Only agents and admins act (a viewer gets 403, a non-member 404), as on the compose page.
Saving the copy never sends the mail again.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from teaminbox import delivery
from teaminbox.models import Membership, OutgoingMessage
from teaminbox.queries import get_mailbox_for, role_in
from teaminbox.views.types import HtmxHttpRequest


@login_required
@require_POST
def save_to_sent(request: HtmxHttpRequest, mailbox: str, outgoing_id: int) -> HttpResponse:
    """Try the copy in Sent now (the sweeper's backoff aside); answers with the replies
    region of the message page for htmx, else a flash and the message page."""
    box = get_mailbox_for(request.user, mailbox)
    if role_in(request.user, box) not in {Membership.Role.AGENT, Membership.Role.ADMIN}:
        return HttpResponse("Viewers cannot change mail sent from this mailbox.", status=403)
    outgoing = (
        OutgoingMessage.objects.select_related("in_reply_to")
        .filter(pk=outgoing_id, mailbox=box)
        .first()
    )
    if outgoing is None:
        raise Http404("No such message")

    attempt = delivery.save_sent_copy(outgoing.pk, actor=request.user)
    if attempt is None:
        outgoing.refresh_from_db()
        notice = (
            "The copy is already in Sent."
            if outgoing.sent_copy != OutgoingMessage.SentCopy.PENDING
            else "The copy is being saved right now; reload in a moment."
        )
    elif attempt.saved:
        notice = "Saved to Sent."
    else:
        notice = f"Still not saved to Sent: {attempt.error}"

    original = outgoing.in_reply_to
    if original is None:
        messages.info(request, notice)
        return redirect("inbox", mailbox=box.name)
    if request.htmx:
        context = {"mailbox": box, "message": original, "can_act": True, "reply_notice": notice}
        return render(request, "_partials/replies.html", context)
    messages.info(request, notice)
    return redirect("message", mailbox=box.name, message_id=original.pk)
