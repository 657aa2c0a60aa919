"""One-off runs in the console (jobs.schedule): "Schedule a run" on a job's page, its upcoming runs, and what an
occurrence page shows of a one-off run.

The job's page (JobDefinitionAdmin) carries a ScheduleRunForm posted to schedule_run_view, which
schedules a run of the definition's registered job (its `task` field) through audit.schedule_logged,
the API's and the command line's door, and goes back to the page with a message linking the run; a
form with errors is shown again on a page of its own (status 200). Upcoming one-off runs are
the scheduled and running ones, soonest first: a job's (upcoming_runs) on its page, everyone's in the
history filtered by kind "upcoming" (jobs.web.filters.KindFilter, ordered by OneOffOccurrenceAdmin).
Both read the partial index occ_oneoff_upcoming (live one-off runs by run_after) in order, whatever the
history holds.
"""

import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from bookworm_scheduler.web.times import list_time
from jobs.engine.oneoff import ScheduleError
from jobs.models import OCCURRENCE_LIVE, Occurrence
from jobs.web.audit import schedule_logged
from jobs.web.forms import ScheduleRunForm

UPCOMING_ON_JOB_PAGE = 20
CHILDREN_SHOWN = 50
# The kind filter's value for upcoming one-off runs (jobs.web.filters.KindFilter).
UPCOMING = "upcoming"
ONE_OFF_FIELDS = ["key", "expires_at", "payload_json", "result_json", "parent_link", "children_links"]


def upcoming(queryset):
    """One-off runs (no definition: `job` set) not yet finished, soonest first: the condition of the partial
    index occ_oneoff_upcoming, read in its order."""
    return queryset.filter(status__in=OCCURRENCE_LIVE).exclude(job="").order_by("run_after", "id")


def upcoming_runs(job: str, limit: int = UPCOMING_ON_JOB_PAGE) -> list[Occurrence]:
    """The registered job's upcoming one-off runs, soonest first."""
    fields = ["id", "job", "job_name", "status", "scheduled_for", "run_after", "key", "triggered_by"]
    return list(upcoming(Occurrence.objects.filter(job=job)).only(*fields)[:limit])


def upcoming_url() -> str:
    return f"{reverse('admin:jobs_occurrence_changelist')}?kind={UPCOMING}"


def job_page(model_admin, request, task) -> dict:
    """The job page's context for one-off runs: the form (for those who may run jobs) and the upcoming runs."""
    can_run = model_admin.has_run_permission(request)
    return {
        "schedule_form": ScheduleRunForm() if can_run else None,
        "schedule_url": reverse("admin:django_celery_beat_periodictask_schedule", args=[task.pk]) if can_run else "",
        "upcoming_runs": upcoming_runs(task.task),
        "upcoming_url": upcoming_url(),
        "can_cancel_runs": request.user.has_perm("jobs.cancel_occurrence"),
    }


def schedule_urls(model_admin) -> list:
    def view(request, object_id):
        return schedule_run_view(model_admin, request, object_id)

    view = model_admin.admin_site.admin_view(view)
    return [path("<path:object_id>/schedule/", view, name="django_celery_beat_periodictask_schedule")]


def schedule_run_view(model_admin, request, object_id):
    """GET: the form alone; POST: schedule the run and go back to the job's page, or show the form's errors."""
    if not model_admin.has_run_permission(request):
        raise PermissionDenied
    task = model_admin.get_object(request, object_id)
    if task is None:
        raise Http404
    form = ScheduleRunForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        by = request.user.get_username()
        run = {name: form.cleaned_data[name] for name in ("at", "payload", "expires", "then")}
        try:
            key = form.cleaned_data["key"] or None
            occurrence, new = schedule_logged(task.task, user=request.user, by=by, via="", key=key, **run)
        except ScheduleError as exc:
            form.add_error(None, f"{str(exc)[:1].upper()}{str(exc)[1:]}.")
        else:
            said = "Scheduled" if new else "A run with this key is scheduled already"
            link = reverse("admin:jobs_occurrence_change", args=[occurrence.pk])
            message = format_html('{}: <a href="{}">occurrence {}</a> ({}).', said, link, occurrence.pk, occurrence)
            model_admin.message_user(request, message, messages.SUCCESS if new else messages.WARNING)
            return HttpResponseRedirect(reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]))
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Schedule a run: {task.name}",
        "opts": model_admin.opts,
        "original": task,
        "schedule_form": form,
        "schedule_url": request.path,
    }
    return TemplateResponse(request, "admin/django_celery_beat/periodictask/schedule_run.html", context)


