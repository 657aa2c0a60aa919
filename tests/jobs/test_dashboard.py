import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.template.loader import render_to_string
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.models import PlanningCursor, SchedulerInstance
from jobs.templatetags.dashboard_tags import axis_label, nice_step
from jobs.web import dashboard
from outbox.models import OutboxMessage
from tests.jobs.helpers import make_definition
from tests.jobs.test_counts import at, feb, message, occurrence
from tests.jobs.test_counts import week_of_runs as make_week_of_runs

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def admin_client(client):
    user = User.objects.create_superuser("admin", "admin@example.com", "a-long-password")
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch, settings):
    """The overview as of NOW, with nothing held from another test (rolled back, it reuses versions and instants)."""
    settings.SCHEDULER_LEASE_SECONDS = 30
    monkeypatch.setattr("jobs.web.views.default_clock", lambda: NOW)
    monkeypatch.setattr("jobs.templatetags.dashboard_tags.default_clock", lambda: NOW)
    dashboard.reset()
    yield
    dashboard.reset()


def instance(instance_id, last_seen, state=SchedulerInstance.State.RUNNING, pid=100):
    return SchedulerInstance.objects.create(
        instance_id=instance_id,
        host=f"{instance_id}.example",
        pid=pid,
        version="test",
        started_at=last_seen - timedelta(hours=1),
        last_seen=last_seen,
        state=state,
    )


def svgs(page: str) -> list[ET.Element]:
    """The overview's charts, parsed as XML (the admin's own icons are left out)."""
    return [ET.fromstring(svg) for svg in re.findall(r'<svg\b[^>]*class="overview-chart".*?</svg>', page, re.S)]


# Schedulers.


def test_a_scheduler_seen_within_two_leases_is_live_and_one_silent_longer_is_stale():
    instance("sched-a", NOW - timedelta(seconds=10))
    instance("sched-b", NOW - timedelta(seconds=61))
    instance("sched-c", NOW - timedelta(seconds=5), state=SchedulerInstance.State.STOPPED)
    instance("sched-d", NOW - timedelta(minutes=5), state=SchedulerInstance.State.LOST)

    found = dashboard.schedulers(NOW)

    assert [i.instance_id for i in found["live"]] == ["sched-a"]
    assert [i.instance_id for i in found["stale"]] == ["sched-b"]


def test_the_overview_shows_live_and_stale_schedulers(admin_client):
    instance("sched-a", NOW - timedelta(seconds=10), pid=4242)
    instance("sched-b", NOW - timedelta(minutes=3))

    page = admin_client.get("/tickerq/").content.decode()

    assert re.search(
        r"sched-a</a></th>\s*<td>sched-a.example \(pid 4242\)</td>\s*<td><span class=\"overview-good\">live", page
    )
    assert "seen 10 s ago" in page
    assert re.search(
        r"sched-b</a></th>\s*<td>sched-b.example \(pid 100\)</td>\s*<td><span class=\"overview-bad\">stale", page
    )
    assert "seen 3 min ago" in page
    assert "Live: 1 · stale: 1" in page


def test_the_overview_says_when_no_scheduler_runs(admin_client):
    page = admin_client.get("/tickerq/").content.decode()
    assert "No scheduler is running" in page


# The next jobs due.


@pytest.fixture
def definitions(no_seed_definitions):
    made = {
        "overdue": make_definition("overdue", cron="20 * * * *", planned_through=at(12, 0)),
        "at-40": make_definition("at-40", cron="40 * * * *", planned_through=at(12, 30)),
        "quarterly": make_definition("quarterly", cron="*/15 * * * *", planned_through=at(12, 30)),
        "daily": make_definition("daily", cron="0 13 * * *", planned_through=at(12, 30)),
        "disabled": make_definition("disabled", cron="35 * * * *", planned_through=at(12, 30), enabled=False),
    }
    for n in range(12):
        make_definition(f"later-{n:02d}", cron=f"{n} 20 * * *", planned_through=at(12, 30))
    return made


