"""Generates Envoy's configuration for the native run, the tests, compose and Kubernetes.

One function builds the config from the mesh topology; only addresses and paths
differ between deployments. ``python -m mesh.envoy_config`` rewrites the
checked-in files under envoy/ and deploy/k8s/base/envoy/ (``make generate``; CI
fails when they drift).
"""

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from mesh.access import DEV_AUDIENCE, DEV_ISSUER, DEV_JWKS_FILE, method_access
from mesh.contracts import DESCRIPTOR_SET, load_contracts
from mesh.topology import DOCS_SITE, GRPC_PORTS, ROOT
from meshkit.identity import SUBJECT_HEADER
from meshkit.telemetry import ENDPOINT_VARIABLES, traces_endpoint

Config = dict[str, Any]

# Envoy's own error replies (bad JSON, unknown route, no healthy upstream, …)
# get the same JSON shape as gRPC errors converted by the transcoder.
# The method and path a request arrived with (kept in metadata before the
# transcoder rewrites them), whether a backend was reached (upstream host), how
# many tries it took and why Envoy answered itself (response flags: UO overflow, …).
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%DYNAMIC_METADATA(mesh.edge:method)% %DYNAMIC_METADATA(mesh.edge:path):256%'
    ' %PROTOCOL%" %RESPONSE_CODE% grpc=%GRPC_STATUS% %DURATION%ms'
    " upstream=%UPSTREAM_CLUSTER%@%UPSTREAM_HOST% tries=%UPSTREAM_REQUEST_ATTEMPT_COUNT%"
    " flags=%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%"
    " deadline=%REQ(GRPC-TIMEOUT)% trace=%TRACE_ID%\n"
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".yaml": "application/yaml; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
# Per-route: not an API call, so the transcoder (which would answer "no such
# method") stays out of the way.
NOT_AN_API = {
    TRANSCODER: {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "disabled": True,
    }
}
KIB = 1024


@dataclass(frozen=True)
class EdgeAuth:
    """Whose tokens Envoy accepts: issuer, audiences and where the signing keys are.

    Development (the default): ``make up`` keeps a key pair under .run/auth/ and
    Envoy reads its public JWKS from a file. Production: any OIDC provider, set
    through the environment (``from_env``): AUTH_ISSUER, AUTH_AUDIENCES
    (comma-separated) and AUTH_JWKS_URI, which Envoy fetches and caches itself.
    """

    issuer: str = DEV_ISSUER
    audiences: tuple[str, ...] = (DEV_AUDIENCE,)
    jwks_file: str = str(DEV_JWKS_FILE.relative_to(ROOT))
    jwks_uri: str = ""  # set: remote_jwks, jwks_file unused
    # Where Envoy finds trusted CAs for an https JWKS URI (Debian/Ubuntu and the
    # envoyproxy/envoy image).
    trusted_ca_file: str = "/etc/ssl/certs/ca-certificates.crt"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] = os.environ, base: "EdgeAuth | None" = None
    ) -> "EdgeAuth":
        auth = base or cls()
        if issuer := env.get("AUTH_ISSUER"):
            auth = replace(auth, issuer=issuer)
        if audiences := env.get("AUTH_AUDIENCES"):
            auth = replace(
                auth, audiences=tuple(a.strip() for a in audiences.split(",") if a.strip())
            )
        if jwks_uri := env.get("AUTH_JWKS_URI"):
            if urlsplit(jwks_uri).scheme not in ("http", "https"):
                raise ValueError(f"AUTH_JWKS_URI must be an http(s) URL, got {jwks_uri!r}")
            auth = replace(auth, jwks_uri=jwks_uri)
        if jwks_file := env.get("AUTH_JWKS_FILE"):
            auth = replace(auth, jwks_file=jwks_file)
        return auth


AUTH_ENV = ("AUTH_ISSUER", "AUTH_AUDIENCES", "AUTH_JWKS_URI", "AUTH_JWKS_FILE")


# OTEL_TRACES_SAMPLER values Envoy's sampler extensions can express (the default is
# the SDKs' default).
SAMPLERS = (
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
)
DEFAULT_SAMPLER = "parentbased_always_on"
ENVOY_SERVICE_NAME = "envoy"


@dataclass(frozen=True)
class EdgeTracing:
    """Where Envoy exports its spans (OTLP/gRPC) and which requests it samples.

    From the standard variables (``from_env``), as the services read them:
    OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, OTEL_TRACES_SAMPLER and _ARG,
    OTEL_RESOURCE_ATTRIBUTES. Envoy's service.name is always ``envoy``:
    OTEL_SERVICE_NAME names a service process, and one environment starts them all.
    """

    endpoint: str  # http://host:4317 (https: TLS, verified against the system CAs)
    sampler: str = DEFAULT_SAMPLER
    ratio: float = 1.0  # the traceidratio samplers' share of new traces
    # Extra resource attributes (deployment.environment=…), never service.name.
    resource_attributes: tuple[tuple[str, str], ...] = ()
    trusted_ca_file: str = EdgeAuth.trusted_ca_file

    def __post_init__(self) -> None:
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"the OTLP endpoint must be an http(s) URL (OTLP/gRPC, e.g. http://jaeger:4317),"
                f" got {self.endpoint!r}"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER={self.sampler!r} is not one Envoy can apply;"
                f" use one of {', '.join(SAMPLERS)}"
            )
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG must be within [0, 1], got {self.ratio}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "EdgeTracing | None":
        """None (no tracer at all) when the services would not trace either
        (meshkit.telemetry.traces_endpoint: no endpoint, or tracing switched off)."""
        endpoint = traces_endpoint(env)
        if endpoint is None:
            return None
        sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
        argument = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            ratio = float(argument) if argument else 1.0
        except ValueError:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER_ARG must be a number, got {argument!r}"
            ) from None
        return cls(
            endpoint,
            sampler,
            ratio,
            _resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", "")),
        )


def _resource_attributes(text: str) -> tuple[tuple[str, str], ...]:
    """OTEL_RESOURCE_ATTRIBUTES (key=value,key=value, values percent-encoded) without
    service.name: Envoy is always ``envoy``."""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return tuple(
        (key.strip(), unquote(value.strip()))
        for key, value in pairs
        if key.strip() and key.strip() != "service.name"
    )


