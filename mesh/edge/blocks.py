"""Small building blocks of Envoy's config that every other module of the edge uses."""

from typing import Any

Config = dict[str, Any]


def typed(type_name: str, **fields: Any) -> Config:
    """A typed_config block: ``type_name`` relative to envoy.extensions."""
    return {"@type": f"type.googleapis.com/envoy.extensions.{type_name}", **fields}


def seconds(value: float) -> str:
    return f"{value:g}s"


def address(host: str, port: int) -> Config:
    return {"socket_address": {"address": host, "port_value": port}}


def endpoint(host: str, port: int) -> Config:
    return {"endpoint": {"address": address(host, port)}}


def header_regex(name: str, regex: str, *, invert: bool = False) -> Config:
    """A route/filter header matcher on a regular expression (RE2)."""
    return {
        "name": name,
        "string_match": {"safe_regex": {"regex": regex}},
        "invert_match": invert,
        "treat_missing_header_as_empty": True,
    }
