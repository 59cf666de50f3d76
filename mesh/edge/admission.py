"""Admission control: what Envoy lets in, and what it sheds at once.

A per-client token bucket for mutations (429), the circuit breakers per backend
(503 instead of a queue), outlier detection (a failing replica is ejected), the
whole-message buffer that refuses an oversized gRPC message (413) and the cap on
client connections (overload manager). Their numbers are fields of EnvoySite.
"""

from mesh.edge.blocks import Config, seconds, typed
from mesh.edge.settings import EnvoySite

RATE_LIMIT = "envoy.filters.http.local_ratelimit"
BUFFER = "envoy.filters.http.buffer"
# Per route, where the whole body cannot be waited for (mesh.edge.routes: reflection).
BUFFER_DISABLED = typed("filters.http.buffer.v3.BufferPerRoute", disabled=True)


def rate_limit_filter() -> Config:
    """The local_ratelimit filter, enabled per route (mutations: mutation_rate_limit)."""
    return {
        "name": RATE_LIMIT,
        "typed_config": typed(
            "filters.http.local_ratelimit.v3.LocalRateLimit", stat_prefix="mutations"
        ),
    }


def mutation_rate_limit(site: EnvoySite) -> Config:
    """A token bucket per client address for one mutation route (local_ratelimit
    with a wildcard descriptor: every address gets its own bucket)."""
    bucket = {
        "max_tokens": site.mutation_burst,
        "tokens_per_fill": site.mutation_rate_per_second,
        "fill_interval": "1s",
    }
    return typed(
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
            "default_value": {"numerator": 100},
            "runtime_key": "mesh.mutation_rate_limit.enabled",
        },
        filter_enforced={
            "default_value": {"numerator": 100},
            "runtime_key": "mesh.mutation_rate_limit.enforced",
        },
        rate_limits=[{"actions": [{"remote_address": {}}]}],
        descriptors=[{"entries": [{"key": "remote_address"}], "token_bucket": bucket}],
        max_dynamic_descriptors=10_000,
        rate_limited_as_resource_exhausted=True,
    )


def message_size_filter(site: EnvoySite) -> Config:
    """The whole gRPC message before it goes upstream: a bigger one (5 bytes of
    gRPC framing on top of the message limit) is refused here with 413 /
    INVALID_ARGUMENT, and the backend never sees it."""
    return {
        "name": BUFFER,
        "typed_config": typed(
            "filters.http.buffer.v3.Buffer",
            max_request_bytes=site.grpc_message_limit_bytes + 5,
        ),
    }


def circuit_breakers(site: EnvoySite) -> Config:
    """Bounded admission per backend: beyond these, a fast 503 (with retry-after)
    instead of a queue that grows until every caller times out."""
    return {
        "thresholds": [
            {
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


def outlier_detection(site: EnvoySite) -> Config:
    """Eject a replica after consecutive failures seen on real calls (connection
    failures, resets, 5xx, which gRPC UNAVAILABLE maps to), at most half of them:
    a database outage that fails every replica must not empty the cluster."""
    return {
        "consecutive_5xx": site.outlier_consecutive_errors,
        "consecutive_gateway_failure": site.outlier_consecutive_errors,
        "enforcing_consecutive_gateway_failure": 100,
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": site.outlier_consecutive_errors,
        "interval": seconds(min(site.health_check_seconds, 1.0)),
        "base_ejection_time": seconds(site.outlier_ejection_seconds),
        "max_ejection_percent": 50,
        # Envoy counts the host it would eject: with two replicas, one is already
        # 50 %, so without this a dead replica is never ejected and keeps drawing
        # calls (least-request favours a host whose calls fail at once).
        "always_eject_one_host": True,
    }


def overload_manager(site: EnvoySite) -> Config:
    """A hard cap on client connections: past it Envoy stops accepting, instead of
    running out of memory or file descriptors."""
    return {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": typed(
                    "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    max_active_downstream_connections=site.max_downstream_connections,
                ),
            }
        ]
    }
