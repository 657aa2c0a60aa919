"""/tickerq/api/: JSON for scripts (see jobs.web.api).

Included before the admin, whose catch-all would take these paths.
"""

from django.urls import path

from jobs.web import api

app_name = "api"

urlpatterns = [
    path("", api.IndexView.as_view(), name="index"),
    path("jobs/", api.JobsView.as_view(), name="jobs"),
    # A definition's name is free text: <path:> lets it hold a slash.
    path("jobs/<path:name>/trigger", api.TriggerView.as_view(), name="trigger"),
    path("history/", api.HistoryView.as_view(), name="history"),
    path("occurrences/<int:pk>", api.OccurrenceView.as_view(), name="occurrence"),
    path("outbox/", api.OutboxView.as_view(), name="outbox"),
    path("<path:rest>", api.NotFoundView.as_view()),
]
