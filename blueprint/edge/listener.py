"""The ingress listener: one port for REST/JSON and native gRPC.

A request meets, in this order: the connection manager (codecs, header limits),
the HTTP filter chain (``http_filters``: CORS, arrival metadata, message size,
the native gRPC check, transcoder, identity and quotas, router) and the route table
(``route_table``: strict-input refusals, the RPCs' routes, docs, REST paths).
Whatever Envoy answers itself gets the error shape of blueprint.edge.replies.
"""

from pathlib import Path

from blueprint.contracts import Service
from blueprint.edge.admission import (
    anonymous_rate_limit_filter,
    message_size_filter,
    rate_limit_filter,
)
from blueprint.edge.auth import audience_reply_mappers, auth_filters, strip_subject_filter
from blueprint.edge.blocks import Config, address, seconds, typed
from blueprint.edge.docs import docs_routes
from blueprint.edge.grpc_input import grpc_input_filter
from blueprint.edge.refusals import (
    grpc_content_type_routes,
    grpc_not_post_route,
    method_routes,
    not_json_route,
)
from blueprint.edge.replies import arrival_filter, local_reply_mappers
from blueprint.edge.routes import RoutedRpc, default_retry_policy, grpc_service_routes, rpc_routes
from blueprint.edge.settings import KIB, EnvoySite
from blueprint.edge.tracing import TRACE_ID_HEADER, trace_id_filter, tracer
from blueprint.edge.transcoder import transcoder_filter

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
CORS = "envoy.filters.http.cors"


def _cors_policy(site: EnvoySite) -> Config:
    return typed(
        "filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=[{"exact": origin} for origin in site.cors_allowed_origins],
        allow_methods="GET, POST",
        allow_headers="authorization, content-type, grpc-timeout, x-grpc-web, x-user-agent",
        expose_headers=f"grpc-status, grpc-message, retry-after, {TRACE_ID_HEADER}",
        max_age="600",
    )


def http_filters(site: EnvoySite, services: list[Service], descriptor_set: Path) -> list[Config]:
    return [
        *([trace_id_filter()] if site.tracing else []),
        # CORS first: a preflight from an allowed origin is answered here; without
        # configured origins no response carries access-control-allow-origin, so a
        # browser lets no other site read an answer.
        {"name": CORS, "typed_config": typed("filters.http.cors.v3.Cors")},
        # The content-type a request arrived with, before the transcoder rewrites
        # it (the local replies answer in gRPC or in JSON by it).
        arrival_filter(),
        # The whole request before anything looks at its body: one over the limit
        # is refused for its size (413) whatever its path or content-type.
        message_size_filter(site),
        # Native gRPC calls' framing, compression and metadata (on their routes only).
        *([grpc_input_filter(site)] if site.grpc_input_check else []),
        transcoder_filter(site, services),
        # After the transcoder: REST calls carry their gRPC method path by
        # now, so one rule per RPC covers both ways in.
        strip_subject_filter(),
        # Calls without a token, per address: before any token is checked.
        *anonymous_rate_limit_filter(site),
        *auth_filters(site.auth, descriptor_set),
        # After the transcoder, so REST and native gRPC calls of one RPC share the
        # route (and the subject's bucket); after jwt_authn, which names the subject.
        # Enabled per route (mutations).
        rate_limit_filter(),
        {
            "name": "envoy.filters.http.router",
            # No x-envoy-upstream-service-time and friends in answers.
            "typed_config": typed("filters.http.router.v3.Router", suppress_envoy_headers=True),
        },
    ]


def route_table(
    site: EnvoySite, rpcs: list[RoutedRpc], front_door: str, docs_site: Path
) -> list[Config]:
    """The first route that matches wins."""
    return [
        not_json_route(),
        grpc_not_post_route(),
        *rpc_routes(rpcs, site),
        *grpc_service_routes(site, front_door),
        *grpc_content_type_routes(),
        *docs_routes(site, docs_site),
        *method_routes(rpcs, site),
    ]


