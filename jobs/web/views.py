"""The overview fragment that the dashboard's index page reloads every few seconds (htmx)."""

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRedirect

from bookworm_scheduler.kernel.clock import default_clock
from jobs.web import dashboard


@never_cache
@require_GET
def overview(request):
    """The overview alone, for staff. A request without a staff session (it expired, say) is sent
    to the admin login, then back to the dashboard: with HX-Redirect for htmx, which then loads
    the login as a page, instead of a redirect that htmx would follow and swap into the fragment.
    """
    if not admin.site.has_permission(request):
        login = redirect_to_login(reverse("admin:index"), reverse("admin:login"))
        if request.htmx:
            return HttpResponseClientRedirect(login.url)
        return login
    return render(request, "jobs/overview.html", dashboard.overview(default_clock()))
