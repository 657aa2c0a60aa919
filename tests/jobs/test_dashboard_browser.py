"""The dashboard in a real headless Chromium: log in, run a job, watch the overview follow it; schedule a one-off
run from a job's page and cancel it from the upcoming ones; create and revoke an API token on a user's page. No
page the tests visit breaks the Content-Security-Policy (the browser fixture collects its violations).

Debian's chromium, driven by Playwright's Python package; a real scheduler process runs the
job against the test database. Its screenshots are the README's (docs/screenshots/) when asked
for with README_SCREENSHOTS=1 (`make screenshots`); otherwise they go to a temporary folder, and a
test run leaves the tree as it was.
"""

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import transaction
from django_celery_beat.models import PeriodicTask
from playwright.sync_api import expect, sync_playwright

from jobs.engine import store
from jobs.engine.definitions import policy_of
from jobs.models import Occurrence
from jobs.seed.contracts import ResendErrorEmailIntegrationEvent
from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.jobs.helpers import make_definition, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(settings.BASE_DIR) / "docs" / "screenshots"
PASSWORD = "a-long-browser-password"
# Run in every page before its own scripts: each Content-Security-Policy violation (an inline script or handler, an
# eval, a source not allowed) becomes a console line that CspWatchedBrowser collects, whatever page it was on.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error("CSP violation: " + event.violatedDirective + " by " + (event.blockedURI || "inline") +
    " at " + event.sourceFile + ":" + event.lineNumber);
});
"""


class CspWatchedBrowser:
    """The browser, every page of which reports its Content-Security-Policy violations into violations."""

    def __init__(self, browser):
        self.browser = browser
        self.violations: list[str] = []
        self.pages_seen: set[str] = set()

    def new_page(self, **kwargs):
        page = self.browser.new_page(**kwargs)
        page.add_init_script(REPORT_VIOLATIONS)
        page.on("console", lambda message: self._console(page, message))
        page.on("load", lambda loaded: self.pages_seen.add(loaded.url))
        return page

    def _console(self, page, message) -> None:
        # Chromium's own report ("Refused to execute inline script because it violates ...") and ours.
        if "Content Security Policy" in message.text or message.text.startswith("CSP violation"):
            self.violations.append(f"{page.url}: {message.text}")


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it"
    with sync_playwright() as playwright:
        browser = CspWatchedBrowser(playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS))
        yield browser
        browser.browser.close()
    assert browser.pages_seen, "no page was loaded"
    assert browser.violations == []


@pytest.fixture
def screenshots(tmp_path) -> Path:
    return SCREENSHOTS if os.environ.get("README_SCREENSHOTS") == "1" else tmp_path


def test_an_operator_runs_a_job_and_follows_it_to_its_event(
    browser, live_server, scheduler_processes, screenshots, tmp_path
):
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    scheduler_processes(instance_id="browser-test")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)

    page.goto(f"{live_server.url}/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#overview")).to_be_visible()

    page.goto(f"{live_server.url}/tickerq/django_celery_beat/periodictask/")
    for name in ("CleanUpSentEmailJob", "ResendErrorEmailJob"):
        row = page.locator("#result_list tr", has_text=name)
        expect(row.locator("td.field-next_run")).to_have_text(re.compile(r"\d{4}-\d\d-\d\d"))

    # Run now, one click on the job's row: back on the list with the action's message.
    page.locator("#result_list tr", has_text="ResendErrorEmailJob").locator("button.run-now").click()
    expect(page.locator(".messagelist")).to_contain_text("Triggered")
    expect(page).to_have_url(f"{live_server.url}/tickerq/django_celery_beat/periodictask/")

    page.goto(f"{live_server.url}/tickerq/")
    page.evaluate("window.notReloaded = true")
    # The run publishes one event; no relay runs here, so it waits in the outbox, and the
    # overview shows it on its own (htmx), without a reload of the page.
    expect(page.locator(".overview-outbox-pending")).to_have_text("1", timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=str(screenshots / "overview.png"), full_page=True)

    occurrence = Occurrence.objects.get(job_name="ResendErrorEmailJob", manual=True)
    assert occurrence.status == "succeeded" and occurrence.triggered_by == "operator"
    page.goto(f"{live_server.url}/tickerq/jobs/occurrence/")
    page.click(f"a[href$='/tickerq/jobs/occurrence/{occurrence.id}/change/']")
    expect(page.locator(".field-coloured_status")).to_contain_text("succeeded")
    expect(page.locator(".field-triggered_by")).to_contain_text("operator")
    page.screenshot(path=str(screenshots / "occurrence.png"), full_page=True)

    page.click(".field-events a")
    expect(page.locator("pre")).to_contain_text("urn:message:BookWorm.Contracts:ResendErrorEmailIntegrationEvent")

    page.goto(f"{live_server.url}/tickerq/django_celery_beat/periodictask/")
    expect(page.locator("#result_list tr", has_text="ResendErrorEmailJob")).to_contain_text("succeeded")
    page.screenshot(path=str(screenshots / "jobs.png"), full_page=True)

    # The job's page: titled by its name, listing the run among its last ones, linked to the occurrence.
    page.locator("#result_list a", has_text="ResendErrorEmailJob").click()
    expect(page.locator("h1")).to_have_text("ResendErrorEmailJob")
    link = page.locator(f"a[href$='/tickerq/jobs/occurrence/{occurrence.id}/change/']")
    last = page.locator("#job-recent-runs tr.job-run", has=link)  # `has` is relative to the row
    expect(last.locator(".run-status")).to_have_text("succeeded")
    expect(last.locator(".run-duration")).to_have_text(re.compile(r"^\d+(\.\d)? m?s$"))
    expect(page.locator("#job-totals .totals-24-h .succeeded")).to_have_text("1")
    page.screenshot(path=str(tmp_path / "job.png"), full_page=True)  # not the README's
    last.locator("a").click()
    expect(page).to_have_url(f"{live_server.url}/tickerq/jobs/occurrence/{occurrence.id}/change/")


def fits_without_sideways_scroll(page) -> None:
    """No sideways scroll of the page, nor of the results table within its container."""
    widths = page.evaluate(
        """() => {
            const table = document.querySelector('#result_list');
            const box = table && table.parentElement;
            return {
                page: document.documentElement.scrollWidth, window: window.innerWidth,
                table: table ? table.scrollWidth : 0, box: box ? box.clientWidth : 0,
                columns: table ? Array.from(table.querySelectorAll('thead th')).map(
                    th => `${th.className.split(' ')[0]}:${th.offsetWidth}`).join(' ') : '',
            };
        }"""
    )
    assert widths["table"] > 0, f"{page.url}: no results table"
    assert widths["page"] <= widths["window"], f"{page.url} scrolls sideways: {widths}"
    assert widths["table"] <= widths["box"], f"{page.url}: its table scrolls sideways: {widths}"
    speaks_our_words(page)


# django-celery-beat's words, which no page of the console shows (lower case).
CELERY_WORDS = (
    "periodic task",
    "short description for this task",
    "set to false to disable the schedule",
    "leave the others null",
    "the name of the celery task",
    "(m/h/dm/my/d)",
)


def speaks_our_words(page) -> None:
    text = page.evaluate("() => document.body.innerText").lower()
    for words in CELERY_WORDS:
        assert words not in text, f"{page.url} says {words!r}"


def log_in(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#overview")).to_be_visible()


def seed_history_and_outbox(now) -> None:
    """Rows like a busy system's: long scheduler ids, manual runs, pending and delivered messages."""
    for minutes in range(1, 13):
        started = now - timedelta(minutes=minutes, seconds=-2)
        Occurrence.objects.create(
            job_name="ResendErrorEmailJob" if minutes % 2 else "CleanUpSentEmailJob",
            scheduled_for=now - timedelta(minutes=minutes),
            run_after=now - timedelta(minutes=minutes),
            manual=minutes % 3 == 0,
            triggered_by="operator" if minutes % 3 == 0 else "",
            status=Occurrence.Status.FAILED if minutes % 4 == 0 else Occurrence.Status.SUCCEEDED,
            attempts=1,
            scheduler="scheduler-prod-eu-west-1a.bookworm.internal-48213",
            started_at=started,
            finished_at=started + timedelta(milliseconds=2_350),
        )
    with transaction.atomic():
        messages = [publish(ResendErrorEmailIntegrationEvent()) for _ in range(6)]
    OutboxMessage.objects.filter(pk__in=[m.pk for m in messages[:3]]).update(
        status=OutboxMessage.Status.DELIVERED, delivered_at=now
    )


