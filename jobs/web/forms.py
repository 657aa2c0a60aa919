"""The job definition's forms, and the cron and time-zone helpers they and the admin show.

JobDefinitionForm edits a PeriodicTask as the scheduler runs it: a registered job and one
schedule, a cron expression checked the way the scheduler evaluates it. describe_cron gives
the live preview (an expression's words and next fire times), cron_words the list's words.
ScheduleRunForm is a job page's "Schedule a run" (a one-off run: jobs.web.oneoff_admin).
"""

import functools
import json

from cron_descriptor import get_description
from django import forms
from django.forms.utils import flatatt
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from bookworm_scheduler.kernel.clock import default_clock
from jobs.engine import oneoff, schedules
from jobs.engine.definitions import cron_expression
from jobs.engine.registry import get_job, registered_jobs
from jobs.engine.schedules import InvalidSchedule, cron_instants, did_you_mean, get_zone, next_instants, validate_cron
from jobs.models import FollowUpWhen


def job_choices(current: str, *, empty: str = "---------") -> list[tuple[str, str]]:
    """A select's choices of registered jobs; a stored name no longer registered (current) is kept, marked so."""
    names = [spec.name for spec in registered_jobs()]
    choices = [("", empty), *((name, name) for name in names)]
    if current and current not in names:
        choices.append((current, f"{current} (not registered)"))
    return choices


@functools.cache
def zone_names() -> tuple[str, ...]:
    return tuple(sorted(schedules.zone_names()))


class ZoneField(forms.ChoiceField):
    """A zone among zone_names(); an unknown one is an error that names the closest zone."""

    def validate(self, value):
        if value and value not in zone_names():
            raise forms.ValidationError(f"Unknown time zone {value!r}{did_you_mean(value, zone_names())}.")
        super().validate(value)


class ZoneSelect(forms.Select):
    """The ~600 time zones as one select, its options written in Python.

    Django's Select renders a template per option, which for this list was most of the change
    form's time.
    """

    def render(self, name, value, attrs=None, renderer=None):
        selected = str(value[0] if isinstance(value, list | tuple) and value else value or "")
        options = format_html_join(
            "",
            '<option value="{}"{}>{}</option>',
            ((zone, " selected" if zone == selected else "", zone) for zone in zone_names()),
        )
        return format_html(
            "<select{}>{}</select>", flatatt(self.build_attrs(self.attrs, {**(attrs or {}), "name": name})), options
        )


def describe_cron(expression: str, zone: str) -> tuple[str, list, str]:
    """(the expression in words, its next five fire times in zone, an error) for the live preview."""
    try:
        expression = validate_cron(expression, zone)
        tz = get_zone(zone)
        instants = next_instants(cron_instants(expression, tz, default_clock()), 5)
        return cron_words(expression), [i.astimezone(tz) for i in instants], ""
    except (InvalidSchedule, ValueError) as exc:
        return "", [], str(exc)


@functools.lru_cache(maxsize=4096)
def cron_words(expression: str) -> str:
    """A valid expression in words; cron-descriptor reloads its translations on every call."""
    try:
        return get_description(expression)
    except Exception as exc:  # cron-descriptor's own errors: the expression is valid, its words are not
        return f"({type(exc).__name__})"


class CrontabScheduleForm(forms.ModelForm):
    class Meta:
        model = CrontabSchedule
        fields = "__all__"

    def clean(self):
        data = super().clean()
        zone = self.data.get(self.add_prefix("timezone"))
        if self.has_error("timezone") and zone and did_you_mean(zone, zone_names()):
            self.errors["timezone"] = self.error_class(
                [f"Unknown time zone {zone!r}{did_you_mean(zone, zone_names())}."]
            )
        fields = ["minute", "hour", "day_of_month", "month_of_year", "day_of_week"]
        if not self.errors and all(data.get(f) for f in fields):
            try:
                validate_cron(cron_expression(CrontabSchedule(**{f: data[f] for f in fields})), data.get("timezone"))
            except InvalidSchedule as exc:
                raise forms.ValidationError(str(exc)) from None
        return data


