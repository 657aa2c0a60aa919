"""Alerts without Prometheus: an email and a webhook when a job fails for good or too many runs fail.

jobs.engine.store.record_attempt writes a job_failed alert in the transaction that records a run's
final failure (after its retries); check_failure_rate writes a failure_rate alert. Both are
rows (models.Alert), sent here after their transaction committed: a crash between the failure
and the send loses no alert, the row waits for the next pass of any scheduler.

Claiming: each alert is sent inside a short transaction of its own that holds its row
(SELECT ... FOR UPDATE SKIP LOCKED) and records the outcome before it commits. Another scheduler
skips a held row, so no two send the same alert; a crash during the send rolls the transaction
back and the alert is still pending, to be sent again (at least once, never lost). This needs
no "sending" state and no lease to reap; its price is a transaction kept open during the send,
at most one ALERT_TIMEOUT_SECONDS per channel.

The channels:
- email through django.core.mail (EMAIL_URL), to ALERT_EMAILS, from DEFAULT_FROM_EMAIL;
- a webhook: a POST of the JSON body {"text": ...} to ALERT_WEBHOOK_URL. Slack's incoming
  webhooks take that body, and so do Microsoft Teams' incoming webhooks (the Office 365
  connector kind reads "text" as a simple MessageCard). Teams' newer Workflows webhooks
  expect an Adaptive Card instead.

A failing channel is logged (action alert_failed) and tried again after a backoff, up to
ALERT_MAX_ATTEMPTS tries (Alert.record_delivery); the other channel of the alert is not sent
again. Sending never fails a job (the job's transaction committed before) and never raises
into the scheduler's loop. The loop's thread does the sending, so each channel has a short
timeout, a pass stops at the first failure, and after one this scheduler pauses sending for
a while: a dead channel costs the loop at most one timeout per channel now and then.
"""

import json
import logging
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Count, Q

from bookworm_scheduler.kernel.dialect import try_advisory_lock
from bookworm_scheduler.kernel.errors import one_line
from jobs.models import Alert, Occurrence

logger = logging.getLogger(__name__)

# Alerts one pass sends at most, each in its own transaction.
BATCH = 20
# How often a scheduler looks at the failure rate and deletes old alerts.
CHECK_EVERY = timedelta(minutes=1)
# After a failed channel (or an unexpected error), how long this scheduler leaves sending alone.
PAUSE_AFTER_FAILURE = timedelta(seconds=30)
# Old alerts deleted per check.
PRUNE_BATCH = 1000


class Sent(NamedTuple):
    tried: int  # alerts tried in the pass
    failed: bool  # whether a channel failed (the pass stopped there)


def send_due_alerts(now: datetime, *, limit: int = BATCH) -> Sent:
    """One pass: send up to limit due alerts, oldest first, each in its own short transaction.

    Stops at the first alert with a failed channel, so a dead channel costs at most one
    timeout per pass; the alerts behind it wait for the next one.
    """
    tried = 0
    while tried < limit:
        with transaction.atomic():
            # Index alert_pending; SKIP LOCKED: an alert another scheduler is sending is its.
            alert = Alert.objects.due(now).select_for_update(skip_locked=True).first()
            if alert is None:
                break
            errors = deliver(alert)
            alert.record_delivery(errors, now)
        tried += 1
        _log_outcome(alert, errors)
        if any(errors.values()):
            return Sent(tried, True)
    return Sent(tried, False)


def deliver(alert: Alert) -> dict[str, str | None]:
    """Try each pending channel of alert once: {channel: "" if sent, None if no longer configured, else why not}."""
    configured = Alert.configured()
    errors: dict[str, str | None] = {}
    for channel in alert.pending_channels():
        if not configured[channel]:
            errors[channel] = None
            continue
        try:
            CHANNELS[channel](alert)
        except Exception as exc:  # whatever a channel raises is that channel's failure, never the caller's
            errors[channel] = _describe(exc)
        else:
            errors[channel] = ""
    return errors


def send_email(alert: Alert) -> None:
    send_mail(alert.subject, alert.text, settings.DEFAULT_FROM_EMAIL, settings.ALERT_EMAILS)


