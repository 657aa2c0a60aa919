from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from health_check.views import HealthCheckView

admin.site.site_header = "BookWorm Scheduler"
admin.site.site_title = "BookWorm Scheduler"
admin.site.index_title = "Jobs, runs and outbox"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("tickerq/api/", include("jobs.api_urls")),  # before the admin: its catch-all takes every path
    path("tickerq/overview/", include("jobs.urls")),  # the overview fragment; before the admin too
    path("tickerq/", admin.site.urls),
    path(
        "health/",
        HealthCheckView.as_view(checks=["health_check.checks.Database", "outbox.health.RabbitMQ"]),
        name="health",
    ),
]
