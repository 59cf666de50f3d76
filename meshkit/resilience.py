"""Waiting out outages of a dependency: tenacity, exponential backoff with jitter.

One rule for every loop that waits for RabbitMQ, PostgreSQL, MongoDB or the mail
server: 0.1 s, 0.2 s, 0.4 s, … capped (5 s by default), each wait plus a random
share of up to the first one, so replicas that lost the same dependency do not
all come back at the same instant. No attempt limit: a background part waits as long as
the outage lasts; it stops when its service shuts down (the caller cancels it).
"""

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from meshkit.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


def _log_retry(what: str, logger: logging.Logger) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning("%s: %s; retrying in %.1fs", what, exc, delay)

    return before_sleep


def retrying(
    what: str,
    *,
    on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    first: float = 0.1,
    cap: float = 5.0,
    logger: logging.Logger = log,
) -> AsyncRetrying:
    """Retry while an attempt raises ``on``, forever, logging each wait:
    ``async for attempt in retrying(...): with attempt: ...``. Anything else than
    ``on`` propagates at once."""
    return AsyncRetrying(
        retry=retry_if_exception_type(on),
        wait=wait_exponential_jitter(multiplier=first, max=cap, jitter=first),
        before_sleep=_log_retry(what, logger),
        reraise=True,
    )


async def retry(
    operation: Callable[[], Awaitable[T]],
    what: str,
    *,
    on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    first: float = 0.1,
    logger: logging.Logger = log,
) -> T:
    """``await operation()`` until it stops raising ``on`` (see ``retrying``).

    The first attempt runs on its own: every consumed message goes through here,
    and tenacity's machinery for an attempt that succeeds cost about 4 % of a
    consumer's CPU (bench/findings.md). Its failure is handed to tenacity as
    tenacity's own first attempt, so the waits and the log lines stay the same.
    """
    try:
        return await operation()
    except on as exc:
        failed: BaseException | None = exc
    async for attempt in retrying(what, on=on, first=first, logger=logger):
        with attempt:
            if failed is not None:
                first_failure, failed = failed, None
                raise first_failure
            return await operation()
    raise AssertionError("unreachable: retrying never gives up")


async def retry_while_unavailable(operation: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run ``operation`` until it stops raising ``Unavailable``.

    For event handlers: a database or mail server outage must delay a message,
    not burn its delivery attempts and send it to the dead-letter queue. Any other
    error propagates (and, for a message, leads to redelivery and eventually the DLQ).
    """
    return await retry(operation, what, on=Unavailable)
