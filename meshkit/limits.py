"""The value limits a service enforces on its requests, as data.

Each service's domain module states them once, in ``REQUEST_LIMITS`` (keyed by
"<request message full name>.<field>"), built from the constants its checks use.
The OpenAPI generator (devtools/openapi.py) reads the same tables, so the
published document rejects exactly what the services reject.
"""

import re
from dataclasses import dataclass

# The caller's order id, the mesh-wide idempotency key (DecreaseStock, the
# ProductSold event, the notifications filter).
MAX_ORDER_ID_LENGTH = 64
ORDER_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_ORDER_ID_LENGTH - 1}}}")


@dataclass(frozen=True)
class Limit:
    """What a request field's value must satisfy (None: no such limit)."""

    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None  # matched against the whole value

    def allows(self, value: int | str) -> bool:
        if isinstance(value, str):
            return (self.max_length is None or len(value) <= self.max_length) and (
                self.pattern is None or self.pattern.fullmatch(value) is not None
            )
        return (self.minimum is None or value >= self.minimum) and (
            self.maximum is None or value <= self.maximum
        )

    @property
    def required(self) -> bool:
        """The field's default (0, '') is refused, so a request must set it."""
        return not self.allows("" if self.max_length or self.pattern else 0)
