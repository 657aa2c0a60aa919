"""The dashboard's job pages: definitions, history (occurrences and attempts), schedulers, alerts.

Definitions are django-celery-beat's PeriodicTask rows, edited through jobs.web.forms (the job
chosen from the registered ones, one schedule, the policy inline) with a live preview of a cron
expression's next fire times. Actions write rows for the scheduler through the occurrence store
(a manual occurrence, a cancelled one); the web process never calls the broker or a job.
History, schedulers and alerts are read-only; the history's filters are jobs.web.filters. Lists
never count a big table in full. One-off runs (a job page's "Schedule a run", the upcoming ones, what
an occurrence shows of them) are jobs.web.oneoff_admin.
"""

from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import Count, OuterRef, Subquery
from django.http import HttpResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django_celery_beat.models import CrontabSchedule, PeriodicTask, SolarSchedule

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.kernel.liveness import scheduler_liveness
from bookworm_scheduler.web.paginator import CappedCountPaginator
from bookworm_scheduler.web.read_only_admin import ReadOnlyAdmin
from bookworm_scheduler.web.times import list_time
from jobs.engine import store
from jobs.engine.definitions import Definition, cron_expression, policy_of
from jobs.models import Alert, Attempt, Occurrence, SchedulerInstance
from jobs.templatetags.dashboard_tags import run_time
from jobs.web import admin_views, oneoff_admin
from jobs.web.audit import run_now_logged
from jobs.web.definition_inlines import FollowUpInline, JobPolicyInline
from jobs.web.filters import JobFilter, KindFilter, SchedulerFilter, WhenFilter
from jobs.web.forms import CrontabScheduleForm, JobDefinitionForm, cron_words, describe_cron
from outbox.models import OutboxMessage

STATUS_COLOURS = {
    Occurrence.Status.SUCCEEDED: "#2e7d32",
    Occurrence.Status.FAILED: "#c62828",
    Occurrence.Status.RUNNING: "#1565c0",
    Occurrence.Status.SCHEDULED: "#6d4c41",
    Occurrence.Status.MISSED: "#ef6c00",
    Occurrence.Status.SKIPPED: "#757575",
    Occurrence.Status.EXPIRED: "#8d6e63",
}


def status_badge(status: str | None):
    if not status:
        return "-"
    return format_html(
        '<span class="status-badge" style="color:{};font-weight:bold">{}</span>', STATUS_COLOURS.get(status, ""), status
    )


# Definitions.


admin.site.unregister(PeriodicTask)
admin.site.unregister(CrontabSchedule)
admin.site.unregister(SolarSchedule)


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(admin.ModelAdmin):
    form = CrontabScheduleForm
    list_display = ["__str__", "timezone"]


