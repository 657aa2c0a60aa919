"""manage.py jobs: list definitions, show history, trigger a run, schedule a one-off run, cancel one, preview a
cron expression, prune."""

import argparse
import json
import re
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.clock import database_now, default_clock
from bookworm_scheduler.web.audit_log import from_command_line, os_user
from jobs.engine import store
from jobs.engine.oneoff import ScheduleError
from jobs.engine.schedules import InvalidSchedule, cron_instants, did_you_mean, get_zone, next_instants
from jobs.engine.store import CancelOutcome
from jobs.models import Occurrence
from jobs.web.audit import cancel_logged, cancel_refusal, run_now_logged, schedule_logged
from jobs.web.serializers import DEFAULT_LIMIT, MAX_LIMIT, BadFilter, HistoryFilter, history_rows, iso, job_rows

USAGE_ERROR = 2
DELAY = re.compile(r"(\d+)([smhd])")
DELAY_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class UsageError(ValueError):
    """An option's value the command cannot read; the message names the option."""


def duration(text: str) -> timedelta:
    """--in's value: a whole number and a unit, 30s, 10m, 2h or 1d."""
    matched = DELAY.fullmatch(text.strip())
    if matched is None:
        raise UsageError(f"--in is a whole number and a unit (30s, 10m, 2h or 1d), not {text!r}")
    return timedelta(**{DELAY_UNITS[matched[2]]: int(matched[1])})


def json_value(text: str, option: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option} is not JSON: {exc}") from None


def aware_instant(text: str, option: str) -> datetime:
    """An ISO-8601 instant with its offset (Z for UTC); a naive one is refused, not guessed."""
    try:
        instant = parse_datetime(text)
    except ValueError:
        instant = None
    if instant is None:
        raise UsageError(f"{option} is not an ISO-8601 instant: {text}")
    if timezone.is_naive(instant):
        raise UsageError(f"{option} needs its offset (2026-12-24T18:00:00+01:00, or Z for UTC): {text}")
    return instant


