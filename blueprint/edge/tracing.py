"""Tracing (OpenTelemetry).

With an OTLP endpoint configured (EdgeTracing), Envoy starts a trace for every call,
or continues the caller's W3C traceparent, passes its own span on to the backend as
traceparent, exports its span to the endpoint and returns the trace id in
x-trace-id (and writes it into the access log). Without one: no tracer, no header.
"""

from blueprint.edge.blocks import Config, set_header, typed
from blueprint.edge.clusters import external_cluster, http2_upstream
from blueprint.edge.settings import EdgeTracing

OTLP_CLUSTER = "otlp"
TRACE_ID_HEADER = "x-trace-id"
SAMPLER_EXTENSION = "envoy.tracers.opentelemetry.samplers."
ENVOY_SERVICE_NAME = "envoy"


def _sampler(name: str, ratio: float) -> Config:
    """OTEL_TRACES_SAMPLER (and its ratio) as Envoy's OpenTelemetry sampler extension.

    parentbased_*: a caller's traceparent decides (sampled or not), the root sampler
    only new traces; the others decide on every call. always_off is a ratio of 0.
    """
    root = name.removeprefix("parentbased_")
    if root == "always_on":
        sampler = {
            "name": SAMPLER_EXTENSION + "always_on",
            "typed_config": typed("tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig"),
        }
    else:
        share = 0.0 if root == "always_off" else ratio
        sampler = {
            "name": SAMPLER_EXTENSION + "trace_id_ratio_based",
            "typed_config": typed(
                "tracers.opentelemetry.samplers.v3.TraceIdRatioBasedSamplerConfig",
                # Parts per million: 0.1 % steps would not be enough for busy edges.
                sampling_percentage={
                    "numerator": round(share * 1_000_000),
                    "denominator": "MILLION",
                },
            ),
        }
    if not name.startswith("parentbased_"):
        return sampler
    return {
        "name": SAMPLER_EXTENSION + "parent_based",
        "typed_config": typed(
            "tracers.opentelemetry.samplers.v3.ParentBasedSamplerConfig", wrapped_sampler=sampler
        ),
    }


def tracer(tracing: EdgeTracing) -> Config:
    """The connection manager's tracer: OpenTelemetry over OTLP/gRPC (cluster `otlp`)."""
    config: Config = {
        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "5s"},
        "service_name": ENVOY_SERVICE_NAME,
        "sampler": _sampler(tracing.sampler, tracing.ratio),
    }
    if tracing.resource_attributes:
        config["resource_detectors"] = [
            {
                "name": "envoy.tracers.opentelemetry.resource_detectors.static_config",
                "typed_config": typed(
                    "tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig",
                    attributes=dict(tracing.resource_attributes),
                ),
            }
        ]
    return {
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": config},
        # The sampler decides; every call is offered to it.
        "random_sampling": {"value": 100},
    }


def otlp_cluster(tracing: EdgeTracing) -> Config:
    cluster = external_cluster(OTLP_CLUSTER, tracing.endpoint, 4317, tracing.trusted_ca_file, "1s")
    # OTLP/gRPC is HTTP/2, in the clear or over TLS (ALPN h2).
    cluster["typed_extension_protocol_options"] = http2_upstream()
    tls = cluster.get("transport_socket")
    if tls:
        tls["typed_config"]["common_tls_context"]["alpn_protocols"] = ["h2"]
    return cluster


def _trace_id_header() -> Config:
    """x-trace-id: the call's trace id, so a caller can quote it. Calls the sampler
    left out have one too (passed on in traceparent, not exported)."""
    return set_header(TRACE_ID_HEADER, "%TRACE_ID%")


def trace_id_filter() -> Config:
    """x-trace-id on every answer: first in the chain, so last to see each answer on
    its way out, including the local replies of every later filter."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": typed(
            "filters.http.header_mutation.v3.HeaderMutation",
            mutations={"response_mutations": [{"append": _trace_id_header()}]},
        ),
    }


def span_name(service: str, rpc: str) -> Config:
    """A route's decorator: Envoy's span is named after the RPC (OpenTelemetry's gRPC
    span name), for REST and native gRPC calls alike; not passed on as a header."""
    return {"operation": f"{service}/{rpc}", "propagate": False}
