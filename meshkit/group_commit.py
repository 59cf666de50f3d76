"""Group commit: what callers ask for while a write is in flight goes out together next.

A consumer handles up to its prefetch of messages at once; each handler asking the
database on its own costs a round trip (and the server's work for a statement) per
message. ``GroupCommit`` takes each caller's item, writes whatever is waiting in one
call of ``write_many`` (the first caller's at once: no timer, a lone message waits
no longer than before), and while that write is in flight the next callers gather
for the following one. Each caller still gets its own answer, so a message is
acknowledged only after its own outcome is known:

- ``write_many(items)`` returns one outcome per item, in order;
- when it raises, nothing of that batch may count as written (the writer's
  statement is one transaction, or idempotent): every caller of the batch gets
  the exception and its handler retries as it would have alone;
- a caller that goes away (cancelled) drops only its own answer; the batch it
  joined is written regardless, as its item alone would have been.

The write runs in a task of its own, in the first caller's trace (its spans join
that caller's trace, meshkit.telemetry). ``close`` lets the write in flight finish
(bounded) so its callers learn their outcome.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from meshkit.telemetry import in_trace_of, trace_headers

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self, write_many: Callable[[list[T]], Awaitable[list[R]]], *, max_batch: int
    ) -> None:
        self._write_many = write_many
        self._max_batch = max_batch
        # item, its caller's answer, the caller's trace context
        self._waiting: list[tuple[T, asyncio.Future[R], dict[str, str]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """``item``'s outcome, once the batch it joined was written."""
        outcome: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, outcome, trace_headers()))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        return await outcome

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            self._waiting = self._waiting[self._max_batch :]
            try:
                with in_trace_of(batch[0][2]):
                    outcomes = await self._write_many([item for item, _, _ in batch])
            except Exception as exc:  # every caller of this batch learns it failed
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)

    async def close(self, within: float, what: str) -> None:
        """Wait up to ``within`` seconds for the write in flight (``what``: for the log)."""
        if self._writer is None:
            return
        _, pending = await asyncio.wait({self._writer}, timeout=within)
        if pending:  # closing the client fails the batch: its callers see an error
            log.warning("closing with %s still in flight", what)
