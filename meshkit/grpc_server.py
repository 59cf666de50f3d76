"""The gRPC server every service runs: its APIs, health and reflection.

Servicers are the ``*ServiceBase`` classes betterproto generates (grpclib style);
we serve them with grpcio's asyncio server by registering generic handlers whose
(de)serializers are betterproto's own. Domain errors become gRPC status codes here,
and nowhere else.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

import betterproto
import grpc
from betterproto.casing import snake_case
from betterproto.grpc.grpclib_server import ServiceBase
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpclib.const import Cardinality

from meshkit import errors
from meshkit.identity import caller_subject, subject_from_metadata
from meshkit.reflection import mesh_reflection
from meshkit.settings import ServiceSettings

log = logging.getLogger(__name__)
# grpc.health.v1 name of the process itself (see GrpcServer.start).
LIVENESS = "liveness"

STATUS_OF_ERROR: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

Unary = Callable[[betterproto.Message], Awaitable[betterproto.Message]]


def status_of(error: errors.ServiceError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_OF_ERROR:
            return STATUS_OF_ERROR[kind]
    return grpc.StatusCode.INTERNAL


def _unary_handler(path: str, call: Unary, request_type: type) -> grpc.RpcMethodHandler:
    async def handle(request: betterproto.Message, context: grpc.aio.ServicerContext) -> object:
        caller_subject.set(subject_from_metadata(context.invocation_metadata()))
        try:
            return await call(request)
        except errors.ServiceError as error:
            await context.abort(status_of(error), str(error))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            # The caller gets no traceback; the log keeps it.
            log.exception("unexpected failure in %s", path)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the service log)")

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=request_type.FromString, response_serializer=bytes
    )


def api_handlers(servicer: ServiceBase) -> list[grpc.GenericRpcHandler]:
    """grpcio handlers for the RPCs of a betterproto servicer, grouped by service."""
    methods: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, rpc in servicer.__mapping__().items():
        _, service, method = path.split("/")
        if rpc.cardinality is not Cardinality.UNARY_UNARY:
            raise NotImplementedError(f"{path}: only unary RPCs are served")
        call = getattr(servicer, snake_case(method))
        methods.setdefault(service, {})[method] = _unary_handler(path, call, rpc.request_type)
    return [grpc.method_handlers_generic_handler(name, m) for name, m in methods.items()]


class GrpcServer:
    """A grpc.aio server with our APIs, grpc.health.v1 and server reflection (whole mesh).

    Health starts NOT_SERVING. ``watch_readiness`` probes dependencies and sets the
    overall status ("") and every API's; a background component (the outbox
    relay, an event consumer) reports under its own name, so a broker outage is
    visible without taking the API out of Envoy's rotation.
    """

    def __init__(self, settings: ServiceSettings, servicers: Iterable[ServiceBase]) -> None:
        self._settings = settings
        # SO_REUSEPORT only for several workers: a second mesh on a taken port
        # should fail loudly, not share it.
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", int(settings.workers > 1))])
        self._health = health.aio.HealthServicer()
        self._api_names: list[str] = []
        for servicer in servicers:
            for handler in api_handlers(servicer):
                self._api_names.append(handler.service_name())
                self._server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(mesh_reflection(), self._server)
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
                await asyncio.wait_for(probe(), timeout=max(every, 1.0) if passed_once else None)
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
        """Stop accepting RPCs, let in-flight ones finish within the grace period."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._settings.shutdown_grace_seconds)
        log.info("gRPC server stopped")
