"""Admission control: what Envoy lets in, and what it sheds at once.

Quotas by identity (429): mutations per token subject, calls without a token per
client address; the circuit breakers per backend (503 instead of a queue), outlier
detection (a failing replica is ejected), the whole-request buffer that refuses an
oversized body (413), the cap on client connections and the memory budget that
sheds idle ones (overload manager). Their numbers are fields of EnvoySite (the
knobs: blueprint.edge.knobs).
"""

from blueprint.edge.blocks import Config, seconds, typed
from blueprint.edge.settings import KIB, EnvoySite
from meshkit.identity import SUBJECT_HEADER

RATE_LIMIT = "envoy.filters.http.local_ratelimit"
# Its own filter name: the mutation routes' per-route config of RATE_LIMIT does not
# replace it.
ANONYMOUS_RATE_LIMIT = "mesh.anonymous_ratelimit"
BUFFER = "envoy.filters.http.buffer"
# Per route, where the whole body cannot be waited for (blueprint.edge.routes: reflection).
BUFFER_DISABLED = typed("filters.http.buffer.v3.BufferPerRoute", disabled=True)


def rate_limit_filter() -> Config:
    """The local_ratelimit filter, enabled per route (mutations: mutation_rate_limit)."""
    return {
        "name": RATE_LIMIT,
        "typed_config": typed(
            "filters.http.local_ratelimit.v3.LocalRateLimit", stat_prefix="mutations"
        ),
    }


# A descriptor entry for a call without X: header_value_match with expect_match
# false adds the entry when the request does NOT match the header.
ANONYMOUS = {"key": "anonymous", "value": "yes"}


def _without(header: Config) -> Config:
    return {
        "header_value_match": {
            "descriptor_key": ANONYMOUS["key"],
            "descriptor_value": ANONYMOUS["value"],
            "expect_match": False,
            "headers": [header],
        }
    }


def _bucket(per_second: int, burst: int) -> Config:
    return {"max_tokens": burst, "tokens_per_fill": per_second, "fill_interval": "1s"}


def _quota(
    stat_prefix: str, runtime: str, rate_limits: list[Config], descriptors: list[Config]
) -> Config:
    """local_ratelimit with a bucket per descriptor value (the descriptors' wildcard
    entries: every subject, every address its own; the least recently used of more
    than 10 000 are forgotten). A call that matches no descriptor is not limited."""
    return typed(
        "filters.http.local_ratelimit.v3.LocalRateLimit",
        stat_prefix=stat_prefix,
        filter_enabled={
            "default_value": {"numerator": 100},
            "runtime_key": f"mesh.{runtime}.enabled",
        },
        filter_enforced={
            "default_value": {"numerator": 100},
            "runtime_key": f"mesh.{runtime}.enforced",
        },
        rate_limits=rate_limits,
        descriptors=descriptors,
        # Per route Envoy wants a default bucket: only for calls no descriptor
        # matches, and never limiting them.
        token_bucket=_bucket(1_000_000_000, 1_000_000_000),
        always_consume_default_token_bucket=False,
        max_dynamic_descriptors=10_000,
        rate_limited_as_resource_exhausted=True,
    )


def anonymous_rate_limit_filter(site: EnvoySite) -> list[Config]:
    """Calls without a bearer token, a bucket per client address (the connection's
    peer: use_remote_address), for every route. It sits before jwt_authn, so an
    anonymous flood is refused before any token check, route or backend. "Without a
    bearer token": no authorization value containing "Bearer ", which is where
    jwt_authn looks for one (a `Basic` header or a lowercase `bearer` is no token to
    it either); a bearer token, valid or not, is jwt_authn's to judge."""
    if not site.anonymous_rate_per_second:
        return []
    no_token = _without({"name": "authorization", "string_match": {"contains": "Bearer "}})
    return [
        {
            "name": ANONYMOUS_RATE_LIMIT,
            "typed_config": _quota(
                "anonymous",
                "anonymous_rate_limit",
                [{"actions": [no_token, {"remote_address": {}}]}],
                [
                    {
                        "entries": [ANONYMOUS, {"key": "remote_address"}],
                        "token_bucket": _bucket(
                            site.anonymous_rate_per_second, site.anonymous_burst
                        ),
                    }
                ],
            ),
        }
    ]


