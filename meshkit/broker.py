"""Broker plumbing (FastStream on RabbitMQ): connect, declare, publish, subscribe.

What travels is meshkit/events.py (the contracts), on which exchanges and queues
meshkit/broker_topology.py; this module is how a service gets it there and back,
the same way for every service:

- ``rabbit_broker``: publisher confirms, unroutable messages raise;
- ``connect_when_reachable``: connect (waiting out an outage), declare the topology;
- ``subscribe``: a subscriber's queue, DLQ, acknowledgement and retry rule,
  declared once for every service;
- ``EventConsumer``: a service's subscribers as a lifecycle component.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitRouter

from meshkit.broker_topology import (
    EXCHANGE,
    SUBSCRIPTIONS,
    Subscription,
    declare_topology,
    subscriber_queue,
)
from meshkit.metrics import broker_metrics
from meshkit.resilience import retry, retry_while_unavailable

log = logging.getLogger(__name__)
E = TypeVar("E")


def rabbit_broker(
    url: str,
    *,
    prefetch: int | None = None,
    graceful_timeout: float = 10.0,
    middlewares: Sequence[Any] = (),
) -> RabbitBroker:
    """``middlewares``: FastStream broker middlewares besides the metrics' (e.g.
    meshkit.telemetry's consumer spans)."""
    return RabbitBroker(
        url,
        # Publisher confirms; an unroutable mandatory message raises instead of
        # vanishing, so the outbox relay retries it.
        default_channel=Channel(prefetch_count=prefetch, on_return_raises=True),
        graceful_timeout=graceful_timeout,
        log_level=logging.DEBUG,  # one line per message is too much at INFO
        middlewares=(broker_metrics(), *middlewares),
    )


async def connect_when_reachable(broker: RabbitBroker, *, what: str) -> None:
    """Connect (waiting out an outage, meshkit.resilience) and declare the topology.

    After the first connection aio-pika's robust connection reconnects by itself
    and re-declares queues and consumers.
    """

    async def connect() -> None:
        await broker.connect()
        await declare_topology(broker)

    # aio-pika raises several types for one outage: retry on any of them.
    await retry(connect, f"{what}: RabbitMQ unreachable", logger=log, first=0.2)
    log.info("%s: connected to RabbitMQ", what)


async def broker_reachable(broker: RabbitBroker) -> None:
    """Health probe: raises while the broker connection is down."""
    if not await broker.ping(timeout=1.0):
        raise ConnectionError("RabbitMQ is unreachable")


# Attempts of handlers in this process that are still running, whether or not a
# message still waits for them (``run_to_its_end``).
_ATTEMPTS: set[asyncio.Task[Any]] = set()


async def run_to_its_end(attempt: Coroutine[Any, Any, None]) -> None:
    """Await ``attempt``, which goes on to its end even if the waiting is cancelled.

    A broker connection that drops cancels the handlers of the messages in hand
    (aiormq cancels a closed channel's consumer tasks). Stopped halfway, a
    handler leaves its work half done: notify_svc once had e-mails accepted by
    the mail server but never marked sent, and sent them again on redelivery.
    So each attempt runs in a task of its own and only the waiting stops; the
    redelivered message then finds the work done (every handler deduplicates by
    event id). ``finish_attempts`` lets them end before the process exits.
    """
    task = asyncio.ensure_future(attempt)
    _ATTEMPTS.add(task)
    task.add_done_callback(_attempt_ended)
    await asyncio.shield(task)


def _attempt_ended(task: asyncio.Task[Any]) -> None:
    _ATTEMPTS.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: whoever still waits has it, no one else needs it


async def finish_attempts(within: float) -> None:
    """Wait up to ``within`` seconds for the handler attempts still running."""
    if not _ATTEMPTS:
        return
    _, unfinished = await asyncio.wait(set(_ATTEMPTS), timeout=within)
    if unfinished:
        log.warning(
            "%d event handler(s) still running at exit: their messages will be redelivered",
            len(unfinished),
        )


def subscribe(
    router: RabbitRouter, service: str, describe: Callable[..., str]
) -> Callable[[Callable[[E], Coroutine[Any, Any, None]]], Callable[..., Awaitable[None]]]:
    """Decorator: make ``handler(event)`` the subscriber of ``service``'s own queue.

    The same rule for every subscriber: its durable quorum queue with a delivery
    limit and DLQ (meshkit/broker_topology.py); acknowledged only after the handler
    returned (AckPolicy.NACK_ON_ERROR: an error → nack and redelivery, past the
    limit the DLQ); ``Unavailable`` (its database, its mail server) is waited
    out inside the handler, so an outage delays messages instead of spending
    their delivery attempts; an attempt once started runs to its end even if
    the broker connection drops (``run_to_its_end``). ``describe(event)`` names
    the event in retry logs. The handler's annotation is the wire type
    FastStream validates bodies into and documents in AsyncAPI.
    """
    subscription: Subscription = SUBSCRIPTIONS[service]

    def register(
        handler: Callable[[E], Coroutine[Any, Any, None]],
    ) -> Callable[..., Awaitable[None]]:
        @functools.wraps(handler)
        async def handle(event: Any) -> None:
            await retry_while_unavailable(
                lambda: run_to_its_end(handler(event)), what=describe(event)
            )

        return router.subscriber(
            subscriber_queue(subscription),
            EXCHANGE,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            title=subscription.title,
            description=subscription.description,
        )(handle)

    return register


class EventConsumer:
    """The subscribers of a service's FastStream broker, as a lifecycle component.

    Stopping waits up to the broker's ``graceful_timeout`` for messages in hand,
    then as long again for handler attempts that outlived their message (a
    broker connection dropped while they ran).
    """

    def __init__(self, broker: RabbitBroker, *, health_name: str) -> None:
        self._broker = broker
        self.health_name = health_name

    async def run(self) -> None:
        async def start() -> None:
            await connect_when_reachable(self._broker, what=self.health_name)
            try:
                await self._broker.start()
            except Exception:  # e.g. the broker went away between connect and consume
                await self._broker.stop()  # drop the half-started state, start afresh
                raise

        await retry(start, f"{self.health_name}: could not start consuming", logger=log, first=0.2)

    async def check(self) -> None:
        """Health probe: raises unless connected and every subscriber is consuming."""
        await broker_reachable(self._broker)
        if not all(subscriber.running for subscriber in self._broker.subscribers):
            raise ConnectionError("not consuming yet")

    async def stop(self) -> None:
        await self._broker.stop()
        await finish_attempts(self._broker.config.graceful_timeout or 0)
