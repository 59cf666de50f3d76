"""notify_svc's use case on a real PostgreSQL and a real SMTP server."""

import asyncio
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import pytest

from meshkit.errors import Unavailable
from meshkit.resilience import retry_while_unavailable
from notify_svc import use_cases
from notify_svc.domain import OrderConfirmation, Sale
from notify_svc.mailer import Mailer
from notify_svc.store import MIGRATIONS, PostgresNotifications
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
