"""The edge's knobs: every limit a deployment tunes, read from the environment.

``EdgeKnobs`` is the one table: each variable (``EDGE_`` + the field's name), its
bounds, its development default (the ``EnvoySite`` field's own default), its
production default and what a caller sees beyond it. ``EDGE_PROFILE`` picks the
defaults (development: ``make up``, compose, the Kubernetes dev overlay;
production: the prod overlay); any variable set wins over its profile.

``with_environment`` applies them (and AUTH_*, OTEL_*) to a site: ``make up``
(devtools/launcher.py) and ``python -m blueprint.edge --from-env
native|compose|k8s`` render Envoy's config with it. The table in envoy/README.md,
"Limits and quotas", is ``markdown_table()``; a unit test keeps the two equal.
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from blueprint.edge.settings import AUTH_ENV, KIB, EdgeAuth, EdgeTracing, EnvoySite
from meshkit.telemetry import ENDPOINT_VARIABLES

PREFIX = "EDGE_"
Profile = Literal["development", "production"]
_SITE = EnvoySite()


def _site_default(site_field: str) -> Any:
    """The development default: the EnvoySite field's (``timeouts.read``: a key of a dict)."""
    name, _, key = site_field.partition(".")
    value = getattr(_SITE, name)
    return value[key] if key else value


def knob(
    site_field: str,
    *,
    what: str,
    beyond: str,
    production: Any = None,
    **bounds: Any,
) -> Any:
    """A field of ``EdgeKnobs``: the EnvoySite field it sets, what it is, what a caller
    sees beyond it, its production default (None: as in development) and its bounds."""
    return Field(
        default=_site_default(site_field),
        description=what,
        json_schema_extra={"site_field": site_field, "production": production, "beyond": beyond},
        **bounds,
    )


QUOTA_REPLY = "429 / RESOURCE_EXHAUSTED with `retry-after: 1`"


