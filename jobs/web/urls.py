"""The dashboard's own views beside the admin (included under /tickerq/overview/ by the project's urls)."""

from django.urls import path

from jobs.web import views

app_name = "jobs"

urlpatterns = [
    path("", views.overview, name="overview"),
]