def test_every_list_fits_1280_px_and_the_history_refreshes_itself(browser, live_server, tmp_path):
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    now = datetime.now(UTC)
    seed_history_and_outbox(now)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    log_in(page, live_server, "operator")

    for path, shot in (
        ("django_celery_beat/periodictask/", "jobs-1280.png"),
        ("jobs/occurrence/", "history-1280.png"),
        ("outbox/outboxmessage/", "outbox-1280.png"),
    ):
        page.goto(f"{live_server.url}/tickerq/{path}")
        expect(page.locator("#result_list tbody tr").first).to_be_visible()
        page.screenshot(path=str(tmp_path / shot), full_page=True)  # not the README's
        fits_without_sideways_scroll(page)
    expect(page.locator("#result_list td.field-created").first).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \S+ UTC$"))

    # The history, filtered: a new occurrence appears without a reload, and the filter stays.
    page.goto(f"{live_server.url}/tickerq/jobs/occurrence/?q=ResendErrorEmailJob")
    page.evaluate("window.notReloaded = true")
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    new = store.trigger(task, priority=policy_of(task).priority, by="someone-else")
    link = page.locator(f"#result_list a[href*='/tickerq/jobs/occurrence/{new.id}/change/']")  # filters follow
    expect(link).to_be_visible(timeout=20_000)  # polled every 5 s
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#result_list tr", has_text="CleanUpSentEmailJob").count() == 0
    expect(page).to_have_url(f"{live_server.url}/tickerq/jobs/occurrence/?q=ResendErrorEmailJob")


