"""notify_svc's use case on a real PostgreSQL and a real SMTP server."""

import asyncio
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from meshkit.errors import Unavailable
from meshkit.resilience import retry_while_unavailable
from notify_svc import use_cases
from notify_svc.domain import Claim, OrderConfirmation, Sale, order_confirmation
from notify_svc.mailer import Mailer
from notify_svc.store import MANY_FROM, MIGRATIONS, PostgresNotifications
from tests.support.net import TcpProxy
from tests.support.sales import consumed_sale
from tests.support.servers import migrated_database
from tests.support.waiting import eventually

LEASE_SECONDS = 30.0


@pytest.fixture(scope="module")
async def notify_db_url():
    async with migrated_database("polyglot_test_notify_uc", MIGRATIONS) as url:
        yield url


@pytest.fixture(scope="module")
async def notifications(notify_db_url):
    store = PostgresNotifications(notify_db_url, pool_size=4, timeout_seconds=5)
    await store.ready()
    yield store
    await store.close()


def sale() -> Sale:
    return consumed_sale(Sale, occurred_at=datetime.now(UTC))


async def notify(store, mailer, event, lease_seconds: float = LEASE_SECONDS) -> bool:
    return await use_cases.notify_sale(
        store,
        mailer,
        event,
        sender="orders@test.local",
        recipient="logistics@test.local",
        lease_seconds=lease_seconds,
    )


async def test_one_email_per_event_even_when_redelivered(notifications, mail, caplog):
    mailer = Mailer(mail.url, timeout_seconds=5)
    event = sale()
    with caplog.at_level("INFO", logger="notify_svc.mailer"):
        assert await notify(notifications, mailer, event) is True
        assert await notify(notifications, mailer, event) is False
    [message] = mail.messages(event.order_id)
    assert message["To"] == "logistics@test.local"
    assert message["Message-ID"] == f"<{event.event_id}@polyglotmicro.local>"
    assert [r.getMessage() for r in caplog.records].count(
        f"[EMAIL] order {event.order_id}: 'Order {event.order_id} confirmed: 1 x Laptop Gamer'"
        f" to logistics@test.local via smtp (Message-ID <{event.event_id}@polyglotmicro.local>)"
    ) == 1
    [listed], _ = await use_cases.recent_notifications(notifications, 10, "", event.order_id)
    assert (listed.status, listed.channel, listed.sent_at is not None) == ("sent", "smtp", True)


async def test_without_smtp_the_log_line_is_the_email(notifications, caplog):
    event = sale()
    with caplog.at_level("INFO", logger="notify_svc.mailer"):
        assert await notify(notifications, Mailer(None, timeout_seconds=5), event)
    assert any(
        r.getMessage().startswith(f"[EMAIL] order {event.order_id}:") for r in caplog.records
    )


async def test_a_mail_server_outage_is_unavailable_and_the_retry_sends(notifications, mail):
    event = sale()
    mail.refusing = True
    try:
        with pytest.raises(Unavailable, match="refused for now"):
            await notify(notifications, Mailer(mail.url, timeout_seconds=5), event)
    finally:
        mail.refusing = False
    with pytest.raises(Unavailable, match="unreachable"):
        await notify(notifications, Mailer("smtp://127.0.0.1:1", timeout_seconds=5), event)
    assert await notify(notifications, Mailer(mail.url, timeout_seconds=5), event) is True
    assert len(mail.messages(event.order_id)) == 1
    [listed], _ = await use_cases.recent_notifications(notifications, 10, "", event.order_id)
    assert listed.status == "sent"


async def test_copies_of_one_event_handled_at_once_send_one_email(notifications, mail):
    """A redelivery racing the original (e.g. after a channel drop) must not send twice:
    the copies that find the lease taken wait, as the subscriber does, until it is sent."""
    mailer = Mailer(mail.url, timeout_seconds=5)
    event = sale()
    outcomes = await asyncio.gather(
        *(
            retry_while_unavailable(lambda: notify(notifications, mailer, event), what="a copy")
            for _ in range(4)
        )
    )
    assert sorted(outcomes) == [False, False, False, True]
    assert len(mail.messages(event.order_id)) == 1
    [listed], _ = await use_cases.recent_notifications(notifications, 10, "", event.order_id)
    assert listed.status == "sent"


