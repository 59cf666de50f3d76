"""analytics_svc.store's error mapping: what is retried, what is acked, what fails.

pymongo's exception classes are built here as the driver would raise them.
"""

import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteError,
    WTimeoutError,
)

from analytics_svc.store import DUPLICATE_KEY, _bulk_outcomes, _is_unavailable
from meshkit.errors import Unavailable

WRITE_CONCERN_ERROR = {"code": 64, "errmsg": "waiting for replication timed out"}


def duplicate(index: int) -> dict:
    return {"index": index, "code": DUPLICATE_KEY, "errmsg": "E11000 duplicate key"}


def bulk_error(write_errors: list[dict], write_concern_errors: list[dict]) -> BulkWriteError:
    return BulkWriteError(
        {"writeErrors": write_errors, "writeConcernErrors": write_concern_errors, "nInserted": 0}
    )


def test_duplicates_only_report_each_document_outcome():
    outcomes = _bulk_outcomes(bulk_error([duplicate(0), duplicate(2)], []), 4)
    assert outcomes == [False, True, False, True]


@pytest.mark.parametrize("write_errors", [[], [duplicate(1)]], ids=["alone", "with-duplicates"])
def test_an_unconfirmed_write_concern_is_retried_not_acked(write_errors):
    with pytest.raises(Unavailable):
        _bulk_outcomes(bulk_error(write_errors, [WRITE_CONCERN_ERROR]), 3)


def test_a_refused_document_is_its_own_callers_error_and_the_others_stand():
    refused = {"index": 1, "code": 121, "errmsg": "Document failed validation"}
    outcomes = _bulk_outcomes(bulk_error([duplicate(0), refused], []), 3)
    assert outcomes[0] is False and outcomes[2] is True
    assert isinstance(outcomes[1], WriteError) and not isinstance(outcomes[1], BulkWriteError)
    assert (outcomes[1].code, outcomes[1].details) == (121, refused)


def test_a_write_error_out_of_time_retries_the_batch():
    """MaxTimeMSExpired for a document: an outage (_mongo), not that document's fault."""
    error = bulk_error([{"index": 0, "code": 50, "errmsg": "operation exceeded time limit"}], [])
    with pytest.raises(BulkWriteError) as raised:
        _bulk_outcomes(error, 2)
    assert _is_unavailable(raised.value)


@pytest.mark.parametrize(
    "exc",
    [
        AutoReconnect("connection reset"),
        ServerSelectionTimeoutError("no server"),
        NetworkTimeout("timed out"),
        ExecutionTimeout("operation exceeded time limit", 50),
        WTimeoutError("waiting for replication timed out", 64),
        OperationFailure("operation exceeded time limit", 50),
        bulk_error([], [{**WRITE_CONCERN_ERROR, "errInfo": {"wtimeout": True}}]),
        TimeoutError(),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_timeouts_and_lost_connections_are_unavailable(exc):
    assert _is_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        OperationFailure("bad query", 2),
        DuplicateKeyError("E11000 duplicate key", DUPLICATE_KEY),
        bulk_error([{"index": 0, "code": 121, "errmsg": "invalid"}], []),
        ValueError("a bug"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_other_failures_are_not_unavailable(exc):
    assert not _is_unavailable(exc)
