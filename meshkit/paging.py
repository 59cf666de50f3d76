"""List RPCs page the same way everywhere (AIP-158 style).

``page_size`` 0 means the service's default; ``page_token`` is an opaque cursor
(the sort key of the last item returned), so pages stay stable while new items
arrive, and a token from elsewhere is rejected with INVALID_ARGUMENT.
"""

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from meshkit.errors import InvalidArgument

Cursor = list[str | int]
# Tokens this module issues are well under 200 characters; a longer one is not ours
# (and is refused before any decoding work).
MAX_PAGE_TOKEN_LENGTH = 512
Item = TypeVar("Item")


class ForeignPageToken(InvalidArgument):
    """A token this service did not issue: garbled, forged or from another list."""

    def __init__(self) -> None:
        super().__init__("page_token is not one this service issued")


def page_size(requested: int, *, default: int, maximum: int) -> int:
    if not 0 <= requested <= maximum:
        raise InvalidArgument(f"page_size must be between 0 and {maximum}, got {requested}")
    return requested or default


def encode_cursor(*sort_key: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(sort_key)).encode()).decode()


def decode_cursor(token: str, *types: type) -> Cursor:
    """The sort key inside ``token``, checked against the expected ``types``."""
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise ForeignPageToken
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: deeply nested JSON
        values = None
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(type(v) is t for v, t in zip(values, types, strict=True))
    ):
        raise ForeignPageToken
    return values


def encode_time_cursor(at: datetime, event_id: str) -> str:
    """Cursor for lists sorted newest first by (time, event id)."""
    return encode_cursor(at.isoformat(), event_id)


def decode_time_cursor(token: str) -> tuple[datetime, str] | None:
    """The (UTC time, event id) inside ``token``; None for the first page.

    Stores compare these with timestamptz / UUID columns or BSON dates, where a
    naive or out-of-range time or a non-UUID key would fail as INTERNAL.
    """
    if not token:
        return None
    at, event_id = decode_cursor(token, str, str)
    try:
        return _utc(str(at)), str(uuid.UUID(str(event_id)))
    except (ValueError, OverflowError) as exc:
        raise ForeignPageToken from exc


def _utc(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError("a page token's time always has an offset")
    return at.astimezone(UTC)  # OverflowError near year 1 or 9999


def split_page(
    fetched: list[Item], size: int, cursor_of: Callable[[Item], str]
) -> tuple[list[Item], str]:
    """The page to return and the token of the next one ('' on the last page).

    Stores fetch ``size + 1`` items: the extra one tells whether another page
    exists, so the last page is never an empty one.
    """
    page = fetched[:size]
    return (page, cursor_of(page[-1])) if len(fetched) > size else (page, "")
