"""The Audit page: every operator action, from the dashboard, the API and the command line, in one list."""

import base64
import re
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from jobs.models import Occurrence
from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.outbox.helpers import make_event_type

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-pass-phrase"
AUDIT = "/tickerq/admin/logentry/"


@pytest.fixture
def admin_user():
    return User.objects.create_superuser("ops", "ops@example.com", PASSWORD)


def rows_of(html: str) -> list[list[str]]:
    """The Audit list's rows, each the text of its cells; none when the list is empty (no table)."""
    body = html.partition("<tbody>")[2].partition("</tbody>")[0]
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


def test_runs_requeues_and_edits_from_every_way_in_are_listed_with_who_and_from_where(client, admin_user, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    client.force_login(admin_user)
    # The dashboard: a run now and a disable.
    client.post("/tickerq/django_celery_beat/periodictask/", {"action": "run_now", "_selected_action": [task.id]})
    client.post("/tickerq/django_celery_beat/periodictask/", {"action": "disable", "_selected_action": [task.id]})
    client.logout()
    # The API: a trigger with Basic credentials.
    credentials = base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
    client.post(
        "/tickerq/api/jobs/ResendErrorEmailJob/trigger",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Basic {credentials}",
    )
    # The command line: a trigger and a requeue of two dead messages.
    call_command("jobs", "trigger", "ResendErrorEmailJob", stdout=StringIO())
    with transaction.atomic():
        dead = [publish(make_event_type()()) for _ in range(2)]
    OutboxMessage.objects.filter(id__in=[row.id for row in dead]).update(status="dead")
    call_command("outbox", "requeue", "--status", "dead", stdout=StringIO())

    client.force_login(admin_user)
    response = client.get(AUDIT)

    assert response.status_code == 200
    assert "Select audit entry to view" in response.content.decode()
    first, second, third = Occurrence.objects.order_by("id").values_list("id", flat=True)
    # Newest first: who, what, on what, from where (the time is the first cell).
    assert [row[1:] for row in rows_of(response.content.decode())] == [
        [
            "command line",
            "Requeued from the command line by OS user alice: dead",
            "outbox message 2 outbox messages",
            "command line",
        ],
        [
            "command line",
            f"Ran now from the command line by OS user alice: occurrence {third}",
            "job ResendErrorEmailJob",
            "command line",
        ],
        ["ops", f"Ran now from the API: occurrence {second}", "job ResendErrorEmailJob", "API"],
        ["ops", "Disabled", "job ResendErrorEmailJob", "dashboard"],
        ["ops", f"Ran now: occurrence {first}", "job ResendErrorEmailJob", "dashboard"],
    ]


def test_the_from_filter_picks_one_way_in(client, admin_user, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    client.force_login(admin_user)
    client.post("/tickerq/django_celery_beat/periodictask/", {"action": "run_now", "_selected_action": [task.id]})
    call_command("jobs", "trigger", "ResendErrorEmailJob", stdout=StringIO())

    def sources(query: str) -> list[str]:
        return [row[-1] for row in rows_of(client.get(f"{AUDIT}?from={query}").content.decode())]

    assert sources("dashboard") == ["dashboard"]
    assert sources("command+line") == ["command line"]
    assert sources("API") == []


def test_the_audit_page_is_listed_in_the_console_and_read_only(client, admin_user):
    client.force_login(admin_user)

    index = client.get("/tickerq/").content.decode()
    assert f'<a href="{AUDIT}">Audit</a>' in index
    assert client.get(f"{AUDIT}add/").status_code == 403


def test_a_staff_user_without_the_view_permission_is_refused(client):
    client.force_login(User.objects.create_user("viewer", password=PASSWORD, is_staff=True))

    assert client.get(AUDIT).status_code == 403