class EdgeKnobs(BaseSettings):
    """Every edge knob a user tunes, as environment variables (EDGE_…)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    profile: Profile = Field(
        default="development",
        description="which column of defaults applies",
    )

    # --- quotas -------------------------------------------------------------
    mutations_per_second: int = knob(
        "mutation_rate_per_second",
        what="mutations (DecreaseStock, RestockProduct) per second per token subject"
        " (the verified `sub`), each RPC its own bucket; 0: off",
        beyond=f"{QUOTA_REPLY}, message `too many orders or restocks for this caller;"
        " retry in 1 s (EDGE_MUTATIONS_PER_SECOND)`; other subjects are not affected",
        production=50,
        ge=0,
        le=1_000_000,
    )
    mutation_burst: int = knob(
        "mutation_burst",
        what="mutations one subject may send at once (the bucket's size; at least the rate)",
        beyond="as above",
        production=100,
        ge=1,
        le=1_000_000,
    )
    anonymous_per_second: int = knob(
        "anonymous_rate_per_second",
        what="calls without a bearer token per second per client address (the connection's"
        " peer, never `x-forwarded-for`): public reads, the docs, health; counted before the"
        " token check; 0: off",
        beyond=f"{QUOTA_REPLY}, message `too many calls without a token from this address;"
        " retry in 1 s (EDGE_ANONYMOUS_PER_SECOND)`; callers with a token are not affected",
        production=20,
        ge=0,
        le=1_000_000,
    )
    anonymous_burst: int = knob(
        "anonymous_burst",
        what="calls without a token one address may send at once (at least the rate)",
        beyond="as above",
        production=40,
        ge=1,
        le=1_000_000,
    )

    # --- input ----------------------------------------------------------------
    rest_body_limit_bytes: int = knob(
        "rest_body_limit_bytes",
        what="a REST/JSON request body",
        beyond="413 / INVALID_ARGUMENT while the body is still arriving; nothing is forwarded",
        ge=KIB,
        le=16 * KIB * KIB,
    )
    grpc_message_limit_bytes: int = knob(
        "grpc_message_limit_bytes",
        what="a native gRPC request message (+ 5 bytes of framing); above the services'"
        " `GRPC_MAX_MESSAGE_BYTES` they refuse it themselves",
        beyond="INVALID_ARGUMENT (HTTP 413); the backend never sees it",
        ge=KIB,
        le=16 * KIB * KIB,
    )
    max_request_headers_kb: int = knob(
        "max_request_headers_kb",
        what="request headers in KiB, request line and query string included; kept under the"
        " services' 8 KiB gRPC metadata limit",
        beyond="431 (native gRPC over HTTP/2: the stream is reset, reported as INTERNAL)",
        ge=1,
        le=7,
    )
    max_request_headers_count: int = knob(
        "max_request_headers_count",
        what="request headers, counted",
        beyond="431, as above",
        ge=10,
        le=100,
    )

    # --- time -------------------------------------------------------------------
    read_timeout_seconds: float = knob(
        "timeouts.read",
        what="time per read (GET) call; a caller's shorter `grpc-timeout` is honoured",
        beyond="504 / DEADLINE_EXCEEDED",
        gt=0,
        le=300,
    )
    write_timeout_seconds: float = knob(
        "timeouts.write",
        what="time per write (POST) call",
        beyond="504 / DEADLINE_EXCEEDED",
        gt=0,
        le=300,
    )
    report_timeout_seconds: float = knob(
        "timeouts.report",
        what="time per GetSalesSummary call",
        beyond="504 / DEADLINE_EXCEEDED",
        gt=0,
        le=300,
    )
    meta_timeout_seconds: float = knob(
        "timeouts.meta",
        what="time per health or reflection call",
        beyond="504 / DEADLINE_EXCEEDED",
        gt=0,
        le=300,
    )

    # --- capacity -----------------------------------------------------------------
    max_requests_per_backend: int = knob(
        "max_requests_per_backend",
        what="calls in flight to one backend (circuit breaker)",
        beyond="503 / UNAVAILABLE at once, with `retry-after: 1`, instead of a queue",
        ge=1,
        le=100_000,
    )
    max_pending_per_backend: int = knob(
        "max_pending_per_backend",
        what="calls waiting for a connection to one backend",
        beyond="503 / UNAVAILABLE at once, with `retry-after: 1`",
        ge=1,
        le=100_000,
    )
    max_connections: int = knob(
        "max_downstream_connections",
        what="client connections Envoy holds at once (overload manager); Envoy has no cap"
        " per client address, the timeouts below bound what one address can hold",
        beyond="a new connection is closed at once",
        ge=1,
        le=1_000_000,
    )
    request_start_timeout_seconds: float = knob(
        "request_start_timeout_seconds",
        what="time from accepting a connection to its request line (HTTP/1) or preface"
        " (HTTP/2); holding N silent connections takes N new ones per this time",
        beyond="the connection is closed",
        production=1.0,
        gt=0,
        le=60,
    )
    request_headers_timeout_seconds: float = knob(
        "request_headers_timeout_seconds",
        what="time from a request's first byte to the end of its headers (slowloris)",
        beyond="408 / DEADLINE_EXCEEDED, the connection is closed",
        gt=0,
        le=300,
    )
    request_timeout_seconds: float = knob(
        "request_timeout_seconds",
        what="time from a request's start to its last byte, body included (a gRPC call held"
        " open without its complete message, a REST body that trickles in); not counted once"
        " the answer has begun",
        beyond="408 / DEADLINE_EXCEEDED `the request was not received in time`; nothing is"
        " forwarded",
        gt=0,
        le=300,
    )
    idle_timeout_seconds: float = knob(
        "idle_timeout_seconds",
        what="time a connection may stay open without a call in flight (keep-alive, HTTP/2"
        " between calls)",
        beyond="closed (HTTP/2: GOAWAY); clients reconnect by themselves",
        gt=0,
        le=3600,
    )
    memory_budget_mib: int = knob(
        "memory_budget_mib",
        what="Envoy's memory (overload manager): from 70 % idle timeouts shrink, to 1 s at"
        " 90 % (the longest idle connections go first)",
        beyond="from 95 %: 503 / UNAVAILABLE with `retry-after: 1` for new requests",
        ge=32,
        le=65_536,
    )

    # --- browsers ------------------------------------------------------------------
    cors_allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        # Its name before the other knobs existed still works.
        validation_alias=AliasChoices("EDGE_CORS_ALLOWED_ORIGINS", "CORS_ALLOWED_ORIGINS"),
        description="origins a browser may call the API from, comma-separated"
        " (`https://shop.example`); also `CORS_ALLOWED_ORIGINS`",
        json_schema_extra={
            "site_field": "cors_allowed_origins",
            "production": None,
            "beyond": "no `access-control-allow-origin`: the browser lets the page read no"
            " answer; a form or `text/plain` POST gets 415",
        },
    )

    @field_validator("cors_allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        origins = tuple(o.strip() for o in value.split(",") if o.strip())
        for origin in origins:
            url = urlsplit(origin)
            if url.scheme not in ("http", "https") or not url.hostname or url.path:
                raise ValueError(f"{origin!r} is not an origin like https://shop.example")
        return origins

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        """Production's defaults for whatever the environment does not set."""
        if not isinstance(data, dict) or data.get("profile") != "production":
            return data
        production = {
            name: field.json_schema_extra["production"]
            for name, field in cls.model_fields.items()
            if isinstance(field.json_schema_extra, dict)
            and field.json_schema_extra["production"] is not None
        }
        return {**production, **data}

    @model_validator(mode="after")
    def _bursts_hold_a_second(self) -> Self:
        """A bucket smaller than one second's refill would silently lower the rate."""
        for rate, burst in (
            ("mutations_per_second", "mutation_burst"),
            ("anonymous_per_second", "anonymous_burst"),
        ):
            if getattr(self, burst) < getattr(self, rate):
                raise ValueError(
                    f"{variable(burst)}={getattr(self, burst)} is below"
                    f" {variable(rate)}={getattr(self, rate)}: a burst holds at least one"
                    " second's calls"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "EdgeKnobs":
        """The knobs of ``env`` (default: the process environment). A wrong value raises
        ValueError naming its variable, its bounds and what it got."""
        source = _Environment(cls, os.environ if env is None else env)
        try:
            return cls(_build_sources=((source,), {}))
        except ValidationError as error:
            raise ValueError(_problems(error)) from None

    def site_fields(self) -> dict[str, Any]:
        """The EnvoySite fields these knobs set: every one of them (the timeouts' dict
        whole, one knob per kind of RPC)."""
        fields: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            if not isinstance(field.json_schema_extra, dict):
                continue
            target, _, key = str(field.json_schema_extra["site_field"]).partition(".")
            if key:
                fields.setdefault(target, {})[key] = getattr(self, name)
            else:
                fields[target] = getattr(self, name)
        return fields

    def apply(self, site: EnvoySite) -> EnvoySite:
        """``site`` with these knobs (whatever ``site`` had in their fields is replaced)."""
        return dataclasses.replace(site, **self.site_fields())


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping (a test's, a
    sandbox's) instead of always the process's own."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str]) -> None:
        self._variables = variables
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._variables, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def variable(field_name: str) -> str:
    """The environment variable of an EdgeKnobs field."""
    alias = EdgeKnobs.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return PREFIX + field_name.upper()


def _problems(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        loc = str(problem["loc"][0]) if problem["loc"] else ""
        message = problem["msg"].removeprefix("Value error, ")
        if not loc:  # the model's own check, which names its variables
            lines.append(f"  {message}")
            continue
        field = next((n for n in EdgeKnobs.model_fields if loc in (n, variable(n))), None)
        alias = EdgeKnobs.model_fields[field].validation_alias if field else None
        named = (
            " or ".join(map(str, alias.choices))
            if isinstance(alias, AliasChoices)
            else (variable(field) if field else loc)
        )
        lines.append(f"  {named}: {message} (got {problem['input']!r})")
    return "invalid edge settings in the environment:\n" + "\n".join(lines)


# Every variable `make up` and `--from-env` read for Envoy: any of them set, and
# `make up` renders Envoy's config instead of using the checked-in one.
KNOB_ENV = (
    *(variable(name) for name in EdgeKnobs.model_fields),
    "CORS_ALLOWED_ORIGINS",
)
EDGE_ENV = (*KNOB_ENV, *AUTH_ENV, *ENDPOINT_VARIABLES)


def with_environment(site: EnvoySite, env: Mapping[str, str] | None = None) -> EnvoySite:
    """``site`` with everything the environment says about the edge: the knobs
    (EDGE_*), whose tokens it accepts (AUTH_*, EdgeAuth.from_env) and where it sends
    its spans (OTEL_*, EdgeTracing.from_env; without them, the site's own tracer:
    compose's Jaeger). A wrong value raises ValueError naming its variable."""
    env = os.environ if env is None else env
    return dataclasses.replace(
        EdgeKnobs.from_env(env).apply(site),
        auth=EdgeAuth.from_env(env, base=site.auth),
        tracing=EdgeTracing.from_env(env) or site.tracing,
    )


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value) or "none"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= KIB * KIB and value % (KIB * KIB) == 0:
        return f"{value // (KIB * KIB)} MiB"
    if isinstance(value, int) and value >= KIB and value % KIB == 0:
        return f"{value // KIB} KiB"
    return f"{value:,}".replace(",", " ") if isinstance(value, int) else str(value)


def markdown_table() -> str:
    """envoy/README.md's "Limits and quotas" table: variable and what it limits, both profiles'
    defaults, and what happens beyond it."""
    rows = [
        "| variable: what it limits | development | production | beyond it |",
        "|---|---|---|---|",
        f"| `{variable('profile')}`: which defaults apply | `development` | `production` |"
        " the other variables' defaults below; any variable set wins |",
    ]
    for name, field in EdgeKnobs.model_fields.items():
        extra = field.json_schema_extra
        if not isinstance(extra, dict):
            continue
        development = field.default
        production = development if extra["production"] is None else extra["production"]
        rows.append(
            f"| `{variable(name)}`: {field.description} | {_shown(development)}"
            f" | {_shown(production)} | {extra['beyond']} |"
        )
    return "\n".join(rows) + "\n"