@admin.register(PeriodicTask)
class JobDefinitionAdmin(admin.ModelAdmin):
    form = JobDefinitionForm
    inlines = [JobPolicyInline, FollowUpInline]
    change_form_template = "admin/django_celery_beat/periodictask/change_form.html"
    list_display = [
        "name",
        "schedule",
        "enabled",
        "next_run",
        "last_run",
        "success_rate",
        "running_now",
    ]  # and run_button after the name, for those who may run jobs (get_list_display); the zone is the
    # schedule's, the priority on the job's page: the list fits 1280 px (jobs/lists.css)
    list_filter = ["enabled"]
    show_facets = admin.ShowFacets.NEVER
    search_fields = ["name", "task"]
    actions = ["run_now", "enable", "disable", "toggle"]
    readonly_fields = ["schedule_preview"]  # a view-only user's page shows every field through cron() and timezone()
    fieldsets = [
        (None, {"fields": ["name", "task", "enabled", "description"]}),
        (
            "Schedule",
            {
                "fields": ["cron", "timezone", "schedule_preview", "interval", "clocked", "start_time", "one_off"],
                "description": "A cron expression in a time zone, or an interval, or a clocked time: one of them.",
            },
        ),
        ("Arguments", {"fields": ["kwargs"], "classes": ["collapse"]}),
        ("Expiry", {"fields": ["expires", "expire_seconds"], "classes": ["collapse"]}),
    ]

    def get_queryset(self, request):
        # Per row, three indexed look-ups in the history (occ_task_recent covers status and
        # started_at) and one in the running rows: bounded whatever the table holds.
        since = default_clock() - timedelta(hours=24)
        history = Occurrence.objects.filter(task=OuterRef("pk"))
        latest = history.exclude(started_at=None).order_by("-scheduled_for")

        def count(rows):
            return Subquery(rows.order_by().values("task").annotate(n=Count("*")).values("n")[:1])

        recent = history.filter(scheduled_for__gte=since)
        return (
            super()
            .get_queryset(request)
            .select_related("crontab", "interval", "clocked", "solar", "policy", "planning")
            .annotate(
                last_started=Subquery(latest.values("started_at")[:1]),
                last_status=Subquery(latest.values("status")[:1]),
                succeeded_24h=count(recent.filter(status=Occurrence.Status.SUCCEEDED)),
                finished_24h=count(recent.filter(status__in=[Occurrence.Status.SUCCEEDED, Occurrence.Status.FAILED])),
                running=count(history.filter(status=Occurrence.Status.RUNNING)),
            )
        )

    def get_urls(self):
        preview = self.admin_site.admin_view(self.schedule_preview_view)
        return [
            path("preview/", preview, name="jobs_schedule_preview"),
            *admin_views.object_action_urls(self, ("run_now", "run")),
            *oneoff_admin.schedule_urls(self),
            *super().get_urls(),
        ]

    def get_list_display(self, request):
        shown = super().get_list_display(request)  # the button beside the name: a wide list scrolls its last columns
        return [shown[0], "run_button", *shown[1:]] if self.has_run_permission(request) else shown

    def change_view(self, request, object_id, form_url="", extra_context=None):
        task = self.get_object(request, object_id)
        if task is not None:
            extra_context = {
                "title": task.name,  # the name alone, not Django's "Change job" above it
                "subtitle": None,
                "recent_runs": admin_views.recent_runs(task.id),
                "totals": admin_views.totals(task.id, default_clock()),
                "runs_url": admin_views.runs_url(task.id),
                "can_run": self.has_run_permission(request),
                **oneoff_admin.job_page(self, request, task),
                **(extra_context or {}),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def history_view(self, request, object_id, extra_context=None):
        task = self.get_object(request, object_id)
        title = {"title": f"Edit history: {task.name}"} if task is not None else {}
        return super().history_view(request, object_id, {**title, **(extra_context or {})})

    @admin.display(description="")
    def run_button(self, task):
        # A button of the list's own form (which holds the CSRF token), posted to the run view instead.
        url = reverse("admin:django_celery_beat_periodictask_run_now", args=[task.pk])
        return format_html(
            '<button type="submit" class="button run-now" formaction="{}" style="white-space:nowrap">{}</button>',
            url,
            "Run now",
        )

    def schedule_preview_view(self, request):
        """The live preview of a cron expression (htmx fragment)."""
        return HttpResponse(self._preview_html(request.GET.get("cron", ""), request.GET.get("timezone", "UTC")))

    @staticmethod
    def _preview_html(expression: str, zone: str):
        if not expression.strip():
            return format_html(
                '<div id="schedule-preview-body">{}</div>', "Type a cron expression to see its next runs."
            )
        words, instants, error = describe_cron(expression.strip(), zone or "UTC")
        if error:
            return format_html('<div id="schedule-preview-body" class="errornote">{}</div>', error)
        return format_html(
            '<div id="schedule-preview-body"><strong>{}</strong><ol>{}</ol></div>',
            words,
            format_html_join("", "<li>{}</li>", ((i.strftime("%a %Y-%m-%d %H:%M %Z"),) for i in instants)),
        )

    @admin.display(description="Next runs")
    def schedule_preview(self, task):
        expression = cron_expression(task.crontab) if task and task.crontab_id else ""
        zone = str(task.crontab.timezone) if task and task.crontab_id else "UTC"
        return format_html('<div id="schedule-preview">{}</div>', self._preview_html(expression, zone))

    @admin.display(description="Schedule")
    def schedule(self, task):
        if task.crontab_id:
            expression = cron_expression(task.crontab)
            return format_html("{}<br><code>{}</code> {}", cron_words(expression), expression, self.zone(task))
        return str(task.interval or task.clocked or task.solar or "")

    @admin.display(description="Zone")
    def zone(self, task):
        return str(task.crontab.timezone) if task.crontab_id else "UTC"

    # The form's cron and timezone fields as a view-only user's page shows them (read-only fields).

    @admin.display(description="Cron expression")
    def cron(self, task):
        return cron_expression(task.crontab) if task.crontab_id else "-"

    @admin.display(description="Time zone")
    def timezone(self, task):
        return self.zone(task)

    @admin.display(description="Priority")
    def job_priority(self, task):  # not `priority`: that is Celery's column of the task
        return policy_of(task).priority.label

    @admin.display(description="Next run")
    def next_run(self, task):
        instant = Definition.from_task(task, strict=False).next_instant() if task.enabled else None
        return list_time(instant)

    @admin.display(description="Last run", ordering="last_started")
    def last_run(self, task):
        if task.last_started is None:
            return "-"
        return format_html("{}<br>{}", list_time(task.last_started), status_badge(task.last_status))

    @admin.display(description="Success (24 h)")
    def success_rate(self, task):
        if not task.finished_24h:
            return "-"
        return f"{100 * (task.succeeded_24h or 0) / task.finished_24h:.0f} % of {task.finished_24h}"

    @admin.display(description="Running")
    def running_now(self, task):
        return task.running or 0

    def has_run_permission(self, request):
        return request.user.has_perm("jobs.run_job")

    @admin.action(description="Run selected jobs now", permissions=["run"])
    def run_now(self, request, queryset):
        for task in queryset.select_related("policy"):
            run_now_logged(task, user=request.user, by=request.user.get_username(), via="")
        self.message_user(request, "Triggered: an idle scheduler runs them at once.", messages.SUCCESS)

    def _set_enabled(self, request, queryset, enabled, verb: str):
        tasks = list(queryset)
        for task in tasks:
            task.enabled = not task.enabled if enabled is None else enabled
            task.save(update_fields=["enabled"])
            self.log_change(request, task, f"{verb}d")
        self.message_user(request, f"{verb}d {len(tasks)} job(s).", messages.SUCCESS)

    @admin.action(description="Enable selected jobs", permissions=["change"])
    def enable(self, request, queryset):
        self._set_enabled(request, queryset, True, "Enable")

    @admin.action(description="Disable selected jobs", permissions=["change"])
    def disable(self, request, queryset):
        self._set_enabled(request, queryset, False, "Disable")

    @admin.action(description="Toggle selected jobs", permissions=["change"])
    def toggle(self, request, queryset):
        self._set_enabled(request, queryset, None, "Toggle")


# History.


class AttemptInline(admin.StackedInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ["number", "status", "scheduler", "started_at", "finished_at", "took", "error", "traceback_text"]
    readonly_fields = fields
    ordering = ["number"]

    @admin.display(description="Duration")
    def took(self, attempt):  # not `duration`: the model's field would win over the method
        return run_time(attempt.duration)

    @admin.display(description="Traceback")
    def traceback_text(self, attempt):
        return format_html("<pre>{}</pre>", attempt.traceback) if attempt.traceback else "-"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Occurrence)
class OccurrenceAdmin(oneoff_admin.OneOffOccurrenceAdmin, ReadOnlyAdmin):
    list_display = [
        "job_name",
        "scheduled",
        "coloured_status",
        "attempts",
        "trigger",
        "scheduler",
        "started",
        "duration",
    ]  # times on one line, manual or one-off with its user in one column: the list fits 1280 px (lists.css)
    list_filter = ["status", KindFilter, JobFilter, SchedulerFilter, WhenFilter]
    search_fields = ["=job_name"]  # exact, case-insensitive: index occ_job_name_recent
    search_help_text = "The exact name of a job."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    inlines = [AttemptInline]
    actions = ["retry", "cancel"]
    fieldsets = [
        (None, {"fields": ["job_name", "task", "coloured_status", "reason", "manual", "triggered_by", "priority"]}),
        (
            "Timing",
            {"fields": ["scheduled_for", "run_after", "started_at", "finished_at", "duration", "fire_lag"]},
        ),
        (
            "Claim",
            {
                "fields": [
                    "attempts",
                    "scheduler",
                    "session",
                    "lease_expires_at",
                    "cancel_requested_at",
                    "cancel_requested_by",
                ]
            },
        ),
        ("Published events", {"fields": ["events"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        extra = ["coloured_status", "duration", "fire_lag", "events", *oneoff_admin.ONE_OFF_FIELDS]
        return [f.name for f in self.model._meta.fields] + extra

    def get_urls(self):
        return [*admin_views.object_action_urls(self, ("retry", "retry"), ("cancel", "cancel")), *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        occurrence = self.get_object(request, object_id)
        if occurrence is not None:
            extra_context = {**admin_views.occurrence_buttons(self, request, occurrence), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="Scheduled for", ordering="scheduled_for")
    def scheduled(self, occurrence):
        return list_time(occurrence.scheduled_for)

    @admin.display(description="Started at", ordering="started_at")
    def started(self, occurrence):
        return list_time(occurrence.started_at, day_of=occurrence.scheduled_for)  # the time alone on the same day

    @admin.display(description="Duration")
    def duration(self, occurrence):
        return run_time(occurrence.duration)

    @admin.display(description="Status", ordering="status")
    def coloured_status(self, occurrence):
        return status_badge(occurrence.status)

    @admin.display(description="Fire lag")
    def fire_lag(self, occurrence):
        return run_time(occurrence.started_at - occurrence.scheduled_for) if occurrence.started_at else "-"

    @admin.display(description="Events it published")
    def events(self, occurrence):
        rows = OutboxMessage.objects.filter(origin=f"occurrence:{occurrence.id}").order_by("id")[:50]
        links = [
            (reverse("admin:outbox_outboxmessage_change", args=[row.id]), row.exchange, row.message_id, row.status)
            for row in rows
        ]
        if not links:
            return "none"
        return format_html_join(mark_safe("<br>"), '<a href="{}">{}</a> <code>{}</code> ({})', links)

    def has_retry_permission(self, request):
        return request.user.has_perm("jobs.retry_occurrence")

    def has_cancel_permission(self, request):
        return request.user.has_perm("jobs.cancel_occurrence")

    @admin.action(description="Run selected failed, missed or skipped occurrences again", permissions=["retry"])
    def retry(self, request, queryset):
        count = 0
        finished = queryset.filter(
            status__in=[Occurrence.Status.FAILED, Occurrence.Status.MISSED, Occurrence.Status.SKIPPED]
        )
        for occurrence in finished.exclude(task=None).select_related("task"):
            by = request.user.get_username()
            retried = store.trigger(occurrence.task, priority=occurrence.priority, by=by, then=occurrence.then)
            self.log_change(request, occurrence, f"Retried as occurrence {retried.id}")
            count += 1
        self.message_user(request, f"Triggered {count} manual run(s).", messages.SUCCESS)

    @admin.action(description="Cancel selected scheduled or running occurrences", permissions=["cancel"])
    def cancel(self, request, queryset):
        admin_views.cancel_occurrences(self, request, queryset)


# Schedulers.


@admin.register(SchedulerInstance)
class SchedulerInstanceAdmin(ReadOnlyAdmin):
    list_display = [
        "instance_id",
        "host",
        "pid",
        "version",
        "started_at",
        "last_seen",
        "liveness",
        "concurrency",
        "running_now",
    ]
    list_filter = ["state"]
    fields = [
        "instance_id",
        "host",
        "pid",
        "version",
        "state",
        "concurrency",
        "started_at",
        "last_seen",
        "stopped_at",
        "running_list",
    ]

    def get_queryset(self, request):
        running = Occurrence.objects.filter(session=OuterRef("session"), status=Occurrence.Status.RUNNING)
        counted = running.order_by().values("session").annotate(n=Count("*")).values("n")[:1]
        return super().get_queryset(request).annotate(running=Subquery(counted))

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    @admin.display(description="Heartbeat")
    def liveness(self, instance):
        if instance.state != SchedulerInstance.State.RUNNING:
            return format_html(
                '<span style="color:{}">{}</span>', STATUS_COLOURS[Occurrence.Status.SKIPPED], instance.state
            )
        stale = instance.is_stale(default_clock(), scheduler_liveness())
        colour = STATUS_COLOURS[Occurrence.Status.MISSED if stale else Occurrence.Status.SUCCEEDED]
        return format_html('<span style="color:{};font-weight:bold">{}</span>', colour, "stale" if stale else "live")

    @admin.display(description="Running now")
    def running_now(self, instance):
        return instance.running or 0

    @admin.display(description="Runs now")
    def running_list(self, instance):
        rows = Occurrence.objects.filter(session=instance.session, status=Occurrence.Status.RUNNING)[:50]
        links = [(reverse("admin:jobs_occurrence_change", args=[o.id]), o.job_name, o.started_at) for o in rows]
        return format_html_join(mark_safe("<br>"), '<a href="{}">{}</a> since {}', links) if links else "nothing"


# Alerts.


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    """What was alerted and how each channel fared; read-only (jobs.alerts.delivery sends and retries)."""

    list_display = ["created_at", "kind", "subject", "email_status", "webhook_status", "attempts", "next_try_at"]
    list_filter = ["kind", "email_status", "webhook_status"]
    fields = [
        "kind",
        "subject",
        "text",
        "occurrence",
        "job_name",
        "error",
        "created_at",
        "email_status",
        "webhook_status",
        "attempts",
        "next_try_at",
        "last_error",
    ]
    readonly_fields = fields
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
