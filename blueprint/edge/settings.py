"""What a deployment tunes at the edge: one ``EnvoySite`` per place Envoy runs.

Every limit, timeout and retry Envoy applies is a field of ``EnvoySite`` below,
with its default and why (envoy/README.md, "Limits and quotas" and "Retries and
replicas"); whose tokens Envoy accepts is ``EdgeAuth``, where it sends its spans
``EdgeTracing``.
The checked-in configs are rendered from the sites in ``blueprint.edge.render``; the
test sandboxes and the benchmarks pass their own (``render(EnvoySite(...))``).

The defaults are the development profile's. From the environment:
``EdgeAuth.from_env`` (AUTH_*), ``EdgeTracing.from_env`` (OTEL_*) and the knobs a
deployment tunes (EDGE_*, blueprint.edge.knobs, which also holds the production
profile's defaults); ``blueprint.edge.knobs.with_environment`` applies all three.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from blueprint.access import DEV_AUDIENCE, DEV_ISSUER, DEV_JWKS_FILE
from blueprint.contracts import DESCRIPTOR_SET
from blueprint.topology import DOCS_SITE, GRPC_PORTS, ROOT
from meshkit.telemetry import traces_endpoint

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


# How long each kind of RPC may take (EnvoySite.timeouts). An RPC's kind comes from
# its REST binding (GET: read, anything else: write) unless listed here.
RPC_KINDS = {"GetSalesSummary": "report"}


@dataclass(frozen=True)
class EnvoySite:
    """Where one Envoy listens, where it finds the backends, and the edge's limits.

    The limits' defaults are the documented ones (envoy/README.md, "Limits and
    quotas"); the test sandbox and the benchmarks pass their own.
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
    # Quotas: token buckets refilled with `…_per_second` tokens every second, at most
    # `…_burst`; 0 turns one off. These defaults are development's: an order of
    # magnitude above what one machine sends (≈ 1 400 orders/s, ≈ 2 000 reads/s via
    # Envoy here), so a local load test never meets them; production's are in
    # blueprint.edge.knobs. Mutations (RPCs bound to POST) per token subject, each RPC
    # its own bucket (a token without `sub`: per client address):
    mutation_rate_per_second: int = 10_000
    mutation_burst: int = 20_000
    # Calls without a bearer token (public reads, docs, health) per client address,
    # counted before the token check.
    anonymous_rate_per_second: int = 10_000
    anonymous_burst: int = 20_000
    # Circuit breakers per backend: calls in flight, calls waiting for a connection.
    # Beyond them Envoy answers 503 at once instead of queueing.
    max_requests_per_backend: int = 256
    max_pending_per_backend: int = 64
    # What a shed request is told (retry-after, seconds).
    retry_after_seconds: int = 1

    # --- client connections (envoy/README.md "Connections") ----------------------
    # Envoy has no cap per client address (none of its filters counts connections
    # by peer); these bound how long any connection may hold a slot without work.
    # Client connections Envoy holds at once (overload manager); beyond them a new
    # connection is closed at once.
    max_downstream_connections: int = 10_000
    # A new connection must send its request line (HTTP/1) or preface (HTTP/2)
    # within this long of being accepted, or it is closed: one that sends nothing
    # holds a slot at most this long, so holding 10 000 for a second takes 10 000
    # new connections a second. Production (blueprint.edge.knobs): 1 s; clients send
    # their request with the handshake's last packet, and a second covers a lost
    # packet's retransmission. Development: 5 s, because a test harness or load tool
    # on a busy machine can stall a second between connecting and sending (seen:
    # 200 simultaneous orders from one httpx client on 2 loaded cores).
    request_start_timeout_seconds: float = 5.0
    # Then the request headers within this long of their first byte (slowloris): a
    # request's headers are complete at most start + this after accept (408).
    request_headers_timeout_seconds: float = 5.0
    # The whole request, body included, within this long of its start (unless the
    # answer has begun): a native gRPC call held open without its complete message
    # (Envoy waits for the whole message before forwarding; the backend never sees
    # it) is answered 408 / DEADLINE_EXCEEDED "the request was not received in
    # time" instead of waiting out its route's timeout; a bidirectional stream
    # (reflection) is not cut, its answer begins with its first message.
    request_timeout_seconds: float = 5.0
    # A connection without a call in flight this long is closed (keep-alive, an
    # HTTP/2 client between calls; both reconnect by themselves).
    idle_timeout_seconds: float = 60.0
    # Envoy's memory budget (overload manager, fixed_heap): from 70 % of it the idle
    # timeout shrinks, to 1 s at 90 % (the longest idle connections go first);
    # from 95 % new requests get 503. Measured: 10 000 idle keep-alive connections
    # take about 150 MiB, so the connection cap is met before shedding starts.
    memory_budget_mib: int = 256
    # Native gRPC requests checked at the edge (blueprint/edge/grpc_input.lua): framing,
    # compression flag, grpc-encoding, -bin metadata. Off only to measure its cost.
    grpc_input_check: bool = True

    # --- replicas: retries and ejection (envoy/README.md "Retries and replicas") ---
    # Retries of an RPC that is safe to repeat (reads, health and the idempotent
    # mutations, blueprint.edge.routes.IDEMPOTENT_MUTATIONS), each try bounded by
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
