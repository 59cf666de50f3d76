"""Who is calling: the subject Envoy verified, as the services see it.

Envoy is the only policy point (see envoy/README.md): it verifies the caller's
bearer token and passes the token's subject upstream in ``SUBJECT_HEADER``,
after removing any copy a client sent. Backends listen where only Envoy reaches
them, so they trust that header and nothing else. The gRPC server puts it in a
context variable for the duration of each call; use cases read it from there.
"""

from collections.abc import Iterable
from contextvars import ContextVar

SUBJECT_HEADER = "x-mesh-subject"

# "" when the call carries no verified subject (a public RPC, or a direct call
# to a backend that bypassed Envoy, as the tests do).
caller_subject: ContextVar[str] = ContextVar("caller_subject", default="")


def subject_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == SUBJECT_HEADER and isinstance(value, str):
            return value
    return ""