class DatabaseCutAfterSend:
    """Sends for real, then takes the notifications database off the network: the
    mail server has the e-mail, the mark 'sent' has not happened yet."""

    channel = "smtp"

    def __init__(self, mailer: Mailer, proxy: TcpProxy) -> None:
        self._mailer = mailer
        self._proxy = proxy

    async def send(self, email: OrderConfirmation) -> None:
        await self._mailer.send(email)
        await asyncio.to_thread(self._proxy.cut)


async def test_a_database_cut_after_the_mail_server_accepted_does_not_resend(
    notify_db_url, mail, caplog
):
    url = urlsplit(notify_db_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    credentials = url.netloc.rpartition("@")[0]
    via_proxy = url._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}".lstrip("@"))
    store = PostgresNotifications(
        urlunsplit(via_proxy),
        pool_size=2,
        timeout_seconds=2,
    )
    await store.ready()
    event = sale()
    mailer = DatabaseCutAfterSend(Mailer(mail.url, timeout_seconds=5), proxy)

    async def restore_once_the_mark_waits() -> None:
        await eventually(lambda: "as sent" in caplog.text, what="the mark waiting")
        await asyncio.to_thread(proxy.restore)

    try:
        with caplog.at_level("WARNING", logger="meshkit.resilience"):
            restoring = asyncio.create_task(restore_once_the_mark_waits())
            assert await notify(store, mailer, event) is True
            await restoring
        assert await notify(store, Mailer(mail.url, timeout_seconds=5), event) is False
        assert len(mail.messages(event.order_id)) == 1
        [listed], _ = await use_cases.recent_notifications(store, 10, "", event.order_id)
        assert listed.status == "sent"
    finally:
        await store.close()
        proxy.close()


async def test_no_connection_is_held_while_the_mail_server_answers(notify_db_url, mail):
    """A slow mail server must not starve ListNotifications: with a pool of one
    connection, listing still answers while an e-mail waits for the server."""
    store = PostgresNotifications(notify_db_url, pool_size=1, timeout_seconds=5)
    await store.ready()
    event = sale()
    mail.holding.clear()
    mail.answer.clear()
    try:
        sending = asyncio.create_task(notify(store, Mailer(mail.url, timeout_seconds=30), event))
        await eventually(mail.holding.is_set, what="the mail server holding its answer")
        [listed], _ = await use_cases.recent_notifications(store, 10, "", event.order_id)
        assert listed.status == "sending"
    finally:
        mail.answer.set()
    assert await sending is True
    [listed], _ = await use_cases.recent_notifications(store, 10, "", event.order_id)
    assert listed.status == "sent"
    await store.close()


class AcceptedThenCrashed:
    """The mail server accepts the e-mail, then the handler dies before the mark."""

    channel = "smtp"

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer

    async def send(self, email: OrderConfirmation) -> None:
        await self._mailer.send(email)
        raise asyncio.CancelledError  # the process is gone: no release, no mark


async def test_a_crash_after_the_mail_server_accepted_resends_after_the_lease_with_the_same_id(
    notifications, mail
):
    event = sale()
    mailer = Mailer(mail.url, timeout_seconds=5)
    with pytest.raises(asyncio.CancelledError):
        await notify(notifications, AcceptedThenCrashed(mailer), event, lease_seconds=5)
    # The redelivered copy finds the lease held and waits for its expiry…
    with pytest.raises(Unavailable, match="being sent by another handler"):
        await notify(notifications, mailer, event, lease_seconds=1)
    # …then sends again, with the same Message-ID, and marks it sent.
    await eventually(
        lambda: _notified_after_expiry(notifications, mailer, event), what="the resend"
    )
    first, second = mail.messages(event.order_id)
    assert first["Message-ID"] == second["Message-ID"] == f"<{event.event_id}@polyglotmicro.local>"
    [listed], _ = await use_cases.recent_notifications(notifications, 10, "", event.order_id)
    assert listed.status == "sent"
    assert await notify(notifications, mailer, event) is False


