"""Prometheus metrics of every process: what they count, and the endpoint that serves them.

Each process serves its own ``/metrics`` on METRICS_HOST:METRICS_PORT (port 0:
none); blueprint/prometheus.py makes Prometheus's scrape config from the same
topology, prometheus/alerts.yml says what is worth waking someone for. The
metrics, by who records them (prometheus/README.md has the table with labels):

- gRPC, every service (``GrpcMetrics``, a server interceptor):
  ``grpc_server_handled_total`` and ``grpc_server_handling_seconds``;
- RabbitMQ, every broker (FastStream's ``RabbitPrometheusMiddleware``):
  ``faststream_received_*`` on consumers, ``faststream_published_*`` on the relay
  (a publish returns once RabbitMQ confirmed it, so its duration is the confirm
  latency);
- sampled on the process's loop every METRICS_SAMPLE_SECONDS, never at scrape
  time (a scrape runs on the endpoint's thread, the drivers on the loop):
  ``outbox_unpublished_events`` and ``outbox_oldest_unpublished_age_seconds``
  (the relay; the age is worked out at scrape time from the oldest row seen, so
  it grows between samples), ``dead_letter_queue_messages`` (each consumer, its
  own DLQ);
- ``db_pool_connections`` (PostgreSQL pools), read at scrape time;
- prometheus_client's own ``process_*`` and ``python_*``.
"""

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias
from wsgiref.simple_server import WSGIServer

import grpc
from faststream.rabbit import RabbitBroker
from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from meshkit.broker_topology import Subscription, dead_letter_queue
from meshkit.settings import ServiceSettings

log = logging.getLogger(__name__)
# Refreshes sampled gauges on the process's loop (MetricsEndpoint).
Sampler = Callable[[], Awaitable[None]]
# A grpcio method handler (generic in its stubs only: not subscriptable at run time).
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

# Our RPCs take milliseconds: finer buckets at the low end than the library's.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "Unary RPCs completed on the server, by method and gRPC status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of a unary RPC to its answer, by method.",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)
DEAD_LETTERS = Gauge(
    "dead_letter_queue_messages", "Messages waiting in a subscriber's DLQ.", ["queue"]
)
DB_POOL = Gauge(
    "db_pool_connections",
    "Connections of a PostgreSQL pool: open, and in use by a call.",
    ["database", "state"],
)


# --- gRPC -----------------------------------------------------------------------


class GrpcMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every RPC with one response of the server it is given to:
    our APIs (grpcio's stream-unary kind, meshkit.grpc_server says why) and
    grpcio's unary ones (health Check).

    The wrapped handler is made once per method and reused (the server's handlers
    never change), with the counter of every status code at hand (each exported,
    0 until used): a call costs a clock read and two updates, about 3-7 µs here
    (an RPC's own work is a millisecond or more). RPCs that stream responses
    (health Watch, reflection) pass through unmeasured.
    """

    def __init__(self) -> None:
        self._measured: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = handler_call_details.method
        if (measured := self._measured.get(method)) is not None:
            return measured
        handler = await continuation(handler_call_details)
        if handler is None or handler.response_streaming:
            return handler
        measured = self._measured[method] = measured_handler(handler, method)
        return measured


def measured_handler(handler: Handler, method: str) -> Handler:
    """``handler`` (one response) recording into GRPC_HANDLED / GRPC_HANDLING_SECONDS."""
    service, _, name = method.lstrip("/").partition("/")
    seconds = GRPC_HANDLING_SECONDS.labels(service, name)
    # The counter of each code, looked up once (labels() costs more than inc()).
    handled = {code: GRPC_HANDLED.labels(service, name, code.name) for code in grpc.StatusCode}
    kind = "stream_unary" if handler.request_streaming else "unary_unary"
    behaviour = getattr(handler, kind)

    async def measured(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN  # an exception grpcio turns into UNKNOWN
        try:
            response = await behaviour(request, context)
            code = _status(context, grpc.StatusCode.OK)
            return response
        except grpc.aio.AbortError:
            code = _status(context, grpc.StatusCode.UNKNOWN)
            raise
        except asyncio.CancelledError:  # the caller went away or the deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            seconds.observe(time.perf_counter() - started)
            handled[code].inc()

    # grpcio's handlers are namedtuples; the stubs declare only their abstract base.
    replaced: Handler = handler._replace(**{kind: measured})  # type: ignore[attr-defined]
    return replaced


def _status(
    context: grpc.aio.ServicerContext[Any, Any], default: grpc.StatusCode
) -> grpc.StatusCode:
    """The code the handler set or aborted with (grpcio gives it as the enum or None)."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else default


# --- RabbitMQ ---------------------------------------------------------------------


def _redelivered(message: Any) -> str:
    """Custom label of the consumer metrics: was this delivery a redelivery? ("" on
    publish metrics, which have no incoming message: Prometheus drops empty labels)."""
    return "" if message is None else str(bool(message.redelivered)).lower()


def broker_metrics() -> RabbitPrometheusMiddleware:
    """FastStream's Prometheus middleware for a broker (meshkit.broker.rabbit_broker)."""
    return RabbitPrometheusMiddleware(
        registry=REGISTRY, custom_labels={"redelivered": _redelivered}
    )


def dead_letter_depth(broker: RabbitBroker, subscription: Subscription) -> Sampler:
    """A sampler of ``subscription``'s DLQ depth: the message count of a queue
    declare (idempotent, the same arguments), so no management API is needed."""
    queue_name = subscription.dead_letter_queue

    async def sample() -> None:
        queue = await broker.declare_queue(dead_letter_queue(subscription))
        declared = await queue.declare()
        DEAD_LETTERS.labels(queue_name).set(declared.message_count or 0)

    return sample


# --- outbox and databases ---------------------------------------------------------


class OutboxGauges:
    """The outbox's backlog as the relay last saw it. Registered by the relay alone
    (``outbox_gauges()``), so no other process exports a misleading 0."""

    def __init__(self) -> None:
        self._oldest: datetime | None = None
        self.unpublished = Gauge(
            "outbox_unpublished_events", "Outbox rows committed but not yet confirmed by RabbitMQ."
        )
        # Read at scrape time: the age grows between two looks at the table.
        Gauge(
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none is waiting).",
        ).set_function(self._oldest_age)

    def record(self, unpublished: int, oldest: datetime | None) -> None:
        self.unpublished.set(unpublished)
        self._oldest = oldest

    def _oldest_age(self) -> float:
        oldest = self._oldest
        return 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())


