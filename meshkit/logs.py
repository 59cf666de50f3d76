"""One logging format for every service, so the logs under .run/ read alike.

One line per event, as text (default) or as JSON lines (``LOG_FORMAT=json``).
A line written inside a trace carries its ``trace_id`` and ``span_id`` (text: a
``trace_id=… span_id=…`` suffix), so the id a user quotes finds the lines of
every service that handled the order: ``grep <trace id> .run/logs/*``.
"""

import logging

from pythonjsonlogger.json import JsonFormatter

from meshkit.telemetry import current_ids

TEXT_FORMAT = "%(asctime)s %(levelname)-7s {service}[%(process)d] %(name)s: %(message)s"


class TraceIds(logging.Filter):
    """Adds ``trace_id``/``span_id`` to a record written inside a trace (else nothing)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return line
        # Before a traceback's lines, so the suffix stays on the event's own line.
        first, newline, rest = line.partition("\n")
        return f"{first} trace_id={trace_id} span_id={record.span_id}{newline}{rest}"  # type: ignore[attr-defined]


def formatter(service: str, log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(
            "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "process": "pid"},
            static_fields={"service": service},
        )
    return TextFormatter(TEXT_FORMAT.format(service=service))


def configure_logging(service: str, level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(service, log_format))
    handler.addFilter(TraceIds())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # What no format here prints is not collected for every record (the logging
    # HOWTO's "Optimization"): the caller's file and line (a walk up the stack per
    # record, 1 % of inventory_svc under load), the thread and multiprocessing names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # grpc and asyncio chatter at INFO is noise for our users.
    logging.getLogger("asyncio").setLevel(logging.WARNING)
