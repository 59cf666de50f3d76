"""CPU time from /proc: the one way every section of the bench reads it.

- ``process_cpu_seconds(pid)``: what one running process used so far (utime + stime);
- ``cpu_seconds(groups, command)``: every live process in some process groups (each
  managed process leads its own) or of one command name, with their waited-for
  children's time (cutime + cstime);
- ``machine_cpu()``: busy and total clock ticks of all cores (/proc/stat);
- ``ProcessCpu``: named process groups' CPU over a span;
- ``BackendCpu``: the CPU of the PostgreSQL backends serving some databases over a
  span, by the client process each serves.
"""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: str) -> list[str] | None:
    """/proc/<pid>/stat as fields: [comm, state, ppid, pgrp, …]; None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces: split after its closing parenthesis.
    name = text[text.index("(") + 1 : text.rindex(")")]
    return [name, *text[text.rindex(")") + 2 :].split()]


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU a running process has used so far (utime and stime); NaN
    when it is not running."""
    fields = proc_stat(str(pid)) if pid is not None else None
    if fields is None:
        return float("nan")
    return (int(fields[12]) + int(fields[13])) / TICKS


def cpu_seconds(groups: set[int] | None = None, command: str | None = None) -> float:
    """CPU time of every live process in one of the process ``groups`` (each
    managed process leads its own), or named ``command``, and of their waited-for
    children."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or (fields := proc_stat(pid)) is None:
            continue
        # After the name: state, ppid, pgrp, … utime is field 14, stime 15, then
        # cutime and cstime (1-based): the time of children that exited and were
        # waited for counts too (PostgreSQL's postmaster collects that of every
        # closed connection's backend, pgbench's included).
        in_group = groups is not None and int(fields[3]) in groups
        if in_group or (command is not None and fields[0] == command):
            total += sum(int(value) for value in fields[12:16])
    return total / TICKS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores so far (/proc/stat's first line)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


# The bench's own PostgreSQL connections say so (application_name, bench/sinks.py),
# and are left out of the CPU.
BENCH_APPLICATION = "polyglot-bench"
SAMPLE_SECONDS = 0.1  # how often BackendCpu looks for backends (and bench/sinks.py polls)


class BackendCpu:
    """CPU of the PostgreSQL backends serving some databases over a span, by the
    process each backend serves (its client socket's owner), else ``other``.

    Backends come and go (pgbench's clients, pools opening), so the backends of the
    databases are looked up every ``SAMPLE_SECONDS`` and each one's CPU kept as last
    seen; one that exits between two samples loses at most that much of its time.
    """

    _BACKENDS = (
        "SELECT pid, client_port FROM pg_stat_activity WHERE datname = ANY($1::text[])"
        " AND application_name <> $2"
    )

    def __init__(
        self,
        conn: asyncpg.Connection,
        databases: list[str],
        clients: dict[str, int],
        other: str,
    ) -> None:
        self._conn = conn
        self._databases = [urlsplit(url).path.lstrip("/") for url in databases]
        self._clients = clients  # label → pid of a client process
        self._other = other
        self._owner: dict[int, str] = {}  # backend pid → label
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}

    async def _sample(self) -> None:
        for row in await self._conn.fetch(self._BACKENDS, self._databases, BENCH_APPLICATION):
            pid = row["pid"]
            seconds = process_cpu_seconds(pid)
            if seconds == seconds:  # not NaN: still running
                self._last[pid] = seconds
                if pid not in self._owner:
                    self._owner[pid] = self._owner_of(row["client_port"])

    def _owner_of(self, port: int | None) -> str:
        """The client process whose socket has local port ``port`` (/proc)."""
        if not port or port < 0:
            return self._other  # autovacuum and other server-side workers
        sockets = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        sockets.add(f"socket:[{fields[9]}]")
        for label, pid in self._clients.items():
            with contextlib.suppress(OSError):
                fds = Path(f"/proc/{pid}/fd")
                if any(os.readlink(fd) in sockets for fd in fds.iterdir()):
                    return label
        return self._other

    @contextlib.asynccontextmanager
    async def measuring(self) -> AsyncIterator["BackendCpu"]:
        self._last = {}
        await self._sample()
        self._start = dict(self._last)

        async def sample() -> None:
            while True:
                await asyncio.sleep(SAMPLE_SECONDS)
                await self._sample()

        sampler = asyncio.create_task(sample())
        try:
            yield self
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await self._sample()

    def seconds(self) -> dict[str, float]:
        """CPU seconds per label since ``measuring`` began."""
        used = dict.fromkeys([*self._clients, self._other], 0.0)
        for pid, seconds in self._last.items():
            used[self._owner[pid]] += seconds - self._start.get(pid, 0.0)
        return used


@dataclass
class ProcessCpu:
    """CPU seconds of named processes (each leads its own process group) over a span."""

    groups: dict[str, int]  # label → process group
    commands: dict[str, str] = field(default_factory=dict)  # label → command name (shared)
    _start: dict[str, float] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        used = {label: cpu_seconds({group}) for label, group in self.groups.items()}
        return used | {label: cpu_seconds(command=c) for label, c in self.commands.items()}

    @contextlib.contextmanager
    def measuring(self) -> Iterator["ProcessCpu"]:
        self._start = self.read()
        yield self

    def seconds(self) -> dict[str, float]:
        return {label: now - self._start[label] for label, now in self.read().items()}
