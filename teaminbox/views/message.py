from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_POST

from mailsync.extract import extract_for_reader
from mailsync.models import Attachment, FlagChange, Mailbox, Message
from teaminbox import services
from teaminbox.htmlsafe import sanitize_email_html
from teaminbox.queries import get_attachment_for, get_mailbox_for, get_message_for
from teaminbox.services.access import Role, may
from teaminbox.views.types import AuthenticatedHttpRequest

# Served inline (e.g. cid: images); anything else is a download. No SVG: it can script.
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"}
BODY_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
REMOTE_IMAGES_CSP = BODY_CSP.replace("img-src 'self' data:", "img-src 'self' data: https: http:")


def _context(
    request: AuthenticatedHttpRequest, mailbox: Mailbox, message: Message
) -> dict[str, object]:
    return {
        "mailbox": mailbox,
        "message": message,
        "can_act": may(request.user, mailbox, Role.AGENT),  # which buttons to show
        "sending": message.flag_changes.filter(
            state__in=[FlagChange.State.PENDING, FlagChange.State.SENDING]
        ).exists(),
    }


@login_required
def message_page(request: AuthenticatedHttpRequest, mailbox: str, message_id: int) -> HttpResponse:
    box = get_mailbox_for(request.user, mailbox)
    message = get_message_for(request.user, box, message_id)
    # Listed before its text was extracted (a large first sync): extract it now rather
    # than show "being prepared" until the workers get to it.
    extract_for_reader(message)
    attachments = list(message.attachments.filter(inline=False))
    activities = message.activities.select_related("actor")[:50]
    context = _context(request, box, message)
    show_images = request.GET.get("images") == "1"
    blocked_images = 0
    if message.html_body and not show_images:
        blocked_images = sanitize_email_html(
            message.html_body, cid_urls={}, allow_remote_images=False
        ).blocked_remote_images
    context.update(
        {
            "attachments": attachments,
            "activities": activities,
            "show_images": show_images,
            "blocked_images": blocked_images,
        }
    )
    return render(request, "teaminbox/message.html", context)


@login_required
def message_body(request: AuthenticatedHttpRequest, mailbox: str, message_id: int) -> HttpResponse:
    """The sanitized HTML body, for the sandboxed iframe on the message page."""
    box = get_mailbox_for(request.user, mailbox)
    message = get_message_for(request.user, box, message_id)
    cid_urls = {
        a.content_id: reverse(
            "attachment",
            kwargs={"mailbox": box.name, "message_id": message.pk, "attachment_id": a.pk},
        )
        for a in message.attachments.exclude(content_id="")
    }
    show_images = request.GET.get("images") == "1"
    safe = sanitize_email_html(
        message.html_body, cid_urls=cid_urls, allow_remote_images=show_images
    )
    response = render(request, "teaminbox/message_body.html", {"html": safe.html})
    # Remote images only when a person asked for them; the CSP holds the line either way.
    response["Content-Security-Policy"] = REMOTE_IMAGES_CSP if show_images else BODY_CSP
    response["X-Frame-Options"] = "SAMEORIGIN"
    return response


@login_required
def attachment(
    request: AuthenticatedHttpRequest, mailbox: str, message_id: int, attachment_id: int
) -> HttpResponseBase:
    box = get_mailbox_for(request.user, mailbox)
    part: Attachment = get_attachment_for(request.user, box, attachment_id)
    if part.message_id != message_id:
        return redirect(
            "attachment", mailbox=box.name, message_id=part.message_id, attachment_id=part.pk
        )
    content_type = part.content_type if "/" in part.content_type else "application/octet-stream"
    inline = content_type in INLINE_TYPES
    response = StreamingHttpResponse(
        part.blob.iter_bytes(),
        content_type=content_type if inline else "application/octet-stream",
    )
    response["Content-Length"] = str(part.blob.size)
    response["Content-Disposition"] = content_disposition_header(
        as_attachment=not inline, filename=part.filename
    ) or ("inline" if inline else "attachment")
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_POST
def flag_action(request: AuthenticatedHttpRequest, mailbox: str, message_id: int) -> HttpResponse:
    box = get_mailbox_for(request.user, mailbox, role=Role.AGENT)
    message = get_message_for(request.user, box, message_id)
    action = request.POST.get("action", "")
    if action not in services.MESSAGE_ACTIONS:
        return HttpResponseBadRequest(
            "Unknown action: use read, unread, delete, undelete or purge.",
            content_type="text/plain",
        )
    try:
        services.act_on_message(message=message, action=action, actor=request.user)
    except services.ActionRefused as refused:
        if request.htmx:  # swapped in where the buttons were (base.html's responseHandling)
            sentence = {"exception": str(refused)}
            return render(request, "_partials/refused.html", sentence, status=409)
        messages.warning(request, str(refused))
    message.refresh_from_db()
    context = _context(request, box, message)
    if request.htmx:
        # the new state in place, and the history (out of band) with the new entry
        context["activities"] = message.activities.select_related("actor")[:50]
        context["oob"] = True
        actions = render_to_string("teaminbox/message.html#flag-actions", context, request)
        history = render_to_string("teaminbox/message.html#history", context, request)
        return HttpResponse(actions + history)
    return redirect("message", mailbox=box.name, message_id=message.pk)