@dataclass(frozen=True)
class EnvoySite:
    """Where one Envoy listens, where it finds the backends, and the edge's limits.

    The limits' defaults are the documented ones (README "Limits"); the test
    sandbox and the benchmarks pass their own.
    """

    listen_address: str = "127.0.0.1"
    listen_port: int = 8080
    admin_port: int = 9901
    descriptor_path: str = str(DESCRIPTOR_SET.relative_to(ROOT))
    # backend name → the (host, port) of each replica. One address that DNS
    # resolves to several (compose, a Kubernetes headless Service) works too.
    backends: dict[str, list[tuple[str, int]]] = field(
        default_factory=lambda: {name: [("127.0.0.1", port)] for name, port in GRPC_PORTS.items()}
    )
    health_check_seconds: float = 2.0
    # Where Envoy finds the docs site (built into docs/site by `make docs`).
    docs_dir: str = str(DOCS_SITE.relative_to(ROOT))
    auth: EdgeAuth = field(default_factory=EdgeAuth)
    # Where Envoy exports its spans; None: no tracer at all (and no x-trace-id).
    tracing: EdgeTracing | None = None

    # --- strict input ---------------------------------------------------------
    # A REST/JSON body: the largest request of the API is a few hundred bytes.
    rest_body_limit_bytes: int = 64 * KIB
    # A native gRPC message (the services refuse bigger ones with the same cap).
    grpc_message_limit_bytes: int = 64 * KIB
    # Request headers, request line included. The services' gRPC metadata limit
    # is grpcio's default soft limit of 8 KiB, counted with 32 bytes per header
    # on top of name and value; Envoy adds a few headers of its own. 6 KiB and at
    # most 40 headers keep every forwarded request under it, so an over-long
    # header or query string gets Envoy's 431, never a backend's random 429.
    max_request_headers_kb: int = 6
    max_request_headers_count: int = 40
    # Origins a browser may call the API from (CORS); none unless configured.
    cors_allowed_origins: tuple[str, ...] = ()

    # --- admission control ------------------------------------------------------
    # Route timeout per kind of RPC (RPC_KINDS): above the services' own database
    # timeout (DB_TIMEOUT_SECONDS, 5 s), so their UNAVAILABLE answer wins over a 504.
    # A caller's grpc-timeout is honoured up to the same cap.
    timeouts: dict[str, float] = field(
        default_factory=lambda: {"read": 8.0, "write": 10.0, "report": 20.0, "meta": 10.0}
    )
    # Mutations (RPCs bound to POST) per client address: a token bucket refilled
    # with `mutation_rate_per_second` tokens every second, at most `mutation_burst`.
    # 0 turns the limit off.
    mutation_rate_per_second: int = 20
    mutation_burst: int = 40
    # Circuit breakers per backend: calls in flight, calls waiting for a connection.
    # Beyond them Envoy answers 503 at once instead of queueing.
    max_requests_per_backend: int = 256
    max_pending_per_backend: int = 64
    # Client connections Envoy holds at once (overload manager).
    max_downstream_connections: int = 10_000
    # What a shed request is told (retry-after, seconds).
    retry_after_seconds: int = 1

    # --- replicas: retries and ejection (README "Replicas") -----------------------
    # Retries of an RPC that is safe to repeat (RETRY_SAFE), each try bounded by
    # this timeout: above the services' database timeout (5 s), so their own
    # answer comes back first. One try more than outlier_consecutive_errors: a
    # replica that died looks idle to least-request (its calls fail at once), so
    # every try of one call may land on it; after the third the replica is
    # ejected and the fourth reaches a live one.
    retries: int = 3
    per_try_timeout_seconds: float = 6.0
    # Retries in flight per backend as a share of its calls in flight (a retry
    # budget): a struggling backend is not hit by a retry storm.
    retry_budget_percent: float = 25.0
    # A replica failing this many calls in a row (reset, refused, 5xx/UNAVAILABLE)
    # is ejected for a while, before its health check notices anything.
    outlier_consecutive_errors: int = 3
    outlier_ejection_seconds: float = 10.0


# Settings the launcher takes from the environment (README "Limits", envoy/README.md
# "Tracing"): any of them set, and `make up` renders Envoy's config with them.
EDGE_ENV = ("CORS_ALLOWED_ORIGINS", *ENDPOINT_VARIABLES)


def with_environment(site: EnvoySite, env: Mapping[str, str] | None = None) -> EnvoySite:
    """``site`` with the edge settings given in the environment: CORS_ALLOWED_ORIGINS,
    a comma-separated list of origins (https://shop.example) browsers may call from,
    and the OpenTelemetry variables (EdgeTracing.from_env)."""
    env = os.environ if env is None else env
    if origins := env.get("CORS_ALLOWED_ORIGINS", "").strip():
        site = replace(
            site, cors_allowed_origins=tuple(o.strip() for o in origins.split(",") if o.strip())
        )
    return replace(site, tracing=EdgeTracing.from_env(env))


# How long each kind of RPC may take (EnvoySite.timeouts). An RPC's kind comes from
# its REST binding (GET: read, anything else: write) unless listed here.
RPC_KINDS = {"GetSalesSummary": "report"}
# Mutations that may be sent twice: DecreaseStock is idempotent by order_id (a
# replay returns the first sale, never sells again). Reads are safe anyway.
# RestockProduct adds stock on every call, so it is never retried once it may
# have reached a backend.
IDEMPOTENT_MUTATIONS = frozenset({"DecreaseStock"})
# What a safe RPC is retried on (on another replica): the connection was reset or
# refused, the stream refused (a draining backend), or the backend said UNAVAILABLE.
SAFE_RETRY_ON = "reset,connect-failure,refused-stream,unavailable"
# Every other RPC: only when the request certainly never reached a backend.
UNSAFE_RETRY_ON = "connect-failure,refused-stream,reset-before-request"

# Envoy's own answers (local replies): HTTP status → (gRPC code, fixed message).
# Fixed messages, because Envoy's texts carry internals ("upstream connect error or
# disconnect/reset before headers. reset reason: …"). None keeps Envoy's message:
# the transcoder's 400s and 404s say which field or route was wrong, and nothing more.
LOCAL_REPLIES: dict[int, tuple[int, str | None]] = {
    400: (3, None),  # INVALID_ARGUMENT
    401: (16, None),  # UNAUTHENTICATED: jwt_authn says what is wrong with the token
    403: (7, None),  # PERMISSION_DENIED: RBAC, a valid token without the RPC's scope
    404: (5, None),  # NOT_FOUND
    405: (3, "this method is not allowed on this path; see the allow header"),
    408: (4, "the request was not received in time"),
    413: (3, "the request body is larger than {rest_limit}"),
    415: (3, "the request body must be JSON (content-type: application/json)"),
    426: (3, "HTTP/1.0 and HTTP/1.1 or newer are supported"),
    429: (8, "too many requests from this client; retry in {retry_after} s"),
    431: (3, "the request headers are larger than {header_limit}"),
    500: (13, "the gateway failed to handle the request"),
    501: (12, "this transfer encoding is not supported"),
    502: (14, "the service gave no valid answer; try again later"),
    503: (14, "the service is unavailable or overloaded; retry in {retry_after} s"),
    504: (4, "the service did not answer in time"),
}
# Native gRPC callers' messages where they differ.
GRPC_MESSAGES = {413: "the request message is larger than {grpc_limit}"}
# gRPC callers get another code where gRPC has a better one: no route is "no such method".
GRPC_CODES = {404: 12}  # UNIMPLEMENTED
# Statuses whose local replies tell the caller when to come back.
RETRY_AFTER = {429, 503}
# Where the content-type a request arrived with is kept (before the transcoder
# rewrites it): the local replies answer gRPC callers in gRPC, everybody else in JSON.
EDGE_METADATA = "mesh.edge"
GRPC_CONTENT_TYPE = "(?i)^application/grpc"
JSON_CONTENT_TYPE = r"(?i)^application/json\s*(;.*)?$"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _size(limit: int) -> str:
    return f"{limit // KIB} KiB" if limit % KIB == 0 else f"{limit} bytes"


