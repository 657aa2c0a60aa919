"""The outbox admin: read-only pages, filters, the envelope, requeue and discard, no counting."""

import html
import json
import re
import uuid
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission
from django.db import connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from outbox.admin import OutboxMessageAdmin, envelope_writer
from outbox.models import OutboxMessage
from outbox.publishing import origin, publish
from tests.outbox.helpers import make_event_type

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:outbox_outboxmessage_changelist"
CHANGE_PAGE = "admin:outbox_outboxmessage_change"


@pytest.fixture
def rows():
    event_type = make_event_type()
    with transaction.atomic():
        rows = [publish(event_type()) for _ in range(3)]
    OutboxMessage.objects.filter(id=rows[0].id).update(status="dead", attempts=10, last_error="refused")
    OutboxMessage.objects.filter(id=rows[1].id).update(status="unroutable", last_error="312 NO_ROUTE")
    return rows


@pytest.fixture
def staff_client(client, django_user_model):
    """A client logged in as a staff user with the view permission and the permissions asked for."""

    def login(*codenames):
        user = django_user_model.objects.create_user("operator", password="a-long-pass-phrase", is_staff=True)
        for codename in ("view_outboxmessage", *codenames):
            user.user_permissions.add(Permission.objects.get(content_type__app_label="outbox", codename=codename))
        client.force_login(user)
        return client

    return login


def act(client, action, rows):
    return client.post(
        reverse(CHANGELIST), {"action": action, "_selected_action": [row.id for row in rows]}, follow=True
    )


def offered_actions(response) -> list[str]:
    form = response.context["action_form"]
    return [] if form is None else [name for name, _ in form.fields["action"].choices if name]


def log_entries() -> list[LogEntry]:
    return sorted(LogEntry.objects.select_related("user"), key=lambda entry: int(entry.object_id))


