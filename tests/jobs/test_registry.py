"""The @job decorator and its registry: what a registration declares, and what it refuses.

Each test registers into a registry of its own, so the sample jobs and the seed jobs stay as they are.
"""

import pytest

from jobs.engine import registry
from jobs.engine.policy import Policy, Priority
from jobs.engine.registry import DuplicateJob, get_job, job, registered_jobs
from jobs.engine.schedules import InvalidSchedule

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    monkeypatch.setattr(registry, "_registry", {})


def nightly(context):
    """Clean up the night's leftovers.

    Only the first line is the description.
    """


def test_a_job_is_registered_with_its_schedule_policy_and_the_first_line_of_its_docstring():
    job("cleanup.nightly", cron="0 3 * * *", timezone="Europe/Berlin", atomic=False, priority=2, retries=1)(nightly)

    spec = get_job("cleanup.nightly")
    assert (spec.name, spec.func, spec.cron, spec.timezone, spec.atomic) == (
        "cleanup.nightly",
        nightly,
        "0 3 * * *",
        "Europe/Berlin",
        False,
    )
    assert spec.policy == Policy(priority=Priority.HIGH, retries=1)
    assert spec.description == "Clean up the night's leftovers."


def test_a_job_without_a_schedule_or_docstring_has_the_defaults():
    @job("on.demand")
    def on_demand(context):
        pass

    spec = get_job("on.demand")
    assert (spec.cron, spec.timezone, spec.atomic, spec.policy, spec.description) == (None, "UTC", True, Policy(), "")


def test_the_decorator_returns_the_function_itself():
    assert job("cleanup.nightly")(nightly) is nightly


def test_jobs_are_listed_by_name_and_an_unknown_one_is_none():
    job("b.second")(nightly)
    job("a.first")(nightly)

    assert [spec.name for spec in registered_jobs()] == ["a.first", "b.second"]
    assert get_job("c.unknown") is None


def test_registering_the_same_function_again_is_allowed():
    job("cleanup.nightly")(nightly)
    job("cleanup.nightly", cron="0 4 * * *")(nightly)  # a module imported twice, or its schedule edited

    assert get_job("cleanup.nightly").cron == "0 4 * * *"


def test_another_function_under_a_taken_name_is_refused_naming_the_first_ones_module():
    job("cleanup.nightly")(nightly)

    def impostor(context):
        pass

    with pytest.raises(DuplicateJob, match=f"job 'cleanup.nightly' is already registered by {__name__}"):
        job("cleanup.nightly")(impostor)
    assert get_job("cleanup.nightly").func is nightly


@pytest.mark.parametrize(
    "keywords, error, message",
    [
        ({"cron": "61 * * * *"}, InvalidSchedule, "Bad minute in cron expression '61 \\* \\* \\* \\*'"),
        ({"cron": "* * * * *", "timezone": "Mars/Base"}, InvalidSchedule, "unknown time zone: Mars/Base"),
        ({"retries": -1}, ValueError, "retries and retry intervals must not be negative"),
        ({"colour": "red"}, TypeError, "unexpected keyword argument 'colour'"),
    ],
)
def test_a_registration_that_cannot_run_is_refused_when_the_module_is_imported(keywords, error, message):
    with pytest.raises(error, match=message):
        job("cleanup.nightly", **keywords)

    assert get_job("cleanup.nightly") is None
