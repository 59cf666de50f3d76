"""Tracing (OpenTelemetry), configured by the standard OTEL_* variables only.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set,
and neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``,
``start_tracing`` installs the SDK's tracer provider with an OTLP/gRPC exporter
behind a batch span processor, and the instrumentations: gRPC server spans
(``grpc_server_interceptors``), asyncpg and pymongo client spans, FastStream
consumer spans (``broker_middlewares``). Without it nothing is installed: the
API's no-op tracer answers every call, so an untraced mesh pays nothing
measurable. The SDK itself reads the rest of the standard variables:
``OTEL_TRACES_SAMPLER``/``_ARG`` (default: parentbased_always_on),
``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*``.

A trace crosses the transactional outbox: ``trace_headers`` is the W3C trace
context (``traceparent``/``tracestate``) a sale stores in its outbox row, and
``producer_span`` is the relay's publish span, parented on that stored context
however much later it runs (docs/architecture.md, "One trace per order").
"""

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# RPCs that would flood traces without telling anything about an order: health
# checks run every few seconds per Envoy and per probe; reflection serves tools.
UNTRACED_GRPC_SERVICES = ("grpc.health.v1.", "grpc.reflection.")
# Only the W3C trace context travels through the outbox and the broker: baggage
# may hold whatever a caller put in it, and the outbox row is durable.
_W3C = TraceContextTextMapPropagator()


def traces_endpoint(environ: Mapping[str, str] = os.environ) -> str | None:
    """Where the environment asks spans to go: the traces endpoint, else the general
    one; None when neither is set, or the SDK or the trace exporter is switched off
    (OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none). Envoy's config reads it too
    (blueprint/edge/settings.py), so the edge and the services trace alike."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    return next((v for n in ENDPOINT_VARIABLES if (v := environ.get(n, "").strip())), None)


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (``traces_endpoint`` gives one)."""
    return traces_endpoint(environ) is not None


@dataclass
class Tracing:
    """What ``start_tracing`` installed; ``shutdown`` flushes the spans still buffered."""

    provider: Any = None  # opentelemetry.sdk.trace.TracerProvider when tracing

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    async def shutdown(self) -> None:
        if self.provider is not None:
            # Flushes the batch processor (bounded by OTEL_BSP_EXPORT_TIMEOUT).
            self.provider.shutdown()


_installed = Tracing()


def start_tracing(default_service_name: str) -> Tracing:
    """Install tracing for this process when the environment asks for it.

    ``default_service_name`` is the process's own name (``inventory_svc``,
    ``inventory_relay``, …, as in blueprint/topology.py); an explicit
    ``OTEL_SERVICE_NAME`` or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` wins.
    Call it once per process, in the service's bootstrap, before the gRPC server,
    the database clients and the broker are made (they look for it then).
    """
    if _installed.enabled or not tracing_configured():
        return _installed
    # Imported here: an untraced process never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from_environment = OTELResourceDetector().detect().attributes
    resource = Resource.create({SERVICE_NAME: default_service_name, **from_environment})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info(
        "tracing on: service.name %s, exporting to %s",
        resource.attributes[SERVICE_NAME],
        traces_endpoint(),
    )
    return install(provider)


def install(provider: Any) -> Tracing:
    """Trace with ``provider`` (an SDK TracerProvider): instrument the database
    clients, and let the gRPC server and the broker ask for their instrumentation.
    ``start_tracing`` calls it; tests pass a provider with an in-memory exporter."""
    global _installed
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

    # Statements and command names only: asyncpg's capture_parameters and
    # pymongo's capture_statement stay off, so no value of a row ever leaves
    # (tests/integration/test_trace_context.py checks it).
    AsyncPGInstrumentor(capture_parameters=False).instrument(tracer_provider=provider)
    PymongoInstrumentor().instrument(tracer_provider=provider, capture_statement=False)
    _installed = Tracing(provider)
    return _installed


def uninstall() -> None:
    """Undo ``install`` (tests)."""
    global _installed
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

    AsyncPGInstrumentor().uninstrument()
    PymongoInstrumentor().uninstrument()
    _installed = Tracing()


def grpc_server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The gRPC server span interceptor when tracing is on (none otherwise).

    Its spans carry ``rpc.grpc.status_code`` (meshkit.grpc_server maps meshkit.errors
    to codes) and, as OpenTelemetry's gRPC conventions say, an error status for the
    codes that mean the server failed (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED,
    UNKNOWN, UNIMPLEMENTED, DATA_LOSS), not for a caller's mistake (NOT_FOUND, …).
    """
    if not _installed.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    traced = filters.negate(
        filters.any_of(*(filters.service_prefix(p) for p in UNTRACED_GRPC_SERVICES))
    )
    return [aio_server_interceptor(tracer_provider=_installed.provider, filter_=traced)]


def broker_middlewares() -> tuple[Any, ...]:
    """FastStream's OpenTelemetry middleware (consumer spans continuing the trace
    in the message's headers) when tracing is on; none otherwise."""
    if not _installed.enabled:
        return ()
    from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware

    return (RabbitTelemetryMiddleware(tracer_provider=_installed.provider),)


def trace_headers() -> dict[str, str]:
    """The current span's W3C trace context as headers ({} outside a trace); an
    unsampled context is kept too, so the event's spans follow the same decision."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


@contextlib.contextmanager
def producer_span(
    name: str, parent_headers: Mapping[str, Any], attributes: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    """A PRODUCER span parented on the trace context in ``parent_headers``; yields
    the headers to publish: ``parent_headers`` with that span's context instead.

    The parent may have ended long ago (an event published after a broker
    outage): a span context is all a child needs, so it stays one trace.
    Without tracing the headers pass on unchanged: a consumer then continues
    the stored context directly.
    """
    if not _installed.enabled:
        yield dict(parent_headers)
        return
    parent = _W3C.extract({k: v for k, v in parent_headers.items() if isinstance(v, str)})
    tracer = _installed.provider.get_tracer(__name__)
    with tracer.start_as_current_span(
        name, context=parent, kind=trace.SpanKind.PRODUCER, attributes=attributes
    ):
        headers = {k: v for k, v in parent_headers.items() if k not in _W3C.fields}
        _W3C.inject(headers)
        yield headers


@contextlib.contextmanager
def in_trace_of(headers: Mapping[str, str]) -> Iterator[None]:
    """Spans inside become children of the span whose context ``headers`` hold.

    For work done for a caller in a task that is not the caller's: inventory_svc's
    sale batcher writes an order in a task the product's first caller started,
    and the order's SQL span belongs to the order's own trace.
    """
    if not _installed.enabled or not headers:
        yield
        return
    token = context.attach(_W3C.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No instrumentation spans inside (health probes, the relay's polling): work
    that belongs to no request would otherwise start a new trace every time."""
    if not _installed.enabled:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span as hex, None outside a trace (logs.py).

    Without tracing installed there are no spans: not even a context lookup."""
    if not _installed.enabled:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
