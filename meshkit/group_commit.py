"""Group commit: what callers ask for while a write is in flight goes out together next.

A consumer handles up to its prefetch of messages at once; each handler asking the
database on its own costs a round trip (and the server's work for a statement) per
message. ``GroupCommit`` takes each caller's item, writes whatever is waiting in one
call of ``write_many`` (the first caller's at once: no timer, a lone message waits
no longer than before), and while that write is in flight the next callers gather
for the following one. Each caller still gets its own answer, so a message is
acknowledged only after its own outcome is known:

- ``write_many(items)`` returns one outcome per item, in order: the item's result,
  or the exception its caller gets (an item the database refused while the others
  of the batch were written: an unordered MongoDB insert_many);
- when it raises, nothing of that batch may count as written (the writer's
  statement is one transaction, or idempotent). With ``isolate``, a failure it
  accepts (not an outage: a document the database refuses, say) makes each item
  of a batch of several be written alone, so that only the items that fail alone
  fail: one poison message would otherwise fail its whole batch, again at each
  redelivery (likely batched together again), until its honest neighbours too
  reached their delivery limit and the DLQ. Other failures (an outage) are every
  caller's answer, and each handler retries as it would have alone;
- a caller that goes away (cancelled) drops only its own answer; the batch it
  joined is written regardless, as its item alone would have been;
- a writer that ends without answering its callers (cancelled: the process is
  stopping, or ``close`` gave up waiting for it) fails each with ``Unavailable``,
  so none waits forever and each retries (a retry is safe: see above).

The write runs in a task of its own, in the first caller's trace (its spans join
that caller's trace, meshkit.telemetry); an item written alone, in its own caller's.
``close`` lets the write in flight finish (bounded) so its callers learn their outcome.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeAlias, TypeVar

from meshkit.errors import Unavailable
from meshkit.telemetry import in_trace_of, trace_headers

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# An item, its caller's answer, the caller's trace context.
_Waiting: TypeAlias = tuple[T, asyncio.Future[R], dict[str, str]]


def not_an_outage(exc: Exception) -> bool:
    """The usual ``isolate``: a failure that is not ``Unavailable`` may be one
    item's doing. An outage is every item's: writing them one by one would only
    make each caller wait it out in turn."""
    return not isinstance(exc, Unavailable)


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write_many: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        max_batch: int,
        isolate: Callable[[Exception], bool] | None = None,
    ) -> None:
        self._write_many = write_many
        self._max_batch = max_batch
        self._isolate = isolate
        self._waiting: list[_Waiting[T, R]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """``item``'s outcome, once the batch it joined was written."""
        outcome: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, outcome, trace_headers()))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        return await outcome

    async def _write_waiting(self) -> None:
        batch: list[_Waiting[T, R]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                self._waiting = self._waiting[self._max_batch :]
                await self._write(batch)
        finally:
            # Normally every answer is given by now. If the writer was stopped
            # (cancelled) on its way, whoever still waits learns it instead of
            # waiting forever; their items may or may not have been written.
            unanswered, self._waiting = [*batch, *self._waiting], []
            _fail(unanswered, Unavailable("the write was stopped before it finished; try again"))

    async def _write(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            with in_trace_of(batch[0][2]):
                outcomes = await self._write_many([item for item, _, _ in batch])
            answers = list(zip(batch, outcomes, strict=True))
        except Exception as exc:
            if len(batch) > 1 and self._isolate is not None and self._isolate(exc):
                log.warning(
                    "a batch of %d failed together in %s (%r); writing each item alone",
                    len(batch),
                    getattr(self._write_many, "__qualname__", "write_many"),
                    exc,
                )
                await self._write_each_alone(batch, self._isolate)
            else:  # every caller of this batch learns it failed
                _fail(batch, exc)
            return
        for (_, future, _), outcome in answers:
            _answer(future, outcome)

    async def _write_each_alone(
        self, batch: list[_Waiting[T, R]], isolate: Callable[[Exception], bool]
    ) -> None:
        """One write per item, one after the other (as many connections as one
        batch: the rest of the consumer's work keeps its share of the pool)."""
        for index, (item, future, trace) in enumerate(batch):
            try:
                with in_trace_of(trace):
                    [outcome] = await self._write_many([item])
            except Exception as exc:
                if not isolate(exc):
                    # An outage meanwhile: the items not yet written would only
                    # wait it out one by one. It is their answer, as their batch's.
                    _fail(batch[index:], exc)
                    return
                outcome = exc
            _answer(future, outcome)

    async def close(self, within: float, what: str) -> None:
        """Wait up to ``within`` seconds for the write in flight (``what``: for the log);
        past that, stop it, so its callers (and those waiting behind) learn it
        failed instead of the write going on against a closed client."""
        writer = self._writer
        if writer is None:
            return
        _, pending = await asyncio.wait({writer}, timeout=within)
        if pending:
            log.warning("closing with %s still in flight", what)
            writer.cancel()
            await asyncio.wait({writer}, timeout=within)


def _answer(future: asyncio.Future[R], outcome: R | Exception) -> None:
    if future.done():  # its caller went away
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _fail(batch: Sequence[_Waiting[T, R]], exc: BaseException) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(exc)