class JobDefinitionForm(forms.ModelForm):
    """A definition as the scheduler runs it: a registered job and one schedule."""

    task = forms.ChoiceField(label="Job", help_text="The registered job this definition runs.")
    cron = forms.CharField(
        label="Cron expression",
        required=False,
        help_text=(
            "Five fields, as Debian cron: minute hour day-of-month month day-of-week; "
            "or @hourly, @daily (@midnight), @weekly, @monthly, @yearly (@annually)."
        ),
    )
    timezone = ZoneField(
        label="Time zone", initial="UTC", help_text="The zone the cron expression is read in.", widget=ZoneSelect
    )

    class Meta:
        model = PeriodicTask
        fields = [
            "name",
            "task",
            "enabled",
            "description",
            "interval",
            "clocked",
            "start_time",
            "one_off",
            "kwargs",
            "expires",
            "expire_seconds",
        ]
        # Ours, not django-celery-beat's: the view-only page shows these for the model's fields too.
        labels = {
            "task": "Job",
            "interval": "Interval",
            "clocked": "Clocked time",
            "start_time": "Starts at",
            "one_off": "Once only",
            "kwargs": "Keyword arguments (JSON)",
            "expires": "Expires at",
            "expire_seconds": "Expires after (seconds)",
        }
        help_texts = {
            "name": "The job's name in the console, the history and the alerts; unique.",
            "task": "The registered job this definition runs.",
            "enabled": "Untick to pause the schedule; instants while paused are not run later.",
            "description": "What the job does and whom to ask about it (optional).",
            "interval": "Run every so often instead of a cron expression.",
            "clocked": "Run once at this time instead of a cron expression.",
            "start_time": "No run before this time (optional).",
            "one_off": "Run once, then disable the job.",
            "kwargs": 'Passed to the job, e.g. {"batch_size": 100}.',
            "expires": "No run after this time (optional).",
            "expire_seconds": "A run not started this many seconds after its instant is skipped (optional).",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["task"].choices = job_choices(self.instance.task if self.instance.pk else "")
        self.fields["timezone"].choices = [(z, z) for z in zone_names()]
        if self.instance.pk and self.instance.crontab_id:
            self.initial["cron"] = cron_expression(self.instance.crontab)
            self.initial["timezone"] = str(self.instance.crontab.timezone)
        preview = reverse("admin:jobs_schedule_preview")
        for name in ("cron", "timezone"):
            self.fields[name].widget.attrs.update(
                {
                    "hx-get": preview,
                    "hx-trigger": "input changed delay:300ms, change",
                    "hx-target": "#schedule-preview",
                    "hx-include": "[name=cron],[name=timezone]",
                }
            )

    def clean_task(self):
        name = self.cleaned_data["task"]
        if get_job(name) is None:
            raise forms.ValidationError(f"No job named {name!r} is registered.")
        return name

    def clean_kwargs(self):
        value = self.cleaned_data.get("kwargs") or "{}"
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError("A JSON object, e.g. {}.")
        return value

    def clean(self):
        data = super().clean()
        cron = (data.get("cron") or "").strip()
        chosen = [kind for kind in ("cron", "interval", "clocked") if (cron if kind == "cron" else data.get(kind))]
        if len(chosen) != 1:
            raise forms.ValidationError("Give exactly one schedule: a cron expression, an interval or a clocked time.")
        if data.get("expires") and data.get("expire_seconds") is not None:
            raise forms.ValidationError("Give an expiry time or expiry seconds, not both.")
        self.instance.solar = None
        if cron and "timezone" not in data:
            return data  # the zone's own error says what is wrong
        if cron:
            try:
                cron = validate_cron(cron, data.get("timezone", "UTC"))
            except InvalidSchedule as exc:
                self.add_error("cron", str(exc))
                return data
            minute, hour, dom, month, dow = cron.split()  # a macro as the five fields CrontabSchedule stores
            fields = dict(
                minute=minute,
                hour=hour,
                day_of_month=dom,
                month_of_year=month,
                day_of_week=dow,
                timezone=data["timezone"],
            )
            self.instance.crontab = CrontabSchedule.objects.filter(**fields).first() or CrontabSchedule(**fields)
        else:
            self.instance.crontab = None
        return data

    def save(self, commit=True):
        crontab = self.instance.crontab
        if crontab is not None and crontab.pk is None:
            crontab.save()
            self.instance.crontab = crontab
        return super().save(commit)


LOCAL_TIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]


class ScheduleRunForm(forms.Form):
    """A one-off run of a job from its page (jobs.web.oneoff_admin): when and its expiry, in the viewer's zone, a
    payload, a key, and a follow-up (cleaned as `then`: jobs.schedule's then=[FollowUp(...)], or none).

    `at` and `expires` are read in the active zone (bookworm_scheduler.web.display_zone), as Django reads any form's
    time; empty, the run is due at once. The payload is checked here as jobs.schedule checks it
    (oneoff.check_payload: a JSON object within SCHEDULER_PAYLOAD_MAX_BYTES), so a bad one is this
    form's error; the page's script says the same as it is typed.
    """

    at = forms.DateTimeField(
        label="When",
        required=False,
        input_formats=LOCAL_TIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"),
        help_text="In your display zone. Empty: as soon as possible.",
    )
    expires = forms.DateTimeField(
        label="Expires",
        required=False,
        input_formats=LOCAL_TIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"),
        help_text="In your display zone. Not started by then, the run is recorded expired and never runs. "
        "Empty: it runs however late.",
    )
    payload = forms.CharField(
        label="Payload",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "spellcheck": "false", "placeholder": '{"order_id": 42}'}),
        help_text="A JSON object, which the job reads as context.payload. Empty: none.",
    )
    key = forms.CharField(
        label="Key",
        required=False,
        max_length=oneoff.KEY_MAX_LENGTH,
        help_text="Optional: while a run with this key is scheduled or running, no other is added.",
    )
    then_when = forms.ChoiceField(
        label="When it", required=False, choices=FollowUpWhen.choices, initial=FollowUpWhen.SUCCEEDED
    )
    then_job = forms.ChoiceField(
        label="then run",
        required=False,
        help_text="Optional: a follow-up, a run of this registered job created when the run ends so.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["then_job"].choices = job_choices("", empty="nothing")

    def clean(self):
        """Adds `then`: the follow-up chosen, as jobs.schedule's then (none without a job)."""
        cleaned = super().clean()
        job, when = cleaned.get("then_job"), cleaned.get("then_when") or FollowUpWhen.SUCCEEDED
        cleaned["then"] = [oneoff.FollowUp(job, when=when)] if job else []
        return cleaned

    def clean_payload(self) -> dict | None:
        text = self.cleaned_data["payload"].strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError(f"A JSON object ({{...}}), not {type(value).__name__}.")
        try:
            return oneoff.check_payload(value)
        except oneoff.ScheduleError as exc:
            raise forms.ValidationError(f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None
