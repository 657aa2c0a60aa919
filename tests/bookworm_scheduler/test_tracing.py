"""Traces: off without OTEL_* variables; a run's span, its statements, its publish, the headers MassTransit reads."""

import re
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bookworm_scheduler.kernel import tracing
from jobs.engine import store
from jobs.models import Occurrence
from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.jobs import sample_jobs  # noqa: F401  (registers the sample jobs)
from tests.jobs.helpers import make_definition, make_scheduler
from tests.outbox.helpers import make_event_type

# W3C: version 00, trace id, parent span id, flags (sampled, and the SDK's "random trace id" bit).
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[13]$")
SAMPLE_EXCHANGE = "BookWorm.Tests:SampleRanEvent"


@pytest.fixture
def spans():
    """Tracing on for the test, into memory; the database connection is reopened to be instrumented."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.QueriesInContext(sampling.ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    connection.close()
    yield exporter
    tracing.disable()
    connection.close()


def run_one(clock, name, job="test.publish", **definition) -> Occurrence:
    occurrence = store.trigger(make_definition(name, job, every=60, **definition), now=clock.now, priority=1)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == 1
    return occurrence


def named(exporter, name):
    return [span for span in exporter.get_finished_spans() if span.name == name]


def receive(rabbit, queue, message_id, timeout=30.0):
    """The (properties, envelope) of message_id from queue: other test runs may publish the same type."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for properties, envelope in rabbit.receive(queue, 1, timeout=deadline - time.monotonic()):
            if envelope["messageId"] == message_id:
                return properties, envelope
    raise AssertionError(f"message {message_id} did not arrive within {timeout} s")


@pytest.mark.unit
@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SERVICE_NAME": "scheduler"}, False),
    ],
)
def test_tracing_starts_only_when_the_otel_variables_ask_for_it(environ, expected):
    assert tracing.wanted(environ) is expected


@pytest.mark.unit
@pytest.mark.parametrize(
    "environ, variable",
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "PROTOCOL"),
    ],
)
def test_otel_variables_this_service_cannot_honour_stop_start_up(environ, variable):
    with pytest.raises(ImproperlyConfigured, match=variable):
        tracing.wanted(environ)


@pytest.mark.unit
def test_a_relay_that_does_not_trace_passes_an_upstream_context_on_where_masstransit_reads_it():
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    assert tracing.amqp_headers(carrier={"traceparent": upstream, "tracestate": "vendor=1"}) == {
        "traceparent": upstream,
        "tracestate": "vendor=1",
        "MT-Activity-Id": upstream,
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    "carrier",
    [None, {}, {"traceparent": "garbage"}, {"traceparent": "00-00000000000000000000000000000000-0000000000000000-01"}],
    ids=["none", "empty", "malformed", "invalid ids"],
)
def test_without_a_valid_context_a_message_carries_no_trace_headers(carrier):
    assert tracing.amqp_headers(carrier=carrier) is None


@pytest.mark.parametrize("environ, active", [({}, "False"), ({"OTEL_TRACES_EXPORTER": "console"}, "True")])
def test_a_process_starts_tracing_when_django_is_set_up(environ, active):
    probe = "import django; django.setup(); from bookworm_scheduler.kernel import tracing; print(tracing.active())"
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "bookworm_scheduler.settings", "DEBUG": "1", **environ}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == active


@pytest.mark.django_db(transaction=True)
def test_a_run_is_a_span_and_its_event_carries_the_runs_context(spans, clock):
    occurrence = run_one(clock, "publisher")

    [run] = named(spans, "run publisher")
    assert run.kind == SpanKind.INTERNAL and run.parent is None
    assert dict(run.attributes) == {
        "bookworm.job.name": "publisher",
        "bookworm.occurrence.id": occurrence.id,
        "bookworm.occurrence.attempt": 1,
        "bookworm.occurrence.scheduled_for": clock.now.isoformat(),
        "bookworm.occurrence.manual": True,
        "bookworm.scheduler.instance": "test",
        "bookworm.run.outcome": "succeeded",
    }
    row = OutboxMessage.objects.get(origin=f"occurrence:{occurrence.id}")
    trace_id, span_id = TRACEPARENT.match(row.headers["traceparent"]).groups()
    assert (trace_id, span_id) == (f"{run.context.trace_id:032x}", f"{run.context.span_id:016x}")


