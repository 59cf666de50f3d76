"""The REST API as an OpenAPI 3.0 document, generated from the contracts.

Paths come from the ``google.api.http`` rules, schemas from the messages, shaped
as Envoy's transcoder prints them (proto3 JSON mapping with proto field names:
int64 as strings, Timestamps as RFC 3339 strings, enums by name). Error responses
carry the JSON status body Envoy produces. Request fields carry the value limits
the services enforce (minimum, maximum, maxLength, pattern, required), read from
each service's ``domain.REQUEST_LIMITS`` (meshkit.limits), so a client generated
from this document refuses what the services refuse, and carry example values
that the services accept (EXAMPLES). Built by ``python -m devtools.docs_site``.
"""

import importlib
import re
from typing import Any

from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

from blueprint.access import required_scope
from blueprint.contracts import Contracts, Field, HttpRoute, Message, Rpc, Service, summary
from blueprint.topology import backends
from devtools.plan import MeshPlan
from meshkit.limits import Limit

Schema = dict[str, Any]

SCALARS: dict[int, Schema] = {
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    F.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # 64-bit integers are JSON strings in the proto3 mapping (JavaScript loses precision).
    F.TYPE_INT64: {"type": "string", "format": "int64", "example": "0"},
    F.TYPE_SINT64: {"type": "string", "format": "int64", "example": "0"},
    F.TYPE_SFIXED64: {"type": "string", "format": "int64", "example": "0"},
    F.TYPE_UINT64: {"type": "string", "format": "uint64", "example": "0"},
    F.TYPE_FIXED64: {"type": "string", "format": "uint64", "example": "0"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# Well-known types have their own JSON form; any other google.* type fails the build.
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "example": "2026-11-28T09:30:15Z",
    },
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.Empty": {"type": "object"},
}

STATUS_SCHEMA: Schema = {
    "type": "object",
    "description": "A gRPC status (google.rpc.Status) as JSON. Every error has this body,"
    " whether the service or Envoy itself produced it.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
        "message": {"type": "string", "description": "What went wrong, for a human."},
        "details": {
            "type": "array",
            "description": "Always empty in this API.",
            "items": {"type": "object"},
        },
    },
    "required": ["code", "message", "details"],
}


def _status(code: int, message: str) -> dict[str, Any]:
    return {"value": {"code": code, "message": message, "details": []}}


