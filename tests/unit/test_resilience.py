"""meshkit.resilience.retry: the first attempt alone, then tenacity's waits as before."""

import logging

import pytest

from meshkit import resilience
from meshkit.errors import Unavailable


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = Unavailable) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return "done"


async def test_a_first_attempt_that_succeeds_is_the_answer():
    operation = Flaky(0)
    assert await resilience.retry_while_unavailable(operation, what="x") == "done"
    assert operation.calls == 1


async def test_failures_are_retried_with_one_logged_wait_each(caplog, monkeypatch):
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("asyncio.sleep", no_sleep)
    operation = Flaky(3)
    with caplog.at_level(logging.WARNING):
        assert await resilience.retry_while_unavailable(operation, what="writing x") == "done"
    assert operation.calls == 4  # the first attempt, then three more
    assert len(waits) == 3
    assert waits[0] <= 0.2 < waits[2]  # 0.1 s (+ jitter) first, growing after
    lines = [r.getMessage() for r in caplog.records if "writing x" in r.getMessage()]
    assert lines[0].startswith("writing x: failure 1; retrying in")
    assert len(lines) == 3


async def test_another_error_propagates_at_once():
    operation = Flaky(1, error=ValueError)
    with pytest.raises(ValueError):
        await resilience.retry_while_unavailable(operation, what="x")
    assert operation.calls == 1