def test_the_next_jobs_due_are_the_ten_earliest_instants_of_enabled_definitions(definitions):
    upcoming = dashboard.upcoming_jobs.next(NOW)

    assert [(due.definition.name, due.at) for due in upcoming] == [
        ("overdue", at(12, 20)),
        ("at-40", at(12, 40)),
        ("quarterly", at(12, 45)),
        ("daily", at(13, 0)),
        ("later-00", at(20, 0)),
        ("later-01", at(20, 1)),
        ("later-02", at(20, 2)),
        ("later-03", at(20, 3)),
        ("later-04", at(20, 4)),
        ("later-05", at(20, 5)),
    ]
    assert upcoming[0].change_url == f"/tickerq/django_celery_beat/periodictask/{definitions['overdue'].id}/change/"


def test_the_next_jobs_due_follow_the_cursors_that_planning_moved(definitions):
    dashboard.upcoming_jobs.next(NOW)
    # A scheduler planned 12:40 (planning moves the cursor without moving the definitions' version).
    PlanningCursor.objects.filter(task=definitions["at-40"]).update(planned_through=at(12, 40))

    upcoming = dashboard.upcoming_jobs.next(at(12, 41), limit=5)

    assert [(due.definition.name, due.at) for due in upcoming] == [
        ("overdue", at(12, 20)),
        ("quarterly", at(12, 45)),
        ("daily", at(13, 0)),
        ("at-40", at(13, 40)),
        ("later-00", at(20, 0)),
    ]


def test_the_next_jobs_due_follow_an_edited_definition(definitions):
    dashboard.upcoming_jobs.next(NOW)
    PeriodicTask.objects.filter(id=definitions["overdue"].id).update(enabled=False)

    upcoming = dashboard.upcoming_jobs.next(NOW, limit=2)

    assert [due.definition.name for due in upcoming] == ["at-40", "quarterly"]


def test_the_overview_lists_the_next_jobs_due_in_order(admin_client, definitions):
    page = admin_client.get("/tickerq/").content.decode()

    names = re.findall(r'periodictask/\d+/change/">([\w-]+)</a>', page)
    assert names[:4] == ["overdue", "at-40", "quarterly", "daily"]
    assert '2026-03-01 12:20:00</time> <span class="overview-quiet overview-bad">10 min ago' in page
    assert '2026-03-01 12:40:00</time> <span class="overview-quiet">in 10 min' in page
    assert "disabled" not in names


# Failures.


def test_the_overview_lists_failures_of_the_last_24_hours_newest_first_with_links(admin_client):
    older = occurrence(
        "ResendErrorEmailJob",
        "failed",
        NOW - timedelta(hours=2),
        reason="Traceback (most recent call last):\n  ...\nRuntimeError: upstream returned 503",
    )
    newer = occurrence("CleanUpSentEmailJob", "failed", NOW - timedelta(hours=1), reason="TimeoutError: 30 s")
    too_old = occurrence("TooOldJob", "failed", NOW - timedelta(hours=25))
    occurrence("SucceededJob", "succeeded", NOW - timedelta(minutes=30))

    page = admin_client.get("/tickerq/").content.decode()

    links = re.findall(r'<a href="(/tickerq/jobs/occurrence/\d+/change/)">(\w+)</a>', page)
    assert links == [
        (f"/tickerq/jobs/occurrence/{newer.id}/change/", "CleanUpSentEmailJob"),
        (f"/tickerq/jobs/occurrence/{older.id}/change/", "ResendErrorEmailJob"),
    ]
    assert f"/tickerq/jobs/occurrence/{too_old.id}/change/" not in page and "TooOldJob" not in page
    assert 'Failures in the last 24 hours: <span class="overview-failure-count">2</span>' in page
    assert "<td>RuntimeError: upstream returned 503</td>" in page
    assert '2026-03-01 10:30:00</time> <span class="overview-quiet">2 h ago' in page


