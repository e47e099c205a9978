from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from teaminbox.throttle import AdminLoginForm, LoginForm
from teaminbox.views import compose, conversation, inbox, message, outgoing, search

# Both sign-in pages go through the throttle (teaminbox/throttle.py).
admin.site.login_form = AdminLoginForm

urlpatterns = [
    path("", inbox.home, name="home"),
    path("login/", auth_views.LoginView.as_view(authentication_form=LoginForm), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("m/<slug:mailbox>/", inbox.inbox, name="inbox"),
    path("m/<slug:mailbox>/status/", inbox.sync_status, name="sync_status"),
    path("m/<slug:mailbox>/bulk", inbox.bulk, name="bulk"),
    path("m/<slug:mailbox>/search", search.search, name="search"),
    path("m/<slug:mailbox>/messages/<int:message_id>/", message.message_page, name="message"),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/",
        conversation.conversation_page,
        name="conversation",
    ),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/assign/",
        conversation.assign,
        name="conversation_assign",
    ),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/status/",
        conversation.status,
        name="conversation_status",
    ),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/snooze/",
        conversation.snooze,
        name="conversation_snooze",
    ),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/note/",
        conversation.note,
        name="conversation_note",
    ),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/read/",
        conversation.read,
        name="conversation_read",
    ),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/unread/",
        conversation.unread,
        name="conversation_unread",
    ),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/flag/",
        conversation.flag,
        name="conversation_flag",
    ),
    path(
        "m/<slug:mailbox>/c/<int:conversation_id>/delete/",
        conversation.delete,
        name="conversation_delete",
    ),
    path(
        "m/<slug:mailbox>/messages/<int:message_id>/body/",
        message.message_body,
        name="message_body",
    ),
    path(
        "m/<slug:mailbox>/messages/<int:message_id>/flags/",
        message.flag_action,
        name="flag_action",
    ),
    path(
        "m/<slug:mailbox>/messages/<int:message_id>/attachments/<int:attachment_id>/",
        message.attachment,
        name="attachment",
    ),
    path("m/<slug:mailbox>/messages/<int:message_id>/reply/", compose.reply, name="reply"),
    path("m/<slug:mailbox>/outgoing/<int:outgoing_id>/", compose.compose, name="compose"),
    path(
        "m/<slug:mailbox>/outgoing/<int:outgoing_id>/save/",
        compose.draft_save,
        name="draft_save",
    ),
    path(
        "m/<slug:mailbox>/outgoing/<int:outgoing_id>/retry/",
        compose.outgoing_retry,
        name="outgoing_retry",
    ),
    path(
        "m/<slug:mailbox>/outgoing/<int:outgoing_id>/sent-copy/",
        outgoing.save_to_sent,
        name="save_to_sent",
    ),
]
