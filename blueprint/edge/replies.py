"""Envoy's own answers (local replies) in the mesh's one error shape.

Every answer Envoy makes itself (bad JSON, unknown route, 405, 413, 429, 503, …)
gets the JSON body ``{"code", "message", "details"}`` with a fixed message, or,
for a caller that arrived as native gRPC, the same code and message as
grpc-status / grpc-message. Which of the two is told by the content-type the
request arrived with, kept in metadata (``arrival_filter``) before the transcoder
rewrites it.
"""

from blueprint.edge.blocks import Config, Named, cel_filter, set_header, typed
from blueprint.edge.knobs import variable
from blueprint.edge.settings import KIB, EnvoySite
from meshkit.identity import SUBJECT_HEADER

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
    429: (8, "too many requests; retry in {retry_after} s"),  # the quotas' own: QUOTA_REPLIES
    431: (3, "the request headers are larger than {header_limit}"),
    500: (13, "the gateway failed to handle the request"),
    501: (12, "this transfer encoding is not supported"),
    502: (14, "the service gave no valid answer; try again later"),
    503: (14, "the service is unavailable or overloaded; retry in {retry_after} s"),
    504: (4, "the service did not answer in time"),
}
# A 431 for the number of headers rather than their size.
TOO_MANY_HEADERS = "there are more than {count} request headers"
# Native gRPC callers' messages where they differ.
GRPC_MESSAGES = {
    405: "a gRPC call is made with POST",
    413: "the request message is larger than {grpc_limit}",
}
# gRPC callers get another code where gRPC has a better one: no route is "no such method".
GRPC_CODES = {404: 12}  # UNIMPLEMENTED
# A quota's 429 (blueprint.edge.admission) says whose quota ran out and which knob sets
# it: a verified subject's mutations, or the calls without a token from one address.
RATE_LIMITED = "response.code == 429 && response.code_details == 'local_rate_limited'"
VERIFIED = f"'{SUBJECT_HEADER}' in request.headers"
QUOTA_REPLIES = {
    VERIFIED: "too many orders or restocks for this caller; retry in {retry_after} s"
    f" ({variable('mutations_per_second')})",
    f"!({VERIFIED})": "too many calls without a token from this address; retry in"
    f" {{retry_after}} s ({variable('anonymous_per_second')})",
}
# Statuses whose local replies tell the caller when to come back.
RETRY_AFTER = {429, 503}
# Where the content-type a request arrived with is kept (before the transcoder
# rewrites it): the local replies answer gRPC callers in gRPC, everybody else in JSON.
EDGE_METADATA = "mesh.edge"
# application/grpc, +proto (the default codec named) and with parameters (;charset=…),
# as grpcio takes them. Route and metadata matchers match the whole value.
GRPC_CONTENT_TYPE = r"(?i)^application/grpc(\+proto)?\s*(;.*)?$"


def arrival_filter() -> Config:
    """The content-type, method and path a request arrived with, kept in metadata
    before the transcoder rewrites them (the local replies answer in gRPC or in JSON
    by the first; the access log shows the other two)."""
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": typed(
            "filters.http.header_to_metadata.v3.Config",
            request_rules=[
                {
                    "header": header,
                    "on_header_present": {
                        "metadata_namespace": EDGE_METADATA,
                        "key": key,
                        "type": "STRING",
                    },
                }
                for header, key in (
                    ("content-type", "content_type"),
                    (":method", "method"),
                    (":path", "path"),
                )
            ],
        ),
    }


def size_text(limit: int) -> str:
    return f"{limit // KIB} KiB" if limit % KIB == 0 else f"{limit} bytes"


def _arrived_as_grpc() -> Config:
    """The request arrived as native gRPC (by the content-type it came with,
    recorded before the transcoder rewrites it). Requests that never got that far
    (codec errors: 431, 501, …) have no record and count as REST."""
    return Named(
        "grpc_caller",
        {
            "metadata_filter": {
                "matcher": {
                    "filter": EDGE_METADATA,
                    "path": [{"key": "content_type"}],
                    "value": {"string_match": {"safe_regex": {"regex": GRPC_CONTENT_TYPE}}},
                },
                "match_if_key_not_found": False,
            }
        },
    )


def _status(status: int) -> Config:
    """A mapper filter on Envoy's status (the runtime key is Envoy's required handle)."""
    return Named(
        f"status_{status}",
        {
            "status_code_filter": {
                "comparison": {
                    "value": {"default_value": status, "runtime_key": f"mesh.local_reply.{status}"}
                }
            }
        },
    )


def local_reply_mappers(site: EnvoySite) -> list[Config]:
    """Two mappers per status, the first that matches wins: one for callers that
    arrived as native gRPC (an HTTP 200 trailers-only answer whose grpc-status and
    grpc-message say what the JSON body would), one with the JSON body for
    everybody else."""
    values = {
        "rest_limit": size_text(site.rest_body_limit_bytes),
        "grpc_limit": size_text(site.grpc_message_limit_bytes),
        "header_limit": f"{site.max_request_headers_kb} KiB",
        "retry_after": site.retry_after_seconds,
    }
    grpc_caller = _arrived_as_grpc()
    # Too many headers, not too large ones: the codec's 431 says which in its details.
    too_many: Config = {
        "filter": cel_filter(
            "response.code == 431 && response.code_details.endsWith('too_many_headers')"
        ),
        "body_format_override": {
            "json_format": {
                "code": LOCAL_REPLIES[431][0],
                "message": TOO_MANY_HEADERS.format(count=site.max_request_headers_count),
                "details": [],
            }
        },
    }
    retry_after = Named("retry_after", set_header("retry-after", str(site.retry_after_seconds)))
    mappers = [too_many]
    template: str | None  # as in LOCAL_REPLIES (both loops below)
    message: str | None
    for number, (who, template) in enumerate(QUOTA_REPLIES.items(), 1):
        quota = Named(f"quota_{number}", cel_filter(f"{RATE_LIMITED} && {who}"))
        message = template.format(**values)
        mappers += [
            {
                "filter": {"and_filter": {"filters": [quota, grpc_caller]}},
                "headers_to_add": [retry_after, set_header("grpc-status", "8")],
                "body": {"inline_string": message},
            },
            {
                "filter": quota,
                "headers_to_add": [retry_after],
                "body_format_override": {
                    "json_format": {"code": 8, "message": message, "details": []}
                },
            },
        ]
    for status, (code, template) in LOCAL_REPLIES.items():
        message = template.format(**values) if template else None
        grpc_message = GRPC_MESSAGES.get(status, template)
        grpc_message = grpc_message.format(**values) if grpc_message else None
        headers = [retry_after] if status in RETRY_AFTER else []
        status_filter = _status(status)
        grpc_mapper: Config = {
            "filter": {"and_filter": {"filters": [status_filter, grpc_caller]}},
            "headers_to_add": [
                *headers,
                set_header("grpc-status", str(GRPC_CODES.get(status, code))),
            ],
        }
        if grpc_message:
            grpc_mapper["body"] = {"inline_string": grpc_message}
        rest_mapper: Config = {
            "filter": status_filter,
            # json_format: content-type application/json
            "body_format_override": {
                "json_format": {
                    "code": code,
                    "message": message or "%LOCAL_REPLY_BODY%",
                    "details": [],
                },
            },
        }
        if headers:
            rest_mapper["headers_to_add"] = headers
        mappers += [grpc_mapper, rest_mapper]
    return mappers