def test_the_newest_failures_are_found_among_many_runs_and_all_are_counted():
    for n in range(12):
        occurrence(f"Failing{n:02d}", "failed", NOW - timedelta(hours=n, minutes=7))
        occurrence("Fine", "succeeded", NOW - timedelta(hours=n, minutes=6))
    occurrence("TooOld", "failed", NOW - timedelta(hours=24, minutes=1))

    failures = dashboard.recent_failures(NOW)

    assert [f.occurrence.job_name for f in failures["rows"]] == [f"Failing{n:02d}" for n in range(10)]
    assert failures["count"] == 12


def test_a_count_stops_at_its_cap():
    for minutes in range(3):
        message("dead", NOW - timedelta(minutes=minutes))

    dead = OutboxMessage.objects.filter(status="dead")
    assert str(dashboard.capped_count(dead, cap=2)) == "2+"
    assert str(dashboard.capped_count(dead, cap=3)) == "3"


# Runs per hour.


def test_the_runs_chart_is_well_formed_svg_with_a_title_a_legend_and_a_bar_per_hour_and_status(admin_client):
    occurrence("a", "succeeded", at(12, 5))
    occurrence("a", "succeeded", at(12, 10))
    occurrence("a", "failed", at(11, 59, 59))

    page = admin_client.get("/tickerq/").content.decode()
    runs, per_day, delivered = svgs(page)

    assert runs.tag == f"{SVG}svg" and runs.get("role") == "img"
    assert runs.find(f"{SVG}title").text == "Runs per hour, last 24 hours"
    assert runs.find(f"{SVG}desc").text == "2 succeeded, 1 failed from 13:00 UTC yesterday until now, per hour."
    bars = runs.findall(f"{SVG}g[@class='overview-chart-bars']/{SVG}rect")
    assert len(bars) == 48
    titles = [bar.find(f"{SVG}title").text for bar in bars]
    assert "11:00–12:00 UTC: 1 failed" in titles and "12:00–13:00 UTC: 2 succeeded" in titles
    legend = [t.text for t in runs.findall(f"{SVG}g[@class='overview-chart-legend']/{SVG}text")]
    assert legend == ["succeeded: 2", "failed: 1"]
    assert delivered.find(f"{SVG}title").text == "Events delivered per hour, last 24 hours"


@pytest.mark.parametrize(
    "largest, labels",
    [
        (0, ["0", "1", "2", "3", "4"]),
        (7, ["0", "2", "4", "6", "8"]),
        (99, ["0", "25", "50", "75", "100"]),
        (40500, ["0", "12k", "24k", "36k", "48k"]),
    ],
)
def test_the_y_axis_has_four_round_steps_above_the_largest_bar(largest, labels):
    step = nice_step(largest)
    assert [axis_label(step * k) for k in range(5)] == labels


# Totals and runs per day.


@pytest.fixture
def week_of_runs():
    make_week_of_runs()


def test_totals_of_the_last_24_hours_and_7_days_give_each_outcome_and_the_success_rate(week_of_runs):
    totals = dashboard.overview(NOW)["totals"]

    assert totals["rows"] == [
        ("succeeded", 2, 3),
        ("failed", 1, 2),
        ("missed", 1, 1),
        ("expired", 0, 0),
        ("skipped", 0, 1),
    ]
    assert (totals["day"].rate, totals["week"].rate) == ("66.6 %", "60.0 %")
    assert totals["since"] == datetime(2026, 2, 23, tzinfo=UTC)


