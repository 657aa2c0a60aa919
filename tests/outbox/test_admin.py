"""The outbox admin: read-only lists, exact search, and the requeue action."""

import pytest
from django.db import transaction
from django.urls import reverse

from outbox.admin import CappedCountPaginator
from outbox.models import OutboxMessage
from outbox.publishing import publish

from .conftest import make_event_type

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:outbox_outboxmessage_changelist"


@pytest.fixture
def rows():
    event_type = make_event_type()
    with transaction.atomic():
        rows = [publish(event_type()) for _ in range(3)]
    OutboxMessage.objects.filter(id=rows[0].id).update(status="dead", attempts=10, last_error="refused")
    OutboxMessage.objects.filter(id=rows[1].id).update(status="unroutable", last_error="312 NO_ROUTE")
    return rows


def test_the_changelist_filters_by_status(admin_client, rows):
    response = admin_client.get(reverse(CHANGELIST), {"status__exact": "dead"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [OutboxMessage.objects.get(id=rows[0].id)]


def test_search_finds_a_message_by_its_exact_message_id(admin_client, rows):
    response = admin_client.get(reverse(CHANGELIST), {"q": str(rows[2].message_id)})

    assert [row.id for row in response.context["cl"].result_list] == [rows[2].id]


def test_search_for_something_that_is_not_a_guid_finds_nothing(admin_client, rows):
    response = admin_client.get(reverse(CHANGELIST), {"q": "not-a-guid"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


def test_the_requeue_action_makes_dead_and_unroutable_rows_pending_with_their_message_ids(admin_client, rows):
    response = admin_client.post(
        reverse(CHANGELIST), {"action": "requeue", "_selected_action": [row.id for row in rows]}, follow=True
    )

    assert response.status_code == 200
    for row in rows:
        requeued = OutboxMessage.objects.get(id=row.id)
        assert (requeued.status, requeued.attempts, requeued.last_error) == ("pending", 0, "")
        assert requeued.message_id == row.message_id


def test_a_message_cannot_be_edited_in_the_admin(admin_client, rows):
    response = admin_client.post(
        reverse("admin:outbox_outboxmessage_change", args=[rows[0].id]), {"exchange": "elsewhere"}
    )

    assert response.status_code == 403
    assert OutboxMessage.objects.get(id=rows[0].id).exchange != "elsewhere"


def test_the_changelist_counts_no_further_than_its_cap(admin_client, rows, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "CAP", 2)

    response = admin_client.get(reverse(CHANGELIST))

    assert response.context["cl"].result_count == 2
