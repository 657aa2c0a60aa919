"""The dashboard's job pages: definitions with their policy, occurrences, attempts, instances.

Definitions are django-celery-beat's admin, extended: cron expressions and time zones are
checked the way the scheduler evaluates them, solar schedules are refused, and "Run now"
writes a manual occurrence for the scheduler instead of sending anything to a broker.
"""

from django import forms
from django.contrib import admin, messages
from django.db.models import OuterRef, Subquery
from django_celery_beat.admin import CrontabScheduleAdmin as BeatCrontabScheduleAdmin
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.admin import PeriodicTaskForm as BeatPeriodicTaskForm
from django_celery_beat.models import CrontabSchedule, PeriodicTask, SolarSchedule

from .definitions import cron_expression, policy_of
from .models import Attempt, JobPolicy, Occurrence, SchedulerInstance
from .registry import registered_jobs
from .schedules import InvalidSchedule, validate_cron


class CrontabScheduleForm(forms.ModelForm):
    class Meta:
        model = CrontabSchedule
        fields = "__all__"

    def clean(self):
        data = super().clean()
        fields = ["minute", "hour", "day_of_month", "month_of_year", "day_of_week"]
        if not self.errors and all(data.get(f) for f in fields):
            try:
                validate_cron(cron_expression(CrontabSchedule(**{f: data[f] for f in fields})), data.get("timezone"))
            except InvalidSchedule as exc:
                raise forms.ValidationError(str(exc)) from None
        return data


class PeriodicTaskForm(BeatPeriodicTaskForm):
    def clean(self):
        data = super().clean()
        if data.get("solar"):
            self.add_error("solar", "Solar schedules are not supported: use a crontab in the place's time zone.")
        return data


class JobPolicyInline(admin.StackedInline):
    model = JobPolicy
    can_delete = False
    fields = ["priority", "misfire_policy", "max_retries", "retry_intervals", "timeout_seconds"]


admin.site.unregister(PeriodicTask)
admin.site.unregister(CrontabSchedule)
admin.site.unregister(SolarSchedule)


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(BeatCrontabScheduleAdmin):
    form = CrontabScheduleForm


@admin.register(PeriodicTask)
class JobDefinitionAdmin(BeatPeriodicTaskAdmin):
    form = PeriodicTaskForm
    inlines = [JobPolicyInline]
    list_display = ["name", "task", "schedule", "enabled", "last_run"]
    list_select_related = ["crontab", "interval", "clocked", "solar"]
    actions = ["enable_tasks", "disable_tasks", "toggle_tasks", "run_now"]

    def get_queryset(self, request):
        # The real last run, from the history (index occ_task_recent); django-celery-beat's
        # last_run_at is not ours and stays empty.
        latest = Occurrence.objects.filter(task=OuterRef("pk"), started_at__isnull=False).order_by("-scheduled_for")
        return super().get_queryset(request).annotate(last_started=Subquery(latest.values("started_at")[:1]))

    @admin.display(description="Last run", ordering="last_started")
    def last_run(self, task):
        return task.last_started

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        # The registered jobs, not Celery's task list.
        form.base_fields["regtask"].widget.choices = [("", "")] + [(j.name, j.name) for j in registered_jobs()]
        return form

    @admin.display(description="Schedule")
    def schedule(self, task):
        return str(task.crontab or task.interval or task.clocked or task.solar or "")

    @admin.action(description="Run selected jobs now")
    def run_now(self, request, queryset):
        tasks = list(queryset.select_related("policy"))
        for task in tasks:
            Occurrence.trigger(task, priority=policy_of(task).priority, by=request.user.get_username())
        self.message_user(
            request, f"Triggered {len(tasks)} job(s); the scheduler runs them within a second.", messages.SUCCESS
        )


class AttemptInline(admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ["number", "status", "scheduler", "started_at", "duration", "error", "traceback"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Occurrence)
class OccurrenceAdmin(admin.ModelAdmin):
    list_display = [
        "job_name",
        "scheduled_for",
        "status",
        "attempts",
        "manual",
        "scheduler",
        "started_at",
        "duration",
    ]
    list_filter = ["status", "manual"]
    search_fields = ["=job_name"]  # exact: a substring search scans every row
    show_full_result_count = False
    inlines = [AttemptInline]
    actions = ["retry_now"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Run selected failed, missed or skipped occurrences again")
    def retry_now(self, request, queryset):
        count = 0
        for occurrence in queryset.exclude(status__in=["scheduled", "running", "succeeded"]).select_related("task"):
            if occurrence.task is not None:
                Occurrence.trigger(occurrence.task, priority=occurrence.priority, by=request.user.get_username())
                count += 1
        self.message_user(request, f"Triggered {count} manual run(s).", messages.SUCCESS)


@admin.register(SchedulerInstance)
class SchedulerInstanceAdmin(admin.ModelAdmin):
    list_display = ["instance_id", "host", "pid", "version", "state", "started_at", "last_seen", "stopped_at"]
    list_filter = ["state"]
    readonly_fields = [
        "session",
        "instance_id",
        "host",
        "pid",
        "version",
        "state",
        "started_at",
        "last_seen",
        "stopped_at",
    ]

    def has_add_permission(self, request):
        return False
