"""The overview's relays, what the outbox tells of the broker, and its unroutable messages explained."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.web import dashboard
from outbox.models import OutboxMessage, RelayInstance

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
EXCHANGE = "BookWorm.Contracts:Test"


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "a-long-password"))
    return client


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch, settings):
    """The overview as of NOW; a relay is stale after 60 s of silence; retries wait at most 300 s."""
    settings.SCHEDULER_LEASE_SECONDS = 30
    settings.HEALTH_HEARTBEAT_MAX_AGE_SECONDS = 60
    settings.OUTBOX_RETRY_MAX_SECONDS = 300
    monkeypatch.setattr("jobs.web.views.default_clock", lambda: NOW)
    monkeypatch.setattr("jobs.templatetags.dashboard_tags.default_clock", lambda: NOW)
    dashboard.reset()
    yield
    dashboard.reset()


def at(hour, minute=0, second=0):
    return datetime(2026, 3, 1, hour, minute, second, tzinfo=UTC)


def message(status, created_at, *, exchange=EXCHANGE, attempts=0, available_at=None, last_error="", delivered_at=None):
    return OutboxMessage.objects.create(
        message_types=[f"urn:message:{exchange}"],
        exchange=exchange,
        body={},
        status=status,
        created_at=created_at,
        available_at=available_at or created_at,
        attempts=attempts,
        last_error=last_error,
        delivered_at=delivered_at,
    )


def relay(instance_id, last_seen, state=RelayInstance.State.RUNNING, pid=200):
    return RelayInstance.objects.create(
        instance_id=instance_id,
        host=f"{instance_id}.example",
        pid=pid,
        version="test",
        started_at=last_seen - timedelta(hours=1),
        last_seen=last_seen,
        state=state,
    )


def overview_page(client) -> str:
    return client.get("/tickerq/overview/", HTTP_HX_REQUEST="true").content.decode()


# Relays.


def test_a_relay_seen_within_the_heartbeat_age_is_live_and_one_silent_longer_is_stale():
    relay("relay-a", NOW - timedelta(seconds=10))
    relay("relay-b", NOW - timedelta(seconds=61))
    relay("relay-c", NOW - timedelta(seconds=5), state=RelayInstance.State.STOPPED)
    relay("relay-d", NOW - timedelta(minutes=5), state=RelayInstance.State.LOST)

    found = dashboard.relays(NOW)

    assert [i.instance_id for i in found["live"]] == ["relay-a"]
    assert [i.instance_id for i in found["stale"]] == ["relay-b"]


def test_the_overview_shows_live_and_stale_relays(admin_client):
    live = relay("relay-a", NOW - timedelta(seconds=10), pid=4242)
    relay("relay-b", NOW - timedelta(minutes=3))

    page = overview_page(admin_client)

    assert (
        f'<a href="/tickerq/outbox/relayinstance/{live.pk}/change/">relay-a</a></th>\n'
        "          <td>relay-a.example (pid 4242)</td>\n"
        '          <td><span class="overview-good">live</span>, seen 10 s ago</td>'
    ) in page
    stale = r'relay-b</a></th>\s*<td>relay-b.example \(pid 200\)</td>\s*<td><span class="overview-bad">stale'
    assert re.search(stale, page)
    assert "seen 3 min ago" in page
    assert "No relay running" not in page
    assert "Live: 1 · stale: 1 · last delivery: none kept" in page


@pytest.mark.parametrize("stale", [False, True])
def test_the_overview_warns_when_no_relay_is_live(admin_client, stale):
    if stale:
        relay("relay-b", NOW - timedelta(minutes=3))

    page = overview_page(admin_client)

    assert (
        '<span class="overview-bad">No relay running</span>: no event goes to RabbitMQ until one starts '
        "(<code>manage.py relay_outbox</code>)."
    ) in page


# What the outbox tells of the broker.


def test_failed_sends_of_pending_messages_give_the_first_one_and_the_last_failure_with_its_error():
    # Failed at 12:28:00 (attempt 3: retried 4 s later) and at 12:29:30 (attempt 1: retried 1 s later).
    message("pending", at(12, 20), attempts=3, available_at=at(12, 28, 4), last_error="nacked by the broker")
    message("pending", at(12, 25), attempts=1, available_at=at(12, 29, 31), last_error="NOT_FOUND - no exchange")
    message("pending", at(12, 29))
    message("dead", at(12, 0), attempts=10, last_error="old news")

    failures = dashboard.send_failures(dashboard.capped_count(OutboxMessage.objects.filter(status="pending")))

    assert failures == dashboard.SendFailures(
        count=dashboard.Capped(2, False),
        oldest_created_at=at(12, 20),
        last_failed_at=at(12, 29, 30),
        last_attempt=1,
        last_error="NOT_FOUND - no exchange",
    )


def test_the_overview_says_since_when_sends_fail_and_the_last_error(admin_client):
    relay("relay-a", NOW - timedelta(seconds=2))
    message("pending", at(12, 20), attempts=2, available_at=at(12, 29, 32), last_error="nacked by the broker")

    page = overview_page(admin_client)

    assert (
        '<p class="overview-delivery-failing"><span class="overview-bad">Sends to the broker fail</span>: '
        "1 pending message failed to send, the oldest written at "
        '<time datetime="2026-03-01T12:20:00+00:00">2026-03-01 12:20:00</time> UTC; '
        "the last failure 30 s ago (attempt 2): nacked by the broker. "
        "The relay sends it again after a growing delay.</p>"
    ) in page
    assert "overview-delivery-stalled" not in page


def test_failed_sends_are_looked_for_among_the_first_pending_rows_only(monkeypatch):
    monkeypatch.setattr(dashboard, "FAILED_SCAN", 2)
    message("pending", at(12, 0))
    message("pending", at(12, 1))
    message("pending", at(12, 2), attempts=1, available_at=at(12, 3), last_error="nacked by the broker")

    assert dashboard.send_failures(dashboard.Capped(3, False)) is None


def test_more_failed_sends_than_are_read_are_shown_as_a_lower_bound(monkeypatch):
    monkeypatch.setattr(dashboard, "FAILED_SCAN", 2)
    for minute in range(3):
        message("pending", at(12, minute), attempts=1, available_at=at(12, minute, 1), last_error=f"error {minute}")

    failures = dashboard.send_failures(dashboard.Capped(3, False))

    assert str(failures.count) == "2+"
    assert (failures.oldest_created_at, failures.last_failed_at, failures.last_error) == (
        at(12, 0),
        at(12, 1),
        "error 1",
    )


def test_an_old_backlog_with_a_relay_running_and_no_delivery_for_as_long_is_stalled(admin_client):
    relay("relay-a", NOW - timedelta(seconds=3))
    message("delivered", at(12, 19), delivered_at=at(12, 20))
    message("pending", at(12, 25))

    state = dashboard.delivery(NOW, dashboard.outbox_backlog(NOW), dashboard.relays(NOW))
    page = overview_page(admin_client)

    assert state == {"last_delivered_at": at(12, 20), "failures": None, "stalled": True}
    assert (
        '<span class="overview-bad">Nothing delivered since <time datetime="2026-03-01T12:20:00+00:00">'
        "2026-03-01 12:20:00</time> UTC</span>, while a relay runs and messages wait since "
        '<time datetime="2026-03-01T12:25:00+00:00">2026-03-01 12:25:00</time> UTC: '
        'the relay most likely cannot reach the broker. <a href="/health/">/health/</a> checks it; '
        "the relay's log says why (<code>outbox_broker_unavailable</code>)."
    ) in page
    assert "last delivery: 10 min ago" in page


def test_a_stalled_backlog_without_any_delivery_kept_says_nothing_was_delivered(admin_client):
    # The outage: one pending message, a relay running, the broker down (the rows stay untouched).
    relay("relay-a", NOW - timedelta(seconds=3))
    message("pending", at(12, 28))

    page = overview_page(admin_client)

    assert (
        '<span class="overview-bad">Nothing delivered</span>, while a relay runs and messages wait since '
        '<time datetime="2026-03-01T12:28:00+00:00">2026-03-01 12:28:00</time> UTC'
    ) in page
    assert "overview-delivery-failing" not in page


@pytest.mark.parametrize(
    "relay_seen, delivered_at, oldest",
    [
        (None, at(12, 20), at(12, 25)),  # no relay: the warning says so
        (NOW - timedelta(seconds=3), at(12, 29, 50), at(12, 25)),  # a delivery 10 s ago: busy, not stalled
        (NOW - timedelta(seconds=3), at(12, 20), at(12, 29, 30)),  # the backlog is 30 s old only
    ],
)
def test_a_backlog_is_not_stalled_without_a_relay_with_a_recent_delivery_or_while_young(
    relay_seen, delivered_at, oldest
):
    if relay_seen:
        relay("relay-a", relay_seen)
    message("delivered", delivered_at, delivered_at=delivered_at)
    message("pending", oldest)

    state = dashboard.delivery(NOW, dashboard.outbox_backlog(NOW), dashboard.relays(NOW))

    assert state == {"last_delivered_at": delivered_at, "failures": None, "stalled": False}


# Unroutable messages explained.


def test_the_overview_explains_unroutable_messages_per_exchange_and_what_to_do(admin_client):
    for minute in range(3):
        message("unroutable", at(12, minute), exchange="BookWorm.Contracts:A", last_error="312 NO_ROUTE")
    message("unroutable", at(12, 5), exchange="BookWorm.Contracts:B", last_error="312 NO_ROUTE")

    page = overview_page(admin_client)

    assert (
        '<li>3 messages had no queue bound to their exchange <a href="/tickerq/outbox/outboxmessage/'
        '?status__exact=unroutable&amp;exchange=BookWorm.Contracts%3AA"><code>BookWorm.Contracts:A</code></a></li>'
    ) in page
    assert "<li>1 message had no queue bound to its exchange <a href=" in page
    assert page.index("BookWorm.Contracts:A</code>") < page.index("BookWorm.Contracts:B</code>")
    assert (
        "<p>Start the consumer (or bind a queue), then requeue them "
        "(<code>manage.py outbox requeue --status unroutable</code>, or the Outbox page's action).</p>"
    ) in page


def test_without_unroutable_messages_the_overview_has_no_explanation(admin_client):
    message("dead", at(12, 0))
    assert "overview-unroutable-help" not in overview_page(admin_client)


def test_the_exchanges_of_unroutable_messages_are_read_from_the_newest_rows_only(monkeypatch):
    monkeypatch.setattr(dashboard, "COUNT_CAP", 2)  # reads COUNT_CAP + 1 = 3 rows
    monkeypatch.setattr(dashboard, "EXCHANGES", 1)
    message("unroutable", at(12, 0), exchange="Old")
    message("unroutable", at(12, 1), exchange="Old")
    message("unroutable", at(12, 2), exchange="Rare")
    message("unroutable", at(12, 3), exchange="New")
    message("unroutable", at(12, 4), exchange="New")

    found = dashboard.unroutable_exchanges(dashboard.Capped(2, True))

    assert found == {"exchanges": [dashboard.Unroutable("New", 2)], "more": True, "of_newest": True}


# Bounded.


def test_every_query_of_the_outbox_and_the_relays_stops_at_a_limit(admin_client):
    relay("relay-a", NOW - timedelta(seconds=3))
    message("pending", at(12, 20), attempts=2, available_at=at(12, 29, 32), last_error="nacked by the broker")
    message("unroutable", at(12, 0), last_error="312 NO_ROUTE")
    message("delivered", at(12, 0), delivered_at=at(12, 1))

    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get("/tickerq/overview/", HTTP_HX_REQUEST="true").status_code == 200

    # The deliveries per minute (RecentCounts) read a range of minutes of outbox_delivered instead.
    tables = ('"outbox_outboxmessage"', '"outbox_relayinstance"')
    read = [q["sql"] for q in queries.captured_queries if any(table in q["sql"] for table in tables)]
    outbox = [sql for sql in read if "DATE_TRUNC" not in sql]
    assert len(outbox) == 9
    assert [sql for sql in outbox if "LIMIT" not in sql] == []
