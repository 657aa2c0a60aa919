from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from bookworm_scheduler import health
from bookworm_scheduler.metrics import metrics_view
from bookworm_scheduler.web import display_zone


class FaviconView(RedirectView):
    """/favicon.ico, which browsers ask for by themselves: the console's icon, a static file.

    Its URL is looked up per request: with the manifest storage (DEBUG off) it names the file's
    hashed copy, which a temporary redirect lets the icon change.
    """

    def get_redirect_url(self, *args, **kwargs):
        return static("jobs/favicon.svg")


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("tickerq/api/", include("jobs.web.api_urls")),  # before the admin: its catch-all takes every path
    path("tickerq/overview/", include("jobs.web.urls")),  # the overview fragment; before the admin too
    # The header's "Times in" form; before the admin too.
    path("tickerq/display-zone/", display_zone.choose, name="display-zone"),
    path("tickerq/", admin.site.urls),
    # 200 when every check passes, else 500 naming the failed ones; /alive is health.AliveMiddleware's.
    path("health/", health.HealthView.as_view(), name="health"),
    # Prometheus: what the database knows, for staff (a session or HTTP Basic); see bookworm_scheduler.metrics.
    path("metrics", metrics_view, name="metrics"),
    path("favicon.ico", FaviconView.as_view(), name="favicon"),
]

# An unreachable database is a 503 saying so, not a 500 (DEBUG off): bookworm_scheduler/web/database_down.py.
handler500 = "bookworm_scheduler.web.database_down.server_error"
