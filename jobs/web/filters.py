"""The occurrence history's list filters: by job, kind (scheduled, manual, one-off, upcoming), scheduler and time."""

from datetime import timedelta

from django.contrib import admin
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.clock import default_clock
from jobs.models import SchedulerInstance
from jobs.web.oneoff_admin import UPCOMING, upcoming


class JobFilter(admin.SimpleListFilter):
    """By definition (index occ_task_recent); the search box finds deleted ones by name."""

    title = "job"
    parameter_name = "job"
    MAX_CHOICES = 200

    def lookups(self, request, model_admin):
        return list(PeriodicTask.objects.order_by("name").values_list("id", "name")[: self.MAX_CHOICES])

    def queryset(self, request, queryset):
        return queryset.filter(task_id=self.value()) if self.value() else queryset


class KindFilter(admin.SimpleListFilter):
    """A definition's scheduled or manual runs, one-off runs (jobs.schedule), or the upcoming one-off runs:
    scheduled or running, soonest first (jobs.web.oneoff_admin: the live rows' partial indexes)."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [("scheduled", "Scheduled"), ("manual", "Manual"), ("oneoff", "One-off"), (UPCOMING, "Upcoming one-off")]

    def queryset(self, request, queryset):
        if self.value() == "scheduled":
            return queryset.filter(manual=False, job="")
        if self.value() == "manual":
            return queryset.filter(manual=True)  # index occ_manual_recent
        if self.value() == "oneoff":
            return queryset.exclude(job="")
        if self.value() == UPCOMING:
            return upcoming(queryset)
        return queryset


class SchedulerFilter(admin.SimpleListFilter):
    """By the scheduler that ran it; the choices come from the (small) instance table."""

    title = "scheduler"
    parameter_name = "scheduler"

    def lookups(self, request, model_admin):
        names = SchedulerInstance.objects.order_by("instance_id").values_list("instance_id", flat=True).distinct()
        return [(name, name) for name in names[:100]]

    def queryset(self, request, queryset):
        return queryset.filter(scheduler=self.value()) if self.value() else queryset


class WhenFilter(admin.SimpleListFilter):
    """A range of scheduled_for (index occ_recent)."""

    title = "scheduled"
    parameter_name = "when"
    RANGES = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}

    def lookups(self, request, model_admin):
        return [("hour", "Last hour"), ("day", "Last 24 hours"), ("week", "Last 7 days"), ("older", "Older")]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        if self.value() == "older":
            return queryset.filter(scheduled_for__lt=default_clock() - self.RANGES["week"])
        return queryset.filter(scheduled_for__gte=default_clock() - self.RANGES.get(self.value(), timedelta(0)))
