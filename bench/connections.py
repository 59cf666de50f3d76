"""The bench's PostgreSQL connections: room for a row, and how many it held.

PostgreSQL's default ``max_connections`` is 100 and the hot section runs pgbench
with 96 clients, so everything else the bench holds during that row has to fit
in 4 (``HARNESS_CONNECTIONS``): this watcher (one connection, also used for the
section's bookkeeping), the outbox relay (its LISTEN connection and a pool of one,
``RELAY_DB_POOL_SIZE``), and the API's pool, which is idle during a pgbench row
and closes idle connections (``DB_POOL_IDLE_SECONDS``), so it holds at most the
one its health probe opens now and then (bench settings:
``bench.run.BENCH_SERVICE_ENV``). The FastAPI baseline runs only during its own
rows, and notify_svc only in the pipeline section.

The watcher samples ``pg_stat_activity`` on a thread of its own while a row runs,
so the table can show the peak next to the row: the proof that the row would
have fit on a default server.
"""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg

T = TypeVar("T")

DEFAULT_MAX_CONNECTIONS = 100  # PostgreSQL's default, what CI and most users have
# Besides pgbench's clients, at most this many connections are open for the bench
# during a pgbench row: the watcher, the relay's two, the API's health probe's
# (module docstring).
HARNESS_CONNECTIONS = 4
SAMPLE_SECONDS = 0.05
# The bench's connections, everyone's, and what the bench's busy backends are
# waiting for (wait_event; "running" when on CPU or runnable): a coarse profile of
# the database side of a row, e.g. Lock:transactionid (the hot row's lock queue)
# against IO:WALSync (commits) against Client:ClientRead (waiting for the client).
IDLE = "no query running"
_OURS = (
    "SELECT count(*) FILTER (WHERE datname = ANY($1::text[])) AS ours,"
    " count(*) FILTER (WHERE backend_type = 'client backend') AS everyone,"
    " coalesce(array_agg(coalesce(wait_event_type || ':' || wait_event, 'running'))"
    "  FILTER (WHERE datname = ANY($1::text[]) AND state = 'active'"
    "  AND pid <> pg_backend_pid()), '{}') AS waits"
    " FROM pg_stat_activity"
)


class NoRoom(SystemExit):
    """The server cannot hold a row's connections: a message, not a traceback."""


@dataclass
class Peak:
    ours: int = 0  # the bench's connections (its databases), the most seen at once
    everyone: int = 0  # every client connection on the server (others' too)
    samples: int = 0
    waits: Counter[str] = field(default_factory=Counter)  # active backends' wait events

    def top_waits(self, n: int = 4) -> str:
        """The commonest wait events, as shares of the samples' active backends."""
        total = sum(self.waits.values())
        return ", ".join(
            f"{event} {count / total:.0%}" for event, count in self.waits.most_common(n)
        )


class ConnectionWatch:
    """One connection on a thread of its own: samples the bench's connections and
    runs the hot section's bookkeeping queries (``call``)."""

    def __init__(self, db_url: str, database_urls: list[str]) -> None:
        self._databases = [urlsplit(url).path.lstrip("/") for url in database_urls]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.conn: asyncpg.Connection = self.call(lambda: asyncpg.connect(db_url))

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the watcher's loop (where its connection lives)."""
        return asyncio.run_coroutine_threadsafe(_awaited(make), self._loop).result()

    def counts(self) -> Peak:
        row = self.call(lambda: self.conn.fetchrow(_OURS, self._databases))
        return Peak(row["ours"], row["everyone"], 1)

    def max_connections(self) -> int:
        return int(self.call(lambda: self.conn.fetchval("SHOW max_connections")))

    def wait_for_room(self, clients: int, within: float = 15.0) -> int:
        """Wait (polling the server: nothing to await) until ``clients`` more
        connections fit, e.g. while idle pools close theirs; the free slots."""
        deadline = time.monotonic() + within
        limit = self.max_connections()  # fixed while the server runs: read it once
        while True:
            free = limit - self.counts().everyone
            if free >= clients or time.monotonic() > deadline:
                return free
            time.sleep(0.2)

    def settle(self, within: float = 15.0) -> int:
        """Wait (polling) until the bench holds no more than it does while idle:
        what the last row opened (the baseline's pool, connections of the API's
        pool past their idle time, backends of clients that just left) is gone, so
        a row's peak is its own; the bench's connections then."""
        deadline = time.monotonic() + within
        while (ours := self.counts().ours) > HARNESS_CONNECTIONS:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return ours

    @contextmanager
    def sampling(self) -> Iterator[Peak]:
        """Sample while the block runs; the yielded Peak is final after it."""
        peak = Peak()
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                row = await self.conn.fetchrow(_OURS, self._databases)
                peak.ours = max(peak.ours, row["ours"])
                peak.everyone = max(peak.everyone, row["everyone"])
                # No busy backend: the database waited for the bench's clients.
                peak.waits.update(row["waits"] or [IDLE])
                peak.samples += 1
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)

        task = asyncio.run_coroutine_threadsafe(sample(), self._loop)
        try:
            yield peak
        finally:
            self._loop.call_soon_threadsafe(stop.set)
            task.result()

    def close(self) -> None:
        try:
            self.call(lambda: self.conn.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


def check_room(max_connections: int, clients: int) -> None:
    """Exit with a message (not a traceback) when ``clients`` plus the bench's own
    connections cannot fit under the server's ``max_connections`` at all."""
    needed = clients + HARNESS_CONNECTIONS
    if max_connections < needed:
        raise NoRoom(
            f"PostgreSQL's max_connections is {max_connections}: the {clients}-client"
            f" pgbench row needs {clients} connections plus {HARNESS_CONNECTIONS} of the"
            f" bench's own ({needed}). Raise max_connections, or measure fewer clients,"
            f" e.g. python -m bench.run --only hot --hot-clients 1 8 32"
        )
