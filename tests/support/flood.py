"""An attacker that holds many idle connections from one loopback address.

Linux loopback answers all of 127/8, so the attacker binds 127.0.0.2 and an honest
client 127.0.0.3: two clients that Envoy tells apart by address. The attacker runs
in a process of its own (it competes with the honest client for Envoy and the
machine, not for the test's interpreter) and keeps ``count`` connections open,
opening a new one as soon as Envoy closes one, until told to stop.
"""

import asyncio
import multiprocessing
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

ATTACKER = "127.0.0.2"
HONEST = "127.0.0.3"
# Linux: pick the source port at connect(), per destination, not at bind(): tens of
# thousands of connections from one address to one port would exhaust bind()'s pick.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def raise_open_files(needed: int) -> None:
    """This process's soft limit on open files up to ``needed`` (within the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(
            f"{needed} open files are needed, the hard limit is {hard}: raise it (ulimit -Hn)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@dataclass(frozen=True)
class Counters:
    """Shared with the attacker's process: connections open now, opened in all."""

    open: Any = field(default_factory=lambda: multiprocessing.Value("l", 0))
    opened: Any = field(default_factory=lambda: multiprocessing.Value("l", 0))


async def _hold_one(port: int, send: bytes, stop: Any, counters: Counters) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((ATTACKER, 0))
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError:
            sock.close()
            await asyncio.sleep(0.05)
            continue
        with counters.open.get_lock():
            counters.open.value += 1
        with counters.opened.get_lock():
            counters.opened.value += 1
        with suppress(OSError):
            if send:
                await loop.sock_sendall(sock, send)
            while await loop.sock_recv(sock, 4096):
                pass  # until Envoy closes it
        with counters.open.get_lock():
            counters.open.value -= 1
        sock.close()


def hold_connections(port: int, count: int, send: bytes, stop: Any, counters: Counters) -> None:
    """The attacker's process: ``count`` connections to ``port``, each sending
    ``send`` (nothing: a silent connection) and then nothing more, reopened when
    closed, until ``stop`` is set."""
    raise_open_files(count + 256)

    async def main() -> None:
        tasks = [asyncio.create_task(_hold_one(port, send, stop, counters)) for _ in range(count)]
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


@contextmanager
def idle_flood(port: int, count: int, send: bytes = b"") -> Iterator[Counters]:
    """``count`` idle connections held from ATTACKER to ``port`` while inside."""
    stop, counters = multiprocessing.Event(), Counters()
    attacker = multiprocessing.Process(
        target=hold_connections, args=(port, count, send, stop, counters), daemon=True
    )
    attacker.start()
    try:
        yield counters
    finally:
        stop.set()
        attacker.join(30)
        if attacker.is_alive():
            attacker.kill()