def test_a_view_only_user_reads_jobs_runs_and_times_in_their_zone_without_buttons(browser, live_server):
    viewer = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    codenames = ["view_periodictask", "view_occurrence", "view_outboxmessage", "view_schedulerinstance"]
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    seed_history_and_outbox(datetime.now(UTC))
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    log_in(page, live_server, "viewer")
    speaks_our_words(page)

    # The jobs, without a Run now button; a job's page with its real schedule and zone.
    page.goto(f"{live_server.url}/tickerq/django_celery_beat/periodictask/")
    expect(page.locator("#result_list tr", has_text="ResendErrorEmailJob")).to_be_visible()
    assert page.locator("button.run-now").count() == 0
    fits_without_sideways_scroll(page)
    page.locator("#result_list a", has_text="ResendErrorEmailJob").click()
    expect(page.locator("h1")).to_have_text("ResendErrorEmailJob")
    expect(page.locator(".field-cron .readonly")).to_have_text("0 * * * *")
    expect(page.locator(".field-timezone .readonly")).to_have_text("UTC")
    assert page.locator("button.run-now").count() == 0
    speaks_our_words(page)

    # A failed run's page, without Retry or Cancel.
    failed = Occurrence.objects.filter(status=Occurrence.Status.FAILED).first()
    page.goto(f"{live_server.url}/tickerq/jobs/occurrence/{failed.id}/change/")
    expect(page.locator(".field-coloured_status")).to_contain_text("failed")
    assert page.locator("button.occurrence-retry, button.occurrence-cancel").count() == 0
    speaks_our_words(page)

    # Times in another zone, picked in the header and remembered on the next page.
    page.goto(f"{live_server.url}/tickerq/jobs/occurrence/")
    expect(page.locator("#result_list td.field-scheduled").first).to_have_text(re.compile(r" UTC$"))
    page.select_option("#display-zone", "Asia/Tokyo")
    expect(page.locator("#display-zone")).to_have_value("Asia/Tokyo")
    page.goto(f"{live_server.url}/tickerq/jobs/occurrence/")
    expect(page.locator("#result_list td.field-scheduled").first).to_have_text(re.compile(r" JST$"))


def test_an_operator_cancels_a_running_occurrence_from_its_page(browser, live_server, scheduler_processes):
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    task = make_definition("WaitsForItsCancel", "test.sleep_until_cancelled", every=3600, kwargs={"seconds": 60})
    scheduler_processes(instance_id="browser-cancel")
    running = store.trigger(task, priority=policy_of(task).priority, by="operator")
    wait_for(lambda: Occurrence.objects.get(id=running.id).status == "running", timeout=30)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    log_in(page, live_server, "operator")

    page.goto(f"{live_server.url}/tickerq/jobs/occurrence/{running.id}/change/")
    expect(page.locator(".field-coloured_status")).to_contain_text("running")
    page.click("button.occurrence-cancel")
    expect(page.locator(".messagelist")).to_contain_text("Asked 1 running occurrence(s) to stop")

    # The job asks whether it was cancelled, stops, and its run is recorded with who cancelled it.
    wait_for(lambda: Occurrence.objects.get(id=running.id).status == "skipped", timeout=30)
    page.reload()
    expect(page.locator(".field-coloured_status")).to_contain_text("skipped")
    expect(page.locator(".field-reason")).to_contain_text("cancelled by operator while running")
    assert not OutboxMessage.objects.filter(origin=f"occurrence:{running.id}").exists()