def _typed(type_name: str, **fields: Any) -> Config:
    """A typed_config block: ``type_name`` relative to envoy.extensions."""
    return {"@type": f"type.googleapis.com/envoy.extensions.{type_name}", **fields}


def _address(host: str, port: int) -> Config:
    return {"socket_address": {"address": host, "port_value": port}}


def _endpoint(host: str, port: int) -> Config:
    return {"endpoint": {"address": _address(host, port)}}


def _http2_upstream(**http2_options: Any) -> Config:
    """A cluster's protocol options: HTTP/2 to the upstream (gRPC needs it)."""
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": http2_options},
        )
    }


def _header(name: str, regex: str, *, invert: bool = False) -> Config:
    """A route/filter header matcher on a regular expression (RE2)."""
    return {
        "name": name,
        "string_match": {"safe_regex": {"regex": regex}},
        "invert_match": invert,
        "treat_missing_header_as_empty": True,
    }


# --- clusters: circuit breakers, health checks ---------------------------------------


def _cluster(
    name: str, addresses: list[tuple[str, int]], health_service: str, site: EnvoySite
) -> Config:
    """A backend's replicas: least-request balancing, an active gRPC health check of
    each endpoint, and outlier detection that ejects one that keeps failing."""
    return {
        "name": name,
        "type": "STRICT_DNS",
        # Of two random healthy replicas, the one with fewer calls in flight: a slow
        # replica gets less work instead of an equal share.
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        # A backend that died without closing its connection is noticed within
        # seconds, not at the next call's timeout.
        "typed_extension_protocol_options": _http2_upstream(
            connection_keepalive={"interval": "10s", "timeout": "2s"}
        ),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [_endpoint(*address) for address in addresses]}],
        },
        "circuit_breakers": _circuit_breakers(site),
        "outlier_detection": _outlier_detection(site),
        "health_checks": [
            {
                "timeout": "1s",
                "interval": _seconds(site.health_check_seconds),
                # Without this, idle clusters are only checked once a minute.
                "no_traffic_interval": _seconds(site.health_check_seconds),
                # A backend that is down is probed more often, so a restarted one
                # is back in rotation within half a second of answering SERVING.
                "unhealthy_interval": _seconds(min(site.health_check_seconds, 0.5)),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health_service},
            }
        ],
    }


def _circuit_breakers(site: EnvoySite) -> Config:
    """Bounded admission per backend: beyond these, a fast 503 (with retry-after)
    instead of a queue that grows until every caller times out."""
    return {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_requests": site.max_requests_per_backend,
                "max_pending_requests": site.max_pending_per_backend,
                "max_connections": 64,
                # Retries in flight: a share of the calls in flight, at least 16.
                # When a replica dies, every caller's next call may fail on it at
                # once and wait out its back-off: with only 3, the 4th of 4 callers
                # got a 503 instead of its retry (tests/e2e/test_replicas.py).
                "retry_budget": {
                    "budget_percent": {"value": site.retry_budget_percent},
                    "min_retry_concurrency": 16,
                },
                "track_remaining": True,
            }
        ]
    }


def _outlier_detection(site: EnvoySite) -> Config:
    """Eject a replica after consecutive failures seen on real calls (connection
    failures, resets, 5xx, which gRPC UNAVAILABLE maps to), at most half of them:
    a database outage that fails every replica must not empty the cluster."""
    return {
        "consecutive_5xx": site.outlier_consecutive_errors,
        "consecutive_gateway_failure": site.outlier_consecutive_errors,
        "enforcing_consecutive_gateway_failure": 100,
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": site.outlier_consecutive_errors,
        "enforcing_consecutive_local_origin_failure": 100,
        "interval": _seconds(min(site.health_check_seconds, 1.0)),
        "base_ejection_time": _seconds(site.outlier_ejection_seconds),
        "max_ejection_percent": 50,
        # Envoy counts the host it would eject: with two replicas, one is already
        # 50 %, so without this a dead replica is never ejected and keeps drawing
        # calls (least-request favours a host whose calls fail at once).
        "always_eject_one_host": True,
    }


# --- tracing (OpenTelemetry) ----------------------------------------------------------
#
# With an OTLP endpoint configured (EdgeTracing), Envoy starts a trace for every call,
# or continues the caller's W3C traceparent, passes its own span on to the backend as
# traceparent, exports its span to the endpoint and returns the trace id in
# x-trace-id (and writes it into the access log). Without one: no tracer, no header.

OTLP_CLUSTER = "otlp"
TRACE_ID_HEADER = "x-trace-id"
SAMPLER_EXTENSION = "envoy.tracers.opentelemetry.samplers."