def mutation_rate_limit(site: EnvoySite) -> Config:
    """One mutation route's quota, after jwt_authn: a bucket per verified subject
    (x-mesh-subject, which jwt_authn sets from the token's `sub` after the client's
    copy was removed). A valid token without `sub` is counted per client address,
    like a call without a token."""
    by_subject = {
        "request_headers": {
            "header_name": SUBJECT_HEADER,
            "descriptor_key": "subject",
            "skip_if_absent": True,
        }
    }
    rate_limits = [{"actions": [by_subject]}]
    descriptors = [
        {
            "entries": [{"key": "subject"}],
            "token_bucket": _bucket(site.mutation_rate_per_second, site.mutation_burst),
        }
    ]
    if site.anonymous_rate_per_second:
        no_subject = _without({"name": SUBJECT_HEADER, "present_match": True})
        rate_limits.append({"actions": [no_subject, {"remote_address": {}}]})
        descriptors.append(
            {
                "entries": [ANONYMOUS, {"key": "remote_address"}],
                "token_bucket": _bucket(site.anonymous_rate_per_second, site.anonymous_burst),
            }
        )
    return _quota("mutations", "mutation_rate_limit", rate_limits, descriptors)


def message_size_filter(site: EnvoySite) -> Config:
    """The whole request body before anything reads it: a bigger one (a gRPC
    message with its 5 bytes of framing, a REST body) is refused here with 413 /
    INVALID_ARGUMENT whatever its path or content-type, and no backend sees it.
    (The transcoder holds a REST body to its own, possibly lower, limit.)"""
    limit = max(site.grpc_message_limit_bytes + 5, site.rest_body_limit_bytes)
    return {
        "name": BUFFER,
        "typed_config": typed("filters.http.buffer.v3.Buffer", max_request_bytes=limit),
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


HEAP = "envoy.resource_monitors.fixed_heap"
# Shares of the memory budget (EnvoySite.memory_budget_mib): idle timeouts shrink
# from the first to IDLE_FLOOR at the second; new requests are refused from the third.
SHED_IDLE_FROM, SHED_IDLE_FULLY, REFUSE_REQUESTS_FROM = 0.70, 0.90, 0.95
# How short the idle timeout gets under pressure. Not nothing: a customer's
# keep-alive connection idles between its calls, and one closed the moment it
# went idle races the customer's next request on it (bench/edge.py: 9 % of an
# honest customer's orders failed with a read error beside the idle-connection
# flood when the floor was 0).
IDLE_FLOOR = "1s"


def overload_manager(site: EnvoySite) -> Config:
    """A hard cap on client connections (past it a new one is closed at once,
    instead of Envoy running out of memory or file descriptors) and a memory
    budget. Envoy's connection monitor feeds no overload action (it only refuses
    past its cap), so memory is what sheds: from SHED_IDLE_FROM of the budget the
    idle timeout of client connections shrinks (scaled timers: a connection idle
    longer than the shrunk timeout is closed, so the longest idle go first), to
    nothing at SHED_IDLE_FULLY; from REFUSE_REQUESTS_FROM new requests get 503."""
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": typed(
                    "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    max_active_downstream_connections=site.max_downstream_connections,
                ),
            },
            {
                "name": HEAP,
                "typed_config": typed(
                    "resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    max_heap_size_bytes=site.memory_budget_mib * KIB * KIB,
                ),
            },
        ],
        "actions": [
            {
                "name": "envoy.overload_actions.reduce_timeouts",
                "triggers": [
                    {
                        "name": HEAP,
                        "scaled": {
                            "scaling_threshold": SHED_IDLE_FROM,
                            "saturation_threshold": SHED_IDLE_FULLY,
                        },
                    }
                ],
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.overload.v3"
                    ".ScaleTimersOverloadActionConfig",
                    "timer_scale_factors": [
                        {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": IDLE_FLOOR}
                    ],
                },
            },
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": HEAP, "threshold": {"value": REFUSE_REQUESTS_FROM}}],
            },
        ],
    }
