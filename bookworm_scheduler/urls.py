from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from bookworm_scheduler import health
from bookworm_scheduler.metrics import metrics_view

admin.site.site_header = "BookWorm Scheduler"
admin.site.site_title = "BookWorm Scheduler"
admin.site.index_title = "Jobs, runs and outbox"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("tickerq/api/", include("jobs.web.api_urls")),  # before the admin: its catch-all takes every path
    path("tickerq/overview/", include("jobs.web.urls")),  # the overview fragment; before the admin too
    path("tickerq/", admin.site.urls),
    # 200 when every check passes, else 500 naming the failed ones; /alive is health.AliveMiddleware's.
    path("health/", health.HealthView.as_view(), name="health"),
    # Prometheus: what the database knows, for staff (a session or HTTP Basic); see bookworm_scheduler.metrics.
    path("metrics", metrics_view, name="metrics"),
]
