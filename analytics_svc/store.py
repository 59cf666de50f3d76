"""MongoDB adapter (Beanie): one document per sale event in analytics_db.sales_events.

Documents keep the event's snake_case field names, so they read naturally in a
MongoDB viewer. A unique index on event_id makes recording idempotent: a
redelivered event is a duplicate key, not a second sale. Totals are computed by
MongoDB aggregation pipelines.

Events arriving together (the consumer handles up to its prefetch at once) are
written together: while one insert_many is in flight, the next events gather
for the following one (group commit, meshkit/group_commit.py). Each caller still
learns its own outcome, so a message is acknowledged only after its document was
written, and an event that cannot be written fails its own message only: a
document MongoDB refuses is reported for its index while the others of the
unordered insert are written, and an insert_many failing as a whole for anything
but an outage (a document the driver cannot encode, say) is made again one
document at a time.
"""

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from beanie import Document, init_beanie
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.errors import BulkWriteError, ConnectionFailure, PyMongoError, WriteError

from analytics_svc.domain import EventsPage, ProductSales, Sale, SalesSummary, SummaryWindow
from meshkit.errors import Unavailable
from meshkit.group_commit import GroupCommit, not_an_outage

log = logging.getLogger(__name__)

NEWEST_FIRST = [("occurred_at", DESCENDING), ("event_id", DESCENDING)]
MAX_BATCH = 500
DUPLICATE_KEY = 11000


class SaleEvent(Document):
    event_id: str
    order_id: str
    product_id: int
    product_name: str
    quantity: int
    remaining_stock: int
    occurred_at: datetime
    recorded_at: datetime
    sold_by: str = ""  # absent in documents recorded before events carried it

    class Settings:
        name = "sales_events"
        indexes = [  # noqa: RUF012 - Beanie reads this class attribute
            IndexModel([("event_id", ASCENDING)], unique=True, name="event_id_unique"),
            IndexModel(NEWEST_FIRST, name="newest_first"),
            IndexModel([("product_id", ASCENDING), *NEWEST_FIRST], name="product_newest_first"),
        ]

    def to_sale(self) -> Sale:
        return Sale(
            event_id=self.event_id,
            order_id=self.order_id,
            product_id=self.product_id,
            product_name=self.product_name,
            quantity=self.quantity,
            remaining_stock=self.remaining_stock,
            occurred_at=self.occurred_at,
            sold_by=self.sold_by,
        )


SALE_FIELDS = [field.name for field in dataclasses.fields(Sale)]


def _document(sale: Sale, recorded_at: datetime) -> dict[str, Any]:
    """A SaleEvent document as MongoDB stores it, made without Beanie: building and
    validating the Document and Beanie's insert path (copies, encoders) was about a
    tenth of analytics_svc's CPU per event (bench/findings.md). Its values are the
    checked event's, already of the fields' types, and the read path still goes
    through SaleEvent (tests/integration/test_analytics_store.py)."""
    document = {name: getattr(sale, name) for name in SALE_FIELDS}
    document["recorded_at"] = recorded_at
    return document


def _product_totals(limit: int | None = None) -> list[dict[str, Any]]:
    """Pipeline stages: per-product totals, best sellers first."""
    stages: list[dict[str, Any]] = [
        {"$sort": {"occurred_at": -1, "event_id": -1}},  # so $first is the latest sale
        {
            "$group": {
                "_id": "$product_id",
                "product_name": {"$first": "$product_name"},
                "units_sold": {"$sum": "$quantity"},
                "orders": {"$sum": 1},
                "last_sold_at": {"$first": "$occurred_at"},
            }
        },
        {"$sort": {"units_sold": -1, "_id": 1}},
    ]
    return [*stages, {"$limit": limit}] if limit else stages


def _is_unavailable(exc: BaseException) -> bool:
    """A failure that may pass: MongoDB unreachable, or any pymongo timeout
    (ExecutionTimeout, NetworkTimeout, WTimeoutError... all set ``.timeout``)."""
    if isinstance(exc, (ConnectionFailure, TimeoutError)):
        return True
    return isinstance(exc, PyMongoError) and exc.timeout


def _bulk_outcomes(exc: BulkWriteError, count: int) -> list[bool | Exception]:
    """Per document of an unordered insert_many: True if new, False if a duplicate,
    or the error of a document MongoDB refused (the others were written regardless:
    only its own caller fails).

    Raises when the batch as a whole must be retried: out of time, or the write
    concern not met.
    """
    if exc.timeout:
        raise exc  # an outage (_mongo): every caller waits it out and retries
    if exc.details.get("writeConcernErrors"):
        # Written but not confirmed durable: acking now could lose the sale. A retry
        # is safe (duplicates are recognised) and waits until MongoDB confirms.
        raise Unavailable(
            "the analytics database did not confirm the write; try again later"
        ) from exc
    errors = {error["index"]: error for error in exc.details.get("writeErrors", [])}
    outcomes: list[bool | Exception] = []
    for index in range(count):
        error = errors.get(index)
        if error is None:
            outcomes.append(True)
        elif error["code"] == DUPLICATE_KEY:
            outcomes.append(False)
        else:  # as insert_one would have raised it
            outcomes.append(WriteError(error.get("errmsg", ""), error["code"], error))
    return outcomes


