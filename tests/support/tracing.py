"""Tracing inside the test process: meshkit.telemetry installed with an SDK
provider whose spans stay in memory, for unit and integration tests."""

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit import telemetry

# One provider for the whole run: pymongo's instrumentation registers its command
# listener once per process, with the provider of the first ``instrument`` call.
_exporter = InMemorySpanExporter()
_provider = TracerProvider(resource=Resource.create({"service.name": "test"}))
_provider.add_span_processor(SimpleSpanProcessor(_exporter))


@contextmanager
def in_memory_tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """``telemetry.install`` with an in-memory exporter (emptied first); undone on exit."""
    _exporter.clear()
    telemetry.install(_provider)
    try:
        yield _provider, _exporter
    finally:
        telemetry.uninstall()
