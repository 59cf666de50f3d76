from datetime import UTC, datetime, timedelta

import pytest

from analytics_svc import domain
from meshkit.errors import InvalidArgument

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def test_the_default_window_is_the_last_day():
    window = domain.summary_window(None, None, 0, NOW)
    assert (window.start, window.end, window.top_products) == (NOW - timedelta(hours=24), NOW, 5)


@pytest.mark.parametrize(
    ("start", "end", "says"),
    [
        (None, datetime(1, 1, 1, tzinfo=UTC), "end_time must not be before 1970"),  # overflowed
        (datetime(1969, 12, 31, tzinfo=UTC), None, "start_time must not be before 1970"),
        (NOW, NOW, "must be before end_time"),
        (NOW - timedelta(days=367), NOW, "at most 366 days"),
    ],
)
def test_bad_windows_are_invalid_arguments(start, end, says):
    with pytest.raises(InvalidArgument, match=says):
        domain.summary_window(start, end, 0, NOW)
