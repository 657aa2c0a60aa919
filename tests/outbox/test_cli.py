"""`manage.py outbox requeue`: plain status words, and an error when nothing matched."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import F

from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.outbox.helpers import make_event_type, run_command

pytestmark = pytest.mark.django_db


def requeue(*args) -> str:
    out = StringIO()
    call_command("outbox", "requeue", *args, stdout=out)
    return out.getvalue().strip()


@pytest.fixture
def rows():
    """A dead, an unroutable and a delivered row."""
    event_type = make_event_type()
    with transaction.atomic():
        rows = [publish(event_type()) for _ in range(3)]
    OutboxMessage.objects.filter(id=rows[0].id).update(status="dead")
    OutboxMessage.objects.filter(id=rows[1].id).update(status="unroutable")
    OutboxMessage.objects.filter(id=rows[2].id).update(status="delivered", delivered_at=F("created_at"))
    return rows


def test_requeue_by_id_says_how_many_it_requeued(rows):
    assert requeue("--id", str(rows[0].id), str(rows[1].id)) == "requeued 2 messages"
    assert [OutboxMessage.objects.get(id=row.id).status for row in rows] == ["pending", "pending", "delivered"]


def test_requeue_of_an_unknown_id_is_an_error_and_requeues_nothing(rows):
    with pytest.raises(CommandError) as raised:
        requeue("--id", str(rows[0].id), "999999999")

    assert str(raised.value) == "no outbox message with id 999999999; nothing requeued"
    assert raised.value.returncode == 1
    assert OutboxMessage.objects.get(id=rows[0].id).status == "dead"


def test_requeue_when_nothing_matched_is_an_error(rows):
    with pytest.raises(CommandError) as raised:
        requeue("--id", str(rows[2].id))
    assert str(raised.value) == f"nothing to requeue: no dead or unroutable message among ids {rows[2].id}"
    assert raised.value.returncode == 1

    requeue("--status", "unroutable")
    with pytest.raises(CommandError, match="^nothing to requeue: no unroutable message$"):
        requeue("--status", "unroutable")


def test_requeue_names_its_statuses_in_plain_words(subprocess_env):
    result = run_command(subprocess_env, "outbox", "requeue", "--status", "delivered")

    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "manage.py outbox requeue: error: argument --status: "
        "invalid choice: 'delivered' (choose from 'dead', 'unroutable')"
    )


def test_requeue_of_an_unknown_id_exits_non_zero_with_one_line(subprocess_env):
    result = run_command(subprocess_env, "outbox", "requeue", "--id", "999999999")

    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        "CommandError: no outbox message with id 999999999; nothing requeued\n",
    )
