"""The routes that reach a backend: one per RPC, plus health and reflection.

Each RPC's route is its gRPC method path (``/polyglot.inventory.v1.InventoryService/
DecreaseStock``): native gRPC calls match it directly, REST calls once the
transcoder has rewritten them. Per route: the timeout of the RPC's kind, the
retries that are safe for it, the mutation rate limit (blueprint.edge.admission), the
native gRPC check (blueprint.edge.grpc_input) and, with tracing, the span's name.
"""

from dataclasses import dataclass
from pathlib import Path

from blueprint.contracts import load_contracts
from blueprint.edge.admission import BUFFER, BUFFER_DISABLED, RATE_LIMIT, mutation_rate_limit
from blueprint.edge.blocks import Config, Named, seconds, typed
from blueprint.edge.clusters import ANY_BACKEND
from blueprint.edge.grpc_input import PER_ROUTE as GRPC_INPUT_CHECK
from blueprint.edge.settings import RPC_KINDS, EnvoySite
from blueprint.edge.tracing import span_name

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


@dataclass(frozen=True)
class RoutedRpc:
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
        """Repeating it changes nothing (envoy/README.md, "Retries and replicas")."""
        return self.kind != "write" or self.name in IDEMPOTENT_MUTATIONS


def rpcs(descriptor_set: Path) -> list[RoutedRpc]:
    return [
        RoutedRpc(
            service.full_name,
            rpc.name,
            service.backend,
            rpc.route.method if rpc.route else None,
            rpc.route.path if rpc.route else None,
        )
        for service in load_contracts(descriptor_set).services
        for rpc in service.rpcs
    ]


def retry_policy(safe: bool, site: EnvoySite, timeout: float) -> Config:
    """Safe to repeat: retried on another replica after a reset or UNAVAILABLE too.
    Otherwise only when the request never reached a backend. Envoy's default
    back-off (25 ms, growing to 250 ms): a restarted or other replica is tried at once."""
    policy: Config = {
        "retry_on": SAFE_RETRY_ON if safe else UNSAFE_RETRY_ON,
        "num_retries": site.retries,
        # Not the replica that just failed, when there is another one.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": typed("retry.host.previous_hosts.v3.PreviousHostsPredicate"),
            }
        ],
        # Least-request draws two replicas and takes the idler one, and a dead
        # replica looks idle: with two replicas it is drawn 3 times in 4, so the
        # predicate needs several draws to find the other one.
        "host_selection_retry_max_attempts": 10,
    }
    if safe:
        policy["per_try_timeout"] = seconds(min(site.per_try_timeout_seconds, timeout))
    return policy


def default_retry_policy(site: EnvoySite) -> Config:
    """The virtual host's policy, which every route without its own follows: that of
    the RPCs that are safe to repeat (most of them)."""
    return retry_policy(True, site, site.per_try_timeout_seconds)


def upstream_route(
    match: Config, cluster: str, timeout: float, site: EnvoySite, retry: Config | None = None
) -> Config:
    """A route to ``cluster`` within ``timeout``, with the virtual host's retry
    policy unless ``retry`` is another one."""
    action: Config = {
        "cluster": cluster,
        # The route's time limit, which also caps a caller's grpc-timeout (a shorter
        # one is honoured). With it, Envoy ignores the route's `timeout` field.
        "max_stream_duration": {
            "max_stream_duration": seconds(timeout),
            "grpc_timeout_header_max": seconds(timeout),
        },
    }
    if retry is not None and retry != default_retry_policy(site):
        action["retry_policy"] = retry
    return {"match": match, "route": action}


def rpc_routes(rpcs: list[RoutedRpc], site: EnvoySite) -> list[Config]:
    """A route per RPC; the mutations share one quota block (a bucket per token
    subject and route: blueprint.edge.admission)."""
    limit = Named("mutation_rate_limit", mutation_rate_limit(site))
    return [_rpc_route(rpc, site, limit) for rpc in rpcs]


def _rpc_route(rpc: RoutedRpc, site: EnvoySite, limit: Config) -> Config:
    timeout = site.timeouts[rpc.kind]
    route = upstream_route(
        {"path": f"/{rpc.service}/{rpc.name}"},
        rpc.backend,
        timeout,
        site,
        retry_policy(rpc.retry_safe, site, timeout),
    )
    per_filter: Config = {}
    if site.grpc_input_check:
        per_filter |= GRPC_INPUT_CHECK
    if rpc.http_method not in (None, "GET") and site.mutation_rate_per_second > 0:
        per_filter[RATE_LIMIT] = limit
    if per_filter:
        route["typed_per_filter_config"] = per_filter
    if site.tracing:
        route["decorator"] = span_name(rpc.service, rpc.name)
    return route


def grpc_service_routes(site: EnvoySite, front_door: str) -> list[Config]:
    """Reflection: every backend serves the whole mesh's descriptors, so any
    healthy one may answer. Health: a backend only knows its own services, and
    a path cannot say which one is asked about, so the front door's
    (inventory_svc) answers; Envoy's admin /clusters shows every backend."""
    meta = site.timeouts["meta"]
    # A stream in both directions: retried only when it never reached a backend,
    # and it cannot wait for a whole body (no buffer).
    reflection = upstream_route(
        {"prefix": "/grpc.reflection."},
        ANY_BACKEND,
        meta,
        site,
        {"retry_on": UNSAFE_RETRY_ON, "num_retries": 2},
    )
    reflection["typed_per_filter_config"] = {BUFFER: BUFFER_DISABLED}
    health = upstream_route(
        {"prefix": "/grpc.health.v1."}, front_door, meta, site, retry_policy(True, site, meta)
    )
    if site.grpc_input_check:
        health["typed_per_filter_config"] = GRPC_INPUT_CHECK
    return [reflection, health]
