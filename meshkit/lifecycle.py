"""Process lifecycle: run a service until SIGTERM/SIGINT, then shut it down gracefully."""

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from meshkit.grpc_server import GrpcServer
from meshkit.logs import configure_logging
from meshkit.settings import SettingsT, load_settings

log = logging.getLogger(__name__)


def run_until_signalled(
    serve: Callable[[asyncio.Event], Awaitable[None]], *, event_loop: str = "asyncio"
) -> None:
    """Run ``serve(stop)``; ``stop`` is set on SIGTERM or SIGINT.

    ``serve`` owns its graceful shutdown: it waits on ``stop``, then drains and
    closes what it opened. A second signal while draining is ignored on purpose
    (the launcher escalates to SIGKILL if draining takes too long).
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _request_stop, stop, signum)
        await serve(stop)

    if event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(main())
    except ComponentFailed as exc:  # the cause is logged already: no traceback
        raise SystemExit(f"{exc}") from None


def run_workers(workers: int, run: Callable[[], None]) -> None:
    """Run ``run`` in ``workers`` forked processes sharing the gRPC port.

    A Python process serves gRPC on one core; several workers bound to the same
    port (SO_REUSEPORT, the kernel spreads connections) use more. The parent only
    forwards SIGTERM/SIGINT and waits; if a worker dies, it stops the others and
    exits with that worker's status, so whatever supervises the service sees it.
    Fork happens before any event loop, thread or gRPC object exists.
    """
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                run()
                code = 0
            except SystemExit as exc:  # a deliberate exit, reason already logged
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker failed")
                code = 1
            os._exit(code)
        children.append(pid)

    def forward(signum: int, _: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    status = 0
    while children:
        pid, wait_status = os.wait()
        children.remove(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 and status == 0:
            status = code if code > 0 else 128 - code
            log.error("worker %d exited with %d: stopping the others", pid, code)
            forward(signal.SIGTERM, None)
    sys.exit(status)


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    if not stop.is_set():
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()


class Component(Protocol):
    """A background part of a service (outbox relay, event consumer)."""

    health_name: str  # reported in grpc.health.v1 under this name

    async def run(self) -> None:
        """Start working; may return once started or run until ``stop``."""

    async def check(self) -> None:
        """Health probe: raise while the component cannot do its work."""

    async def stop(self) -> None:
        """Finish the work in hand and stop (called after the gRPC server stopped)."""


async def serve_until_stopped(
    stop: asyncio.Event,
    server: GrpcServer,
    *,
    ready: Callable[[], Awaitable[object]],
    components: Sequence[Component] = (),
    close: Sequence[Callable[[], Awaitable[object]]] = (),
) -> None:
    """The life of every service, from start to a graceful exit.

    ``ready`` probes what the APIs need (their database): it decides the overall
    health. Each component reports under its own health name, so (say) a broker
    outage shows without taking the API out of Envoy's rotation. On ``stop``:
    the gRPC server drains, components finish their work, then ``close`` runs.

    Components wait out outages themselves; one that fails anyway shuts the
    service down and exits non-zero (ComponentFailed), so its supervisor restarts
    it instead of the service running on without, say, consuming its events.
    """
    failed: list[str] = []

    async def probe() -> object:
        try:
            return await ready()
        except DependencyIncompatible as exc:  # waiting cannot fix it: stop, exit 1
            if not stop.is_set():
                log.error("%s: shutting down", exc)
                failed.append("the dependency check")
                stop.set()
            raise

    await server.start()
    watchers = [asyncio.create_task(server.watch_readiness(probe))]
    watchers += [
        asyncio.create_task(server.watch_readiness(c.check, c.health_name)) for c in components
    ]
    running = [asyncio.create_task(c.run(), name=c.health_name) for c in components]
    for task in running:
        task.add_done_callback(lambda task: _stop_if_failed(task, stop, failed))
    await stop.wait()

    await server.stop()
    for component, task in zip(components, running, strict=True):
        await component.stop()
        task.cancel()
    for task in [*running, *watchers]:
        task.cancel()
    tasks = [*running, *watchers]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception) and task.get_name() not in failed:
            log.error("background task %s failed: %r", task.get_name(), result)
    for release in close:
        await release()
    if failed:
        raise ComponentFailed(f"stopped because {', '.join(failed)} failed (see above)")


class DependencyIncompatible(RuntimeError):
    """A dependency answers but is in a state no wait fixes (say, a database schema
    newer than the code): the readiness probe raises it and the service stops with
    exit status 1 instead of staying NOT_SERVING for ever."""


class ComponentFailed(RuntimeError):
    """A component failed for good; run_until_signalled turns it into exit status 1."""


def _stop_if_failed(task: asyncio.Task[Any], stop: asyncio.Event, failed: list[str]) -> None:
    if task.cancelled() or task.exception() is None or stop.is_set():
        return
    log.error("%s failed, shutting down: %r", task.get_name(), task.exception())
    failed.append(task.get_name())
    stop.set()


def service_main(
    name: str,
    settings_type: type[SettingsT],
    serve: Callable[[SettingsT, asyncio.Event], Awaitable[None]],
) -> None:
    """``python -m <name>``: settings, logging, then serve until signalled."""
    if sys.argv[1:]:
        sys.exit(
            f"usage: python -m {name}  (its database's migrations, if it has one:"
            f" python -m {name}.migrate)"
        )
    settings = load_settings(settings_type)
    configure_logging(name, settings.log_level, settings.log_format)

    def run() -> None:
        run_until_signalled(lambda stop: serve(settings, stop), event_loop=settings.event_loop)

    if settings.workers == 1:
        run()
    else:
        run_workers(settings.workers, run)
