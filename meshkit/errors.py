"""Errors a service reports to its caller.

Domain code raises subclasses of these; the gRPC adapter turns each kind into a
status code (which Envoy turns into an HTTP status). Their message is shown to
the caller as it is, so it must be written for a person and never leak internals.
Any other exception becomes INTERNAL with a generic message.
"""


class ServiceError(Exception):
    """A failure the caller can understand and act on."""


class InvalidArgument(ServiceError):
    """The request itself is wrong, whatever the state of the system (→ 400)."""


class NotFound(ServiceError):
    """The request names something that does not exist (→ 404)."""


class AlreadyExists(ServiceError):
    """The request conflicts with something already recorded (→ 409)."""


class FailedPrecondition(ServiceError):
    """The system is not in a state that allows the request (→ 400)."""


class Unavailable(ServiceError):
    """A dependency is down; the same request may succeed later (→ 503)."""


class ResourceExhausted(ServiceError):
    """Too much is already waiting for the same thing; retry a little later (→ 429)."""
