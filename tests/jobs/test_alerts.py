import json
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from jobs.alerts import delivery as alerts
from jobs.alerts.delivery import AlertSender, Sent, check_failure_rate, send_due_alerts
from jobs.engine import store
from jobs.models import Alert, Occurrence, Priority
from tests.jobs.helpers import make_definition, make_scheduler

LINK = "https://scheduler.example.com/tickerq/jobs/occurrence/{}/change/"
ERROR = "RuntimeError: the sample job failed on purpose"


class Webhook:
    """A local HTTP server that records each POST and answers with `status`."""

    def __init__(self):
        self.requests = []
        self.status = 200
        self.delay = 0.0
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                webhook.requests.append((self.headers["Content-Type"], json.loads(body)))
                time.sleep(webhook.delay)
                self.send_response(webhook.status)
                self.end_headers()
                self.wfile.write(b"ok" if webhook.status == 200 else b"invalid_payload")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def texts(self):
        return [body["text"] for _, body in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    server = Webhook()
    yield server
    server.close()


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/alerts"


@pytest.fixture
def alert_settings(settings):
    """Email alerts to one address through the in-memory backend; no webhook."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.DEFAULT_FROM_EMAIL = "scheduler@example.com"
    settings.ALERT_EMAILS = ["ops@example.com"]
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_DASHBOARD_URL = "https://scheduler.example.com"
    settings.ALERT_MAX_ATTEMPTS = 10
    settings.ALERT_FAILURE_RATE_THRESHOLD = 0.5
    settings.ALERT_FAILURE_RATE_WINDOW_MINUTES = 15
    settings.ALERT_FAILURE_RATE_MIN_RUNS = 10
    settings.ALERT_COOLDOWN_MINUTES = 60
    mail.outbox = []
    return settings


def fail_for_good(clock, name="failing"):
    """Run a job that raises and has no retries; the failed occurrence."""
    occurrence = store.trigger(make_definition(name, "test.fail", every=60), now=clock.now, priority=Priority.NORMAL)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == 1
    occurrence.refresh_from_db()
    assert occurrence.status == "failed"
    return occurrence


def actions(caplog, action):
    return [r for r in caplog.records if getattr(r, "action", None) == action]


def make_alert(clock, n):
    alert = Alert.new(Alert.Kind.JOB_FAILED, now=clock.now, subject=f"Job job-{n} failed", text=f"alert {n}")
    alert.save()
    return alert


def finished(clock, status, count, minutes_ago=1):
    at = clock.now - timedelta(minutes=minutes_ago)
    Occurrence.objects.bulk_create(
        Occurrence(job_name="rated", scheduled_for=at, run_after=at, status=status, finished_at=at, manual=True)
        for _ in range(count)
    )


# Writing the alert with the failure.


@pytest.mark.django_db
def test_a_job_that_fails_for_good_writes_one_alert_in_its_failing_transaction(
    clock, no_seed_definitions, alert_settings
):
    occurrence = fail_for_good(clock)
    alert = Alert.objects.get()
    assert (alert.kind, alert.occurrence_id, alert.job_name, alert.error) == (
        "job_failed",
        occurrence.id,
        "failing",
        ERROR,
    )
    assert (alert.email_status, alert.webhook_status, alert.attempts) == ("pending", "skipped", 0)
    assert alert.created_at == clock.now and alert.next_try_at == clock.now
    assert mail.outbox == []  # written with the failure, sent after it


@pytest.mark.django_db
def test_a_failure_that_will_be_retried_and_a_success_write_no_alert(clock, no_seed_definitions, alert_settings):
    task = make_definition("flaky", "test.fail_until", every=3600, kwargs={"succeed_on": 2}, max_retries=1)
    occurrence = store.trigger(task, now=clock.now, priority=Priority.NORMAL)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now, limit=1)
    occurrence.refresh_from_db()
    assert occurrence.status == "scheduled"
    assert not Alert.objects.exists()
    scheduler.run_ready(clock.now, limit=1)
    occurrence.refresh_from_db()
    assert occurrence.status == "succeeded"
    assert not Alert.objects.exists()


@pytest.mark.django_db
def test_the_alert_rolls_back_with_the_failure_it_reports(clock, no_seed_definitions, alert_settings):
    task = make_definition("doomed", every=60)
    store.trigger(task, now=clock.now, priority=Priority.NORMAL)
    scheduler = make_scheduler(clock)
    [occurrence] = store.claim_ready(
        now=clock.now, session=scheduler.session, scheduler="test", lease=timedelta(seconds=60), long_running=False
    )
    with pytest.raises(ConnectionError), transaction.atomic():
        store.record_attempt(occurrence, session=scheduler.session, started_at=clock.now, now=clock.now, error="boom")
        assert Alert.objects.filter(occurrence=occurrence).count() == 1
        raise ConnectionError("the commit never happened")
    assert not Alert.objects.exists()
    assert Occurrence.objects.get(id=occurrence.id).status == "running"


@pytest.mark.django_db
def test_recording_a_success_still_takes_one_statement_and_a_final_failure_one_more(
    clock, no_seed_definitions, alert_settings
):
    task = make_definition("counted", every=60)
    scheduler = make_scheduler(clock)
    for _ in range(2):
        store.trigger(task, now=clock.now, priority=Priority.NORMAL)
    first, second = store.claim_ready(
        now=clock.now,
        session=scheduler.session,
        scheduler="test",
        lease=timedelta(seconds=60),
        long_running=False,
        limit=2,
    )
    with CaptureQueriesContext(connection) as success:
        store.record_attempt(first, session=scheduler.session, started_at=clock.now, now=clock.now)
    with CaptureQueriesContext(connection) as failure:
        store.record_attempt(second, session=scheduler.session, started_at=clock.now, now=clock.now, error="boom")
    assert (len(success), len(failure)) == (1, 2)


@pytest.mark.django_db
def test_a_run_the_reaper_records_as_failed_for_good_writes_its_alert(clock, no_seed_definitions, alert_settings):
    task = make_definition("abandoned", every=3600)
    occurrence = store.trigger(task, now=clock.now, priority=Priority.NORMAL)
    dead = make_scheduler(clock, instance_id="dead", lease=30)
    store.claim_ready(
        now=clock.now, session=dead.session, scheduler="dead", lease=dead.leases.lease, long_running=False
    )
    survivor = make_scheduler(clock, instance_id="survivor", lease=30)
    survivor.planner.refresh()
    assert survivor.reap(clock.advance(seconds=31)) == 1
    alert = Alert.objects.get()
    assert alert.occurrence_id == occurrence.id and "presumed dead" in alert.error


@pytest.mark.django_db
def test_with_no_channel_configured_nothing_is_written_or_queried(clock, no_seed_definitions, alert_settings):
    alert_settings.ALERT_EMAILS = []
    fail_for_good(clock)
    assert not Alert.objects.exists()
    with CaptureQueriesContext(connection) as queries:
        assert AlertSender(history=timedelta(days=30)).run(clock.now) is False
    assert len(queries) == 0


# Sending.


@pytest.mark.django_db
def test_the_alert_is_emailed_with_the_job_the_error_and_a_link_to_the_run(
    clock, no_seed_definitions, alert_settings, caplog
):
    occurrence = fail_for_good(clock)
    assert send_due_alerts(clock.now) == Sent(1, False)
    [message] = mail.outbox
    assert message.subject == "Job failing failed"
    assert (message.to, message.from_email) == (["ops@example.com"], "scheduler@example.com")
    assert "Job failing failed after 1 attempt(s)" in message.body
    assert ERROR in message.body
    assert LINK.format(occurrence.id) in message.body
    alert = Alert.objects.get()
    assert (alert.email_status, alert.webhook_status, alert.attempts) == ("sent", "skipped", 1)
    [sent] = actions(caplog, "alert_sent")
    assert (sent.alert, sent.channels, sent.job_name) == (alert.id, ["email"], "failing")
    assert send_due_alerts(clock.advance(hours=2)) == Sent(0, False)
    assert len(mail.outbox) == 1


@pytest.mark.django_db
def test_without_a_dashboard_address_the_link_is_the_path(clock, no_seed_definitions, alert_settings):
    alert_settings.ALERT_DASHBOARD_URL = ""
    occurrence = fail_for_good(clock)
    assert Alert.objects.get().text.endswith(f"\n\n/tickerq/jobs/occurrence/{occurrence.id}/change/")


@pytest.mark.django_db
def test_the_alert_is_posted_to_the_webhook_as_json_text(clock, no_seed_definitions, alert_settings, webhook):
    alert_settings.ALERT_EMAILS = []
    alert_settings.ALERT_WEBHOOK_URL = webhook.url
    occurrence = fail_for_good(clock)
    send_due_alerts(clock.now)
    [(content_type, body)] = webhook.requests
    assert content_type == "application/json"
    assert list(body) == ["text"]
    assert "Job failing failed" in body["text"] and ERROR in body["text"]
    assert LINK.format(occurrence.id) in body["text"]
    assert (Alert.objects.get().email_status, Alert.objects.get().webhook_status) == ("skipped", "sent")
    assert mail.outbox == []


@pytest.mark.django_db(transaction=True)
def test_a_crash_between_the_failure_and_the_send_loses_no_alert(clock, no_seed_definitions, alert_settings, webhook):
    alert_settings.ALERT_WEBHOOK_URL = webhook.url
    occurrence = fail_for_good(clock)

    # The failure committed with its alert: another connection sees both.
    settings_dict = connection.settings_dict
    conninfo = f"host={settings_dict['HOST'] or '127.0.0.1'} port={settings_dict['PORT'] or 5432} "
    conninfo += f"user={settings_dict['USER'] or 'postgres'} dbname={settings_dict['NAME']}"
    with psycopg.connect(conninfo) as other:
        rows = other.execute(f"SELECT occurrence_id, email_status FROM {Alert._meta.db_table}").fetchall()
    assert rows == [(occurrence.id, "pending")]

    # The process dies while sending: the claim rolls back and the alert is still due.
    class Killed(BaseException):
        pass

    def die(alert):
        raise Killed()

    original = alerts.CHANNELS["email"]
    alerts.CHANNELS["email"] = die
    try:
        with pytest.raises(Killed):
            send_due_alerts(clock.now)
    finally:
        alerts.CHANNELS["email"] = original
    alert = Alert.objects.get()
    assert (alert.email_status, alert.webhook_status, alert.attempts) == ("pending", "pending", 0)

    # Another scheduler's pass, later, sends it.
    survivor = make_scheduler(clock, instance_id="survivor")
    survivor.alerts.run(clock.advance(seconds=5))
    assert len(mail.outbox) == 1 and LINK.format(occurrence.id) in mail.outbox[0].body
    assert len(webhook.requests) == 1
    alert.refresh_from_db()
    assert (alert.email_status, alert.webhook_status, alert.attempts) == ("sent", "sent", 1)


@pytest.mark.django_db
def test_a_failing_webhook_is_retried_later_and_spares_the_job_and_the_email(
    clock, no_seed_definitions, alert_settings, webhook, caplog
):
    alert_settings.ALERT_WEBHOOK_URL = webhook.url
    webhook.status = 500
    occurrence = fail_for_good(clock)
    assert send_due_alerts(clock.now) == Sent(1, True)
    assert len(webhook.requests) == 1 and len(mail.outbox) == 1
    alert = Alert.objects.get()
    assert (alert.email_status, alert.webhook_status, alert.attempts) == ("sent", "pending", 1)
    assert alert.last_error == "webhook: HTTP 500 Internal Server Error: invalid_payload"
    assert alert.next_try_at == clock.now + timedelta(seconds=30)
    [failed] = actions(caplog, "alert_failed")
    assert (failed.alert, failed.channel, failed.attempt, failed.gave_up) == (alert.id, "webhook", 1, False)
    assert Occurrence.objects.get(id=occurrence.id).reason == ERROR  # the job's record is its own

    assert send_due_alerts(clock.advance(seconds=29)) == Sent(0, False)
    webhook.status = 200
    assert send_due_alerts(clock.advance(seconds=1)) == Sent(1, False)
    alert.refresh_from_db()
    assert (alert.email_status, alert.webhook_status, alert.attempts) == ("sent", "sent", 2)
    assert len(webhook.requests) == 2 and len(mail.outbox) == 1  # the email is not sent again


@pytest.mark.django_db
def test_a_webhook_on_a_closed_port_is_given_up_after_the_last_attempt(
    clock, no_seed_definitions, alert_settings, closed_port, caplog
):
    alert_settings.ALERT_EMAILS = []
    alert_settings.ALERT_WEBHOOK_URL = closed_port
    alert_settings.ALERT_MAX_ATTEMPTS = 3
    fail_for_good(clock)
    for _ in range(3):
        assert send_due_alerts(clock.advance(hours=1)) == Sent(1, True)
    assert send_due_alerts(clock.advance(hours=1)) == Sent(0, False)
    alert = Alert.objects.get()
    assert (alert.webhook_status, alert.attempts) == ("failed", 3)
    assert "Connection refused" in alert.last_error
    assert [(r.attempt, r.gave_up) for r in actions(caplog, "alert_failed")] == [(1, False), (2, False), (3, True)]


@pytest.mark.django_db
def test_after_a_failed_channel_the_scheduler_leaves_sending_alone_for_a_while(
    clock, no_seed_definitions, alert_settings, closed_port
):
    alert_settings.ALERT_EMAILS = []
    alert_settings.ALERT_WEBHOOK_URL = closed_port
    first, second = make_alert(clock, 1), make_alert(clock, 2)
    sender = AlertSender(history=timedelta(days=30))
    assert sender.run(clock.now) is False
    assert Alert.objects.get(id=first.id).attempts == 1
    assert Alert.objects.get(id=second.id).attempts == 0  # the pass stopped at the first failure
    sender.run(clock.advance(seconds=29))
    assert Alert.objects.get(id=second.id).attempts == 0
    sender.run(clock.advance(seconds=1))
    assert Alert.objects.get(id=second.id).attempts == 1


@pytest.mark.django_db
def test_the_scheduler_loop_sends_due_alerts(clock, no_seed_definitions, alert_settings):
    fail_for_good(clock)
    scheduler = make_scheduler(clock)
    scheduler.run_pass(clock.advance(seconds=1))
    assert [m.subject for m in mail.outbox] == ["Job failing failed"]


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_senders_send_each_alert_once(clock, no_seed_definitions, alert_settings, webhook):
    alert_settings.ALERT_WEBHOOK_URL = webhook.url
    webhook.delay = 0.05  # each send takes a while, so the two senders overlap
    for n in range(10):
        make_alert(clock, n)
    start, tried, errors = threading.Barrier(2), [0, 0], []

    def sender(index):
        try:
            start.wait(10)
            while sent := send_due_alerts(clock.now, limit=1).tried:
                tried[index] += sent
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(tried) == 10 and min(tried) > 0
    assert sorted(webhook.texts) == sorted(f"alert {n}" for n in range(10))
    assert sorted(m.body for m in mail.outbox) == sorted(f"alert {n}" for n in range(10))
    assert set(Alert.objects.values_list("email_status", "webhook_status", "attempts")) == {("sent", "sent", 1)}


# The failure rate.


@pytest.mark.django_db
def test_a_failure_rate_above_the_threshold_alerts_once_then_stays_quiet_for_the_cooldown(
    clock, no_seed_definitions, alert_settings, caplog
):
    finished(clock, "failed", 6)
    finished(clock, "succeeded", 4)
    finished(clock, "failed", 20, minutes_ago=16)  # outside the window
    alert = check_failure_rate(clock.now)
    assert (alert.kind, alert.subject) == ("failure_rate", "6 of 10 runs failed in the last 15 minutes")
    assert "60%" in alert.text and "threshold is 50%" in alert.text
    assert alert.text.endswith("https://scheduler.example.com/tickerq/jobs/occurrence/?status__exact=failed")
    assert [r.alert for r in actions(caplog, "alert_created")] == [alert.id]

    finished(clock, "failed", 10, minutes_ago=-1)
    assert check_failure_rate(clock.advance(minutes=1)) is None
    assert check_failure_rate(clock.advance(minutes=58)) is None
    clock.advance(minutes=1, seconds=1)
    finished(clock, "failed", 10)
    assert check_failure_rate(clock.now).subject == "10 of 10 runs failed in the last 15 minutes"
    assert Alert.objects.filter(kind="failure_rate").count() == 2


@pytest.mark.django_db
def test_a_failure_rate_at_the_threshold_or_over_too_few_runs_is_not_alerted(
    clock, no_seed_definitions, alert_settings
):
    finished(clock, "failed", 5)
    finished(clock, "succeeded", 5)
    finished(clock, "skipped", 10)  # did not run: not counted
    assert check_failure_rate(clock.now) is None
    Occurrence.objects.all().delete()
    finished(clock, "failed", 9)
    assert check_failure_rate(clock.now) is None
    assert not Alert.objects.exists()


@pytest.mark.django_db
def test_the_scheduler_pass_checks_the_failure_rate_once_a_minute_and_sends_its_alert(
    clock, no_seed_definitions, alert_settings
):
    sender = AlertSender(history=timedelta(days=30))
    sender.run(clock.now)
    finished(clock, "failed", 10, minutes_ago=0)
    sender.run(clock.advance(seconds=59))
    assert mail.outbox == []
    sender.run(clock.advance(seconds=1))
    assert [m.subject for m in mail.outbox] == ["10 of 10 runs failed in the last 15 minutes"]


# History.


@pytest.mark.django_db
def test_an_alert_outlives_the_pruning_of_its_occurrence_and_is_pruned_with_the_history(
    clock, no_seed_definitions, alert_settings
):
    occurrence = fail_for_good(clock)
    send_due_alerts(clock.now)
    Occurrence.objects.filter(id=occurrence.id).delete()
    alert = Alert.objects.get()
    assert (alert.occurrence_id, alert.job_name, alert.error) == (None, "failing", ERROR)
    sender = AlertSender(history=timedelta(days=30))
    sender.run(clock.advance(days=29))
    assert Alert.objects.exists()
    AlertSender(history=timedelta(days=30)).run(clock.advance(days=1, seconds=1))
    assert not Alert.objects.exists()


@pytest.mark.django_db
def test_the_dashboard_lists_alerts_read_only(client, clock, no_seed_definitions, alert_settings):
    fail_for_good(clock)
    alert = Alert.objects.get()
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "a-long-password"))
    page = client.get("/tickerq/jobs/alert/")
    assert page.status_code == 200 and "Job failing failed" in page.content.decode()
    page = client.get(f"/tickerq/jobs/alert/{alert.id}/change/")
    assert page.status_code == 200 and ERROR in page.content.decode()
    assert client.get("/tickerq/jobs/alert/add/").status_code == 403