# HTTP status → (response name, description, examples). Envoy maps the gRPC codes.
ERRORS: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: (
        "BadRequest",
        "INVALID_ARGUMENT (code 3): a value out of range, malformed JSON, a path value"
        " that is not a number, an unknown query parameter. FAILED_PRECONDITION (code 9):"
        " the request is valid but the state does not allow it (e.g. not enough stock).",
        {
            "INVALID_ARGUMENT": _status(3, "quantity must be between 1 and 10000, got 0"),
            "FAILED_PRECONDITION": _status(
                9, "insufficient stock for product 2 (Mouse Wireless): 60 requested, 50 left"
            ),
        },
    ),
    401: (
        "Unauthenticated",
        "UNAUTHENTICATED (code 16): no bearer token, or one that is expired, not yet"
        " valid, from another issuer or audience, or not signed by a trusted key. The"
        " `WWW-Authenticate: Bearer` header says so too.",
        {"UNAUTHENTICATED": _status(16, "Jwt is missing")},
    ),
    403: (
        "PermissionDenied",
        "PERMISSION_DENIED (code 7): the token is valid but lacks the scope this operation needs.",
        {"PERMISSION_DENIED": _status(7, "RBAC: access denied")},
    ),
    404: (
        "NotFound",
        "NOT_FOUND (code 5): the resource does not exist.",
        {"NOT_FOUND": _status(5, "product 999 does not exist")},
    ),
    409: (
        "Conflict",
        "ALREADY_EXISTS (code 6): the idempotency key was already used for another request.",
        {
            "ALREADY_EXISTS": _status(
                6,
                "order ORD-2024-001 was already used to sell 2 unit(s) of product 1;"
                " use a new order id for a new sale",
            )
        },
    ),
    413: (
        "PayloadTooLarge",
        "INVALID_ARGUMENT (code 3), from Envoy: the request body is over its limit."
        " It will never fit, so this is not a 429.",
        {"INVALID_ARGUMENT": _status(3, "the request body is larger than 64 KiB")},
    ),
    415: (
        "UnsupportedMediaType",
        "INVALID_ARGUMENT (code 3), from Envoy: the body is not `application/json`.",
        {
            "INVALID_ARGUMENT": _status(
                3, "the request body must be JSON (content-type: application/json)"
            )
        },
    ),
    429: (
        "TooManyRequests",
        "RESOURCE_EXHAUSTED (code 8): too many mutations from this client (Envoy's rate"
        " limit, with `retry-after`), or a service at its cap of calls in progress."
        " Nothing was changed; retry later.",
        {"RESOURCE_EXHAUSTED": _status(8, "too many requests from this client; retry in 1 s")},
    ),
    431: (
        "RequestHeaderFieldsTooLarge",
        "INVALID_ARGUMENT (code 3), from Envoy: the request headers are over its limit.",
        {"INVALID_ARGUMENT": _status(3, "the request headers are larger than 6 KiB")},
    ),
    503: (
        "Unavailable",
        "UNAVAILABLE (code 14): the service or its database is unreachable right now;"
        " retry later. Nothing was changed.",
        {"UNAVAILABLE": _status(14, "the inventory database is unavailable; try again later")},
    ),
    504: (
        "GatewayTimeout",
        "DEADLINE_EXCEEDED (code 4), from Envoy: no answer within the operation's"
        " timeout. A write may or may not have happened: replay it with the same"
        " idempotency key to find out.",
        {"DEADLINE_EXCEEDED": _status(4, "the service did not answer in time")},
    ),
}
# Every route can answer 400 (Envoy validates the request), 429, 431, 503 and 504
# (Envoy's and the services' limits); routes with a body 413 and 415; 404 and 409
# where the RPC's doc comment names the gRPC code.
ALWAYS = (400, 429, 431, 503, 504)
WITH_BODY = (413, 415)
BEARER = "bearer"  # the security scheme: Swagger UI's "Authorize" button
NAMED_IN_COMMENT = {404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
# Example values of fields, by field name, in every message that has the field
# (requests and responses alike): Swagger UI's "Try it out" and the Postman
# collection (devtools.postman) send the requests' ones. The seed's first product
# and the sale of the README's tour, so sending the example after the tour replays
# that order (idempotent) instead of conflicting with it. Each must pass the
# field's limit (checked when the document is built).
EXAMPLES: dict[str, int | str] = {"product_id": 1, "quantity": 2, "order_id": "ORD-2024-001"}
# Where a client finds the API: the Envoy of `make up` (and of compose) on this
# machine first, for clients and generators; then the Envoy that serves the
# document, relative, which the docs' Swagger UI selects (rest.html) so "Try it
# out" calls whichever origin serves it.
SERVERS = [
    {
        "url": f"http://localhost:{MeshPlan.http_port}",
        "description": "The mesh on this machine (`make up` or `docker compose up`)",
    },
    {"url": "/", "description": "The Envoy serving this document (same origin)"},
]


def schema_name(full_name: str) -> str:
    """Component name of a message or enum: its full name without ``polyglot.``."""
    return full_name.removeprefix("polyglot.")


def operation_id(service: Service, rpc: Rpc) -> str:
    return f"{service.name}-{rpc.name}"


def swagger_anchor(service: Service, rpc: Rpc) -> str:
    """Swagger UI's deep link (``rest.html#…``) to the operation of ``rpc``."""
    return f"#/{service.name}/{operation_id(service, rpc)}"


def markdown(comment: str) -> str:
    """A doc comment as CommonMark: underscores outside `code` stay literal
    (Swagger UI would read ALREADY_EXISTS. FAILED_PRECONDITION as emphasis)."""
    parts = comment.split("`")
    parts[::2] = [text.replace("_", "\\_") for text in parts[::2]]
    return "`".join(parts)


def _ref(full_name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{schema_name(full_name)}"}


def _value_schema(contracts: Contracts, field: Field) -> Schema:
    """The JSON schema of one (non-repeated) value of ``field``'s type."""
    if field.type in SCALARS:
        return dict(SCALARS[field.type])
    if field.type_name in WELL_KNOWN:
        return dict(WELL_KNOWN[field.type_name])
    if field.type_name in contracts.messages or field.type_name in contracts.enums:
        return _ref(field.type_name)
    raise ValueError(f"{field.name}: no JSON mapping for {field.type_name} in the generator")


Limits = dict[str, Limit]  # "<message full name>.<field>" → Limit


def request_limits() -> Limits:
    """The limits every backend's domain module declares (``REQUEST_LIMITS``)."""
    limits: Limits = {}
    for backend in backends():
        limits.update(importlib.import_module(f"{backend}.domain").REQUEST_LIMITS)
    return limits


def _check_limits(contracts: Contracts, limits: Limits) -> None:
    """Every limit names a scalar field of the contracts: a renamed field must not
    silently lose its limits."""
    fields = {
        f"{message.full_name}.{field.name}": field
        for message in contracts.messages.values()
        for field in message.fields
    }
    for key in limits:
        if key not in fields or fields[key].type not in SCALARS or fields[key].repeated:
            raise ValueError(f"REQUEST_LIMITS names {key}, not a scalar field of the contracts")


def limit_schema(limit: Limit | None) -> Schema:
    """JSON schema keywords for ``limit`` (OpenAPI 3.0 regexes are ECMA 262)."""
    if limit is None:
        return {}
    keywords = {
        "minimum": limit.minimum,
        "maximum": limit.maximum,
        "maxLength": limit.max_length,
        "pattern": f"^{limit.pattern.pattern}$" if limit.pattern else None,
    }
    return {key: value for key, value in keywords.items() if value is not None}


def example_schema(field: Field, schema: Schema, limit: Limit | None) -> Schema:
    """``{"example": …}`` when EXAMPLES has one for ``field``, else nothing; an
    example of the wrong JSON type or outside the field's limit fails the build."""
    if field.name not in EXAMPLES:
        return {}
    value = EXAMPLES[field.name]
    json_type = "integer" if isinstance(value, int) else "string"
    if schema.get("type") != json_type or (limit and not limit.allows(value)):
        raise ValueError(f"EXAMPLES[{field.name!r}] = {value!r} does not fit {schema}")
    return {"example": value}


def field_schema(contracts: Contracts, field: Field, limit: Limit | None = None) -> Schema:
    if entry := contracts.map_entry(field):
        key, value = entry.fields
        schema: Schema = {
            "type": "object",
            "additionalProperties": _value_schema(contracts, value),
            "description": f"Keys: {key.scalar_name}. ",
        }
    elif field.repeated:
        schema = {"type": "array", "items": _value_schema(contracts, field)}
    else:
        schema = {**_value_schema(contracts, field), **limit_schema(limit)}
        schema |= example_schema(field, schema, limit)
    description = (schema.pop("description", "") + markdown(field.comment)).strip()
    if "$ref" in schema:  # OpenAPI 3.0 ignores siblings of $ref
        schema = {"allOf": [schema]}
    return {**schema, "description": description} if description else schema


def message_schema(
    contracts: Contracts, message: Message, limits: Limits, skip: tuple[str, ...] = ()
) -> Schema:
    fields = [f for f in message.fields if f.name not in skip]
    limit = {f.name: limits.get(f"{message.full_name}.{f.name}") for f in fields}
    properties = {f.name: field_schema(contracts, f, limit[f.name]) for f in fields}
    schema = {"type": "object", "description": markdown(message.comment), "properties": properties}
    if required := [f.name for f in fields if (rule := limit[f.name]) and rule.required]:
        schema["required"] = required
    return schema


def _components(contracts: Contracts, limits: Limits) -> dict[str, Any]:
    schemas: dict[str, Schema] = {}
    for message in contracts.messages.values():
        if not message.map_entry:
            schemas[schema_name(message.full_name)] = message_schema(contracts, message, limits)
    for enum in contracts.enums.values():
        values = "\n".join(f"- `{v.name}`: {markdown(v.comment)}" for v in enum.values)
        schemas[schema_name(enum.full_name)] = {
            "type": "string",
            "enum": [v.name for v in enum.values],
            "description": f"{markdown(enum.comment)}\n\n{values}",
        }
    schemas["Status"] = STATUS_SCHEMA
    security_schemes = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT from the mesh's issuer, its scopes in the space-separated"
            " `scope` claim. Development: `make -s token` prints one with every scope.",
        }
    }
    responses = {
        name: {
            "description": description,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/Status"},
                    "examples": examples,
                }
            },
        }
        for name, description, examples in ERRORS.values()
    }
    return {"schemas": schemas, "responses": responses, "securitySchemes": security_schemes}


