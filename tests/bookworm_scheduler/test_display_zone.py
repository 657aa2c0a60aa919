"""The viewer's display zone: UTC by default; the header's "Times in" picks another, remembered in a cookie,
and the lists, the detail pages and a job's last runs then show their times in it, with the zone
(bookworm_scheduler/web/display_zone.py, bookworm_scheduler/web/times.py)."""

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission, User
from django.db import transaction
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.web.times import list_time
from jobs.models import Occurrence
from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.outbox.helpers import make_event_type

CHOOSE = "/tickerq/display-zone/"
JOBS = "/tickerq/django_celery_beat/periodictask/"
HISTORY = "/tickerq/jobs/occurrence/"
OUTBOX = "/tickerq/outbox/outboxmessage/"
AT = datetime(2026, 12, 7, 11, 29, 9, tzinfo=UTC)


def staff(client):
    user = User.objects.create_user("viewer", password="a-long-password", is_staff=True)
    for codename in ("view_periodictask", "view_occurrence", "view_outboxmessage"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return client


@pytest.fixture
def viewer(client):
    return staff(client)


@pytest.fixture
def run():
    """A run of the seeded job at AT, started 2 s later."""
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    return Occurrence.objects.create(
        task=task,
        job_name=task.name,
        scheduled_for=AT,
        run_after=AT,
        status=Occurrence.Status.SUCCEEDED,
        started_at=AT + timedelta(seconds=2),
        finished_at=AT + timedelta(seconds=3),
    )


def readonly(page, field):
    return re.search(rf'<div class="[^"]*field-{field}[^"]*">.*?<div class="readonly">(.*?)</div>', page, re.S).group(1)


def cell(page, field):
    return re.search(rf'<td class="field-{field}">(.*?)</td>', page, re.S).group(1)


def span(title, text):
    """A list's time as list_time writes it."""
    return f'<span class="list-time" title="{title}">{text}</span>'


def chosen(page):
    """The zone the header's chooser shows selected."""
    return re.findall(r"<option selected>([^<]*)</option>", page)


@pytest.mark.django_db
def test_times_are_in_utc_by_default(viewer, run):
    history = viewer.get(HISTORY).content.decode()
    occurrence = viewer.get(f"{HISTORY}{run.id}/change/").content.decode()

    assert cell(history, "scheduled") == span("2026-12-07T11:29:09+00:00", "2026-12-07 11:29:09 UTC")
    assert cell(history, "started") == span("2026-12-07T11:29:11+00:00", "11:29:11 UTC")
    assert readonly(occurrence, "scheduled_for") == "2026-12-07 11:29:09 UTC"
    assert chosen(history) == ["UTC"]


@pytest.mark.django_db
def test_the_header_offers_the_zones_utc_first_and_a_go_button_without_javascript(viewer):
    page = viewer.get(HISTORY).content.decode()

    form = re.search(
        r'<form id="display-zone-form" method="post" action="/tickerq/display-zone/">.*?</form>', page, re.S
    )
    assert form and 'name="csrfmiddlewaretoken"' in form.group(0)
    assert '<input type="hidden" name="next" value="/tickerq/jobs/occurrence/">' in form.group(0)
    assert '<label for="display-zone">Times in:</label>' in form.group(0)
    options = re.findall(r"<option(?: selected)?>([^<]*)</option>", form.group(0))
    assert options[:3] == ["UTC", "Europe/London", "Europe/Lisbon"]
    assert "Asia/Kathmandu" in options and options.count("Europe/Paris") == 1
    assert '<noscript><button type="submit">Go</button></noscript>' in form.group(0)


@pytest.mark.django_db
def test_choosing_paris_remembers_it_and_every_page_shows_paris_time_with_its_zone(viewer, run):
    response = viewer.post(CHOOSE, {"zone": "Europe/Paris", "next": HISTORY})

    assert response.status_code == 302 and response["Location"] == HISTORY
    cookie = response.cookies["display_zone"]
    assert cookie.value == "Europe/Paris" and cookie["max-age"] == 31536000
    assert cookie["httponly"] is True and cookie["samesite"] == "Lax"

    history = viewer.get(HISTORY).content.decode()
    assert cell(history, "scheduled") == span("2026-12-07T12:29:09+01:00", "2026-12-07 12:29:09 CET")
    assert cell(history, "started") == span("2026-12-07T12:29:11+01:00", "12:29:11 CET")
    assert chosen(history) == ["Europe/Paris"]

    jobs = viewer.get(JOBS).content.decode()
    assert span("2026-12-07T12:29:11+01:00", "2026-12-07 12:29:11 CET") in jobs

    occurrence = viewer.get(f"{HISTORY}{run.id}/change/").content.decode()
    assert readonly(occurrence, "scheduled_for") == "2026-12-07 12:29:09 CET"
    assert readonly(occurrence, "started_at") == "2026-12-07 12:29:11 CET"

    job = viewer.get(f"{JOBS}{run.task_id}/change/").content.decode()
    runs = re.search(r'<table id="job-recent-runs">.*?</table>', job, re.S).group(0)
    assert f'<a href="/tickerq/jobs/occurrence/{run.id}/change/">2026-12-07 12:29:09 CET</a>' in runs
    assert "<td>2026-12-07 12:29:11 CET</td>" in runs


@pytest.mark.django_db
def test_summer_times_carry_the_summer_abbreviation(viewer):
    with transaction.atomic():
        message = publish(make_event_type()())
    created = datetime(2026, 7, 1, 21, 30, tzinfo=UTC)
    OutboxMessage.objects.filter(pk=message.pk).update(
        created_at=created,
        available_at=created,
        status=OutboxMessage.Status.DELIVERED,
        delivered_at=created + timedelta(hours=1),
    )
    viewer.post(CHOOSE, {"zone": "Europe/Paris"})

    page = viewer.get(OUTBOX).content.decode()

    assert cell(page, "created") == span("2026-07-01T23:30:00+02:00", "2026-07-01 23:30:00 CEST")
    # 22:30 UTC is 00:30 the next day in Paris: not the creation's day there, so the date is shown.
    assert cell(page, "delivered") == span("2026-07-02T00:30:00+02:00", "2026-07-02 00:30:00 CEST")


@pytest.mark.unit
def test_the_time_alone_on_the_rows_day_follows_the_active_zone():
    scheduled = datetime(2026, 12, 7, 23, 30, tzinfo=UTC)
    started = datetime(2026, 12, 8, 0, 10, tzinfo=UTC)

    in_utc = list_time(started, day_of=scheduled)
    with timezone.override(ZoneInfo("Europe/Paris")):
        in_paris = list_time(started, day_of=scheduled)
    with timezone.override(ZoneInfo("America/Sao_Paulo")):
        in_sao_paulo = list_time(started, day_of=scheduled)

    assert in_utc == span("2026-12-08T00:10:00+00:00", "2026-12-08 00:10:00 UTC")
    assert in_paris == span("2026-12-08T01:10:00+01:00", "01:10:00 CET")
    assert in_sao_paulo == span("2026-12-07T21:10:00-03:00", "21:10:00 -03")


@pytest.mark.django_db
def test_an_unknown_zone_is_refused_with_a_message_and_the_zone_stays(viewer, run):
    viewer.post(CHOOSE, {"zone": "Europe/Paris"})

    response = viewer.post(CHOOSE, {"zone": "Mars/Olympus_Mons", "next": HISTORY}, follow=True)

    assert response.redirect_chain == [(HISTORY, 302)]
    page = response.content.decode()
    assert "Unknown time zone “Mars/Olympus_Mons”: times stay in Europe/Paris." in page
    assert viewer.cookies["display_zone"].value == "Europe/Paris"
    assert cell(page, "scheduled") == span("2026-12-07T12:29:09+01:00", "2026-12-07 12:29:09 CET")


@pytest.mark.django_db
def test_a_cookie_naming_no_known_zone_is_ignored(viewer, run):
    for value in ("Mars/Olympus_Mons", "localtime", "../../etc/passwd"):
        viewer.cookies["display_zone"] = value
        page = viewer.get(HISTORY).content.decode()
        assert cell(page, "scheduled") == (span("2026-12-07T11:29:09+00:00", "2026-12-07 11:29:09 UTC"))
        assert chosen(page) == ["UTC"]


@pytest.mark.django_db
def test_an_unsafe_next_is_not_followed(viewer):
    for unsafe in ("https://evil.example/", "//evil.example/tickerq/", "javascript:alert(1)"):
        response = viewer.post(CHOOSE, {"zone": "Asia/Tokyo", "next": unsafe})
        assert response.status_code == 302 and response["Location"] == "/tickerq/"
    assert viewer.cookies["display_zone"].value == "Asia/Tokyo"


@pytest.mark.django_db
def test_choosing_needs_a_post_with_the_csrf_token():
    client = staff(Client(enforce_csrf_checks=True))
    assert client.get(CHOOSE).status_code == 405
    assert client.post(CHOOSE, {"zone": "Europe/Paris"}).status_code == 403
    page = client.get(HISTORY).content.decode()
    token = re.search(r'id="display-zone-form".*?name="csrfmiddlewaretoken" value="([^"]+)"', page, re.S).group(1)

    response = client.post(CHOOSE, {"zone": "Europe/Paris", "csrfmiddlewaretoken": token})

    assert response.status_code == 302 and response.cookies["display_zone"].value == "Europe/Paris"