def _sampler(name: str, ratio: float) -> Config:
    """OTEL_TRACES_SAMPLER (and its ratio) as Envoy's OpenTelemetry sampler extension.

    parentbased_*: a caller's traceparent decides (sampled or not), the root sampler
    only new traces; the others decide on every call. always_off is a ratio of 0.
    """
    root = name.removeprefix("parentbased_")
    if root == "always_on":
        sampler = {
            "name": SAMPLER_EXTENSION + "always_on",
            "typed_config": _typed("tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig"),
        }
    else:
        share = 0.0 if root == "always_off" else ratio
        sampler = {
            "name": SAMPLER_EXTENSION + "trace_id_ratio_based",
            "typed_config": _typed(
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
        "typed_config": _typed(
            "tracers.opentelemetry.samplers.v3.ParentBasedSamplerConfig", wrapped_sampler=sampler
        ),
    }


def _tracing(tracing: EdgeTracing) -> Config:
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
                "typed_config": _typed(
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


def _otlp_cluster(tracing: EdgeTracing) -> Config:
    cluster = _external_cluster(OTLP_CLUSTER, tracing.endpoint, 4317, tracing.trusted_ca_file, "1s")
    # OTLP/gRPC is HTTP/2, in the clear or over TLS (ALPN h2).
    cluster["typed_extension_protocol_options"] = _http2_upstream()
    tls = cluster.get("transport_socket")
    if tls:
        tls["typed_config"]["common_tls_context"]["alpn_protocols"] = ["h2"]
    return cluster


def _external_cluster(
    name: str, endpoint: str, plain_port: int, trusted_ca_file: str, connect_timeout: str
) -> Config:
    """A cluster for a service outside the mesh (an OTLP collector, a JWKS server)
    at a URL: an https URL gets TLS with the server's name checked against the CA."""
    url = urlsplit(endpoint)
    host, tls = url.hostname or "", url.scheme == "https"
    cluster: Config = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [_endpoint(host, url.port or (443 if tls else plain_port))]}
            ],
        },
    }
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "transport_sockets.tls.v3.UpstreamTlsContext",
                sni=host,
                common_tls_context={
                    "validation_context": {
                        "trusted_ca": {"filename": trusted_ca_file},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": host}}
                        ],
                    }
                },
            ),
        }
    return cluster