async def _notified_after_expiry(store, mailer, event) -> bool:
    try:
        return await notify(store, mailer, event, lease_seconds=1)
    except Unavailable:
        return False


# Batched claims and marks (group commit): handlers working at the same time share
# a statement, and each still gets the answer its claim alone would have got.


class CountingNotifications(PostgresNotifications):
    """The store, recording how many claims (marks) each statement it ran carried."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, pool_size=4, timeout_seconds=5)
        self.claim_statements: list[int] = []
        self.mark_statements: list[int] = []

    async def _claim_together(self, requests):
        self.claim_statements.append(len(requests))
        return await super()._claim_together(requests)

    async def _mark_sent_many(self, event_ids):
        self.mark_statements.append(len(event_ids))
        return await super()._mark_sent_many(event_ids)


@pytest.fixture
async def counting(notify_db_url):
    store = CountingNotifications(notify_db_url)
    await store.ready()
    yield store
    await store.close()


def email(event: Sale | None = None) -> OrderConfirmation:
    return order_confirmation(
        event or sale(), sender="orders@test.local", recipient="logistics@test.local"
    )


async def row(store, event_id: str):
    async with store.db.connection() as conn:
        return await conn.fetchrow(
            "SELECT status, attempts, leased_by::text, lease_until FROM notifications"
            " WHERE event_id = $1",
            uuid.UUID(event_id),
        )


async def test_concurrent_emails_share_claim_statements_and_each_goes_out_once(counting, mail):
    mailer = Mailer(mail.url, timeout_seconds=5)
    events = [sale() for _ in range(20)]
    assert await asyncio.gather(*(notify(counting, mailer, e) for e in events)) == [True] * 20
    assert {e.order_id: len(mail.messages(e.order_id)) for e in events} == {
        e.order_id: 1 for e in events
    }
    assert [(await row(counting, e.event_id))["status"] for e in events] == ["sent"] * 20
    assert sum(counting.claim_statements) == 20 and len(counting.claim_statements) < 20
    assert sum(counting.mark_statements) == 20


async def test_two_copies_of_one_event_in_one_batch_get_one_lease(counting):
    copy, other = email(), email()
    claims = await asyncio.gather(
        counting.claim(copy, "smtp", LEASE_SECONDS),
        counting.claim(other, "smtp", LEASE_SECONDS),
        counting.claim(copy, "smtp", LEASE_SECONDS),
    )
    assert counting.claim_statements == [3]  # one statement, holding both copies
    first, second = claims[0], claims[2]
    assert first.lease is not None and first.attempt == 1
    assert second == Claim(lease=None, attempt=0, sent=False)  # its handler waits
    assert claims[1].lease is not None
    stored = await row(counting, copy.event_id)
    assert (stored["attempts"], stored["leased_by"]) == (1, first.lease)


@pytest.mark.parametrize("more_new", [0, MANY_FROM], ids=["single-row statements", "arrays"])
async def test_each_claim_of_a_batch_gets_the_answer_it_would_get_alone(counting, more_new):
    """New, sent, leased to a live holder, lease expired, lease released: one
    batch, and each claim is answered as today's claim of its own, whichever
    statements the batch's size takes (store.MANY_FROM)."""
    new, sent, leased, expired, released = (email() for _ in range(5))
    others = [email() for _ in range(more_new)]
    for earlier in (sent, leased, expired, released):
        await counting.claim(earlier, "smtp", LEASE_SECONDS)
    await counting.mark_sent(sent.event_id)
    async with counting.db.connection() as conn:  # its holder died a while ago
        await conn.execute(
            "UPDATE notifications SET lease_until = now() - interval '1 second'"
            " WHERE event_id = $1",
            uuid.UUID(expired.event_id),
        )
    released_lease = (await row(counting, released.event_id))["leased_by"]
    await counting.release(released.event_id, released_lease)
    counting.claim_statements.clear()

    answers = await asyncio.gather(
        *(counting.claim(e, "log", 5.0) for e in (new, sent, leased, expired, released, *others))
    )
    assert counting.claim_statements == [5 + more_new]
    assert [claim.attempt for claim in answers[5:]] == [1] * more_new
    names = ("new", "sent", "leased", "expired", "released")
    got = dict(zip(names, answers[:5], strict=True))
    assert got["sent"] == Claim(lease=None, attempt=0, sent=True)
    assert got["leased"] == Claim(lease=None, attempt=0, sent=False)
    assert (got["new"].attempt, got["expired"].attempt, got["released"].attempt) == (1, 2, 2)
    for name, e in (("new", new), ("expired", expired), ("released", released)):
        stored = await row(counting, e.event_id)
        assert (stored["status"], stored["leased_by"]) == ("sending", got[name].lease)
    leases = [got[name].lease for name in ("new", "expired", "released")]
    assert len(set(leases)) == 3  # each claim its own lease
    assert (await row(counting, leased.event_id))["attempts"] == 1  # left alone
    assert (await row(counting, sent.event_id))["status"] == "sent"