def _http_connection_manager(
    site: EnvoySite, services: list[Service], routes: list[Config], descriptor_set: Path
) -> Config:
    virtual_host: Config = {
        "name": "mesh",
        "domains": ["*"],
        # Routes without a retry policy of their own follow this one.
        "retry_policy": default_retry_policy(site),
        "routes": routes,
    }
    if site.cors_allowed_origins:
        virtual_host["typed_per_filter_config"] = {CORS: _cors_policy(site)}
    manager: Config = {
        **typed("filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "stat_prefix": "ingress",
        # Envoy is the edge: the client is the connection's peer, never what an
        # x-forwarded-for header claims (the quota for calls without a token keys on it).
        "use_remote_address": True,
        # HTTP/1.1 for REST, HTTP/2 (h2c) for native gRPC: Envoy's codec_type AUTO.
        "max_request_headers_kb": site.max_request_headers_kb,
        "common_http_protocol_options": {
            "max_headers_count": site.max_request_headers_count,
            "headers_with_underscores_action": "REJECT_REQUEST",
            # No call in flight this long: closed (shorter under memory pressure).
            "idle_timeout": seconds(site.idle_timeout_seconds),
        },
        # HTTP/1.0 clients (plain `curl --http1.0`, old tools) are served, not
        # told to upgrade.
        "http_protocol_options": {"accept_http_10": True, "default_host_for_http_10": "mesh"},
        # Closing an idle connection drains it first (HTTP/2: GOAWAY, then close):
        # a second, not Envoy's default five, of which an idle one needs none.
        "drain_timeout": "1s",
        # A client that sends its headers slowly is cut off (slowloris): 408.
        "request_headers_timeout": seconds(site.request_headers_timeout_seconds),
        # Then the whole request (body included) within this long of its start: 408.
        "request_timeout": seconds(site.request_timeout_seconds),
        "http_filters": http_filters(site, services, descriptor_set),
        "route_config": {
            "name": "mesh",
            # The docs' vendored JavaScript is served as direct responses.
            "max_direct_response_body_size_bytes": 16 * 1024 * 1024,
            "virtual_hosts": [virtual_host],
            # The transcoder's copy of the REST path (query string included) is not
            # forwarded: it would count twice against the backends' metadata limit.
            "request_headers_to_remove": ["x-envoy-original-path", "x-envoy-original-method"],
            # Whatever a backend sends in x-envoy-* stays inside the mesh.
            "response_headers_to_remove": [
                "x-envoy-upstream-service-time",
                "x-envoy-upstream-healthchecked-cluster",
                "x-envoy-overloaded",
                "x-envoy-ratelimited",
                "x-envoy-degraded",
            ],
        },
        "local_reply_config": {"mappers": [*audience_reply_mappers(), *local_reply_mappers(site)]},
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": typed(
                    "access_loggers.stream.v3.StdoutAccessLog",
                    log_format={"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                ),
            }
        ],
    }
    if site.tracing:
        manager["tracing"] = tracer(site.tracing)
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}


def ingress_listener(
    site: EnvoySite, services: list[Service], routes: list[Config], descriptor_set: Path
) -> Config:
    return {
        "name": "ingress",
        "address": address(site.listen_address, site.listen_port),
        # Flow control per connection: a client streaming a huge body is
        # read in small pieces, not buffered whole.
        "per_connection_buffer_limit_bytes": 64 * KIB,
        # A connection that has not sent its request line (HTTP/1) or preface
        # (HTTP/2) within this long of being accepted is closed: the inspector
        # waits for those bytes, and the timeout runs from accept.
        "listener_filters": [
            {
                "name": "envoy.filters.listener.http_inspector",
                "typed_config": typed("filters.listener.http_inspector.v3.HttpInspector"),
            }
        ],
        "listener_filters_timeout": seconds(site.request_start_timeout_seconds),
        "filter_chains": [
            {"filters": [_http_connection_manager(site, services, routes, descriptor_set)]}
        ],
    }
