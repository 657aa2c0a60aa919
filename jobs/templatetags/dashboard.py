"""The overview at the top of the dashboard: recent runs, live schedulers, the outbox."""

from datetime import timedelta

from django import template
from django.db.models import Count
from django.utils import timezone

from jobs.models import Occurrence, SchedulerInstance
from outbox.models import OutboxMessage

register = template.Library()


@register.inclusion_tag("jobs/overview.html")
def dashboard_overview():
    now = timezone.now()
    # Range scans on occ_recent and the instances' last_seen index; the outbox counts use
    # outbox_status_recent. Bounded work however many rows the tables hold.
    recent = dict(
        Occurrence.objects.filter(scheduled_for__gte=now - timedelta(hours=24), scheduled_for__lte=now)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    outbox = {
        status: OutboxMessage.objects.filter(status=status).count()
        for status in (OutboxMessage.Status.PENDING, OutboxMessage.Status.DEAD, OutboxMessage.Status.UNROUTABLE)
    }
    return {
        "recent": [(status, recent.get(status, 0)) for status in Occurrence.Status.values],
        "running": Occurrence.objects.filter(status=Occurrence.Status.RUNNING).count(),
        "instances": SchedulerInstance.objects.filter(
            stopped_at__isnull=True, last_seen__gte=now - timedelta(minutes=2)
        ).order_by("instance_id"),
        "outbox": outbox,
    }
