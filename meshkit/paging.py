"""List RPCs page the same way everywhere (AIP-158 style).

``page_size`` 0 means the service's default; ``page_token`` is an opaque cursor
(the sort key of the last item returned), so pages stay stable while new items
arrive, and a token from elsewhere is rejected with INVALID_ARGUMENT.
"""

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from meshkit.errors import InvalidArgument

Cursor = list[str | int]
Item = TypeVar("Item")


def page_size(requested: int, *, default: int, maximum: int) -> int:
    if not 0 <= requested <= maximum:
        raise InvalidArgument(f"page_size must be between 0 and {maximum}, got {requested}")
    return requested or default


def encode_cursor(*sort_key: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(sort_key)).encode()).decode()


def decode_cursor(token: str, *types: type) -> Cursor:
    """The sort key inside ``token``, checked against the expected ``types``."""
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        values = None
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(type(v) is t for v, t in zip(values, types, strict=True))
    ):
        raise InvalidArgument("page_token is not one this service issued")
    return values


def encode_time_cursor(at: datetime, key: str) -> str:
    """Cursor for lists sorted newest first by (time, unique key)."""
    return encode_cursor(at.isoformat(), key)


def decode_time_cursor(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    at, key = decode_cursor(token, str, str)
    try:
        return datetime.fromisoformat(str(at)), str(key)
    except ValueError as exc:
        raise InvalidArgument("page_token is not one this service issued") from exc


def split_page(
    fetched: list[Item], size: int, cursor_of: Callable[[Item], str]
) -> tuple[list[Item], str]:
    """The page to return and the token of the next one ('' on the last page).

    Stores fetch ``size + 1`` items: the extra one tells whether another page
    exists, so the last page is never an empty one.
    """
    page = fetched[:size]
    return (page, cursor_of(page[-1])) if len(fetched) > size else (page, "")
