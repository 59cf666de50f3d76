import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], *, within: float = 30.0, what: str = "") -> Any:
    """Await ``check()`` (sync or async) until it returns something truthy; return it.

    Conditions, not sleeps: the test moves on as soon as the system got there, and
    fails with ``what`` after ``within`` seconds if it never does.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within:.0f}s: {what or check}")
        await asyncio.sleep(0.05)
