"""Process lifecycle: run a service until SIGTERM/SIGINT, then let it shut down."""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)``; ``stop`` is set on SIGTERM or SIGINT.

    ``serve`` owns its graceful shutdown: it waits on ``stop``, then drains and
    closes what it opened. A second signal while draining is ignored on purpose
    (the launcher escalates to SIGKILL if draining takes too long).
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _request_stop, stop, signum)
        await serve(stop)

    asyncio.run(main())


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    if not stop.is_set():
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()
