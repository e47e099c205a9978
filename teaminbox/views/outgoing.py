"""Mail already sent: "Save to Sent" for a copy the IMAP server did not take.

Only agents and admins act (a viewer gets 403, a non-member 404), as on the compose page;
the service checks it too. Saving the copy never sends the mail again.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from teaminbox.models import OutgoingMessage
from teaminbox.queries import get_mailbox_for, get_outgoing_for
from teaminbox.services import outgoing as outgoing_mail
from teaminbox.services.access import Role
from teaminbox.views.types import AuthenticatedHttpRequest


@login_required
@require_POST
def save_to_sent(request: AuthenticatedHttpRequest, mailbox: str, outgoing_id: int) -> HttpResponse:
    """Try the copy in Sent now (the sweeper's backoff aside); answers with the replies
    region of the message page for htmx, else a flash and the message page."""
    box = get_mailbox_for(request.user, mailbox, role=Role.AGENT)
    outgoing = get_outgoing_for(request.user, box, outgoing_id)

    attempt = outgoing_mail.save_to_sent(outgoing=outgoing, actor=request.user)
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
