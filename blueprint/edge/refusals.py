"""Strict input: requests refused by their shape, before anything is transcoded.

- 415 for a body that is not JSON (an HTML form, a text/plain POST: the classic
  CSRF request) and for ``application/grpc`` on a path that is no gRPC method;
- 404 (UNIMPLEMENTED) for a gRPC call to an unknown method;
- 405 with ``allow`` for a known REST path called with a method it does not have,
  and for a gRPC call not made with POST.
The JSON 415 to a caller that said application/grpc comes from an internal
listener of this same Envoy (``refusals_listener``): Envoy answers anything that
arrived as gRPC in gRPC, which a REST caller would read as an empty success.
"""

import json
import re

from blueprint.edge.blocks import Config, header_regex, set_header, typed
from blueprint.edge.replies import GRPC_CONTENT_TYPE, LOCAL_REPLIES
from blueprint.edge.routes import RoutedRpc
from blueprint.edge.settings import EnvoySite
from blueprint.edge.transcoder import NOT_AN_API

JSON_CONTENT_TYPE = r"(?i)^application/json\s*(;.*)?$"
# A gRPC method's path: /package.Service/Method.
GRPC_PATH = r"^/[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*/[A-Za-z_][A-Za-z0-9_]*$"
REFUSALS = "edge_refusals"  # Envoy's internal listener and the cluster that reaches it


def _direct_reply(match: Config, status: int) -> Config:
    """Envoy answers by itself; the local reply mappers give it the error shape."""
    return {
        "match": match,
        "direct_response": {"status": status},
        "typed_per_filter_config": NOT_AN_API,
    }


def not_json_route() -> Config:
    """415 for a body that is not JSON, on any path, before anything is transcoded:
    an HTML form or a text/plain POST from another site (the classic CSRF
    request, which needs no CORS preflight) never reaches a service."""
    return _direct_reply(
        {
            "prefix": "/",
            "headers": [
                header_regex(":method", "POST|PUT|PATCH"),
                header_regex("content-type", JSON_CONTENT_TYPE, invert=True),
                header_regex("content-type", GRPC_CONTENT_TYPE, invert=True),
            ],
        },
        415,
    )


def grpc_not_post_route() -> Config:
    """A gRPC call is made with POST: one with GET (or anything else) is refused
    here, before a backend resets it and Envoy retries it on another replica."""
    route = _direct_reply(
        {
            "prefix": "/",
            "headers": [
                header_regex("content-type", GRPC_CONTENT_TYPE),
                header_regex(":method", "POST", invert=True),
            ],
        },
        405,
    )
    route["response_headers_to_add"] = [set_header("allow", "POST")]
    return route


def grpc_content_type_routes() -> list[Config]:
    """Requests that say application/grpc but match no gRPC route.

    On a gRPC method's path (an unknown method) they get a gRPC answer: 404, which
    gRPC callers receive as UNIMPLEMENTED. On any other path (a REST path, say) a
    415 with the JSON body. Envoy answers every request that arrived as gRPC in
    gRPC (HTTP 200 and a grpc-status header), which a REST caller reads as an empty
    success, so that 415 comes from an internal listener of this same Envoy (no
    socket, see refusals_listener) and is passed through as a real HTTP answer.
    """
    grpc = header_regex("content-type", GRPC_CONTENT_TYPE)
    unknown_method = _direct_reply({"safe_regex": {"regex": GRPC_PATH}, "headers": [grpc]}, 404)
    not_grpc = {
        "match": {"prefix": "/", "headers": [grpc]},
        "route": {"cluster": REFUSALS, "timeout": "1s"},
        "request_headers_to_add": [set_header("content-type", "application/octet-stream")],
        "typed_per_filter_config": NOT_AN_API,
    }
    return [unknown_method, not_grpc]


def _path_regex(template: str) -> str:
    """/inventory/{product_id}/restock → ^/inventory/[^/]+/restock$ (RE2)."""
    parts = re.split(r"\{[^}]+\}", template)
    return "^" + "[^/]+".join(re.escape(part) for part in parts) + "$"


def method_routes(rpcs: list[RoutedRpc], site: EnvoySite) -> list[Config]:
    """Per REST path: its methods go through, any other gets 405 with ``allow``.

    A request that goes through is left to the transcoder, which rewrites it to its
    RPC's gRPC path, where it is routed again: this route never forwards anything
    itself. Literal paths come first and claim the path: /inventory/decrease is
    POST only (envoy/README.md, "Errors"), never a product id of GET /inventory/{product_id}.
    With CORS origins configured, OPTIONS goes through too: the CORS filter answers
    preflights only on routes that lead somewhere. (Requests that say
    application/grpc never get here: grpc_content_type_routes come first.)
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
        allowed = templates[regex]
        backend = next(r.backend for r in rpcs if r.http_path and _path_regex(r.http_path) == regex)
        path = {"safe_regex": {"regex": regex}}
        through = {"headers": [header_regex(":method", "|".join(sorted(allowed | preflight)))]}
        wrong_method = _direct_reply(path, 405)
        wrong_method["response_headers_to_add"] = [set_header("allow", ", ".join(sorted(allowed)))]
        routes += [{"match": path | through, "route": {"cluster": backend}}, wrong_method]
    return routes


def refusals_listener() -> Config:
    """An in-process listener (no socket) that answers 415 with the JSON error body."""
    code, message = LOCAL_REPLIES[415]
    body = json.dumps({"code": code, "message": message, "details": []}, separators=(",", ":"))
    refuse = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 415, "body": {"inline_string": body}},
        "response_headers_to_add": [set_header("content-type", "application/json")],
    }
    manager = {
        **typed("filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "stat_prefix": REFUSALS,
        "route_config": {
            "virtual_hosts": [{"name": REFUSALS, "domains": ["*"], "routes": [refuse]}]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": typed("filters.http.router.v3.Router"),
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


def refusals_cluster() -> Config:
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