def test_the_overview_shows_the_totals_and_a_chart_of_runs_per_day(admin_client, week_of_runs):
    page = admin_client.get("/tickerq/").content.decode()

    rows = re.findall(
        r'<tr class="overview-totals-(\w+)"><th scope="row">.*?</th><td class="overview-number">([^<]+)</td>'
        r'<td class="overview-number">([^<]+)</td></tr>',
        page,
    )
    assert rows == [
        ("succeeded", "2", "3"),
        ("failed", "1", "2"),
        ("missed", "1", "1"),
        ("expired", "0", "0"),
        ("skipped", "0", "1"),
        ("rate", "66.6 %", "60.0 %"),
    ]
    assert (
        "Last 7 days: today and the 6 days before it in UTC, since "
        '<time datetime="2026-02-23T00:00:00+00:00">2026-02-23 00:00</time>.'
    ) in page
    per_day = svgs(page)[1]
    assert per_day.find(f"{SVG}title").text == "Finished runs per day, last 7 days"
    assert (
        per_day.find(f"{SVG}desc").text
        == "3 succeeded, 2 failed, 1 missed, 0 expired, 1 skipped from Mon 2026-02-23 (UTC) until now, per day."
    )
    bars = per_day.findall(f"{SVG}g[@class='overview-chart-bars']/{SVG}rect")
    assert len(bars) == 35
    titles = [bar.find(f"{SVG}title").text for bar in bars]
    assert titles[-5:] == [
        "Sun 2026-03-01 (UTC): 2 succeeded",
        "Sun 2026-03-01 (UTC): 1 failed",
        "Sun 2026-03-01 (UTC): 0 missed",
        "Sun 2026-03-01 (UTC): 0 expired",
        "Sun 2026-03-01 (UTC): 0 skipped",
    ]
    ticks = [t.text for t in per_day.findall(f"{SVG}g[@class='overview-chart-axis']/{SVG}text")][5:]
    assert ticks == ["Mon 23", "Tue 24", "Wed 25", "Thu 26", "Fri 27", "Sat 28", "Sun 01"]
    legend = [t.text for t in per_day.findall(f"{SVG}g[@class='overview-chart-legend']/{SVG}text")]
    assert legend == ["succeeded: 3", "failed: 2", "missed: 1", "expired: 0", "skipped: 1"]


# The viewer's zone.


def test_the_overview_shows_the_days_hours_and_times_of_the_active_zone():
    occurrence("a", "succeeded", feb(28, 23, 30))  # 00:30 on 1 March in Paris
    occurrence("a", "succeeded", feb(28, 22, 59))  # 23:59 on 28 February in Paris
    occurrence("a", "failed", feb(22, 23, 0), reason="boom")  # 00:00 on 23 February in Paris

    with timezone.override("Europe/Paris"):
        context = dashboard.overview(NOW)
        page = render_to_string("jobs/overview.html", context)

    assert context["runs_per_day"]["series"]["succeeded"] == [0, 0, 0, 0, 0, 1, 1]
    assert context["runs_per_day"]["series"]["failed"] == [1, 0, 0, 0, 0, 0, 0]
    assert context["totals"]["since"] == datetime(2026, 2, 22, 23, 0, tzinfo=UTC)
    assert context["runs"]["series"]["succeeded"][-15:-12] == [1, 1, 0]  # 23:00, 00:00 and 01:00 in Paris
    runs, per_day, _ = svgs(page)
    assert runs.find(f"{SVG}desc").text == "2 succeeded, 0 failed from 14:00 CET yesterday until now, per hour."
    titles = [bar.find(f"{SVG}title").text for bar in runs.findall(f"{SVG}g[@class='overview-chart-bars']/{SVG}rect")]
    assert "00:00–01:00 CET: 1 succeeded" in titles
    assert per_day.find(f"{SVG}desc").text == (
        "2 succeeded, 1 failed, 0 missed, 0 expired, 0 skipped from Mon 2026-02-23 (Europe/Paris) until now, per day."
    )
    assert '<time datetime="2026-03-01T13:30:00+01:00">2026-03-01 13:30:00</time> CET (the database' in page
    assert "Due (CET)" in page and "Finished (CET)" in page and "UTC" not in page
    assert '6 days before it in Europe/Paris, since <time datetime="2026-02-23T00:00:00+01:00">2026-02-23 00:00' in page


