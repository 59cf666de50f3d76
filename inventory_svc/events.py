"""Broker adapter: the events inventory_svc publishes.

Sales write their events into the outbox (store.py); the relay (relay.py) sends
them through these publishers, one per routing key: persistent and mandatory, so
an unroutable message is an error, not a silent drop.
"""

from faststream.rabbit import RabbitRouter
from faststream.rabbit.publisher import RabbitPublisher

from meshkit.broker_topology import EXCHANGE
from meshkit.events import PRODUCT_SOLD, ProductSold

router = RabbitRouter()
product_sold = router.publisher(
    exchange=EXCHANGE,
    routing_key=PRODUCT_SOLD,
    persist=True,
    mandatory=True,
    schema=ProductSold,
    title="inventory.product_sold",
    description=(
        "inventory_svc publishes one ProductSold per committed sale, from its"
        " transactional outbox (at least once; deduplicate by event_id)."
    ),
)
PUBLISHERS: dict[str, RabbitPublisher] = {PRODUCT_SOLD: product_sold}
