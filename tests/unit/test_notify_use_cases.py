"""notify_svc's use case against an in-memory store and mailer: the lease rules.

The fake store keeps the port's contract (``NotificationStore``): a claim gets a
lease unless the notification is sent or leased to someone else until later;
time is the fake's own clock. The SQL that keeps it under real concurrency, and
the SMTP side, are tested on PostgreSQL and a real SMTP server in
tests/integration/test_notify.py.
"""

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from meshkit.errors import Unavailable
from notify_svc import use_cases
from notify_svc.domain import (
    Claim,
    Notification,
    NotificationsPage,
    OrderConfirmation,
    Sale,
    SendingElsewhere,
    order_confirmation,
)

LEASE = 30.0


@dataclass
class Record:
    status: str = "sending"
    lease: str | None = None
    lease_until: float = 0.0
    attempts: int = 0


@dataclass
class FakeNotifications:
    now: float = 0.0
    records: dict[str, Record] = field(default_factory=dict)
    failing_marks: int = 0  # the next mark_sent calls that find the database down

    async def claim(self, email: OrderConfirmation, channel: str, lease_seconds: float) -> Claim:
        record = self.records.setdefault(email.event_id, Record())
        if record.status == "sent":
            return Claim(lease=None, attempt=0, sent=True)
        if record.lease is not None and record.lease_until > self.now:
            return Claim(lease=None, attempt=0, sent=False)
        record.lease, record.lease_until = str(uuid.uuid4()), self.now + lease_seconds
        record.attempts += 1
        return Claim(lease=record.lease, attempt=record.attempts, sent=False)

    async def release(self, event_id: str, lease: str) -> None:
        record = self.records[event_id]
        if record.lease == lease and record.status == "sending":
            record.lease = None

    async def mark_sent(self, event_id: str) -> None:
        if self.failing_marks:
            self.failing_marks -= 1
            raise Unavailable("the notifications database is unavailable")
        self.records[event_id].status, self.records[event_id].lease = "sent", None

    async def recent(self, page: NotificationsPage) -> list[Notification]:
        return []


class FakeMailer:
    channel = "smtp"

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.sent: list[OrderConfirmation] = []
        self.failures = failures or []
        self.answering = asyncio.Event()
        self.answering.set()

    async def send(self, email: OrderConfirmation) -> None:
        await self.answering.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(email)


SALE = Sale(
    event_id=str(uuid.UUID(int=7)),
    order_id="ORD-7",
    product_id=1,
    product_name="Laptop Gamer",
    quantity=2,
    remaining_stock=5,
    occurred_at=datetime(2026, 11, 28, 9, 30, tzinfo=UTC),
)


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