def _product_sales(row: dict[str, Any]) -> ProductSales:
    return ProductSales(
        product_id=row["_id"],
        product_name=row["product_name"],
        units_sold=row["units_sold"],
        orders=row["orders"],
        last_sold_at=row["last_sold_at"],
    )


class MongoSales:
    def __init__(self, url: str, database: str, *, timeout_seconds: float) -> None:
        self._url = url
        self._database = database
        self._timeout_seconds = timeout_seconds
        self._timeout_ms = int(timeout_seconds * 1000)
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._inserts: GroupCommit[dict[str, Any], bool] = GroupCommit(
            self._insert, max_batch=MAX_BATCH, isolate=not_an_outage
        )

    async def ready(self) -> None:
        """Connect and create the indexes on first use, then prove MongoDB answers."""
        if self._client is None:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                self._url,
                tz_aware=True,
                serverSelectionTimeoutMS=self._timeout_ms,
                connectTimeoutMS=self._timeout_ms,
                timeoutMS=self._timeout_ms,
            )
            try:
                await init_beanie(database=client[self._database], document_models=[SaleEvent])
            except BaseException:
                await client.close()
                raise
            self._client = client
        async with self._mongo():
            await self._client.admin.command("ping")

    async def close(self) -> None:
        """Let the batch in flight finish first (bounded), so its callers learn their outcome."""
        await self._inserts.close(self._timeout_seconds, "sale writes to the analytics database")
        if self._client is not None:
            await self._client.close()
            self._client = None

    @asynccontextmanager
    async def _mongo(self) -> AsyncIterator[None]:
        if self._client is None:
            raise Unavailable("the analytics database is not reachable yet; try again shortly")
        try:
            yield
        except (PyMongoError, TimeoutError) as exc:
            if not _is_unavailable(exc):
                raise
            log.warning("analytics database unavailable: %s", exc)
            raise Unavailable("the analytics database is unavailable; try again later") from exc

    async def record(self, sale: Sale) -> bool:
        """Store the sale; False when it was already recorded (a redelivered event).

        Sales recorded at the same time share one insert_many (meshkit.group_commit)."""
        return await self._inserts.submit(_document(sale, datetime.now(UTC)))

    async def _insert(self, documents: list[dict[str, Any]]) -> list[bool | Exception]:
        """insert_many, unordered: a duplicate (redelivered event) or a document
        MongoDB refuses does not stop the rest."""
        async with self._mongo():
            try:
                await self._insert_documents(documents)
                return [True] * len(documents)
            except BulkWriteError as exc:
                return _bulk_outcomes(exc, len(documents))

    @staticmethod
    async def _insert_documents(documents: list[dict[str, Any]]) -> None:
        # The collection Beanie set up (client, database, name), without its Document layer.
        await SaleEvent.get_pymongo_collection().insert_many(documents, ordered=False)

    async def product_sales(self, product_id: int) -> ProductSales:
        async with self._mongo():
            rows = (
                await SaleEvent.find(SaleEvent.product_id == product_id)
                .aggregate(_product_totals())
                .to_list()
            )
        if not rows:
            return ProductSales(product_id, "", 0, 0, None)
        return _product_sales(rows[0])

    async def summary(self, window: SummaryWindow) -> SalesSummary:
        in_window = {"occurred_at": {"$gte": window.start, "$lt": window.end}}
        pipeline = [
            {"$match": in_window},
            {
                "$facet": {
                    "totals": [
                        {
                            "$group": {
                                "_id": None,
                                "units": {"$sum": "$quantity"},
                                "orders": {"$sum": 1},
                            }
                        }
                    ],
                    "top": _product_totals(window.top_products),
                }
            },
        ]
        async with self._mongo():
            [result] = await SaleEvent.aggregate(pipeline).to_list()
        totals = result["totals"][0] if result["totals"] else {"units": 0, "orders": 0}
        return SalesSummary(
            window=window,
            units_sold=totals["units"],
            orders=totals["orders"],
            top_products=[_product_sales(row) for row in result["top"]],
        )

    async def recent(self, page: EventsPage) -> list[Sale]:
        """Up to ``page.size + 1`` events after the page's cursor, newest first."""
        query: dict[str, Any] = {"product_id": page.product_id} if page.product_id else {}
        if page.after:
            occurred_at, event_id = page.after
            query["$or"] = [
                {"occurred_at": {"$lt": occurred_at}},
                {"occurred_at": occurred_at, "event_id": {"$lt": event_id}},
            ]
        async with self._mongo():
            # beanie's sort() is annotated with its SortDirection enum; pymongo's ints
            # (the same values, also used for the index) work as well.
            found = SaleEvent.find(query).sort(NEWEST_FIRST)  # type: ignore[arg-type]
            documents = await found.limit(page.size + 1).to_list()
        return [document.to_sale() for document in documents]
