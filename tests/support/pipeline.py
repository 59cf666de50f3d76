"""Reading what the event pipeline produced, for end-to-end assertions."""

from collections import Counter

import asyncpg
from pymongo import AsyncMongoClient

from notify_svc.settings import NotifySettings


class PipelineView:
    """The analytics documents, notifications and e-mails for given orders."""

    def __init__(self, mongo_url: str, notify_db: asyncpg.Pool, mail) -> None:
        self._mongo = AsyncMongoClient(mongo_url, tz_aware=True)
        self.sales_events = self._mongo["analytics_db"]["sales_events"]
        self._notify_db = notify_db
        self.mail = mail

    async def close(self) -> None:
        await self._mongo.close()

    async def documents(self, order_ids: list[str]) -> Counter:
        """How many sales_events documents each order has."""
        cursor = self.sales_events.find({"order_id": {"$in": order_ids}}, {"order_id": 1})
        return Counter([doc["order_id"] async for doc in cursor])

    async def notifications(self, order_ids: list[str]) -> Counter:
        rows = await self._notify_db.fetch(
            "SELECT order_id FROM notifications WHERE order_id = ANY($1) AND status = 'sent'",
            order_ids,
        )
        return Counter(row["order_id"] for row in rows)

    def emails(self, order_ids: list[str]) -> Counter:
        wanted = set(order_ids)
        found = Counter()
        for message in self.mail.messages():
            order_id = message["Subject"].split()[1]
            if order_id in wanted:
                found[order_id] += 1
        return found

    async def assert_delivered_once_in_effect(self, order_ids: list[str]) -> None:
        """One document and one sent notification per order, and its e-mail. The one
        at-least-once step: an e-mail the SMTP server accepted just before notify_svc
        was killed, before it was marked sent, goes out again with the same
        Message-ID; at most as many as notify_svc held unacknowledged at once."""
        assert await self.documents(order_ids) == {o: 1 for o in order_ids}
        assert await self.notifications(order_ids) == {o: 1 for o in order_ids}
        emails = self.emails(order_ids)
        assert set(emails) == set(order_ids)
        held = NotifySettings.model_fields["consumer_prefetch"].default
        assert sum(emails.values()) - len(order_ids) <= held

    async def complete(self, order_ids: list[str]) -> bool:
        """Every order has its document, its sent notification and its e-mail."""
        expected = set(order_ids)
        return (
            set(await self.documents(order_ids)) == expected
            and set(await self.notifications(order_ids)) == expected
            and set(self.emails(order_ids)) == expected
        )