class Command(BaseCommand):
    help = "Inspect and drive the job definitions."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)

        listing = actions.add_parser("list", help="Each definition with its schedule, next run and last status.")
        listing.add_argument("--json", action="store_true")

        history = actions.add_parser("history", help="Occurrences, newest first.")
        history.add_argument("--job", help="Only this definition's occurrences.")
        history.add_argument("--status", choices=Occurrence.Status.values, help="Only occurrences in this status.")
        history.add_argument(
            "--manual",
            action=argparse.BooleanOptionalAction,
            help="Only manual runs (--manual) or only scheduled ones (--no-manual).",
        )
        history.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"At most this many (1 to {MAX_LIMIT}).")
        history.add_argument("--json", action="store_true")

        trigger = actions.add_parser("trigger", help="Run a job now through the scheduler, recorded as manual.")
        trigger.add_argument("name")
        trigger.add_argument("--wait", type=float, metavar="SECONDS", help="Wait up to SECONDS for the run to finish.")

        schedule = actions.add_parser("schedule", help="A one-off run of a registered job, at a time, with a payload.")
        schedule.add_argument("job", help="A registered job's name (the code's, as in a definition's job field).")
        when = schedule.add_mutually_exclusive_group()
        when.add_argument("--at", help="ISO-8601 instant with its offset (default: as soon as possible).")
        when.add_argument("--in", dest="delay", metavar="DELAY", help="After this long: 30s, 10m, 2h or 1d.")
        schedule.add_argument("--payload", metavar="JSON", help="A JSON object, the job's context.payload.")
        schedule.add_argument("--key", help="While a run with this key is scheduled or running, keep that one instead.")

        cancel = actions.add_parser(
            "cancel", help="Cancel a scheduled occurrence, or ask a running one to stop (as the dashboard's Cancel)."
        )
        cancel.add_argument("id", type=int, help="The occurrence's id (jobs history shows it).")

        preview = actions.add_parser("preview", help="The next fire instants of a cron expression.")
        preview.add_argument("expression", help="Five fields, or @hourly, @daily, @weekly, @monthly, @yearly.")
        preview.add_argument("--tz", default="UTC")
        preview.add_argument("--after", help="ISO-8601 instant (default: now).")
        preview.add_argument("--count", type=int, default=5)

        prune = actions.add_parser(
            "prune", help="Delete finished occurrences older than SCHEDULER_HISTORY_DAYS, in short batches."
        )
        prune.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")

    def handle(self, *args, **options):
        getattr(self, f"handle_{options['action']}")(**options)

    def emit(self, rows: list[dict], as_json: bool, columns: list[str]) -> None:
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        table = [columns] + [["" if row[c] is None else str(row[c]) for c in columns] for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())

    def handle_list(self, **options):
        self.emit(
            job_rows(),
            options["json"],
            ["name", "schedule", "timezone", "priority", "enabled", "next_run", "last_status"],
        )

    def handle_history(self, job=None, limit=DEFAULT_LIMIT, status=None, manual=None, **options):
        try:
            history = HistoryFilter(job=job, status=status, manual=manual, limit=limit)
        except BadFilter as exc:
            raise CommandError(f"--{exc}", returncode=USAGE_ERROR) from None
        if job and not (
            PeriodicTask.objects.filter(name=job).exists() or Occurrence.objects.filter(job_name__iexact=job).exists()
        ):  # neither a definition nor the history of a deleted one
            raise self.no_such_definition(job)
        self.emit(
            history_rows(history),
            options["json"],
            ["job", "scheduled_for", "status", "attempt", "instance", "manual", "error"],
        )

    def handle_trigger(self, name, wait=None, **options):
        task = PeriodicTask.objects.select_related("policy").filter(name=name).first()
        if task is None:
            raise self.no_such_definition(name)
        occurrence = run_now_logged(task, by=f"{os_user()} via manage.py jobs trigger", via=from_command_line())
        self.stdout.write(f"triggered {name}: occurrence {occurrence.id}")
        if wait is None:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            occurrence.refresh_from_db()
            if occurrence.status in Occurrence.FINISHED:
                self.stdout.write(f"{occurrence.status}{': ' + occurrence.reason if occurrence.reason else ''}")
                if occurrence.status != Occurrence.Status.SUCCEEDED:
                    raise CommandError(f"{name} {occurrence.status}", returncode=1)
                return
            time.sleep(0.1)
        raise CommandError(f"{name} did not finish within {wait} s (status {occurrence.status})", returncode=1)

    def handle_schedule(self, job, at=None, delay=None, payload=None, key=None, **options):
        try:
            instant = aware_instant(at, "--at") if at else database_now() + duration(delay) if delay else None
            payload = json_value(payload, "--payload") if payload is not None else None
        except UsageError as exc:
            raise CommandError(str(exc), returncode=USAGE_ERROR) from None
        by = f"{os_user()} via manage.py jobs schedule"
        try:
            occurrence, new = schedule_logged(job, by=by, via=from_command_line(), at=instant, payload=payload, key=key)
        except ScheduleError as exc:
            raise CommandError(str(exc), returncode=USAGE_ERROR) from None
        at_text = occurrence.scheduled_utc
        if new:
            self.stdout.write(f"scheduled {job}: occurrence {occurrence.id} at {at_text}")
        else:
            self.stdout.write(f"already scheduled {job}: occurrence {occurrence.id} at {at_text} (key {key})")

    def handle_cancel(self, id, **options):
        occurrence = Occurrence.objects.filter(pk=id).first()
        if occurrence is None:
            raise CommandError(f"no such occurrence: {id}", returncode=1)
        by = f"{os_user()} via manage.py jobs cancel"
        outcome = cancel_logged(occurrence, by=by, via=from_command_line(), now=default_clock())
        if outcome is CancelOutcome.CANCELLED:
            self.stdout.write(f"cancelled {id}")
        elif outcome is CancelOutcome.REQUESTED:
            self.stdout.write(f"asked {id} to stop (running)")
        else:
            raise CommandError(cancel_refusal(occurrence), returncode=1)

    @staticmethod
    def no_such_definition(name: str) -> CommandError:
        names = PeriodicTask.objects.values_list("name", flat=True)
        return CommandError(f"no such job definition: {name}{did_you_mean(name, names)}", returncode=USAGE_ERROR)

    def handle_preview(self, expression, tz="UTC", after=None, count=5, **options):
        if count < 1:
            raise CommandError("--count must be at least 1", returncode=USAGE_ERROR)
        try:
            zone = get_zone(tz)
            if after:
                start = parse_datetime(after)
                if start is None:
                    raise InvalidSchedule(f"--after is not an ISO-8601 instant: {after}")
                if timezone.is_naive(start):
                    start = start.replace(tzinfo=zone)  # a local time in --tz
            else:
                start = database_now()  # the clock that decides when the scheduler runs it
            instants = next_instants(cron_instants(expression, zone, start), count)
        except (InvalidSchedule, ValueError) as exc:
            raise CommandError(str(exc), returncode=USAGE_ERROR) from None
        for instant in instants:
            self.stdout.write(instant.astimezone(zone).isoformat())

    def handle_prune(self, dry_run=False, **options):
        now = database_now()
        keep = timedelta(days=settings.SCHEDULER_HISTORY_DAYS)
        if dry_run:
            count = Occurrence.objects.finished_before(now - keep).count()
            self.stdout.write(f"would delete {count} occurrences finished before {iso(now - keep)}")
            return
        total, more = 0, True
        while more:
            deleted, more = store.prune(now, keep=keep, batch=5000, batches=1)
            total += deleted
        self.stdout.write(f"deleted {total} occurrences finished before {iso(now - keep)}")
