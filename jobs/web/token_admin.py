"""API tokens on a user's page in the console: create one (shown once), list them, revoke one.

Django's UserAdmin with three additions: the user's tokens below the form
(admin/auth/user/api_tokens.html), a "Create an API token" form posted to create_token_view, which
answers with a page showing the token once (never a redirect: the token is in no URL, message or
session), and a Revoke button per token posted to revoke_token_view. Both go through jobs.web.audit,
the command line's door, and need the change permission of users, as the user's page does.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from bookworm_scheduler.kernel.clock import default_clock
from jobs.models import ApiToken
from jobs.web.audit import token_issued_logged, token_revoked_logged

User = get_user_model()


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. the script that uses it.")
    read_only = forms.BooleanField(required=False, help_text="It may read, never act.")
    expires_days = forms.IntegerField(
        required=False, min_value=1, max_value=3650, label="Expires after (days)", help_text="Empty: never."
    )


admin.site.unregister(User)


@admin.register(User)
class ConsoleUserAdmin(UserAdmin):
    change_form_template = "admin/auth/user/change_form_tokens.html"

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/api-tokens/", wrap(self.create_token_view), name="auth_user_create_token"),
            path(
                "<path:object_id>/api-tokens/<int:token_id>/revoke/",
                wrap(self.revoke_token_view),
                name="auth_user_revoke_token",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        owner = self.get_object(request, object_id)
        if owner is not None and self.has_change_permission(request, owner):
            extra_context = {**(extra_context or {}), **self.tokens_context(owner, TokenForm())}
        return super().change_view(request, object_id, form_url, extra_context)

    def tokens_context(self, owner, form: TokenForm) -> dict:
        now = default_clock()
        return {
            "api_tokens": [(row, row.state(now)) for row in ApiToken.objects.filter(user=owner)],
            "token_form": form,
            "token_owner": owner,
        }

    def _owner(self, request, object_id):
        owner = self.get_object(request, object_id)
        if owner is None:
            raise Http404("No such user.")
        if not self.has_change_permission(request, owner):
            raise PermissionDenied
        return owner

    @method_decorator(require_POST)
    def create_token_view(self, request, object_id):
        owner = self._owner(request, object_id)
        form = TokenForm(request.POST)
        if not form.is_valid():
            context = {**self.admin_site.each_context(request), "title": "Create an API token", "opts": self.opts}
            context |= self.tokens_context(owner, form)
            return TemplateResponse(request, "admin/auth/user/api_token_form.html", context, status=200)
        row, token = token_issued_logged(
            owner,
            user=request.user,
            via="",
            name=form.cleaned_data["name"],
            read_only=form.cleaned_data["read_only"],
            expires_days=form.cleaned_data["expires_days"],
            now=default_clock(),
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "API token created",
            "opts": self.opts,
            "token_owner": owner,
            "token_row": row,
            "token": token,
            "user_url": reverse("admin:auth_user_change", args=[owner.pk]),
        }
        # admin_view's never_cache makes it no-store: the token is on this page only, and no cache keeps it.
        return TemplateResponse(request, "admin/auth/user/api_token_created.html", context)

    @method_decorator(require_POST)
    def revoke_token_view(self, request, object_id, token_id):
        owner = self._owner(request, object_id)
        row = get_object_or_404(ApiToken.objects.select_related("user"), pk=token_id, user=owner)
        if token_revoked_logged(row, user=request.user, via="", now=default_clock()):
            messages.success(request, f"Revoked the API token {row}.")
        else:
            messages.warning(request, f"The API token {row} was revoked already.")
        return HttpResponseRedirect(reverse("admin:auth_user_change", args=[owner.pk]) + "#api-tokens")
