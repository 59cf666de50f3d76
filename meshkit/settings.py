"""Settings shared by every service, read from environment variables."""

import re
from typing import Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import AmqpDsn, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Base settings; each service subclasses it and sets its own defaults."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per line (for a log collector); "text" for people.
    log_format: Literal["text", "json"] = "text"
    # How long in-flight RPCs may run on after SIGTERM before they are cancelled.
    shutdown_grace_seconds: float = Field(default=10.0, gt=0, le=300)
    # After SIGTERM, how long the server stays up NOT_SERVING before it stops
    # accepting RPCs: long enough for Envoy's health check (unhealthy after two
    # failed checks) to take it out of rotation first. 0 for tests that stop
    # processes often.
    drain_seconds: float = Field(default=2.0, ge=0, le=120)
    # How often dependencies (database, broker) are probed for the health status.
    health_probe_seconds: float = Field(default=2.0, gt=0, le=60)
    # Processes serving the same gRPC port (each one uses about one core).
    workers: int = Field(default=1, ge=1, le=64)
    # uvloop (libuv) serves the same calls with about a quarter less CPU than
    # asyncio's own loop (bench/findings.md); "asyncio" remains available.
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # The largest request message a service accepts (bytes). Every request of the
    # contracts fits in well under 1 KiB; Envoy refuses larger bodies before this.
    grpc_max_message_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Calls in progress at once, per process, counted from when a call's request
    # message is complete (a stream still waiting for it takes no place here);
    # more are refused (RESOURCE_EXHAUSTED) rather than queued. Above Envoy's
    # per-backend limit (its circuit breaker, 256 in flight), so behind one Envoy
    # that fast 503 answers first; this guards the process against callers that
    # bypass Envoy, or several Envoys.
    grpc_max_concurrent_rpcs: int = Field(default=300, ge=1, le=10_000)
    # Streams open at once, per process, whatever they are doing: calls in
    # progress, calls still waiting for their request message, health checks,
    # reflection. grpcio's own cap, refused before any Python runs: a memory
    # backstop (a waiting stream may buffer up to a message, GRPC_MAX_MESSAGE_BYTES).
    grpc_max_open_streams: int = Field(default=1000, ge=1, le=100_000)
    # How long a call's request message may take to arrive once the call started.
    # Honest callers send it with the headers and Envoy forwards whole buffered
    # bodies, so it arrives in a millisecond; a stream held open without it is
    # answered INVALID_ARGUMENT after this (and at most a quarter more), and frees
    # its place.
    grpc_request_read_seconds: float = Field(default=2.0, ge=0.05, le=60)
    # Prometheus metrics (meshkit/metrics.py) over HTTP at /metrics; port 0 (the
    # default) serves none. Whoever starts the process picks the port (`make up`
    # from blueprint/topology.py METRICS_PORTS, compose, the tests); loopback unless a
    # scraper on another host needs it (compose: 0.0.0.0 on its own network).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # How often the sampled gauges (outbox backlog, DLQ depth) are refreshed:
    # each refresh is one small query or queue declare.
    metrics_sample_seconds: float = Field(default=5.0, ge=0.1, le=300)
    # The event backbone (every service publishes or subscribes).
    amqp_url: AmqpDsn = AmqpDsn("amqp://guest:guest@127.0.0.1:5672/")

    @field_validator("grpc_max_open_streams")
    @classmethod
    def _room_for_every_call(cls, value: int, info: ValidationInfo) -> int:
        calls = info.data.get("grpc_max_concurrent_rpcs")
        if calls is not None and value < calls:
            raise ValueError(f"must be at least GRPC_MAX_CONCURRENT_RPCS ({calls})")
        return value


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load_settings(settings_type: type[SettingsT]) -> SettingsT:
    """Read and validate settings; exit with a readable message when one is wrong.

    The message shows each wrong value, except what may be a credential: URLs
    are shown without their password and query, and the value of a secret-like
    setting that is not even a URL is not shown at all.
    """
    try:
        return settings_type()
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            f" (got {shown_value(str(error['loc'][:1]), error.get('input'))})"
            for error in exc.errors()
        )
        raise SystemExit(
            f"{settings_type.__name__}: invalid settings in the environment:\n{problems}"
        ) from None


# Settings whose value may be, or contain, a credential.
_SECRET_LIKE = re.compile(r"url|dsn|password|passwd|secret|token|key|credential", re.IGNORECASE)


def shown_value(name: str, value: object) -> str:
    """``value`` as a settings error may print it (see ``load_settings``)."""
    text = str(value)
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unbalanced "[" in the host
        parts = None
    if parts is not None and parts.scheme and parts.netloc:
        return repr(without_credentials(text))
    if _SECRET_LIKE.search(name):
        return "a value not shown, as it may hold a credential"
    return repr(value)


def without_credentials(url: str) -> str:
    """``url`` with its password masked and without query or fragment (which may hold one)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at:
        user = userinfo.partition(":")[0]
        userinfo = f"{user}:***" if ":" in userinfo else user
        host = f"{userinfo}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
