"""The REST API as a Postman collection (format v2.1), made from the OpenAPI document.

Everything comes from devtools.openapi's document (routes, parameters, example
values, who may call what), so the collection says nothing the document does not:
- one folder per service (the document's tags), one request per operation, named
  after its RPC, with the operation's description;
- collection variables ``baseUrl`` (the document's first server) and ``token``;
  bearer auth ``{{token}}`` at collection level, ``noauth`` on public requests;
- path variables and JSON bodies filled with the document's examples, the
  optional query parameters listed but disabled;
- tests on every request (HTTP 200, a JSON body with exactly the response
  message's fields, each of its JSON type), which Postman and newman report.

Built with the docs site (``python -m devtools.docs_site``) into docs/site/.
"""

import json
import re
from typing import Any

Json = dict[str, Any]

FILE_NAME = "polyglotmicro.postman_collection.json"
SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
# JSON Schema type → what Chai's `a(type)` calls it.
CHAI_TYPES = {"integer": "number", "number": "number", "string": "string", "boolean": "boolean"}
TOKEN_HELP = (
    "A bearer token for the mesh: `make -s token` prints one with every scope"
    ' (`make -s token SCOPES="orders:write"` narrows it). Public requests send none.'
)


def collection(spec: Json) -> Json:
    """The collection of every operation of ``spec`` (an OpenAPI 3.0 document)."""
    folders = [
        {
            "name": tag["name"],
            "description": tag["description"],
            "item": [
                _item(spec, path, method, operation)
                for path, methods in spec["paths"].items()
                for method, operation in methods.items()
                if tag["name"] in operation["tags"]
            ],
        }
        for tag in spec["tags"]
    ]
    base_url = spec["servers"][0]
    return {
        "info": {
            "name": spec["info"]["title"],
            "description": f"{spec['info']['description']}\n\n{TOKEN_HELP}",
            "schema": SCHEMA,
        },
        "item": folders,
        "auth": {"type": "bearer", "bearer": [_string("token", "{{token}}")]},
        "variable": [
            {**_string("baseUrl", base_url["url"]), "description": base_url["description"]},
            {**_string("token", ""), "description": TOKEN_HELP},
        ],
    }


def _string(key: str, value: str) -> Json:
    return {"key": key, "value": value, "type": "string"}


def _item(spec: Json, path: str, method: str, operation: Json) -> Json:
    request: Json = {
        "method": method.upper(),
        "header": [],
        "url": _url(spec, path, operation),
        "description": operation["description"],
    }
    if "requestBody" in operation:
        body = _body_example(spec, operation["requestBody"])
        request["header"] = [_string("Content-Type", "application/json")]
        request["body"] = {
            "mode": "raw",
            "raw": json.dumps(body, indent=2),
            "options": {"raw": {"language": "json"}},
        }
    if not operation["security"]:  # public: the collection's bearer auth is not sent
        request["auth"] = {"type": "noauth"}
    return {
        "name": operation["operationId"].rpartition("-")[2],
        "event": [
            {
                "listen": "test",
                "script": {"type": "text/javascript", "exec": _tests(spec, operation)},
            }
        ],
        "request": request,
    }


def _url(spec: Json, path: str, operation: Json) -> Json:
    """``/inventory/{product_id}`` as Postman's ``{{baseUrl}}/inventory/:product_id``."""
    postman_path = re.sub(r"\{([^}]+)\}", r":\1", path)
    parameters = operation.get("parameters", [])
    variables = [
        {"key": p["name"], "value": str(_example(spec, p["schema"], p["name"]))} | _description(p)
        for p in parameters
        if p["in"] == "path"
    ]
    query = [
        {"key": p["name"], "value": "", "disabled": True} | _description(p)
        for p in parameters
        if p["in"] == "query"
    ]
    url: Json = {
        "raw": "{{baseUrl}}" + postman_path,
        "host": ["{{baseUrl}}"],
        "path": postman_path.strip("/").split("/"),
    }
    return (
        url | ({"variable": variables} if variables else {}) | ({"query": query} if query else {})
    )


def _description(parameter: Json) -> Json:
    return {"description": parameter["description"]} if parameter.get("description") else {}


def _body_example(spec: Json, request_body: Json) -> Json:
    """The request body made of the examples of its fields (every required one has one)."""
    schema = _resolve(spec, request_body["content"]["application/json"]["schema"])
    properties = schema["properties"]
    for name in schema.get("required", []):
        _example(spec, properties[name], name)  # fails for a required field without one
    return {
        name: _example(spec, field, name)
        for name, field in properties.items()
        if "example" in _resolve(spec, field)
    }


def _example(spec: Json, schema: Json, name: str) -> Any:
    if "example" not in (resolved := _resolve(spec, schema)):
        raise ValueError(f"{name}: no example in the OpenAPI document (devtools.openapi.EXAMPLES)")
    return resolved["example"]


def _resolve(spec: Json, schema: Json) -> Json:
    """``schema`` with its ``$ref`` (or single-``allOf`` wrapper) followed."""
    if "allOf" in schema:
        (schema,) = schema["allOf"]
    if ref := schema.get("$ref"):
        target: Json = spec["components"]["schemas"][ref.removeprefix("#/components/schemas/")]
        return target
    return schema


def _chai_type(spec: Json, schema: Json) -> str:
    resolved = _resolve(spec, schema)
    kind: str = resolved.get("type", "object")
    return CHAI_TYPES.get(kind, kind)  # array and object keep their names


def _tests(spec: Json, operation: Json) -> list[str]:
    """Postman test script: HTTP 200 and the response message's JSON shape."""
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    name = schema["$ref"].rpartition("/")[2]
    fields = {
        field: _chai_type(spec, property_schema)
        for field, property_schema in _resolve(spec, schema)["properties"].items()
    }
    return [
        'pm.test("HTTP 200", function () {',
        "    pm.response.to.have.status(200);",
        "});",
        f'pm.test("JSON body: {name}, every field of its JSON type", function () {{',
        f"    const fields = {json.dumps(fields)};",
        "    const body = pm.response.json();",
        "    pm.expect(body).to.have.all.keys(Object.keys(fields));",
        "    for (const [field, type] of Object.entries(fields)) {",
        "        pm.expect(body[field], field).to.be.a(type);",
        "    }",
        "});",
    ]