# The outbox.


def test_the_overview_shows_the_outbox_backlog_and_the_age_of_its_oldest_message(admin_client):
    message("pending", NOW - timedelta(seconds=90))
    message("pending", NOW - timedelta(seconds=10))
    message("dead", NOW - timedelta(hours=3))
    message("dead", NOW - timedelta(hours=2))
    message("unroutable", NOW - timedelta(hours=1))
    message("delivered", NOW - timedelta(hours=5), delivered_at=NOW - timedelta(hours=5))

    page = admin_client.get("/tickerq/").content.decode()

    assert re.search(r'overview-outbox-pending"><a href="[^"]+\?status__exact=pending">2</a>', page)
    assert '<td class="overview-outbox-oldest">1 min 30 s old</td>' in page
    assert re.search(r'overview-outbox-dead"><a href="[^"]+\?status__exact=dead" class="overview-bad">2</a>', page)
    assert re.search(r'overview-outbox-unroutable"><a href="[^"]+" class="overview-bad">1</a>', page)


def test_an_empty_outbox_has_no_oldest_message(admin_client):
    page = admin_client.get("/tickerq/").content.decode()
    assert '<td class="overview-outbox-oldest">none waiting</td>' in page


# The page and its fragment.


def test_the_index_polls_the_fragment_with_htmx_and_keeps_the_app_list(admin_client):
    page = admin_client.get("/tickerq/").content.decode()

    assert '<div id="overview" hx-get="/tickerq/overview/" hx-trigger="every 5s"' in page
    assert re.search(r'<script src="/static/django_htmx/htmx-2(\.min)?\.js" defer>', page)
    assert '/static/jobs/overview.css"' in page
    assert 'id="content-main"' in page and "/tickerq/jobs/occurrence/" in page


def test_the_fragment_answers_an_htmx_request_with_the_overview_alone(admin_client):
    occurrence("ResendErrorEmailJob", "failed", NOW - timedelta(minutes=5), reason="boom")

    response = admin_client.get("/tickerq/overview/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    fragment = response.content.decode()
    assert "Next jobs due" in fragment and "ResendErrorEmailJob" in fragment
    assert "<html" not in fragment and 'id="content-main"' not in fragment
    assert "no-cache" in response["Cache-Control"]
    assert len(svgs(fragment)) == 3


def test_an_expired_session_gets_an_htmx_redirect_to_the_login(admin_client):
    Session.objects.all().delete()

    response = admin_client.get("/tickerq/overview/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    assert response["HX-Redirect"] == "/tickerq/login/?next=/tickerq/"
    assert "Location" not in response and b"overview" not in response.content


def test_a_user_who_is_not_staff_gets_the_login_too(client):
    client.force_login(User.objects.create_user("reader", password="a-long-password"))

    htmx = client.get("/tickerq/overview/", HTTP_HX_REQUEST="true")
    plain = client.get("/tickerq/overview/")

    assert htmx["HX-Redirect"] == "/tickerq/login/?next=/tickerq/"
    assert plain.status_code == 302 and plain["Location"] == "/tickerq/login/?next=/tickerq/"


def test_the_overview_keeps_its_query_count_small(admin_client, django_assert_max_num_queries, definitions):
    dashboard.upcoming_jobs.next(NOW)  # loaded once per definitions version

    # 18: the relays and the last delivery; failed sends and unroutable exchanges add up to 3 when there are any
    # (tests/jobs/test_overview_outbox.py); the finished runs of the week, 2 (their settled and their last minutes).
    with django_assert_max_num_queries(18):
        assert admin_client.get("/tickerq/overview/", HTTP_HX_REQUEST="true").status_code == 200
