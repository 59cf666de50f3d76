"""Waiting out outages of a dependency: capped exponential backoff."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from meshkit.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Backoff:
    """0.1 s, 0.2 s, 0.4 s, … up to ``cap``; ``reset()`` after a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self._first, self._cap = first, cap
        self.delay = first

    def reset(self) -> None:
        self.delay = self._first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self._cap)


async def retry_while_unavailable(operation: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run ``operation`` until it stops raising ``Unavailable``.

    For event handlers: a database or mail server outage must delay a message,
    not burn its delivery attempts and send it to the dead-letter queue. Any other
    error propagates (and, for a message, leads to redelivery and eventually the DLQ).
    """
    backoff = Backoff()
    while True:
        try:
            return await operation()
        except Unavailable as exc:
            log.warning("%s: %s; retrying in %.1fs", what, exc, backoff.delay)
            await backoff.wait()