def post_webhook(alert: Alert) -> None:
    """POST {"text": ...}: the body both Slack's and Teams' incoming webhooks accept (see the module's docstring)."""
    request = urllib.request.Request(
        settings.ALERT_WEBHOOK_URL,
        data=json.dumps({"text": alert.text}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=settings.ALERT_TIMEOUT_SECONDS) as response:
        response.read(4096)


CHANNELS = {"email": send_email, "webhook": post_webhook}


def check_failure_rate(now: datetime) -> Alert | None:
    """Write a failure_rate alert if too many runs failed in the window; the alert, or None.

    Too many: more than ALERT_FAILURE_RATE_THRESHOLD of the runs that finished (succeeded or
    failed for good) within the last ALERT_FAILURE_RATE_WINDOW_MINUTES, with at least
    ALERT_FAILURE_RATE_MIN_RUNS of them. None is written during the cool-down after the last
    one. One scheduler at a time (an advisory lock): the others skip.
    """
    window = timedelta(minutes=settings.ALERT_FAILURE_RATE_WINDOW_MINUTES)
    cooldown = timedelta(minutes=settings.ALERT_COOLDOWN_MINUTES)
    with transaction.atomic():
        if not try_advisory_lock("jobs.alert_failure_rate"):
            return None
        if Alert.objects.created_since(Alert.Kind.FAILURE_RATE, now - cooldown).exists():
            return None
        finished, failed = finished_runs(now - window, now)
        if finished < settings.ALERT_FAILURE_RATE_MIN_RUNS:
            return None
        if failed / finished <= settings.ALERT_FAILURE_RATE_THRESHOLD:
            return None
        alert = Alert.failure_rate(failed=failed, finished=finished, window=window, now=now)
        alert.save()
    logger.warning(
        "alert %s: %s",
        alert.id,
        alert.subject,
        extra={"action": "alert_created", "alert": alert.id, "kind": alert.kind, "failed": failed, "runs": finished},
    )
    return alert


def finished_runs(since: datetime, until: datetime) -> tuple[int, int]:
    """(runs that succeeded or failed for good, how many of them failed), finished in (since, until].

    Skipped, missed and expired occurrences did not run. Index occ_finished bounds the scan to the window.
    """
    succeeded, failed = Occurrence.Status.SUCCEEDED, Occurrence.Status.FAILED
    ran = Occurrence.objects.filter(status__in=[succeeded, failed], finished_at__gt=since, finished_at__lte=until)
    counts = ran.aggregate(finished=Count("id"), failed=Count("id", filter=Q(status=failed)))
    return counts["finished"], counts["failed"]


class AlertSender:
    """The scheduler's alert pass (Scheduler.run_pass): send what is due; once a minute, the failure rate.

    With no channel configured it does nothing, not even a query.
    """

    def __init__(self, *, history: timedelta):
        self.history = history  # alerts are kept as long as the occurrences' history
        self._next_check: datetime | None = None
        self._paused_until: datetime | None = None

    def run(self, now: datetime) -> bool:
        """One pass; True if more alerts may be due at once. Logs what goes wrong; never raises."""
        if not Alert.enabled():
            return False
        try:
            if self._next_check is None or now >= self._next_check:
                self._next_check = now + CHECK_EVERY
                check_failure_rate(now)
                Alert.objects.prune_batch(now - self.history, PRUNE_BATCH)
            if self._paused_until is not None and now < self._paused_until:
                return False
            sent = send_due_alerts(now)
        except Exception as exc:  # a bug or a database error here must not stop the scheduler
            logger.exception(
                "the alert pass failed: %s", _describe(exc), extra={"action": "alert_error", "error": _describe(exc)}
            )
            self._paused_until = now + PAUSE_AFTER_FAILURE
            return False
        if sent.failed:
            self._paused_until = now + PAUSE_AFTER_FAILURE
        return sent.tried == BATCH and not sent.failed


def _log_outcome(alert: Alert, errors: dict[str, str | None]) -> None:
    fields = {"alert": alert.id, "kind": alert.kind, "job_name": alert.job_name, "attempt": alert.attempts}
    sent = [channel for channel, error in errors.items() if error == ""]
    if sent:
        logger.info(
            "alert %s sent by %s: %s",
            alert.id,
            " and ".join(sent),
            alert.subject,
            extra={"action": "alert_sent", "channels": sent, **fields},
        )
    for channel, error in errors.items():
        if not error:
            continue
        gave_up = getattr(alert, f"{channel}_status") == Alert.Delivery.FAILED
        logger.log(
            logging.ERROR if gave_up else logging.WARNING,
            "alert %s by %s failed (try %d)%s: %s",
            alert.id,
            channel,
            alert.attempts,
            ", giving up" if gave_up else f", trying again at {alert.next_try_at.isoformat()}",
            error,
            extra={
                "action": "alert_failed",
                "channel": channel,
                "error": error,
                "gave_up": gave_up,
                "retry_at": None if gave_up else alert.next_try_at.isoformat(),
                **fields,
            },
        )


def _describe(exc: BaseException) -> str:
    """One line about exc; for an HTTP error, the start of the response (Slack says what it disliked)."""
    if isinstance(exc, urllib.error.HTTPError):
        try:
            body = exc.read(200).decode(errors="replace").strip()
        except Exception:  # the body is a courtesy
            body = ""
        return f"HTTP {exc.code} {exc.reason}" + (f": {body}" if body else "")
    return one_line(exc)
