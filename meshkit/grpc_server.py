"""The gRPC server every service runs: its APIs, health and reflection.

Servicers are the ``*ServiceBase`` classes betterproto generates (grpclib style);
we serve them with grpcio's asyncio server by registering generic handlers whose
(de)serializers are meshkit/messages.py's. Domain errors become gRPC status codes here,
and nowhere else.

Requests are decoded strictly before any domain code sees them, and responses
encoded, by protobuf's own parser (upb; meshkit/messages.py). A malformed request
is answered INVALID_ARGUMENT with one log line.

Every unary RPC is served as grpcio's stream-unary kind (the wire format is the
same; callers see a unary RPC) so that a call without one complete request
message is answered too: grpcio's unary path returns without any status when the
stream ends early, leaving the call hanging until the caller's deadline, and it
waits for the message with no bound of its own (``_unary_handler``).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import betterproto
import grpc
from betterproto.casing import snake_case
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpclib.const import Cardinality
from grpclib.const import Handler as GrpclibHandler

from meshkit import errors
from meshkit.identity import caller_subject, subject_from_metadata
from meshkit.messages import MalformedRequest, RequestDecoder, response_encoder
from meshkit.metrics import GrpcMetrics, Handler
from meshkit.reflection import mesh_pool, reflection_handlers
from meshkit.settings import ServiceSettings
from meshkit.telemetry import grpc_server_interceptors, untraced

log = logging.getLogger(__name__)
# grpc.health.v1 name of the process itself (see GrpcServer.start).
LIVENESS = "liveness"

STATUS_OF_ERROR: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

Unary = Callable[[betterproto.Message], Awaitable[betterproto.Message]]


class Servicer(Protocol):
    """A ``*ServiceBase`` betterproto generates: its RPCs by path (grpclib's IServable)."""

    def __mapping__(self) -> Mapping[str, GrpclibHandler]: ...


def status_of(error: errors.ServiceError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_OF_ERROR:
            return STATUS_OF_ERROR[kind]
    return grpc.StatusCode.INTERNAL


class CallBudget:
    """Calls in progress at once whose request message is complete
    (GRPC_MAX_CONCURRENT_RPCS): a stream still waiting for its message takes no
    place, so streams that never complete one cannot crowd out honest calls.
    grpcio's own cap (GRPC_MAX_OPEN_STREAMS) counts every open stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    @property
    def refusal(self) -> str:
        return f"the service has {self.limit} calls in progress, its limit; retry shortly"


class RequestReads:
    """Reads of the calls' request messages, each bounded (GRPC_REQUEST_READ_SECONDS).

    grpcio waits for a message as long as the stream stays open. One sweep every
    quarter of the bound cancels the reads past it (what grpc.aio itself does
    when a caller cancels), so a held-open stream is answered within 1 to 1.25
    times the bound. A sweep instead of a timer per call: asyncio.timeout cost
    about 27 000 instructions per call (callgrind; 8 % of a minimal call under
    uvloop), a deadline in a dict about a fifth of that.
    """

    def __init__(self, within: float) -> None:
        self.within = within
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    async def read(self, context: grpc.aio.ServicerContext[Any, Any]) -> object:
        """The call's request (decoded by the method's deserializer), grpc.aio.EOF
        when the stream ended without a complete message, None when none came
        within the bound. Call it from the call's own task."""
        task = asyncio.current_task()
        assert task is not None
        self._deadlines[task] = asyncio.get_running_loop().time() + self.within
        try:
            return await context.read()
        except asyncio.CancelledError:
            # Ours, unless someone else cancelled the call too (the caller left).
            if task not in self._expired or task.uncancel() > 0:
                raise
            return None
        finally:
            del self._deadlines[task]
            self._expired.discard(task)

    async def sweep(self) -> None:
        """Cancel the reads past their bound, forever (GrpcServer runs it)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.within / 4)
            now = loop.time()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()


def _unary_handler(
    path: str,
    call: Unary,
    decoder: RequestDecoder,
    encoder: Callable[[betterproto.Message], bytes],
    budget: CallBudget,
    reads: RequestReads,
) -> Handler:
    incomplete = f"the request stream ended without a complete {decoder.message_name}"
    late = f"no complete {decoder.message_name} arrived within {reads.within:g}s of the call"

    async def handle(_: object, context: grpc.aio.ServicerContext[Any, Any]) -> object:
        request = await reads.read(context)
        if request is grpc.aio.EOF or request is None:
            # One line, no traceback. Also the end of a call grpcio's core refused
            # itself (a compressed message without an encoding): the caller already
            # has the core's status then, and this abort changes nothing.
            reason = incomplete if request is grpc.aio.EOF else late
            log.warning("%s: refused a call (%s)", path, reason)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        if isinstance(request, MalformedRequest):
            # One line, no traceback: a bad call is the caller's problem, not ours.
            log.warning("%s: refused a malformed request (%s)", path, request.reason)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request))
        if budget.in_progress >= budget.limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, budget.refusal)
        budget.in_progress += 1
        try:
            caller_subject.set(subject_from_metadata(context.invocation_metadata()))
            return await call(request)  # type: ignore[arg-type]
        except errors.ServiceError as error:
            await context.abort(status_of(error), str(error))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            # The caller gets no traceback; the log keeps it.
            log.exception("unexpected failure in %s", path)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the service log)")
        finally:
            budget.in_progress -= 1

    return grpc.stream_unary_rpc_method_handler(
        handle, request_deserializer=decoder, response_serializer=encoder
    )


def api_handlers(
    servicer: Servicer, budget: CallBudget, reads: RequestReads
) -> list[grpc.ServiceRpcHandler]:
    """grpcio handlers for the RPCs of a betterproto servicer, grouped by service,
    admitted by ``budget`` and reading their request through ``reads``."""
    methods: dict[str, dict[str, Handler]] = {}
    for path, rpc in servicer.__mapping__().items():
        _, service, method = path.split("/")
        if rpc.cardinality is not Cardinality.UNARY_UNARY:
            raise NotImplementedError(f"{path}: only unary RPCs are served")
        call = getattr(servicer, snake_case(method))
        contract = mesh_pool().FindMethodByName(f"{service}.{method}")
        decoder = RequestDecoder(rpc.request_type, contract.input_type)
        encoder = response_encoder(rpc.reply_type, contract.output_type)
        methods.setdefault(service, {})[method] = _unary_handler(
            path, call, decoder, encoder, budget, reads
        )
    return [
        # A ServiceRpcHandler, which its stub widens to GenericRpcHandler.
        grpc.method_handlers_generic_handler(name, m)  # type: ignore[misc]
        for name, m in methods.items()
    ]


class GrpcServer:
    """A grpc.aio server with our APIs, grpc.health.v1 and server reflection (whole mesh).

    Health starts NOT_SERVING. ``watch_readiness`` probes dependencies and sets the
    overall status ("") and every API's; a background component (the outbox
    relay, an event consumer) reports under its own name, so a broker outage is
    visible without taking the API out of Envoy's rotation.
    """

    def __init__(self, settings: ServiceSettings, servicers: Iterable[Servicer]) -> None:
        self._settings = settings
        self._server = grpc.aio.server(
            options=[
                # SO_REUSEPORT only for several workers: a second mesh on a taken
                # port should fail loudly, not share it.
                ("grpc.so_reuseport", int(settings.workers > 1)),
                # Refused by grpcio's core (RESOURCE_EXHAUSTED) before any Python
                # runs: a 3.9 MB request once kept analytics_svc's loop busy for 8 s.
                ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
            ],
            # Every open stream counts, from its headers on: a backstop beside
            # the CallBudget of complete calls. Beyond it grpcio refuses at once
            # (RESOURCE_EXHAUSTED) instead of queueing.
            maximum_concurrent_rpcs=settings.grpc_max_open_streams,
            # Server spans when tracing is on (meshkit/telemetry.py), then metrics.
            interceptors=[*grpc_server_interceptors(), GrpcMetrics()],
        )
        self._health = health.aio.HealthServicer()
        self._api_names: list[str] = []
        budget = CallBudget(settings.grpc_max_concurrent_rpcs)
        self._reads = RequestReads(settings.grpc_request_read_seconds)
        self._sweeping: asyncio.Task[None] | None = None
        for servicer in servicers:
            for handler in api_handlers(servicer, budget, self._reads):
                self._api_names.append(handler.service_name())
                self._server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._server.add_generic_rpc_handlers(tuple(reflection_handlers()))
        self.serving: dict[str, bool] = {}

    @property
    def address(self) -> str:
        return f"{self._settings.grpc_host}:{self._settings.grpc_port}"

    async def start(self) -> None:
        await self.set_serving(False)
        # SERVING as long as the server answers at all, whatever its dependencies
        # do: what a liveness probe asks (Kubernetes), so a database outage makes
        # a replica unready, never restarted.
        await self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        self._server.add_insecure_port(self.address)
        self._sweeping = asyncio.create_task(self._reads.sweep(), name="request read sweep")
        await self._server.start()
        log.info("gRPC listening on %s (%s)", self.address, ", ".join(self._api_names))

    async def set_serving(self, serving: bool, component: str | None = None) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [component] if component else ["", *self._api_names]:
            await self._health.set(name, status)
        self.serving[component or ""] = serving

    async def watch_readiness(
        self, probe: Callable[[], Awaitable[object]], component: str | None = None
    ) -> None:
        """Probe forever; SERVING while the probe passes, NOT_SERVING while it raises.

        Without ``component`` the probe decides the overall and API statuses.
        Transitions are logged once, not on every probe. Until the probe first
        passes it runs without this watcher's timeout: it may be opening the pool
        and applying migrations (bounded by the store's own timeouts), which a
        probe-length timeout would cancel again and again on a slow database.
        """
        every = self._settings.health_probe_seconds
        label = component or "dependencies"
        first = True
        passed_once = False
        while True:
            try:
                with untraced():  # a probe is no request: no trace every few seconds
                    await asyncio.wait_for(
                        probe(), timeout=max(every, 1.0) if passed_once else None
                    )
                healthy, reason, passed_once = True, "", True
            except Exception as exc:  # any failure means "not ready"
                healthy, reason = False, str(exc) or type(exc).__name__
            if first or healthy != self.serving.get(component or ""):
                if healthy:
                    log.info("%s ready: SERVING", label)
                else:  # expected while starting; a warning once it was ready
                    log.log(
                        logging.INFO if first else logging.WARNING,
                        "%s not ready (%s): NOT_SERVING",
                        label,
                        reason,
                    )
                first = False
                await self.set_serving(healthy, component)
            await asyncio.sleep(every)

    async def stop(self) -> None:
        """Scale-in without errors: NOT_SERVING first, and for ``drain_seconds`` the
        server goes on serving while Envoy's health check notices and stops sending;
        then stop accepting RPCs and let in-flight ones finish within the grace
        period (a call that still arrives is refused before it starts, which Envoy
        retries on another replica)."""
        await self._health.enter_graceful_shutdown()
        if self._settings.drain_seconds:
            log.info("NOT_SERVING: draining for %gs", self._settings.drain_seconds)
            await asyncio.sleep(self._settings.drain_seconds)
        await self._server.stop(self._settings.shutdown_grace_seconds)
        if self._sweeping is not None:
            self._sweeping.cancel()
        log.info("gRPC server stopped")