def pretty_json(value):
    if value is None:
        return "-"
    return format_html('<pre class="json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


class OneOffOccurrenceAdmin:
    """OccurrenceAdmin's one-off parts: the Trigger column, the "One-off run" fields, and the upcoming list's
    columns (when due, key, who asked, Cancel for those who may) and order."""

    def get_list_display(self, request):
        if request.GET.get("kind") != UPCOMING:
            return super().get_list_display(request)
        shown = ["job_name", "due", "coloured_status", "key", "trigger", "attempts"]
        return [*shown, "cancel_button"] if self.has_cancel_permission(request) else shown

    @admin.display(description="Due", ordering="run_after")
    def due(self, occurrence):
        return list_time(occurrence.run_after)  # the first run's time, or a pending retry's

    @admin.display(description="")
    def cancel_button(self, occurrence):
        # A button of the list's own form (which holds the CSRF token), posted to the occurrence's cancel view.
        url = reverse("admin:jobs_occurrence_cancel", args=[occurrence.pk])
        button = '<button type="submit" class="button occurrence-cancel" formaction="{}">Cancel</button>'
        return format_html(button, url)

    def get_ordering(self, request):
        if request.GET.get("kind") == UPCOMING:
            return ["run_after", "id"]  # soonest first (an explicit column order still wins)
        return super().get_ordering(request)

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(super().get_fieldsets(request, obj))
        shown = [name for name in ONE_OFF_FIELDS if obj is not None and self.has_one_off_value(obj, name)]
        if shown:
            fieldsets.insert(1, ("One-off run", {"fields": shown}))
        return fieldsets

    @staticmethod
    def has_one_off_value(occurrence: Occurrence, name: str) -> bool:
        if name == "children_links":
            return occurrence.children.exists()  # index occ_parent
        if name == "parent_link":
            return occurrence.parent_id is not None
        attribute = {"payload_json": "payload", "result_json": "result"}.get(name, name)
        return getattr(occurrence, attribute) not in (None, "")

    @admin.display(description="Trigger")
    def trigger(self, occurrence):
        if occurrence.job:
            return f"one-off ({occurrence.triggered_by})" if occurrence.triggered_by else "one-off"
        if not occurrence.manual:
            return "schedule"
        return f"manual ({occurrence.triggered_by})" if occurrence.triggered_by else "manual"

    @admin.display(description="Payload")
    def payload_json(self, occurrence):
        return pretty_json(occurrence.payload)

    @admin.display(description="Result")
    def result_json(self, occurrence):
        return pretty_json(occurrence.result)

    @admin.display(description="Parent")
    def parent_link(self, occurrence):
        if occurrence.parent_id is None:
            return "-"
        link = reverse("admin:jobs_occurrence_change", args=[occurrence.parent_id])
        return format_html('<a href="{}" class="occurrence-parent">occurrence {}</a>', link, occurrence.parent_id)

    @admin.display(description="Follow-ups")
    def children_links(self, occurrence):
        children = occurrence.children.order_by("id").only("id", "job_name", "status")[:CHILDREN_SHOWN]
        rows = [(reverse("admin:jobs_occurrence_change", args=[c.id]), c.id, c.job_name, c.status) for c in children]
        if not rows:
            return "none"
        return format_html_join(
            mark_safe("<br>"), '<a href="{}" class="occurrence-child">occurrence {}</a> {} ({})', rows
        )
