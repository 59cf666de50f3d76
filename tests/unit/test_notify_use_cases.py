"""notify_svc's use case against an in-memory store and mailer: the lease rules.

The fakes (tests/support/fakes.py) keep the ports' contracts; the store's time
is its own clock. The SQL that keeps it under real concurrency, and
the SMTP side, are tested on PostgreSQL and a real SMTP server in
tests/integration/test_notify.py.
"""

import uuid

import pytest

from meshkit.errors import Unavailable
from notify_svc import use_cases
from notify_svc.domain import (
    OrderConfirmation,
    Sale,
    SendingElsewhere,
    order_confirmation,
)
from tests.support.fakes import FakeMailer, FakeNotifications
from tests.support.sales import consumed_sale

LEASE = 30.0


SALE = consumed_sale(Sale, event_id=str(uuid.UUID(int=7)), order_id="ORD-7", quantity=2)


async def notify(store, mailer, lease_seconds: float = LEASE) -> bool:
    return await use_cases.notify_sale(
        store, mailer, SALE, sender="o@x.test", recipient="l@x.test", lease_seconds=lease_seconds
    )


async def test_one_email_per_event():
    store, mailer = FakeNotifications(), FakeMailer()
    assert await notify(store, mailer) is True
    assert await notify(store, mailer) is False
    [email] = mailer.sent
    assert email.message_id == f"<{SALE.event_id}@polyglotmicro.local>"
    assert store.records[SALE.event_id].status == "sent"


async def test_a_copy_finding_a_live_lease_waits_instead_of_sending():
    store, mailer = FakeNotifications(), FakeMailer()
    await store.claim(_email(), "smtp", LEASE)  # another handler is sending it
    with pytest.raises(SendingElsewhere, match="being sent by another handler"):
        await notify(store, mailer)
    assert isinstance(SendingElsewhere(_email()), Unavailable)  # waited out, not dead-lettered
    assert mailer.sent == []


async def test_after_the_lease_expired_the_email_goes_out_again_with_the_same_id(caplog):
    """The holder died (after the mail server may have accepted it)."""
    store, mailer = FakeNotifications(), FakeMailer()
    await store.claim(_email(), "smtp", LEASE)
    store.now += LEASE + 1
    with caplog.at_level("WARNING", logger="notify_svc.use_cases"):
        assert await notify(store, mailer) is True
    assert [e.message_id for e in mailer.sent] == [_email().message_id]
    assert "sending e-mail" in caplog.text and "attempt 2" in caplog.text


async def test_a_failed_send_gives_the_lease_back_so_the_retry_need_not_wait():
    store = FakeNotifications()
    mailer = FakeMailer(failures=[Unavailable("the mail server refused for now (451)")])
    with pytest.raises(Unavailable, match="refused for now"):
        await notify(store, mailer)
    assert store.records[SALE.event_id].lease is None
    assert await notify(store, mailer) is True
    assert len(mailer.sent) == 1


async def test_a_refused_email_is_not_waited_out_and_not_marked():
    store = FakeNotifications()
    mailer = FakeMailer(failures=[ValueError("550 mailbox unavailable")])
    with pytest.raises(ValueError):
        await notify(store, mailer)
    assert store.records[SALE.event_id].status == "sending"


async def test_once_accepted_only_the_mark_is_retried_never_the_send():
    store, mailer = FakeNotifications(failing_marks=2), FakeMailer()
    assert await notify(store, mailer) is True
    assert len(mailer.sent) == 1
    assert store.records[SALE.event_id].status == "sent"


async def test_a_send_that_outlives_its_lease_is_abandoned_and_the_lease_given_back():
    store, mailer = FakeNotifications(), FakeMailer()
    mailer.answering.clear()  # a mail server that never answers
    with pytest.raises(Unavailable, match="took longer than its lease"):
        await notify(store, mailer, lease_seconds=0.01)
    assert store.records[SALE.event_id].lease is None


def _email() -> OrderConfirmation:
    return order_confirmation(SALE, sender="o@x.test", recipient="l@x.test")
