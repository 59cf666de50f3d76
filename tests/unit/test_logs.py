"""meshkit.logs: one line per event, text or JSON, with the trace ids inside a trace."""

import io
import json
import logging
from collections.abc import Iterator

import pytest

from meshkit.logs import TraceIds, formatter
from meshkit.settings import ServiceSettings
from tests.support.tracing import in_memory_tracing


class Written:
    """A logger wired as configure_logging wires the root one, writing to a buffer."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.addFilter(TraceIds())
        self.use("text")
        self.logger = logging.getLogger("test.meshkit.logs")
        self.logger.propagate, self.logger.level = False, logging.INFO
        self.logger.addHandler(self.handler)
        self.tracer = None  # set by the fixture, with tracing installed

    def use(self, log_format: str) -> None:
        self.handler.setFormatter(formatter("inventory_svc", log_format))

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()


@pytest.fixture
def written() -> Iterator[Written]:
    written = Written()
    with in_memory_tracing() as (provider, _):
        written.tracer = provider.get_tracer("test")
        yield written
    written.logger.removeHandler(written.handler)


def ids(span) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def test_json_lines_carry_the_trace_and_span_ids_inside_a_trace(written):
    written.use("json")
    written.logger.info("outside")
    with written.tracer.start_as_current_span("call") as span:
        written.logger.info("order %s: sold", "ORD-1")
    outside, inside = (json.loads(line) for line in written.lines())
    assert "trace_id" not in outside and "span_id" not in outside
    assert (inside["trace_id"], inside["span_id"]) == ids(span)
    assert inside["message"] == "order ORD-1: sold"
    assert (inside["level"], inside["service"], inside["name"]) == (
        "INFO",
        "inventory_svc",
        "test.meshkit.logs",
    )


def test_text_lines_get_a_suffix_only_inside_a_trace(written):
    written.logger.info("outside")
    with written.tracer.start_as_current_span("call") as span:
        try:
            raise ValueError("boom")
        except ValueError:
            written.logger.exception("failed")
    lines = written.lines()
    assert lines[0].endswith("test.meshkit.logs: outside")
    trace_id, span_id = ids(span)
    # On the event's own line, before the traceback.
    assert lines[1].endswith(f"failed trace_id={trace_id} span_id={span_id}")
    assert lines[2] == "Traceback (most recent call last):"


def test_log_format_is_bounded():
    assert ServiceSettings(log_format="json").log_format == "json"
    with pytest.raises(ValueError, match="log_format"):
        ServiceSettings(log_format="xml")
