"""The shared service lifecycle on a real gRPC server and a real RabbitMQ."""

import asyncio
import subprocess
import sys
import uuid

import aio_pika
import pytest
from faststream.rabbit import RabbitQueue, RabbitRouter

from devtools.processes import grpc_health
from devtools.sandbox import free_port
from meshkit.broker import EventConsumer, rabbit_broker
from meshkit.grpc_server import GrpcServer
from meshkit.lifecycle import ComponentFailed, serve_until_stopped
from meshkit.settings import ServiceSettings
from tests.support.waiting import eventually

FAILING_SERVICE = """
import asyncio, logging
from devtools.processes import grpc_health
from devtools.sandbox import free_port
from meshkit.lifecycle import run_until_signalled, serve_until_stopped
from meshkit.settings import ServiceSettings
from meshkit.grpc_server import GrpcServer
from tests.integration.test_lifecycle import BrokenComponent, no_dependencies

logging.basicConfig(level=logging.INFO)
settings = ServiceSettings(grpc_port=free_port(), health_probe_seconds=0.1)
run_until_signalled(
    lambda stop: serve_until_stopped(
        stop, GrpcServer(settings, []), ready=no_dependencies, components=[BrokenComponent()]
    )
)
"""


def server(drain_seconds: float = 0) -> GrpcServer:
    settings = ServiceSettings(
        grpc_port=free_port(), health_probe_seconds=0.1, drain_seconds=drain_seconds
    )
    return GrpcServer(settings, [])


async def no_dependencies() -> None:
    return None


class BrokenComponent:
    health_name = "test.broken"

    def __init__(self) -> None:
        self.stopped = False

    async def run(self) -> None:
        raise RuntimeError("lost its connection for good")

    async def check(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True


async def test_a_failed_component_stops_the_service_with_exit_status_1(caplog):
    component = BrokenComponent()
    closed = asyncio.Event()

    async def close() -> None:
        closed.set()

    with pytest.raises(ComponentFailed) as failure:
        await asyncio.wait_for(
            serve_until_stopped(
                asyncio.Event(),  # nobody sends a signal: the failure alone stops it
                server(),
                ready=no_dependencies,
                components=[component],
                close=[close],
            ),
            timeout=30,
        )
    assert str(failure.value) == "stopped because test.broken failed (see above)"
    assert component.stopped and closed.is_set()
    assert any(
        "test.broken failed, shutting down" in r.getMessage() and r.levelname == "ERROR"
        for r in caplog.records
    )


def test_the_process_of_a_service_whose_component_failed_exits_with_status_1():
    done = subprocess.run(
        [sys.executable, "-c", FAILING_SERVICE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "test.broken failed, shutting down" in done.stderr
    assert done.stderr.splitlines()[-1] == "stopped because test.broken failed (see above)"
    assert "Traceback" not in done.stderr


async def test_an_event_consumer_keeps_trying_until_it_can_consume(amqp_url, caplog):
    """A broker that refuses the subscription (here: a queue declared with other
    arguments) must not leave a consumer that looks healthy and consumes nothing."""
    queue = f"lifecycle-test-{uuid.uuid4().hex[:8]}"
    received = asyncio.Event()
    router = RabbitRouter()

    @router.subscriber(RabbitQueue(queue, durable=True, arguments={"x-queue-type": "quorum"}))
    async def handle(body: str) -> None:
        received.set()

    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    conflicting = await channel.declare_queue(queue, durable=True)  # classic, not quorum
    broker = rabbit_broker(amqp_url)
    broker.include_router(router)
    grpc = server()
    stop = asyncio.Event()
    service = asyncio.create_task(
        serve_until_stopped(
            stop,
            grpc,
            ready=no_dependencies,
            components=[EventConsumer(broker, health_name="test.consumer")],
        )
    )
    try:
        with caplog.at_level("WARNING", logger="meshkit.broker"):
            await eventually(
                lambda: any("could not start consuming" in r.getMessage() for r in caplog.records),
                what="a failed start",
            )
        assert grpc.serving.get("test.consumer") is not True
        assert not service.done()

        await conflicting.delete()
        await eventually(lambda: grpc.serving.get("test.consumer"), what="SERVING")
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), routing_key=queue)
        await asyncio.wait_for(received.wait(), timeout=30)
    finally:
        stop.set()
        await service
        await connection.close()


async def test_on_stop_health_turns_not_serving_while_the_server_still_answers():
    # Scale-in: Envoy's health check must see NOT_SERVING before the listener
    # closes, so it stops sending calls first (DRAIN_SECONDS).
    draining = server(drain_seconds=1.5)
    await draining.start()
    await draining.set_serving(True)
    assert await asyncio.to_thread(grpc_health, draining.address) == "SERVING"
    stopping = asyncio.create_task(draining.stop())

    async def not_serving() -> bool:
        return await asyncio.to_thread(grpc_health, draining.address) == "NOT_SERVING"

    await eventually(not_serving, what="NOT_SERVING answered during the drain")
    assert not stopping.done()
    await stopping
    assert await asyncio.to_thread(grpc_health, draining.address) is None  # closed
