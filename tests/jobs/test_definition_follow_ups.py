"""A definition's follow-ups (DefinitionFollowUp): set on its page, copied onto each run it plans or is run
now with, and created by the occurrence store in the transaction that records that run's end."""

import pytest
from django.db import connection

from jobs.engine.definitions import definitions_version, load_definitions, run_now
from jobs.models import DefinitionFollowUp, Occurrence
from jobs.web.oneoff_admin import upcoming
from tests.jobs.helpers import definition_form, make_definition, make_scheduler

pytestmark = pytest.mark.django_db


def follow_up(task, when, job="test.echo", payload=None) -> DefinitionFollowUp:
    return DefinitionFollowUp.objects.create(task=task, when=when, job=job, payload=payload)


def planned_run(task, clock):
    """A scheduler that planned the definition's next instant, and that instant's occurrence."""
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.advance(minutes=1))
    return scheduler, Occurrence.objects.get(task=task)


def test_planning_copies_the_definitions_follow_ups_onto_each_run(clock, no_seed_definitions):
    task = make_definition("nightly", "test.not_json", cron="* * * * *", planned_through=clock.now)
    plain = make_definition("plain", "test.echo", cron="* * * * *", planned_through=clock.now)
    follow_up(task, "failed", payload={"page": "ops"})
    follow_up(task, "succeeded", job="test.retried")
    _, run = planned_run(task, clock)
    assert run.then == [
        {"job": "test.echo", "when": "failed", "payload": {"page": "ops"}},
        {"job": "test.retried", "when": "succeeded", "payload": None},
    ]
    assert Occurrence.objects.get(task=plain).then is None


def test_a_run_that_fails_for_good_creates_its_failed_follow_up_which_sees_it(clock, no_seed_definitions):
    task = make_definition("nightly", "test.not_json", cron="* * * * *", planned_through=clock.now)
    follow_up(task, "failed", payload={"page": "ops"})
    follow_up(task, "succeeded")
    scheduler, run = planned_run(task, clock)
    assert scheduler.run_ready(clock.now, limit=1) == 1
    run.refresh_from_db()
    (child,) = Occurrence.objects.filter(parent=run)
    assert (run.status, child.job, child.payload, child.status, child.task_id) == (
        "failed",
        "test.echo",
        {"page": "ops"},
        "scheduled",
        None,
    )
    assert scheduler.run_ready(clock.now) == 1
    child.refresh_from_db()
    assert child.result["parent"] == {"id": run.id, "status": "failed", "result": None}


def test_run_now_carries_the_follow_ups_and_a_success_creates_its_own(clock, no_seed_definitions):
    task = make_definition("hourly", "test.echo", every=3600)
    follow_up(task, "succeeded", job="test.echo", payload={"after": "hourly"})
    follow_up(task, "cancelled")
    run = run_now(task, by="alice")
    assert [f["when"] for f in run.then] == ["succeeded", "cancelled"]
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.advance(seconds=1), limit=1) == 1
    assert [(c.job, c.payload, c.triggered_by) for c in Occurrence.objects.filter(parent=run)] == [
        ("test.echo", {"after": "hourly"}, "alice")
    ]


def test_a_change_to_follow_ups_moves_the_definitions_version_and_a_reload_sees_it(no_seed_definitions):
    task = make_definition("hourly", "test.echo", every=3600)
    before = definitions_version(connection.alias)
    made = follow_up(task, "finished")
    assert definitions_version(connection.alias) == before + 1
    assert load_definitions()[0][task.id].then == ({"job": "test.echo", "when": "finished", "payload": None},)
    made.delete()
    assert definitions_version(connection.alias) == before + 2
    assert load_definitions()[0][task.id].then == ()


def follow_up_form(**fields):
    data = definition_form(
        **{
            "follow_ups-TOTAL_FORMS": "1",
            "follow_ups-0-when": "failed",
            "follow_ups-0-job": "test.echo",
            "follow_ups-0-payload": '{"page": "ops"}',
        }
    )
    data.update(fields)
    return data


def test_the_job_page_sets_a_follow_up(admin_client):
    response = admin_client.post("/tickerq/django_celery_beat/periodictask/add/", follow_up_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    made = DefinitionFollowUp.objects.get()
    assert (made.task.name, made.when, made.job, made.payload) == ("nightly", "failed", "test.echo", {"page": "ops"})
    page = admin_client.get(f"/tickerq/django_celery_beat/periodictask/{made.task_id}/change/").content.decode()
    assert "Follow-ups: when this job …, run …" in page
    assert "fails for good" in page


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"follow_ups-0-job": "test.nope"}, "Select a valid choice. test.nope is not one of the available choices."),
        ({"follow_ups-0-payload": "[1, 2]"}, "The payload must be a JSON object (a dict), not list."),
        ({"follow_ups-0-payload": "{not json"}, "Enter a valid JSON."),
        ({"follow_ups-0-when": "sometimes"}, "Select a valid choice. sometimes is not one of the available choices."),
    ],
)
def test_a_bad_follow_up_is_a_form_error(admin_client, fields, message):
    response = admin_client.post("/tickerq/django_celery_beat/periodictask/add/", follow_up_form(**fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not DefinitionFollowUp.objects.exists()


def test_the_upcoming_list_reads_its_index_in_order(no_seed_definitions):
    query = upcoming(Occurrence.objects.all())[:20].query
    with connection.cursor() as cursor:
        for method in ("seqscan", "bitmapscan", "sort"):  # on an empty table: could it read the order from the index?
            cursor.execute(f"SET LOCAL enable_{method} = off")
        sql, params = query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "occ_oneoff_upcoming" in plan and "Sort" not in plan, plan