def _trace_id_header() -> Config:
    """x-trace-id: the call's trace id, so a caller can quote it. Calls the sampler
    left out have one too (passed on in traceparent, not exported)."""
    return {
        "header": {"key": TRACE_ID_HEADER, "value": "%TRACE_ID%"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        "keep_empty_value": False,
    }


def _trace_id_filter() -> Config:
    """x-trace-id on every answer: first in the chain, so last to see each answer on
    its way out, including the local replies of every later filter."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": _typed(
            "filters.http.header_mutation.v3.HeaderMutation",
            mutations={"response_mutations": [{"append": _trace_id_header()}]},
        ),
    }


# --- local replies: one error shape ------------------------------------------------


def _arrived_as_grpc() -> Config:
    """The request arrived as native gRPC (by the content-type it came with,
    recorded before the transcoder rewrites it). Requests that never got that far
    (codec errors: 431, 501, …) have no record and count as REST."""
    return {
        "metadata_filter": {
            "matcher": {
                "filter": EDGE_METADATA,
                "path": [{"key": "content_type"}],
                "value": {"string_match": {"safe_regex": {"regex": GRPC_CONTENT_TYPE}}},
            },
            "match_if_key_not_found": False,
        }
    }


def _local_reply_mappers(site: EnvoySite) -> list[Config]:
    mappers = []
    for status, (code, template) in LOCAL_REPLIES.items():
        values = {
            "rest_limit": _size(site.rest_body_limit_bytes),
            "grpc_limit": _size(site.grpc_message_limit_bytes),
            "header_limit": f"{site.max_request_headers_kb} KiB",
            "retry_after": site.retry_after_seconds,
        }
        message = template.format(**values) if template else None
        grpc_message = GRPC_MESSAGES.get(status, template)
        grpc_message = grpc_message.format(**values) if grpc_message else None
        headers = (
            [
                {
                    "header": {"key": "retry-after", "value": str(site.retry_after_seconds)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ]
            if status in RETRY_AFTER
            else []
        )
        status_filter = {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {
                        "default_value": status,
                        "runtime_key": f"mesh.local_reply.{status}",
                    },
                }
            }
        }
        # Native gRPC callers: an HTTP 200 trailers-only answer whose grpc-status
        # and grpc-message say the same as the JSON body would.
        grpc_mapper: Config = {
            "filter": {"and_filter": {"filters": [status_filter, _arrived_as_grpc()]}},
            "headers_to_add": [
                *headers,
                {
                    "header": {"key": "grpc-status", "value": str(GRPC_CODES.get(status, code))},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
            ],
        }
        if grpc_message:
            grpc_mapper["body"] = {"inline_string": grpc_message}
        # Everybody else (the first mapper that matches wins): the JSON error body.
        rest_mapper: Config = {
            "filter": status_filter,
            "body_format_override": {
                "json_format": {
                    "code": code,
                    "message": message or "%LOCAL_REPLY_BODY%",
                    "details": [],
                },
                "content_type": "application/json",
            },
        }
        if headers:
            rest_mapper["headers_to_add"] = headers
        mappers += [grpc_mapper, rest_mapper]
    return mappers


# --- routes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rpc:
    service: str  # polyglot.inventory.v1.InventoryService
    name: str  # DecreaseStock
    backend: str  # inventory_svc
    http_method: str | None  # POST, or None without a REST binding
    http_path: str | None  # /inventory/decrease

    @property
    def kind(self) -> str:
        return RPC_KINDS.get(self.name) or ("read" if self.http_method == "GET" else "write")

    @property
    def retry_safe(self) -> bool:
        """Repeating it changes nothing (README "Replicas": which RPCs Envoy retries)."""
        return self.kind != "write" or self.name in IDEMPOTENT_MUTATIONS


def _rpcs(descriptor_set: Path) -> list[_Rpc]:
    return [
        _Rpc(
            service.full_name,
            rpc.name,
            service.backend,
            rpc.route.method if rpc.route else None,
            rpc.route.path if rpc.route else None,
        )
        for service in load_contracts(descriptor_set).services
        for rpc in service.rpcs
    ]


def _retry_policy(safe: bool, site: EnvoySite, timeout: float) -> Config:
    """Safe to repeat: retried on another replica after a reset or UNAVAILABLE too.
    Otherwise only when the request never reached a backend. Short back-off: a
    restarted or other replica is tried at once."""
    policy: Config = {
        "retry_on": SAFE_RETRY_ON if safe else UNSAFE_RETRY_ON,
        "num_retries": site.retries,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
        # Not the replica that just failed, when there is another one.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _typed("retry.host.previous_hosts.v3.PreviousHostsPredicate"),
            }
        ],
        # Least-request draws two replicas and takes the idler one, and a dead
        # replica looks idle: with two replicas it is drawn 3 times in 4, so the
        # predicate needs several draws to find the other one.
        "host_selection_retry_max_attempts": 10,
    }
    if safe:
        policy["per_try_timeout"] = _seconds(min(site.per_try_timeout_seconds, timeout))
    return policy


def _upstream_route(
    match: Config, cluster: str, timeout: float, retry: Config | None = None
) -> Config:
    return {
        "match": match,
        "route": {
            "cluster": cluster,
            "timeout": _seconds(timeout),
            # Honour the caller's grpc-timeout, capped at the route's timeout (with
            # max_stream_duration set, Envoy ignores `timeout` for gRPC upstreams,
            # which a transcoded REST call is, so the cap is both).
            "max_stream_duration": {
                "max_stream_duration": _seconds(timeout),
                "grpc_timeout_header_max": _seconds(timeout),
            },
            # Without a policy of its own: only retries that are safe for anything.
            "retry_policy": retry
            or {
                "retry_on": UNSAFE_RETRY_ON,
                "num_retries": 2,
                "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
            },
        },
        # The transcoder's copy of the REST path (query string included) is not
        # forwarded: it would count twice against the backends' metadata limit.
        "request_headers_to_remove": ["x-envoy-original-path", "x-envoy-original-method"],
    }


def _rpc_route(rpc: _Rpc, site: EnvoySite) -> Config:
    timeout = site.timeouts[rpc.kind]
    route = _upstream_route(
        {"path": f"/{rpc.service}/{rpc.name}"},
        rpc.backend,
        timeout,
        _retry_policy(rpc.retry_safe, site, timeout),
    )
    if rpc.http_method not in (None, "GET") and site.mutation_rate_per_second > 0:
        route["typed_per_filter_config"] = {RATE_LIMIT: _mutation_rate_limit(site)}
    if site.tracing:
        # Envoy's span is named after the RPC (OpenTelemetry's gRPC span name), for
        # REST and native gRPC calls alike; not passed on as a header.
        route["decorator"] = {"operation": f"{rpc.service}/{rpc.name}", "propagate": False}
    return route


def _mutation_rate_limit(site: EnvoySite) -> Config:
    """A token bucket per client address for one mutation route (local_ratelimit
    with a wildcard descriptor: every address gets its own bucket)."""
    bucket = {
        "max_tokens": site.mutation_burst,
        "tokens_per_fill": site.mutation_rate_per_second,
        "fill_interval": "1s",
    }
    return _typed(
        "filters.http.local_ratelimit.v3.LocalRateLimit",
        stat_prefix="mutations",
        # The route-wide bucket only guards the per-address ones' memory; it is
        # sized so that it never limits on its own.
        token_bucket={
            "max_tokens": site.mutation_burst * 1000,
            "tokens_per_fill": site.mutation_rate_per_second * 1000,
            "fill_interval": "1s",
        },
        filter_enabled={
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
            "runtime_key": "mesh.mutation_rate_limit.enabled",
        },
        filter_enforced={
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
            "runtime_key": "mesh.mutation_rate_limit.enforced",
        },
        rate_limits=[{"actions": [{"remote_address": {}}]}],
        descriptors=[{"entries": [{"key": "remote_address"}], "token_bucket": bucket}],
        max_dynamic_descriptors=10_000,
        rate_limited_as_resource_exhausted=True,
    )


def _direct_reply(match: Config, status: int, extra: Config | None = None) -> Config:
    """Envoy answers by itself; the local reply mappers give it the error shape."""
    return {
        "match": match,
        "direct_response": {"status": status},
        "typed_per_filter_config": {**NOT_AN_API, **(extra or {})},
    }


def _path_regex(template: str) -> str:
    """/inventory/{product_id}/restock → ^/inventory/[^/]+/restock$ (RE2)."""
    parts = re.split(r"\{[^}]+\}", template)
    return "^" + "[^/]+".join(re.escape(part) for part in parts) + "$"


def _method_routes(rpcs: list[_Rpc], site: EnvoySite) -> list[Config]:
    """405 for a known REST path called with a method it does not have.

    Literal paths come first and claim every method they have (/inventory/decrease
    is POST, and GET as a value of /inventory/{product_id}); a claimed request is
    left to the transcoder, which rewrites it to its gRPC route. With CORS origins
    configured, OPTIONS is claimed too: the CORS filter answers preflights only on
    routes that lead somewhere.
    """
    preflight = {"OPTIONS"} if site.cors_allowed_origins else set()
    templates: dict[str, set[str]] = {}
    for rpc in rpcs:
        if rpc.http_path:
            templates.setdefault(_path_regex(rpc.http_path), set()).add(rpc.http_method or "")
    # fewer placeholders first: the most specific path wins
    ordered = sorted(templates, key=lambda regex: (regex.count("[^/]+"), regex))
    routes = []
    for regex in ordered:
        allowed = {
            method
            for other, methods in templates.items()
            if re.fullmatch(other, regex.strip("^$").replace("\\", "")) or other == regex
            for method in methods
        }
        methods = ", ".join(sorted(allowed))
        wrong_method = {
            "safe_regex": {"regex": regex},
            "headers": [
                _header(":method", "|".join(sorted(allowed | preflight)), invert=True),
                # gRPC callers on a REST path get the 415 below, not a 405.
                _header("content-type", GRPC_CONTENT_TYPE, invert=True),
            ],
        }
        route = _direct_reply(wrong_method, 405)
        route["response_headers_to_add"] = [
            {
                "header": {"key": "allow", "value": methods},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
        routes.append(route)
        backend = next(r.backend for r in rpcs if r.http_path and _path_regex(r.http_path) == regex)
        routes.append(_upstream_route({"safe_regex": {"regex": regex}}, backend, 1))
    return routes


def _not_json_route() -> Config:
    """415 for a body that is not JSON, on any path, before anything is transcoded:
    an HTML form or a text/plain POST from another site (the classic CSRF
    request, which needs no CORS preflight) never reaches a service."""
    return _direct_reply(
        {
            "prefix": "/",
            "headers": [
                _header(":method", "POST|PUT|PATCH"),
                _header("content-type", JSON_CONTENT_TYPE, invert=True),
                _header("content-type", GRPC_CONTENT_TYPE, invert=True),
            ],
        },
        415,
    )


# A gRPC method's path: /package.Service/Method.
GRPC_PATH = r"^/[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*$"
REFUSALS = "edge_refusals"  # Envoy's internal listener and the cluster that reaches it


def _grpc_content_type_routes() -> list[Config]:
    """Requests that say application/grpc but match no gRPC route.

    On a gRPC method's path (an unknown method) they get a gRPC answer: 404, which
    gRPC callers receive as UNIMPLEMENTED. On any other path (a REST path, say) a
    415 with the JSON body. Envoy answers every request that arrived as gRPC in
    gRPC (HTTP 200 and a grpc-status header), which a REST caller reads as an empty
    success, so that 415 comes from an internal listener of this same Envoy (no
    socket, see _refusals_listener) and is passed through as a real HTTP answer.
    """
    grpc = _header("content-type", GRPC_CONTENT_TYPE)
    unknown_method = _direct_reply({"safe_regex": {"regex": GRPC_PATH}, "headers": [grpc]}, 404)
    not_grpc = {
        "match": {"prefix": "/", "headers": [grpc]},
        "route": {"cluster": REFUSALS, "timeout": "1s"},
        "request_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/octet-stream"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": NOT_AN_API,
    }
    return [unknown_method, not_grpc]


def _refusals_listener() -> Config:
    """An in-process listener (no socket) that answers 415 with the JSON error body."""
    code, message = LOCAL_REPLIES[415]
    body = json.dumps({"code": code, "message": message, "details": []}, separators=(",", ":"))
    refuse = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 415, "body": {"inline_string": body}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }
    manager = {
        **_typed("filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "stat_prefix": REFUSALS,
        "route_config": {
            "virtual_hosts": [{"name": REFUSALS, "domains": ["*"], "routes": [refuse]}]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("filters.http.router.v3.Router"),
            }
        ],
    }
    return {
        "name": REFUSALS,
        "internal_listener": {},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _refusals_cluster() -> Config:
    return {
        "name": REFUSALS,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": REFUSALS,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "envoy_internal_address": {"server_listener_name": REFUSALS}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def _static_file(path: str, file: str, content_type: str) -> Config:
    return {
        "match": {"path": path},
        "direct_response": {"status": 200, "body": {"filename": file}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": content_type},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": NOT_AN_API,
    }


def _docs_routes(site: EnvoySite, docs_site: Path) -> list[Config]:
    """/docs/…: every file of the built docs site, served by Envoy itself.

    Envoy reads each file once, at start (direct responses); the site is static.
    """
    routes = []
    for file in sorted(p for p in docs_site.rglob("*") if p.is_file()):
        relative = file.relative_to(docs_site).as_posix()
        content_type = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        paths = [f"/docs/{relative}"]
        if file.name == "index.html":
            paths.append(f"/docs/{relative.removesuffix('index.html')}")
        routes += [_static_file(p, f"{site.docs_dir}/{relative}", content_type) for p in paths]
    return routes + [
        {
            "match": {"path": p},
            "redirect": {"path_redirect": "/docs/"},
            "typed_per_filter_config": NOT_AN_API,
        }
        for p in ("/", "/docs")
    ]


def envoy_config(
    site: EnvoySite, descriptor_set: Path = DESCRIPTOR_SET, docs_site: Path = DOCS_SITE
) -> Config:
    services = load_contracts(descriptor_set).services
    backends = sorted({s.backend for s in services}, key=lambda b: GRPC_PORTS[b])
    rpcs = _rpcs(descriptor_set)
    meta = site.timeouts["meta"]
    # Reflection: every backend serves the whole mesh's descriptors, so any
    # healthy one may answer. Health: a backend only knows its own services, and
    # a path cannot say which one is asked about, so the front door's
    # (inventory_svc) answers; Envoy's admin /clusters shows every backend.
    reflection = _upstream_route({"prefix": "/grpc.reflection."}, "mesh_any", meta)
    # Reflection is a stream in both directions: it cannot wait for a whole body.
    reflection["typed_per_filter_config"] = {BUFFER: BUFFER_DISABLED}
    routes = [
        _not_json_route(),
        *[_rpc_route(rpc, site) for rpc in rpcs],
        reflection,
        _upstream_route(
            {"prefix": "/grpc.health.v1."}, backends[0], meta, _retry_policy(True, site, meta)
        ),
        *_grpc_content_type_routes(),
        *_docs_routes(site, docs_site),
        *_method_routes(rpcs, site),
    ]
    clusters = [
        _cluster(b, site.backends[b], next(s.full_name for s in services if s.backend == b), site)
        for b in backends
    ]
    any_backend = _cluster("mesh_any", [a for b in backends for a in site.backends[b]], "", site)
    clusters += [any_backend, _refusals_cluster()]
    if site.auth.jwks_uri:
        clusters.append(_jwks_cluster(site.auth))
    if site.tracing:
        clusters.append(_otlp_cluster(site.tracing))
    return {
        "admin": {"address": _address("127.0.0.1", site.admin_port)},
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": _typed("bootstrap.internal_listener.v3.InternalListener"),
            }
        ],
        "overload_manager": _overload_manager(site),
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _address(site.listen_address, site.listen_port),
                    # Flow control per connection: a client streaming a huge body is
                    # read in small pieces, not buffered whole.
                    "per_connection_buffer_limit_bytes": 64 * KIB,
                    "filter_chains": [
                        {
                            "filters": [
                                _http_connection_manager(site, services, routes, descriptor_set)
                            ]
                        }
                    ],
                },
                _refusals_listener(),
            ],
            "clusters": clusters,
        },
    }


def _overload_manager(site: EnvoySite) -> Config:
    """A hard cap on client connections: past it Envoy stops accepting, instead of
    running out of memory or file descriptors."""
    return {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": _typed(
                    "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    max_active_downstream_connections=site.max_downstream_connections,
                ),
            }
        ]
    }


RATE_LIMIT = "envoy.filters.http.local_ratelimit"
BUFFER = "envoy.filters.http.buffer"
BUFFER_DISABLED = _typed("filters.http.buffer.v3.BufferPerRoute", disabled=True)
CORS = "envoy.filters.http.cors"


def _cors_policy(site: EnvoySite) -> Config:
    return _typed(
        "filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=[{"exact": origin} for origin in site.cors_allowed_origins],
        allow_methods="GET, POST",
        allow_headers="authorization, content-type, grpc-timeout, x-grpc-web, x-user-agent",
        expose_headers=f"grpc-status, grpc-message, retry-after, {TRACE_ID_HEADER}",
        max_age="600",
    )


def _http_filters(site: EnvoySite, services: list, descriptor_set: Path) -> list[Config]:
    return [
        *([_trace_id_filter()] if site.tracing else []),
        # CORS first: a preflight from an allowed origin is answered here; without
        # configured origins no response carries access-control-allow-origin, so a
        # browser lets no other site read an answer.
        {"name": CORS, "typed_config": _typed("filters.http.cors.v3.Cors")},
        # The content-type a request arrived with, before the transcoder rewrites
        # it (the local replies answer in gRPC or in JSON by it).
        {
            "name": "envoy.filters.http.header_to_metadata",
            "typed_config": _typed(
                "filters.http.header_to_metadata.v3.Config",
                request_rules=[
                    {
                        "header": header,
                        "on_header_present": {
                            "metadata_namespace": EDGE_METADATA,
                            "key": key,
                            "type": "STRING",
                        },
                        "remove": False,
                    }
                    for header, key in (
                        ("content-type", "content_type"),
                        (":method", "method"),
                        (":path", "path"),
                    )
                ],
            ),
        },
        {
            "name": TRANSCODER,
            "typed_config": _typed(
                "filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                proto_descriptor=site.descriptor_path,
                services=[s.full_name for s in services],
                # snake_case JSON (as in the seed), zeros and empty lists printed.
                print_options={
                    "add_whitespace": False,
                    "always_print_primitive_fields": True,
                    "preserve_proto_field_names": True,
                },
                # gRPC errors become HTTP codes with a google.rpc.Status JSON body.
                convert_grpc_status=True,
                # Unknown routes → 404 and unknown query parameters → 400,
                # instead of passing garbage upstream.
                request_validation_options={
                    "reject_unknown_method": True,
                    "reject_unknown_query_parameters": True,
                    "reject_binding_body_field_collisions": True,
                },
                # A bigger JSON body is refused (413) while it arrives, before
                # anything is sent upstream.
                max_request_body_size=site.rest_body_limit_bytes,
            ),
        },
        # After the transcoder: REST calls carry their gRPC method path by
        # now, so one rule per RPC covers both ways in.
        *_auth_filters(site.auth, descriptor_set),
        # After the transcoder, so REST and native gRPC calls of one RPC share the
        # route (and the client's bucket). Enabled per route (mutations).
        {
            "name": RATE_LIMIT,
            "typed_config": _typed(
                "filters.http.local_ratelimit.v3.LocalRateLimit", stat_prefix="mutations"
            ),
        },
        # The whole gRPC message before it goes upstream: a bigger one (5 bytes of
        # gRPC framing on top of the message limit) is refused here with 413 /
        # INVALID_ARGUMENT, and the backend never sees it.
        {
            "name": BUFFER,
            "typed_config": _typed(
                "filters.http.buffer.v3.Buffer",
                max_request_bytes=site.grpc_message_limit_bytes + 5,
            ),
        },
        {
            "name": "envoy.filters.http.router",
            # No x-envoy-upstream-service-time and friends in answers.
            "typed_config": _typed("filters.http.router.v3.Router", suppress_envoy_headers=True),
        },
    ]


def _http_connection_manager(
    site: EnvoySite, services: list, routes: list[Config], descriptor_set: Path
) -> Config:
    virtual_host: Config = {"name": "mesh", "domains": ["*"], "routes": routes}
    if site.cors_allowed_origins:
        virtual_host["typed_per_filter_config"] = {CORS: _cors_policy(site)}
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            **_typed("filters.network.http_connection_manager.v3.HttpConnectionManager"),
            "stat_prefix": "ingress",
            "codec_type": "AUTO",  # HTTP/1.1 for REST, HTTP/2 (h2c) for native gRPC
            # Envoy is the edge: the client is the connection's peer, never what an
            # x-forwarded-for header claims (the per-client rate limit keys on it).
            "use_remote_address": True,
            "max_request_headers_kb": site.max_request_headers_kb,
            "common_http_protocol_options": {
                "max_headers_count": site.max_request_headers_count,
                "headers_with_underscores_action": "REJECT_REQUEST",
            },
            # HTTP/1.0 clients (plain `curl --http1.0`, old tools) are served, not
            # told to upgrade.
            "http_protocol_options": {"accept_http_10": True, "default_host_for_http_10": "mesh"},
            # A client that sends its headers slowly is cut off (slowloris).
            "request_headers_timeout": "10s",
            "access_log": [
                {
                    "name": "envoy.access_loggers.stdout",
                    "typed_config": _typed(
                        "access_loggers.stream.v3.StdoutAccessLog",
                        log_format={"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                    ),
                }
            ],
            "local_reply_config": {
                "mappers": [*_audience_reply_mappers(), *_local_reply_mappers(site)]
            },
            "route_config": {
                "name": "mesh",
                # The docs' vendored JavaScript is served as direct responses.
                "max_direct_response_body_size_bytes": 16 * 1024 * 1024,
                "virtual_hosts": [virtual_host],
                # Whatever a backend sends in x-envoy-* stays inside the mesh.
                "response_headers_to_remove": [
                    "x-envoy-upstream-service-time",
                    "x-envoy-upstream-healthchecked-cluster",
                    "x-envoy-overloaded",
                    "x-envoy-ratelimited",
                    "x-envoy-degraded",
                ],
            },
            "http_filters": _http_filters(site, services, descriptor_set),
        },
    }
    if site.tracing:
        manager["typed_config"]["tracing"] = _tracing(site.tracing)
    return manager


# --- identity and authorization ----------------------------------------------------
#
# Three filters after the transcoder, keyed by the gRPC method path, so REST and
# native gRPC callers meet the same rules (mesh/access.py):
#   1. header_mutation removes any x-mesh-subject a client sent;
#   2. jwt_authn verifies the bearer token on every RPC that needs a scope
#      (missing/invalid → 401 UNAUTHENTICATED) and sets x-mesh-subject from its
#      `sub`; public RPCs, health, reflection and /docs are not checked;
#   3. RBAC refuses a verified token without the RPC's scope (403 PERMISSION_DENIED).

JWT_AUTHN = "envoy.filters.http.jwt_authn"
JWT_PROVIDER = "mesh"
JWT_PAYLOAD = "jwt_payload"  # dynamic metadata key RBAC reads the scopes from
JWKS_CLUSTER = "jwks"
AUTH_REPLY_CODES = {401: 16, 403: 7}


def _cel(expression: str) -> Config:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": _typed(
                "access_loggers.filters.cel.v3.ExpressionFilter", expression=expression
            ),
        }
    }


WRONG_AUDIENCE = (
    "response.code == 403 && response.code_details.startsWith('jwt_authn_access_denied')"
)
# REST callers, including transcoded ones (jwt_authn answers before the router
# drops the transcoder's x-envoy-original-path).
REST_CALLER = (
    "(!('content-type' in request.headers)"
    " || !request.headers['content-type'].startsWith('application/grpc')"
    " || 'x-envoy-original-path' in request.headers)"
)


def _audience_reply_mappers() -> list[Config]:
    """jwt_authn answers a token for another audience with 403; like every other
    invalid token it gets a 401 (RFC 6750 §3.1 invalid_token): UNAUTHENTICATED, not
    PERMISSION_DENIED, which RBAC keeps for a valid token without the scope.
    Mappers stop at the first match, so the REST one carries its JSON body."""
    return [
        {
            "filter": _cel(f"{WRONG_AUDIENCE} && {REST_CALLER}"),
            "status_code": 401,
            "body_format_override": {
                "json_format": {"code": 16, "message": "%LOCAL_REPLY_BODY%", "details": []},
                "content_type": "application/json",
            },
        },
        {"filter": _cel(WRONG_AUDIENCE), "status_code": 401},
    ]


def _jwt_provider(auth: EdgeAuth) -> Config:
    provider: Config = {
        "issuer": auth.issuer,
        "audiences": list(auth.audiences),
        # Only the Authorization header (no access_token query parameter: tokens
        # in URLs end up in logs). gRPC callers send it as `authorization` metadata.
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": False,  # the backends get the subject, not the token
        "claim_to_headers": [{"header_name": SUBJECT_HEADER, "claim_name": "sub"}],
        "payload_in_metadata": JWT_PAYLOAD,
        # "a b c" → ["a", "b", "c"], so RBAC can match one scope exactly.
        "normalize_payload_in_metadata": {"space_delimited_claims": ["scope"]},
        # Clients reuse a token for many calls: verify its signature once, not per call
        # (entries still expire with the token).
        "jwt_cache_config": {"jwt_cache_size": 10000},
    }
    if auth.jwks_uri:
        provider["remote_jwks"] = {
            "http_uri": {"uri": auth.jwks_uri, "cluster": JWKS_CLUSTER, "timeout": "5s"},
            "cache_duration": "300s",
            # Fetched at start and refreshed in the background, not on a request's path.
            "async_fetch": {},
            "retry_policy": {"num_retries": 3},
        }
    else:
        provider["local_jwks"] = {"filename": auth.jwks_file}
    return provider


def _jwks_cluster(auth: EdgeAuth) -> Config:
    return _external_cluster(JWKS_CLUSTER, auth.jwks_uri, 80, auth.trusted_ca_file, "5s")


def _auth_filters(auth: EdgeAuth, descriptor_set: Path) -> list[Config]:
    methods = method_access(descriptor_set)
    protected = [m for m in methods if m.scope]
    # jwt_authn takes the first rule that matches: the public RPCs by exact path,
    # then anything else under a service's prefix needs a verified token. So a path
    # that is no known RPC (a typo, an encoding trick) is never let through unchecked.
    jwt_rules = [{"match": {"path": m.path}} for m in methods if not m.scope]
    jwt_rules += [
        {"match": {"prefix": f"/{service}/"}, "requires": {"provider_name": JWT_PROVIDER}}
        for service in sorted({m.service for m in methods})
    ]
    by_scope: dict[str, list[str]] = {}
    for method in protected:
        by_scope.setdefault(method.scope or "", []).append(method.path)
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": _typed(
                "filters.http.header_mutation.v3.HeaderMutation",
                mutations={"request_mutations": [{"remove": SUBJECT_HEADER}]},
            ),
        },
        {
            "name": JWT_AUTHN,
            "typed_config": _typed(
                "filters.http.jwt_authn.v3.JwtAuthentication",
                providers={JWT_PROVIDER: _jwt_provider(auth)},
                rules=jwt_rules,
            ),
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": _typed(
                "filters.http.rbac.v3.RBAC",
                rules={
                    "action": "DENY",
                    "policies": {
                        f"needs {scope}": {
                            "permissions": [
                                {"or_rules": {"rules": [_exact_path(p) for p in paths]}}
                            ],
                            "principals": [{"not_id": _has_scope(scope)}],
                        }
                        for scope, paths in sorted(by_scope.items())
                    },
                },
            ),
        },
    ]


def _exact_path(path: str) -> Config:
    return {"url_path": {"path": {"exact": path}}}


def _has_scope(scope: str) -> Config:
    return {
        "sourced_metadata": {
            "metadata_matcher": {
                "filter": JWT_AUTHN,
                "path": [{"key": JWT_PAYLOAD}, {"key": "scope"}],
                "value": {"list_match": {"one_of": {"string_match": {"exact": scope}}}},
            }
        }
    }


def render(site: EnvoySite, descriptor_set: Path = DESCRIPTOR_SET) -> str:
    header = "# Generated by `python -m mesh.envoy_config` (make generate). Do not edit.\n"
    return header + yaml.safe_dump(envoy_config(site, descriptor_set), sort_keys=False, width=100)


# The checked-in configs: what `make up` runs natively, and what compose mounts
# (compose.yaml: backends by service name, contracts and docs under /etc/envoy).
# Compose runs Jaeger next to the mesh, so its Envoy always traces, to Jaeger's
# OTLP/gRPC port (a static file cannot read compose's environment).
COMPOSE_OTLP_ENDPOINT = "http://jaeger:4317"
COMPOSE_SITE = EnvoySite(
    listen_address="0.0.0.0",
    descriptor_path="/etc/envoy/mesh.binpb",
    docs_dir="/etc/envoy/docs",
    auth=EdgeAuth(jwks_file="/etc/envoy/auth/jwks.json"),
    backends={name: [(name.replace("_", "-"), port)] for name, port in GRPC_PORTS.items()},
    tracing=EdgeTracing(COMPOSE_OTLP_ENDPOINT),
)
# Kubernetes (deploy/k8s): backends are headless Services, so DNS answers with
# every ready pod and STRICT_DNS makes each one an endpoint that Envoy balances
# over and health-checks; a short name resolves in Envoy's own namespace. The
# config and the descriptor set come from one ConfigMap, the docs site from the
# services' image, the token keys from the ConfigMap envoy-jwks the deployer
# makes (deploy/k8s/base/envoy-gateway.yaml).
K8S_DIR = ROOT / "deploy" / "k8s" / "base" / "envoy"
K8S_SITE = EnvoySite(
    listen_address="0.0.0.0",
    descriptor_path="/etc/envoy/config/mesh.binpb",
    docs_dir="/etc/envoy/docs",
    auth=EdgeAuth(jwks_file="/etc/envoy/auth/jwks.json"),
    backends={name: [(name.replace("_", "-"), port)] for name, port in GRPC_PORTS.items()},
)
SITES = {"native": EnvoySite(), "compose": COMPOSE_SITE, "k8s": K8S_SITE}
CHECKED_IN = {
    ROOT / "envoy" / "envoy.yaml": EnvoySite(),
    ROOT / "envoy" / "envoy.compose.yaml": COMPOSE_SITE,
    K8S_DIR / "envoy.yaml": K8S_SITE,
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m mesh.envoy_config")
    parser.add_argument(
        "--auth-from-env",
        choices=list(SITES),
        help="render that site with AUTH_ISSUER/AUTH_AUDIENCES/AUTH_JWKS_URI from the"
        " environment (e.g. a real OIDC provider) to --out, instead of the checked-in files",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.auth_from_env:
        base = SITES[args.auth_from_env]
        site = replace(base, auth=EdgeAuth.from_env(base=base.auth))
        text = render(site)
        if args.out:
            args.out.write_text(text)
        else:
            sys.stdout.write(text)
        return
    for path, site in CHECKED_IN.items():
        path.write_text(render(site))
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    # kustomize reads files only from inside its kustomization: the ConfigMap's
    # copy of the descriptor set lives next to the config.
    (K8S_DIR / DESCRIPTOR_SET.name).write_bytes(DESCRIPTOR_SET.read_bytes())
    print(f"wrote {(K8S_DIR / DESCRIPTOR_SET.name).relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
