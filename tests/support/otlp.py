"""A real OTLP/gRPC trace receiver: the collector's TraceService on grpcio, built
from the opentelemetry-proto messages, so Envoy's tracer and the services' OTLP
exporters talk to it exactly as they would to a collector or Jaeger.

It keeps every span it receives, flattened to ``ReceivedSpan``. The tests point
``OTEL_EXPORTER_OTLP_ENDPOINT`` (and Envoy's tracer) at ``receiver.endpoint``.
``python -m tests.support.otlp PORT`` runs one that only counts spans (the bench's
tracing rows export to it).
"""

import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

# Span kinds by the numbers OTLP sends (trace.proto's Span.SpanKind).
KINDS = {
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    kind: str  # server, client, producer, consumer, internal
    trace_id: str  # 32 hex digits, as in a traceparent header
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any] = field(hash=False)
    status_code: int = 0  # 0 unset, 1 ok, 2 error (trace.proto's Status.StatusCode)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Iterator[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    return [
        ReceivedSpan(
            service=str(_attributes(resource_spans.resource.attributes).get("service.name", "")),
            name=span.name,
            kind=KINDS.get(span.kind, "unspecified"),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            attributes=_attributes(span.attributes),
            status_code=span.status.code,
        )
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: "OtlpReceiver") -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver.add(flatten(request) if self._receiver.keep else [], request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """An OTLP/gRPC endpoint on 127.0.0.1; ``with OtlpReceiver() as receiver:``."""

    def __init__(self, port: int = 0, *, keep: bool = True) -> None:
        self.keep = keep  # False: count spans only (long benchmark runs)
        self.span_count = 0
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")

    @property
    def endpoint(self) -> str:
        """For ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the gRPC exporter takes a URL)."""
        return f"http://127.0.0.1:{self.port}"

    def add(
        self, spans: list[ReceivedSpan], request: trace_service_pb2.ExportTraceServiceRequest
    ) -> None:
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self._spans.extend(spans)
            self.span_count += count

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def start(self) -> "OtlpReceiver":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    receiver = OtlpReceiver(int(sys.argv[1]) if len(sys.argv) > 1 else 4317, keep=False).start()
    print(f"OTLP receiver on {receiver.endpoint}", flush=True)
    receiver._server.wait_for_termination()
