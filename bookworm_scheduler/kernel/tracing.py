"""OpenTelemetry traces: on only when the standard OTEL_* variables ask for them.

Tracing is on when OTEL_TRACES_EXPORTER names an exporter (otlp, console) or, without it, when
OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; OTEL_SDK_DISABLED=true
turns it off whatever else is set. The SDK reads the rest of its standard variables itself
(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG], OTEL_EXPORTER_OTLP_*
headers, timeout and certificate, OTEL_BSP_*), so this module reads none of them into settings:
it only decides whether to start. Spans go out over OTLP/HTTP (protobuf), the lighter exporter
(no gRPC); an OTEL_EXPORTER_OTLP_PROTOCOL other than http/protobuf is refused at start-up.

What is traced:
- web requests (opentelemetry-instrumentation-django) and database statements
  (opentelemetry-instrumentation-psycopg: Django 5.2 passes its cursor class to psycopg.connect,
  which the instrumentation wraps). A statement outside a request, a run or a publish is not
  traced (QueriesInContext): the schedulers' and relays' polling would be a trace per statement;
- each occurrence's run (jobs.engine.runner), a span whose context publish() stores in the outbox
  row's headers (W3C `traceparent`/`tracestate`, outbox.publishing);
- each publish to RabbitMQ (outbox.relay): a span child of the stored context, from the moment
  the message is written until the broker's confirm is recorded. Its context travels in the AMQP
  headers where MassTransit looks for it (amqp_headers below), so a trace goes on into
  BookWorm's consumers.

The pika instrumentation is not used: its span ends when basic_publish returns (on our stepped
SelectConnection, when the frame is buffered, before any confirm), it cannot see the outcome
(ack, nack, return), takes its parent from the current context (ours comes from the row, written
by another process earlier) and writes only `traceparent`, which MassTransit does not read.

Tests enable tracing with a provider of their own (enable/disable); the running processes call
configure() once, from TracingConfig.ready().
"""

import contextlib
import os
from collections.abc import Iterator, Mapping

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

DEFAULT_SERVICE_NAME = "bookworm-scheduler"
EXPORTERS = ("otlp", "console")
# MassTransit 8 (src/MassTransit/Logging/Diagnostics/LogContextActivityExtensions.cs,
# StartReceiveActivity -> GetParentActivityContext) takes the parent of a received message's
# activity from the transport header "MT-Activity-Id" (DiagnosticHeaders.ActivityId), read
# from the AMQP headers by RabbitMqHeaderProvider (bytes decoded as UTF-8) and parsed with
# ActivityContext.TryParse(value, null): a W3C traceparent, "00-<trace id>-<span id>-<flags>".
# Its own sends write the W3C id of the send activity there (PopulateSendActivity). It reads
# neither "traceparent" nor "tracestate"; both are also set for consumers that use the W3C
# names (OpenTelemetry's pika instrumentation, for one).
MASSTRANSIT_ACTIVITY_ID = "MT-Activity-Id"
TRACEPARENT, TRACESTATE = "traceparent", "tracestate"

_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables in environ ask for traces; ImproperlyConfigured if they cannot be met."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    unknown = [name for name in names if name not in (*EXPORTERS, "none")]
    if unknown:
        raise ImproperlyConfigured(f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not available; use otlp or console")
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable, "").strip()
        if protocol and protocol != "http/protobuf":
            raise ImproperlyConfigured(f"{variable}: only http/protobuf is available, got {protocol!r}")
    if names:
        return names != ["none"]
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class QueriesInContext(sampling.Sampler):
    """Drops client spans (database statements) that have no parent; asks `base` about every other span."""

    def __init__(self, base: sampling.Sampler):
        self.base = base

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind == SpanKind.CLIENT and not parent.is_valid:
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self.base.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"QueriesInContext{{{self.base.get_description()}}}"


def configure(environ: Mapping[str, str] = os.environ) -> bool:
    """Start tracing for this process if the OTEL_* variables ask for it; whether it started."""
    if _provider is not None or not wanted(environ):
        return _provider is not None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    # The sampler the SDK would build from OTEL_TRACES_SAMPLER, wrapped (the SDK's own default path).
    provider = TracerProvider(resource=resource, sampler=QueriesInContext(sampling._get_from_env_or_default()))
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    if "otlp" in names:
        # Imported here: it pulls in requests and protobuf, which a process without traces never needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in names:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    enable(provider)
    return True


def enable(provider: TracerProvider) -> None:
    """Trace with provider: our spans, web requests and database statements."""
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("bookworm_scheduler")
    DjangoInstrumentor().instrument(tracer_provider=provider)
    PsycopgInstrumentor().instrument(tracer_provider=provider)


def disable() -> None:
    """Stop tracing (tests): undo enable(); connections opened meanwhile stay instrumented until closed."""
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    global _provider, _tracer
    DjangoInstrumentor().uninstrument()
    PsycopgInstrumentor().uninstrument()
    _provider = _tracer = None


def shutdown() -> None:
    """Export the spans still buffered (before an os._exit, which skips the SDK's atexit hook)."""
    if _provider is not None:
        _provider.shutdown()


def active() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict | None = None,
    parent: otel_context.Context | None = None,
) -> Iterator[trace.Span | None]:
    """A current span around the block (exceptions recorded), or None when tracing is off."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as current:
        yield current


def start_span(name: str, *, kind: SpanKind, attributes: dict, parent: otel_context.Context | None):
    """A span that the caller ends (one that outlives a block: a publish awaiting its confirm); None when off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, context=parent, kind=kind, attributes=attributes)


def fail(current: trace.Span | None, description: str) -> None:
    if current is not None:
        current.set_status(Status(StatusCode.ERROR, description))


def record_exception(exc: BaseException) -> None:
    """Add exc, with its traceback, to the current span (a job's failure, which the runner handles)."""
    if _tracer is not None:
        trace.get_current_span().record_exception(exc)


def trace_id() -> str | None:
    """The current trace's id in hex (for log events), or None outside a valid span or with tracing off."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def inject(carrier: dict) -> None:
    """Write the current span's context into carrier as W3C traceparent (and tracestate) entries."""
    _propagator.inject(carrier)


def extract(carrier: Mapping) -> otel_context.Context | None:
    """The context carrier's W3C entries name, or None if they name none."""
    if TRACEPARENT not in carrier:
        return None
    extracted = _propagator.extract(carrier)
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


def amqp_headers(current: trace.Span | None = None, carrier: Mapping | None = None) -> dict | None:
    """The AMQP headers carrying a span's context (or carrier's W3C entries) to MassTransit; None if none."""
    if current is not None and current.get_span_context().is_valid:
        context = trace.set_span_in_context(current)
    elif carrier is not None and (context := extract(carrier)) is not None:
        pass  # not traced here: pass the upstream context on, so the consumer still joins its trace
    else:
        return None
    headers: dict = {}
    _propagator.inject(headers, context=context)
    headers[MASSTRANSIT_ACTIVITY_ID] = headers[TRACEPARENT]
    return headers


class TracingConfig(AppConfig):
    """Starts tracing in every process (web, runscheduler, relay_outbox) once Django is set up.

    Before the WSGI handler loads its middleware, so the Django instrumentation's middleware is
    in the chain, and before any database connection, so psycopg's are instrumented.
    """

    name = "bookworm_scheduler"
    label = "tracing"
    verbose_name = "Traces"

    def ready(self):
        configure()