def error_codes(rpc: Rpc) -> list[int]:
    """HTTP error statuses of ``rpc``: the general ones, and those its comment names.

    "no NOT_FOUND" in a comment says that code does not happen.
    """
    named = [
        status
        for status, code in NAMED_IN_COMMENT.items()
        if re.search(rf"(?<!no )\b{code}\b", rpc.comment)
    ]
    return sorted([*ALWAYS, *named])


def _parameter(
    contracts: Contracts, field: Field, where: str, limit: Limit | None
) -> dict[str, Any]:
    schema = field_schema(contracts, field, limit)
    description = schema.pop("description", "")
    if where == "query":  # optional: Swagger UI would pre-fill "Try it out" with it
        schema.pop("example", None)
    parameter = {"name": field.name, "in": where, "required": where == "path", "schema": schema}
    return {**parameter, "description": description} if description else parameter


def _request(contracts: Contracts, rpc: Rpc, route: HttpRoute, limits: Limits) -> dict[str, Any]:
    """Parameters and request body: path fields, then the body or the query."""
    request = contracts.messages[rpc.request]
    by_name = {f.name: f for f in request.fields}
    bound = tuple(route.path_params)
    if unknown := [p for p in bound if p not in by_name]:
        raise ValueError(f"{rpc.name}: path parameters {unknown} are not request fields")

    def parameter(field: Field, where: str) -> dict[str, Any]:
        return _parameter(contracts, field, where, limits.get(f"{rpc.request}.{field.name}"))

    parameters = [parameter(by_name[p], "path") for p in bound]
    if not route.body:
        parameters += [parameter(f, "query") for f in request.fields if f.name not in bound]
        return {"parameters": parameters}
    if route.body != "*":
        raise ValueError(f"{rpc.name}: body {route.body!r} (one field) is not documented yet")
    schema = message_schema(contracts, request, limits, skip=bound) if bound else _ref(rpc.request)
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {"parameters": parameters, "requestBody": body}