def test_the_changelist_filters_by_status(admin_client, rows):
    response = admin_client.get(reverse(CHANGELIST), {"status__exact": "dead"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [OutboxMessage.objects.get(id=rows[0].id)]


def test_the_changelist_filters_by_type_and_offers_the_types_in_code(admin_client, rows):
    other_type = make_event_type("OtherIntegrationEvent")
    with transaction.atomic():
        other = publish(other_type())

    response = admin_client.get(reverse(CHANGELIST), {"exchange": other_type.exchange()})

    assert [row.id for row in response.context["cl"].result_list] == [other.id]
    content = response.content.decode()
    assert "?" + urlencode({"exchange": other_type.exchange()}) in content and "OtherIntegrationEvent" in content
    assert "?exchange=BookWorm.Contracts%3ACleanUpSentEmailIntegrationEvent" in content


def test_search_finds_a_message_by_its_exact_message_id(admin_client, rows):
    response = admin_client.get(reverse(CHANGELIST), {"q": str(rows[2].message_id)})

    assert [row.id for row in response.context["cl"].result_list] == [rows[2].id]


def test_search_for_something_that_is_not_a_guid_finds_nothing(admin_client, rows):
    response = admin_client.get(reverse(CHANGELIST), {"q": "not-a-guid"})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


@override_settings(RABBITMQ_URL="amqp://guest:guest@broker.example:5673/bookworm")
def test_the_detail_shows_the_envelope_as_the_relay_sends_it_indented(admin_client):
    envelope_writer.cache_clear()
    event_type = make_event_type()
    event = event_type(id=uuid.UUID("0190a000-0000-7000-8000-000000000001"))
    with transaction.atomic():
        message = publish(
            event, correlation_id=uuid.UUID("0190a000-0000-7000-8000-0000000000c0"), headers={"tenant": "bookworm"}
        )

    response = admin_client.get(reverse(CHANGE_PAGE, args=[message.id]))
    envelope_writer.cache_clear()

    assert response.status_code == 200
    [pre] = re.findall(r"<pre>(.*?)</pre>", response.content.decode(), re.S)
    text = html.unescape(pre)
    assert f'{{\n  "messageId": "{message.message_id}",\n  "requestId": null,\n' in text
    envelope = json.loads(text)
    assert envelope["correlationId"] == "0190a000-0000-7000-8000-0000000000c0"
    assert envelope["conversationId"] == str(message.message_id)
    assert envelope["sourceAddress"] == "rabbitmq://broker.example:5673/bookworm/bookworm-scheduler-relay"
    assert envelope["destinationAddress"] == f"rabbitmq://broker.example:5673/bookworm/{event_type.exchange()}"
    assert envelope["messageType"] == [
        f"urn:message:{event_type.exchange()}",
        "urn:message:BookWorm.Chassis.EventBus:IntegrationEvent",
    ]
    assert envelope["message"]["id"] == "0190a000-0000-7000-8000-000000000001"
    assert envelope["headers"] == {"tenant": "bookworm"}


def test_the_detail_links_the_occurrence_that_published_the_message(admin_client):
    with transaction.atomic(), origin("occurrence:42"):
        message = publish(make_event_type()())

    response = admin_client.get(reverse(CHANGE_PAGE, args=[message.id]))

    assert '<a href="/tickerq/jobs/occurrence/42/change/">occurrence:42</a>' in response.content.decode()


def test_an_origin_of_no_known_kind_is_shown_as_text(admin_client):
    with transaction.atomic(), origin("import:7"):
        message = publish(make_event_type()())

    response = admin_client.get(reverse(CHANGE_PAGE, args=[message.id]))

    assert '<div class="readonly">import:7</div>' in response.content.decode()


def test_the_detail_has_no_save_or_delete_button(admin_client, rows):
    response = admin_client.get(reverse(CHANGE_PAGE, args=[rows[0].id]))

    content = response.content.decode()
    assert response.status_code == 200
    assert 'name="_save"' not in content and 'name="_continue"' not in content
    assert "deletelink" not in content
    assert not response.context["has_add_permission"] and not response.context["has_delete_permission"]


def test_a_message_cannot_be_edited_added_or_deleted_in_the_admin(admin_client, rows):
    edit = admin_client.post(reverse(CHANGE_PAGE, args=[rows[0].id]), {"exchange": "elsewhere"})
    add = admin_client.get(reverse("admin:outbox_outboxmessage_add"))
    delete = admin_client.post(reverse("admin:outbox_outboxmessage_delete", args=[rows[0].id]), {"post": "yes"})

    assert (edit.status_code, add.status_code, delete.status_code) == (403, 403, 403)
    assert OutboxMessage.objects.get(id=rows[0].id).exchange != "elsewhere"


def test_the_requeue_action_makes_dead_and_unroutable_rows_pending_with_their_message_ids(admin_client, rows):
    response = act(admin_client, "requeue", rows)

    assert response.status_code == 200
    for row in rows:
        requeued = OutboxMessage.objects.get(id=row.id)
        assert (requeued.status, requeued.attempts, requeued.last_error) == ("pending", 0, "")
        assert requeued.message_id == row.message_id


def test_requeue_needs_its_permission(staff_client, rows):
    client = staff_client("discard_outboxmessage")

    response = act(client, "requeue", rows[:2])

    assert response.status_code == 200
    assert offered_actions(response) == ["discard"]
    assert [OutboxMessage.objects.get(id=row.id).status for row in rows[:2]] == ["dead", "unroutable"]
    assert log_entries() == []


def test_requeue_with_its_permission_is_logged_with_the_user(staff_client, rows):
    client = staff_client("requeue_outboxmessage")

    act(client, "requeue", rows)

    assert OutboxMessage.objects.get(id=rows[0].id).status == "pending"
    assert [(e.object_id, e.action_flag, e.change_message, e.user.username) for e in log_entries()] == [
        (str(rows[0].id), CHANGE, "Requeued (was dead).", "operator"),
        (str(rows[1].id), CHANGE, "Requeued (was unroutable).", "operator"),
    ]


def test_discard_needs_its_permission(staff_client, rows):
    client = staff_client("requeue_outboxmessage")

    response = act(client, "discard", rows)

    assert offered_actions(response) == ["requeue"]
    assert OutboxMessage.objects.filter(id__in=[row.id for row in rows]).count() == 3
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()


def test_a_user_who_may_only_view_is_offered_no_action(staff_client, rows):
    response = staff_client().get(reverse(CHANGELIST))

    assert response.status_code == 200 and offered_actions(response) == []


def test_discard_deletes_pending_dead_and_unroutable_rows_and_logs_each(staff_client, rows):
    with transaction.atomic():
        delivered = publish(make_event_type()())
    OutboxMessage.objects.filter(id=delivered.id).update(status="delivered", delivered_at=delivered.created_at)
    client = staff_client("discard_outboxmessage")

    act(client, "discard", [*rows, delivered])

    assert list(OutboxMessage.objects.values_list("id", flat=True)) == [delivered.id]
    entries = log_entries()
    assert [(e.object_id, e.action_flag, e.user.username) for e in entries] == [
        (str(row.id), DELETION, "operator") for row in rows
    ]
    assert entries[0].object_repr == f"{rows[0].exchange} {rows[0].message_id}"


@pytest.mark.django_db(transaction=True)
def test_discard_leaves_a_row_that_a_relay_is_sending(staff_client, rows):
    client = staff_client("discard_outboxmessage")
    pending = rows[2]
    # A relay holds the rows it claimed locked until it records their outcome.
    relay = connections.create_connection("default")
    relay.set_autocommit(False)
    try:
        with relay.cursor() as cursor:
            cursor.execute("SELECT id FROM outbox_outboxmessage WHERE id = %s FOR UPDATE", [pending.id])
        act(client, "discard", rows)
        relay.rollback()
    finally:
        relay.close()

    assert list(OutboxMessage.objects.values_list("id", flat=True)) == [pending.id]


def test_the_changelist_counts_nothing(admin_client, rows):
    with CaptureQueriesContext(connection) as unfiltered:
        admin_client.get(reverse(CHANGELIST))
    with CaptureQueriesContext(connection) as filtered:
        admin_client.get(reverse(CHANGELIST), {"status__exact": "dead", "exchange": rows[0].exchange, "_facets": "1"})

    statements = [q["sql"] for q in unfiltered.captured_queries + filtered.captured_queries]
    outbox = [sql for sql in statements if "outbox_outboxmessage" in sql]
    assert not [sql for sql in outbox if "COUNT(" in sql.upper()]
    # One read per page: the 50 rows shown and one more, to know whether an older page exists.
    assert len(outbox) == 2 and all(sql.endswith("LIMIT 51") for sql in outbox)


def test_the_changelist_pages_by_newer_and_older_links(admin_client, rows, monkeypatch):
    monkeypatch.setattr(OutboxMessageAdmin, "list_per_page", 2)

    first = admin_client.get(reverse(CHANGELIST))
    second = admin_client.get(reverse(CHANGELIST), {"p": "2"})

    assert [row.id for row in first.context["cl"].result_list] == [rows[2].id, rows[1].id]
    assert 'href="?p=2">Older' in first.content.decode() and "Newer" not in first.content.decode()
    assert [row.id for row in second.context["cl"].result_list] == [rows[0].id]
    assert 'href="?p=1">' in second.content.decode() and "Older" not in second.content.decode()
    assert " results" not in first.content.decode()  # a count it does not know


def test_a_search_that_fits_one_page_says_how_many_it_found(admin_client, rows):
    response = admin_client.get(reverse(CHANGELIST), {"q": str(rows[1].message_id)})

    assert "1 result" in response.content.decode()


def test_a_page_past_the_end_is_refused_like_any_bad_lookup(admin_client, rows):
    response = admin_client.get(reverse(CHANGELIST), {"p": "5"})

    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_a_pending_message_s_envelope_has_no_send_time_nor_the_web_process_as_host(admin_client):
    with transaction.atomic():
        message = publish(make_event_type()())

    page = admin_client.get(reverse(CHANGE_PAGE, args=[message.id])).content.decode()

    [pre] = re.findall(r"<pre>(.*?)</pre>", page, re.S)
    envelope = json.loads(html.unescape(pre))
    assert "sentTime" not in envelope and "host" not in envelope
    assert envelope["messageId"] == str(message.message_id)
    assert "not sent yet: the relay adds the send time and its host" in page


def test_a_delivered_message_s_envelope_shows_its_delivery_time(admin_client):
    with transaction.atomic():
        message = publish(make_event_type()())
    delivered_at = datetime(2026, 12, 7, 11, 29, 9, tzinfo=UTC)
    OutboxMessage.objects.filter(pk=message.pk).update(status=OutboxMessage.Status.DELIVERED, delivered_at=delivered_at)

    page = admin_client.get(reverse(CHANGE_PAGE, args=[message.id])).content.decode()

    [pre] = re.findall(r"<pre>(.*?)</pre>", page, re.S)
    assert json.loads(html.unescape(pre))["sentTime"] == "2026-12-07T11:29:09Z"
    assert "not sent yet" not in page


def test_the_list_shows_its_times_on_one_line_in_utc(admin_client):
    with transaction.atomic():
        message = publish(make_event_type()())
    created = datetime(2026, 12, 7, 11, 29, 9, tzinfo=UTC)
    OutboxMessage.objects.filter(pk=message.pk).update(
        created_at=created,
        available_at=created,
        status=OutboxMessage.Status.DELIVERED,
        delivered_at=created.replace(hour=12),
    )

    page = admin_client.get(reverse("admin:outbox_outboxmessage_changelist")).content.decode()

    assert re.search(r'<td class="field-created"><span class="list-time"[^>]*>2026-12-07 11:29:09 UTC</span>', page)
    assert re.search(r'<td class="field-available"><span class="list-time"[^>]*>11:29:09 UTC</span>', page)
    assert re.search(r'<td class="field-delivered"><span class="list-time"[^>]*>12:29:09 UTC</span>', page)