@pytest.mark.django_db(transaction=True)
def test_the_statements_of_a_run_are_its_children_and_statements_outside_any_span_are_not_traced(spans, clock):
    run_one(clock, "publisher")

    [run] = named(spans, "run publisher")
    statements = [span for span in spans.get_finished_spans() if span.kind == SpanKind.CLIENT]
    assert statements, "no database statement was traced"
    assert all(span.parent is not None for span in statements)  # the claim before the run is not traced
    inserts = [span for span in statements if span.name.startswith("INSERT")]
    assert inserts and all(span.parent.span_id == run.context.span_id for span in inserts)
    assert {span.attributes.get("db.system") for span in inserts} == {"postgresql"}


@pytest.mark.django_db(transaction=True)
def test_a_failed_run_is_a_span_with_an_error_and_its_exception(spans, clock):
    run_one(clock, "failing", "test.fail")

    [run] = named(spans, "run failing")
    assert run.status.status_code == StatusCode.ERROR
    assert run.status.description == "RuntimeError: the sample job failed on purpose"
    assert run.attributes["bookworm.run.outcome"] == "failed"
    assert [event.name for event in run.events] == ["exception"]
    assert run.events[0].attributes["exception.type"] == "RuntimeError"


@pytest.mark.django_db(transaction=True)
def test_the_relay_publishes_in_the_runs_trace_and_the_message_carries_it_where_masstransit_reads_it(
    spans, clock, rabbit, relay
):
    queue = rabbit.bind_queue(SAMPLE_EXCHANGE)
    occurrence = run_one(clock, "publisher")
    row = OutboxMessage.objects.get(origin=f"occurrence:{occurrence.id}")

    assert relay.deliver_batch(relay.clock()) >= 1

    [run] = named(spans, "run publisher")
    [publish_span] = [
        s for s in named(spans, f"publish {SAMPLE_EXCHANGE}") if s.attributes["bookworm.outbox.id"] == row.id
    ]
    assert publish_span.kind == SpanKind.PRODUCER
    assert publish_span.context.trace_id == run.context.trace_id
    assert publish_span.parent.span_id == run.context.span_id
    assert publish_span.status.status_code == StatusCode.UNSET
    assert {key: publish_span.attributes[key] for key in publish_span.attributes if key != "server.port"} == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": SAMPLE_EXCHANGE,
        "messaging.message.id": str(row.message_id),
        "messaging.message.conversation_id": str(row.message_id),
        "server.address": relay.broker.parameters.host,
        "bookworm.outbox.id": row.id,
        "bookworm.outbox.outcome": "delivered",
    }

    properties, envelope = receive(rabbit, queue, str(row.message_id))
    headers = properties.headers
    assert headers["MT-Activity-Id"] == headers["traceparent"]
    trace_id, span_id = TRACEPARENT.match(headers["MT-Activity-Id"]).groups()
    assert trace_id == f"{run.context.trace_id:032x}"
    assert span_id == f"{publish_span.context.span_id:016x}"
    # The envelope's headers are the row's: the run's context, as publish() stored it.
    assert envelope["headers"]["traceparent"] == row.headers["traceparent"]


@pytest.mark.django_db(transaction=True)
def test_an_unroutable_message_ends_its_publish_span_with_an_error(spans, rabbit, relay):
    event_type = make_event_type()
    rabbit.exchanges.append(event_type.exchange())
    with tracing.span("caller"), transaction.atomic():
        row = publish(event_type())

    relay.deliver_batch(relay.clock())

    [publish_span] = named(spans, f"publish {row.exchange}")
    assert publish_span.attributes["bookworm.outbox.outcome"] == "unroutable"
    assert publish_span.status.status_code == StatusCode.ERROR and "NO_ROUTE" in publish_span.status.description
    [caller] = named(spans, "caller")
    assert publish_span.parent.span_id == caller.context.span_id


@pytest.mark.django_db(transaction=True)
def test_a_relay_that_does_not_trace_passes_the_stored_context_on(rabbit, relay):
    queue = rabbit.bind_queue(SAMPLE_EXCHANGE)
    stored = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    with transaction.atomic():
        traced = publish(sample_jobs.SampleRanEvent(), headers={"traceparent": stored})
        untraced = publish(sample_jobs.SampleRanEvent())

    relay.deliver_batch(relay.clock())

    properties, _ = receive(rabbit, queue, str(traced.message_id))
    assert properties.headers == {
        "MT-Activity-Id": stored,
        "traceparent": stored,
    }
    properties, envelope = receive(rabbit, queue, str(untraced.message_id))
    assert properties.headers is None and envelope["headers"] == {}


@pytest.mark.django_db(transaction=True)
def test_a_web_request_is_a_span(spans, client):
    response = client.get("/tickerq/login/")

    assert response.status_code == 200
    [request] = [span for span in spans.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert request.name == "GET tickerq/login/"
    assert request.attributes["http.status_code"] == 200