def _operation(
    contracts: Contracts, service: Service, rpc: Rpc, route: HttpRoute, limits: Limits
) -> Schema:
    grpc_name = f"{service.full_name}/{rpc.name}"
    response = contracts.messages[rpc.response]
    responses: dict[str, Any] = {
        "200": {
            "description": markdown(response.comment) or "OK",
            "content": {"application/json": {"schema": _ref(rpc.response)}},
        }
    }
    scope = required_scope(service.full_name, rpc.name)
    access = f"Needs a bearer token with scope `{scope}`." if scope else "Public: no token."
    with_body = WITH_BODY if route.body else ()
    for status in sorted([*error_codes(rpc), *((401, 403) if scope else ()), *with_body]):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
    return {
        "tags": [service.name],
        "operationId": operation_id(service, rpc),
        "summary": summary(rpc.comment).replace("`", ""),  # plain text in Swagger UI
        "description": f"{markdown(rpc.comment)}\n\n{access}\n\ngRPC: `{grpc_name}`",
        **_request(contracts, rpc, route, limits),
        "responses": responses,
        # Public operations say so explicitly (an empty requirement list). OpenAPI 3.0
        # lets only OAuth2/OIDC schemes list scopes, so the scope is an extension.
        "security": [{BEARER: []}] if scope else [],
        **({"x-required-scopes": [scope]} if scope else {}),
    }


def openapi(contracts: Contracts, limits: Limits | None = None) -> dict[str, Any]:
    """The document; ``limits`` defaults to what the services declare (``request_limits``)."""
    limits = request_limits() if limits is None else limits
    _check_limits(contracts, limits)
    paths: dict[str, dict[str, Any]] = {}
    for service in contracts.services:
        for rpc in service.rpcs:
            if rpc.route:
                operation = _operation(contracts, service, rpc, rpc.route, limits)
                paths.setdefault(rpc.route.path, {})[rpc.route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "PolyglotMicro REST API",
            "version": "v1",
            "description": (
                "REST/JSON view of the mesh's gRPC services, transcoded by Envoy from the"
                " `google.api.http` annotations of the contracts (proto/polyglot/*/v1)."
                " JSON uses the proto field names (snake_case); every field is printed,"
                " zeros included; int64 values are strings. Errors are gRPC status codes"
                ' mapped to HTTP, with the body `{"code", "message", "details"}`. This'
                " document is generated from the contracts (`make docs`)."
            ),
        },
        "servers": SERVERS,
        "tags": [{"name": s.name, "description": markdown(s.comment)} for s in contracts.services],
        "paths": paths,
        "components": _components(contracts, limits),
    }