def test_an_operator_schedules_a_one_off_run_from_a_job_page_and_cancels_it_from_upcoming(browser, live_server):
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    task = make_definition("EchoJob", "test.echo", every=3600)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    log_in(page, live_server, "operator")

    # On the job's page: a minute ahead, in the viewer's zone (UTC here); the payload is checked as it is typed.
    page.goto(f"{live_server.url}/tickerq/django_celery_beat/periodictask/{task.id}/change/")
    page.click("a.schedule-run-link")
    at = (datetime.now(UTC) + timedelta(minutes=1)).replace(microsecond=0)
    page.fill("#id_at", at.strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("#id_payload", '{"order_id": 42')
    expect(page.locator("#payload-check")).to_have_class(re.compile("payload-bad"))
    expect(page.locator("#payload-check")).not_to_have_text("valid JSON object")
    page.fill("#id_payload", '{"order_id": 42}')
    expect(page.locator("#payload-check")).to_have_text("valid JSON object")
    page.fill("#id_key", "reminder:42")
    page.click("input.schedule-run")

    expect(page.locator(".messagelist")).to_contain_text("Scheduled: occurrence")
    run = Occurrence.objects.get(job="test.echo")
    assert (run.scheduled_for, run.payload, run.key) == (at, {"order_id": 42}, "reminder:42")
    expect(page.locator(f"#upcoming-run-{run.id}")).to_contain_text("reminder:42")

    # Every job's upcoming one-off runs, and Cancel there.
    page.click("a.upcoming-link")
    row = page.locator("#result_list tr", has_text="reminder:42")
    expect(row.locator("td.field-trigger")).to_have_text("one-off (operator)")
    expect(row.locator("td.field-due")).to_have_text(at.strftime("%Y-%m-%d %H:%M:%S UTC"))
    fits_without_sideways_scroll(page)
    row.locator("button.occurrence-cancel").click()
    expect(page.locator(".messagelist")).to_contain_text("Cancelled 1 occurrence(s).")
    expect(page.locator("#result_list tr", has_text="reminder:42")).to_have_count(0)

    run.refresh_from_db()
    assert (run.status, run.reason, run.attempts) == ("skipped", "cancelled by operator", 0)
    audit = LogEntry.objects.filter(object_id=str(run.id)).order_by("id")
    assert [(e.user.username, e.get_change_message()) for e in audit] == [
        ("operator", f"Scheduled: occurrence {run.id} at {at:%Y-%m-%d %H:%M:%S} UTC"),
        ("operator", "Cancelled"),
    ]
    page.goto(f"{live_server.url}/tickerq/jobs/occurrence/{run.id}/change/")
    expect(page.locator(".field-coloured_status")).to_contain_text("skipped")
    expect(page.locator(".field-payload_json pre")).to_contain_text('"order_id": 42')


def test_an_operator_creates_an_api_token_on_a_users_page_sees_it_once_and_revokes_it(browser, live_server):
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    script = User.objects.create_user("nightly-script", password=PASSWORD, is_staff=True)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    log_in(page, live_server, "operator")

    page.goto(f"{live_server.url}/tickerq/auth/user/{script.id}/change/")
    expect(page.locator("#api-tokens")).to_contain_text("No API tokens.")
    page.fill("#id_name", "nightly report")
    page.check("#id_read_only")
    page.fill("#id_expires_days", "30")
    page.click("input.create-token")
    token = page.locator("#api-token").inner_text()
    assert re.fullmatch(r"bws_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", token)
    key = token[4:16]

    page.click("a.back-to-user")
    row = page.locator(f"#api-token-{key}")
    expect(row).to_contain_text("nightly report")
    expect(row).to_contain_text("read-only")
    expect(row.locator(".token-state")).to_have_text("active")
    assert token not in page.content()  # shown once
    row.locator("button.revoke-token").click()
    expect(page.locator(".messagelist")).to_contain_text("Revoked the API token nightly report")
    expect(page.locator(f"#api-token-{key} .token-state")).to_contain_text("revoked")

    # The API's interactive description is a page of the service too: no violation there either.
    page.goto(f"{live_server.url}/tickerq/api/docs")
    expect(page.locator(".swagger-ui")).to_be_visible()