@functools.cache
def outbox_gauges() -> OutboxGauges:
    return OutboxGauges()


def watch_pool(database: str, usage: Callable[[], tuple[int, int]]) -> None:
    """Report a pool's ``usage()`` = (open, in use) at every scrape (plain reads)."""
    DB_POOL.labels(database, "open").set_function(lambda: usage()[0])
    DB_POOL.labels(database, "in_use").set_function(lambda: usage()[1])


# --- the endpoint -------------------------------------------------------------------


class MetricsEndpoint:
    """Serves /metrics (prometheus_client's HTTP server, on a thread of its own) and
    refreshes the sampled gauges: a lifecycle component (meshkit.lifecycle).

    A sampler that fails (database or broker away) leaves its gauge at the last
    value and is logged once; the outage shows in the health and other metrics.
    With several WORKERS one port cannot serve each worker's own registry, so
    the endpoint is off (logged).
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        health_name: str,
        samplers: Mapping[str, Sampler] | None = None,
    ) -> None:
        self.health_name = health_name
        self._settings = settings
        self._samplers = dict(samplers or {})
        self._failing: set[str] = set()
        self._sampled: set[str] = set()  # samplers that succeeded at least once
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self._settings.metrics_port != 0 and self._settings.workers == 1

    async def run(self) -> None:
        if self._settings.metrics_port and self._settings.workers > 1:
            log.warning(
                "metrics endpoint off: WORKERS=%d processes would share one port",
                self._settings.workers,
            )
        if not self.enabled:
            return
        host, port = self._settings.metrics_host, self._settings.metrics_port
        self._server, self._thread = start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
        while True:
            for name, sample in self._samplers.items():
                await self._sample(name, sample)
            await asyncio.sleep(self._settings.metrics_sample_seconds)

    async def _sample(self, name: str, sample: Sampler) -> None:
        try:
            await asyncio.wait_for(sample(), timeout=max(self._settings.metrics_sample_seconds, 1))
        except Exception as exc:  # any failure: keep the last value, try again later
            if name not in self._failing:  # expected while starting; a warning later
                level = logging.WARNING if name in self._sampled else logging.INFO
                log.log(level, "metrics: cannot sample %s yet (%r)", name, exc)
                self._failing.add(name)
            return
        if name in self._failing:
            log.info("metrics: sampling %s", name)
            self._failing.discard(name)
        self._sampled.add(name)

    async def check(self) -> None:
        if self.enabled and (self._thread is None or not self._thread.is_alive()):
            raise ConnectionError("the metrics endpoint is not serving")

    async def stop(self) -> None:
        """Stop serving, without waiting: the server notices within its poll interval
        (0.5 s), which a stopping process need not spend."""
        if (server := self._server) is not None:
            self._server = None
            threading.Thread(target=_close, args=(server,), daemon=True).start()


def _close(server: WSGIServer) -> None:
    server.shutdown()
    server.server_close()
