"""In-memory fakes of the services' ports, for unit tests of what uses them.

Each fake keeps its port's contract; the SQL (and SMTP, and Mongo) that keeps it
under concurrency is tested on the real servers in tests/integration.

- inventory_svc: ``FakeInventory`` (``InventoryStore``), ``HeldStore``
  (``BatchStore``, its writes held open by the test), ``FakeOutbox`` (the relay's
  ``Outbox``);
- analytics_svc: ``FakeSales`` (``SalesStore``);
- notify_svc: ``FakeNotifications`` (``NotificationStore``), ``FakeMailer`` (``MailSender``).
"""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from analytics_svc.domain import EventsPage, ProductSales, SalesSummary, SummaryWindow
from analytics_svc.domain import Sale as AnalyticsSale
from inventory_svc.domain import MAX_STOCK, Page, Product, Sale, SaleRequest
from inventory_svc.relay import OutboxBacklog, OutboxEntry
from meshkit.errors import Unavailable
from notify_svc.domain import Claim, Notification, NotificationsPage, OrderConfirmation


class FakeInventory:
    """``InventoryStore``: ``record_sale`` writes nothing and answers None for an
    unknown product, too little stock or an order id already sold."""

    def __init__(self, *products: Product) -> None:
        self.products = {p.product_id: p for p in products}
        self.sales: dict[str, Sale] = {}
        self.requests: list[SaleRequest] = []  # every record_sale call's request, in order

    def sell(self, request: SaleRequest) -> Sale | None:
        """One order, all at once (no await: nothing interleaves with it)."""
        self.requests.append(request)
        product = self.products.get(request.product_id)
        if product is None or product.stock < request.quantity or request.order_id in self.sales:
            return None
        left = product.stock - request.quantity
        self.products[product.product_id] = Product(product.product_id, product.name, left)
        sale = Sale(request.order_id, request.product_id, request.quantity, left)
        self.sales[request.order_id] = sale
        return sale

    async def record_sale(self, request: SaleRequest) -> Sale | None:
        return self.sell(request)

    async def find_sale(self, order_id: str) -> Sale | None:
        return self.sales.get(order_id)

    async def find_product(self, product_id: int) -> Product | None:
        return self.products.get(product_id)

    async def list_products(self, page: Page) -> list[Product]:
        ids = sorted(i for i in self.products if i > page.after_product_id)
        return [self.products[i] for i in ids[: page.size + 1]]

    async def restock(self, product_id: int, quantity: int) -> Product | None:
        product = self.products.get(product_id)
        if product is None or product.stock + quantity > MAX_STOCK:
            return None
        self.products[product_id] = Product(product_id, product.name, product.stock + quantity)
        return self.products[product_id]


class HeldStore(FakeInventory):
    """``BatchStore``: sells like the real store, one order after another; each write
    (one order or a batch) waits for ``go``, so "a write is in flight" is a state
    the test controls instead of a race."""

    def __init__(self, *products: Product) -> None:
        super().__init__(*products)
        self.writes: list[list[str]] = []  # order ids of each write, in write order
        self.in_flight = 0
        self.go = asyncio.Event()
        self.go.set()
        self.fail_with: Exception | None = None

    async def record_sales(self, requests: list[SaleRequest]) -> list[Sale | None]:
        self.writes.append([r.order_id for r in requests])
        self.in_flight += 1
        try:
            await self.go.wait()
            if self.fail_with is not None:
                raise self.fail_with
            return [self.sell(r) for r in requests]  # all or nothing: no await in between
        finally:
            self.in_flight -= 1

    async def record_sale(self, request: SaleRequest) -> Sale | None:
        [sale] = await self.record_sales([request])
        return sale


class FakeOutbox:
    """The relay's ``Outbox``: hands out its entries in order, ``limit`` at a time."""

    def __init__(self, entries: list[OutboxEntry], failures: int = 0) -> None:
        self.pending = list(entries)
        self.failures = failures  # the next publish_pending calls that find the database down

    async def publish_pending(
        self, limit: int, publish: Callable[[OutboxEntry], Awaitable[None]]
    ) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the inventory database is unavailable")
        batch, self.pending = self.pending[:limit], self.pending[limit:]
        for entry in batch:
            await publish(entry)
        return len(batch)

    async def backlog(self) -> OutboxBacklog:
        return OutboxBacklog(len(self.pending), None)

    async def delete_published(self, older_than_seconds: float) -> int:
        return 0

    async def listen(self, wake: Callable[[], None]) -> None:
        pass


class FakeSales:
    """``SalesStore``: records each event id once."""

    def __init__(self) -> None:
        self.sales: dict[str, AnalyticsSale] = {}
        self.windows: list[SummaryWindow] = []

    async def record(self, sale: AnalyticsSale) -> bool:
        if sale.event_id in self.sales:
            return False
        self.sales[sale.event_id] = sale
        return True

    async def product_sales(self, product_id: int) -> ProductSales:
        mine = [s for s in self.sales.values() if s.product_id == product_id]
        return ProductSales(
            product_id,
            "",
            sum(s.quantity for s in mine),
            len(mine),
            max((s.occurred_at for s in mine), default=None),
        )

    async def summary(self, window: SummaryWindow) -> SalesSummary:
        self.windows.append(window)
        inside = [s for s in self.sales.values() if window.start <= s.occurred_at < window.end]
        return SalesSummary(window, sum(s.quantity for s in inside), len(inside), [])

    async def recent(self, page: EventsPage) -> list[AnalyticsSale]:
        newest = sorted(self.sales.values(), key=lambda s: (s.occurred_at, s.event_id))[::-1]
        if page.after:
            newest = [s for s in newest if (s.occurred_at, s.event_id) < page.after]
        return newest[: page.size + 1]


@dataclass
class Record:
    """One notification in ``FakeNotifications``."""

    status: str = "sending"
    lease: str | None = None
    lease_until: float = 0.0
    attempts: int = 0


@dataclass
class FakeNotifications:
    """``NotificationStore``: a claim gets a lease unless the notification is sent or
    leased to someone else until later; time is the fake's own clock (``now``)."""

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
    """``MailSender``: keeps what it sent; raises ``failures`` first, one per send;
    waits while ``answering`` is clear (a mail server that does not answer)."""

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
