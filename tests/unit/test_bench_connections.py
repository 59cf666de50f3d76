"""The bench's connection budget (bench/connections.py): a server too small for the
96-client rows is refused with a message before anything starts."""

import pytest

from bench.connections import DEFAULT_MAX_CONNECTIONS, HARNESS_CONNECTIONS, NoRoom, check_room


def test_the_96_client_rows_fit_postgresqls_default_max_connections():
    assert 96 + HARNESS_CONNECTIONS <= DEFAULT_MAX_CONNECTIONS
    check_room(DEFAULT_MAX_CONNECTIONS, 96)


def test_a_server_too_small_for_a_row_is_refused_with_a_message_not_a_traceback():
    with pytest.raises(NoRoom) as refused:
        check_room(90, 96)
    assert isinstance(refused.value, SystemExit)  # printed as is, exit status 1
    message = str(refused.value)
    assert "max_connections is 90" in message
    assert "--hot-clients" in message
