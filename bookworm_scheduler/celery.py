"""The Celery app, for optional workers sharing the broker and the job definitions."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")

app = Celery("bookworm_scheduler")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
