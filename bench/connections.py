"""The bench's PostgreSQL connections: room for a row, and how many it held.

PostgreSQL's default ``max_connections`` is 100 and the hot section runs pgbench
with 96 clients, so everything else the bench holds during that row has to fit
in 4: this watcher (one connection, also used for the section's bookkeeping),
the outbox relay (its LISTEN connection and the one it claims rows on), and the
API's pool, which closes idle connections (``DB_POOL_IDLE_SECONDS``, see
``bench.run.BENCH_SERVICE_ENV``). The FastAPI baseline runs only during its own
rows, and notify_svc only in the pipeline section.

The watcher samples ``pg_stat_activity`` on a thread of its own while a row runs,
so the table can show the peak next to the row: the proof that the row would
have fit on a default server.
"""

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg

T = TypeVar("T")

DEFAULT_MAX_CONNECTIONS = 100  # PostgreSQL's default, what CI and most users have
# Besides pgbench's clients, at most this many connections are open for the bench
# during a pgbench row: the watcher and the relay's two (module docstring). The
# API's pool is idle then and closes what it held (a health probe may briefly open
# one: the sampled peak shows whether that ever mattered).
HARNESS_CONNECTIONS = 3
SAMPLE_SECONDS = 0.02
_OURS = (
    "SELECT count(*) FILTER (WHERE datname = ANY($1::text[])) AS ours,"
    " count(*) FILTER (WHERE backend_type = 'client backend') AS everyone,"
    " current_setting('max_connections')::int AS max_connections"
    " FROM pg_stat_activity"
)


class NoRoom(SystemExit):
    """The server cannot hold a row's connections: a message, not a traceback."""


@dataclass
class Peak:
    ours: int = 0  # the bench's connections (its databases), the most seen at once
    everyone: int = 0  # every client connection on the server (others' too)
    samples: int = 0


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
        while True:
            now = self.counts()
            free = self.max_connections() - now.everyone
            if free >= clients or time.monotonic() > deadline:
                return free
            time.sleep(0.2)

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