async def test_batches_claiming_the_same_events_in_any_order_lease_each_once(notify_db_url):
    """Two replicas' batches over the same events at once, in opposite orders: each
    event is leased once, and neither waits for the other in a circle (a deadlock
    would fail the batch, and its claims would be made again one by one)."""
    stores = [CountingNotifications(notify_db_url) for _ in range(2)]
    for store in stores:
        await store.ready()
    try:
        for _ in range(10):
            emails = [email() for _ in range(100)]
            first, second = await asyncio.gather(
                asyncio.gather(*(stores[0].claim(e, "smtp", LEASE_SECONDS) for e in emails)),
                asyncio.gather(
                    *(stores[1].claim(e, "smtp", LEASE_SECONDS) for e in reversed(emails))
                ),
            )
            for one, other in zip(first, reversed(second), strict=True):
                assert [c.lease is not None for c in (one, other)].count(True) == 1
        assert [store.claim_statements for store in stores] == [[100] * 10] * 2
    finally:
        for store in stores:
            await store.close()


async def test_an_event_the_database_refuses_fails_only_its_own_claim(counting):
    """A claim that cannot be stored (NUL in the subject) fails its own handler, as
    alone; the claims batched with it are retried one by one and get their leases."""
    poison = email(consumed_sale(Sale, product_name="Laptop\x00Gamer"))
    good = [email() for _ in range(3)]
    answers = await asyncio.gather(
        *(counting.claim(e, "smtp", LEASE_SECONDS) for e in [good[0], poison, *good[1:]]),
        return_exceptions=True,
    )
    assert isinstance(answers[1], asyncpg.PostgresError)
    assert all(isinstance(a, Claim) and a.lease is not None for a in answers[::2] + answers[3:])
    assert counting.claim_statements == [4, 1, 1, 1, 1]
    assert await row(counting, poison.event_id) is None


async def test_marks_made_together_share_one_statement(counting):
    emails = [email() for _ in range(10)]
    await asyncio.gather(*(counting.claim(e, "smtp", LEASE_SECONDS) for e in emails))
    await asyncio.gather(*(counting.mark_sent(e.event_id) for e in emails))
    assert counting.mark_statements == [10]
    for e in emails:
        stored = await row(counting, e.event_id)
        assert (stored["status"], stored["leased_by"], stored["lease_until"]) == (
            "sent",
            None,
            None,
        )
    await counting.mark_sent(emails[0].event_id)  # marking again changes nothing
    assert (await row(counting, emails[0].event_id))["status"] == "sent"
