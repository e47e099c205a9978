"""Reply, reply all, forward: the compose page, its autosave, and retrying a failed send.

Only agents and admins write mail (a viewer gets 403, a non-member 404); a draft belongs to
its author, so two colleagues never overwrite each other's autosaves. The rules are the
services' (``teaminbox.services.access``); these views only ask for the role they need.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from mailsync.models import Mailbox
from teaminbox.models import OutgoingMessage
from teaminbox.queries import get_draft_for, get_mailbox_for, get_message_for, get_outgoing_for
from teaminbox.services import outgoing as outgoing_mail
from teaminbox.services.access import Role
from teaminbox.services.outgoing import NotADraft, ReplyInvalid
from teaminbox.views.types import AuthenticatedHttpRequest

REPLY_KINDS = {
    OutgoingMessage.Kind.REPLY,
    OutgoingMessage.Kind.REPLY_ALL,
    OutgoingMessage.Kind.FORWARD,
}

# the value of the send button pressed -> what the message says after "Reply queued"
THEN_STATUSES = {
    "pending": "; the conversation is pending",
    "closed": "; the conversation is closed",
}


class ComposeForm(forms.Form):
    """Holds what was typed; the checks that matter (header injection, addresses) are the
    service's, so a script posting straight to the endpoint meets them too."""

    to = forms.CharField(required=False, strip=False, widget=forms.TextInput)
    cc = forms.CharField(required=False, strip=False, widget=forms.TextInput)
    bcc = forms.CharField(required=False, strip=False, widget=forms.TextInput)
    subject = forms.CharField(required=False, strip=False, widget=forms.TextInput)
    body_text = forms.CharField(required=False, strip=False, widget=forms.Textarea)
    # The "Remove" button beside an attachment; ids are BigAutoField keys.
    remove_attachment = forms.IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, widget=forms.HiddenInput
    )

    def values(self) -> dict[str, str]:
        return {
            name: str(self.cleaned_data.get(name) or "") for name in outgoing_mail.EDITABLE_FIELDS
        }


def _back_to(outgoing: OutgoingMessage) -> HttpResponseRedirect:
    """The message answered (its history shows the reply), else the inbox."""
    if outgoing.in_reply_to_id is not None:
        return redirect(
            "message", mailbox=outgoing.mailbox.name, message_id=outgoing.in_reply_to_id
        )
    return redirect("inbox", mailbox=outgoing.mailbox.name)


@login_required
def reply(request: AuthenticatedHttpRequest, mailbox: str, message_id: int) -> HttpResponse:
    """Open (or continue) the person's draft answering this message, then edit it."""
    box = get_mailbox_for(request.user, mailbox, role=Role.AGENT)
    message = get_message_for(request.user, box, message_id)
    kind = request.GET.get("kind", OutgoingMessage.Kind.REPLY)
    if kind not in REPLY_KINDS:
        return HttpResponseBadRequest(
            "Unknown kind: use reply, reply_all or forward.", content_type="text/plain"
        )
    draft = outgoing_mail.open_reply(message=message, kind=kind, actor=request.user)
    return redirect("compose", mailbox=box.name, outgoing_id=draft.pk)


@login_required
def compose(request: AuthenticatedHttpRequest, mailbox: str, outgoing_id: int) -> HttpResponse:
    box = get_mailbox_for(request.user, mailbox, role=Role.AGENT)
    outgoing = get_draft_for(request.user, box, outgoing_id)
    if not outgoing.is_draft:
        return _back_to(outgoing)

    errors: dict[str, str] = {}
    if request.method == "POST":
        form = ComposeForm(request.POST)
        if form.is_valid():
            try:
                response = _handle_post(request, box, outgoing, form)
            except ReplyInvalid as exc:
                errors = exc.errors
            except NotADraft:
                messages.info(request, "This message was already sent.")
                return _back_to(outgoing)
            else:
                return response
        outgoing.refresh_from_db()
    else:
        form = ComposeForm(initial={n: getattr(outgoing, n) for n in outgoing_mail.EDITABLE_FIELDS})
    for field, text in errors.items():
        form.add_error(None if field not in form.fields else field, text)
    context = {
        "mailbox": box,
        "draft": outgoing,
        "original": outgoing.in_reply_to,
        "form": form,
        "sender": f"{outgoing_mail.team_name(box)} <{box.email_address}>",
        "max_recipients": settings.MAX_RECIPIENTS,
    }
    invalid = bool(errors or form.errors)
    return render(request, "teaminbox/compose.html", context, status=400 if invalid else 200)


def _handle_post(
    request: AuthenticatedHttpRequest, box: Mailbox, outgoing: OutgoingMessage, form: ComposeForm
) -> HttpResponse:
    if "discard" in request.POST:
        outgoing_mail.discard_draft(draft=outgoing, actor=request.user)
        messages.info(request, "Draft discarded.")
        return _back_to(outgoing)
    draft = outgoing_mail.save_draft(draft=outgoing, actor=request.user, **form.values())
    for upload in request.FILES.getlist("files"):
        outgoing_mail.add_attachment(
            draft=draft,
            filename=upload.name or "attachment.bin",
            content_type=upload.content_type or "application/octet-stream",
            data=upload.read(),
            actor=request.user,
        )
    remove = form.cleaned_data.get("remove_attachment")
    if remove is not None:
        outgoing_mail.remove_attachment(draft=draft, attachment_id=remove, actor=request.user)
    if "send" not in request.POST:
        return redirect("compose", mailbox=box.name, outgoing_id=draft.pk)
    # "Send and set pending" / "Send and close": the status changes with the send, or not at all.
    then = request.POST.get("send")
    then_status = then if then in THEN_STATUSES else None
    outgoing_mail.send_reply(draft=draft, actor=request.user, then_status=then_status)
    queued = "Reply queued" if draft.in_reply_to_id else "Message queued"
    messages.success(request, f"{queued}{THEN_STATUSES.get(then or '', '')}.")
    return _back_to(draft)


@login_required
@require_POST
def draft_save(request: AuthenticatedHttpRequest, mailbox: str, outgoing_id: int) -> HttpResponse:
    """Autosave (htmx, a second after typing stops): answers with the "Saved" line."""
    box = get_mailbox_for(request.user, mailbox, role=Role.AGENT)
    outgoing = get_draft_for(request.user, box, outgoing_id)
    form = ComposeForm(request.POST)
    notice = ""
    if not form.is_valid():
        notice = "Not saved: " + "; ".join(str(e) for errs in form.errors.values() for e in errs)
    else:
        try:
            outgoing = outgoing_mail.save_draft(draft=outgoing, actor=request.user, **form.values())
        except NotADraft:
            notice = "Already sent; changes here are not saved."
    if not request.htmx:
        return redirect("compose", mailbox=box.name, outgoing_id=outgoing.pk)
    return render(
        request,
        "teaminbox/compose.html#draft-status",
        {"mailbox": box, "draft": outgoing, "notice": notice},
    )


@login_required
@require_POST
def outgoing_retry(
    request: AuthenticatedHttpRequest, mailbox: str, outgoing_id: int
) -> HttpResponse:
    """A person checked a failed message and wants it sent (again)."""
    box = get_mailbox_for(request.user, mailbox, role=Role.AGENT)
    outgoing = get_outgoing_for(request.user, box, outgoing_id)
    try:
        outgoing_mail.retry_outgoing(outgoing=outgoing, actor=request.user)
    except NotADraft as exc:
        messages.info(request, str(exc))
    else:
        messages.success(request, "Queued again.")
    return _back_to(outgoing)
