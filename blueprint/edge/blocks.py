"""Small building blocks of Envoy's config that every other module of the edge uses."""

from typing import Any

Config = dict[str, Any]


class Named(dict[str, Any]):
    """A block the config repeats word for word: the rendered YAML writes it once,
    with this anchor name (``&name``), and refers to it after that (``*name``)."""

    def __init__(self, anchor: str, block: Config) -> None:
        super().__init__(block)
        self.anchor = anchor


class Script(str):
    """Source code inlined into the config: rendered as a YAML literal block."""


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
    """A route/filter header matcher on a regular expression (RE2). Inverted, a
    missing header counts as empty, so it matches (Envoy's default: no match)."""
    matcher: Config = {"name": name, "string_match": {"safe_regex": {"regex": regex}}}
    if invert:
        matcher |= {"invert_match": True, "treat_missing_header_as_empty": True}
    return matcher


def cel_filter(expression: str) -> Config:
    """An access-log filter (which local reply mappers use too) on a CEL expression."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": typed(
                "access_loggers.filters.cel.v3.ExpressionFilter", expression=expression
            ),
        }
    }


def set_header(name: str, value: str) -> Config:
    """A header to add, replacing one of the same name (Envoy's default appends)."""
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
