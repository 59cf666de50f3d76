-- Transactional outbox: events written in the same transaction as the change
-- they announce, published to RabbitMQ afterwards by the OutboxRelay.

CREATE TABLE outbox (
    position     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- publication order
    event_id     uuid   NOT NULL UNIQUE,
    routing_key  text   NOT NULL,          -- e.g. inventory.product_sold
    -- Events with the same key are published in position order (per product).
    ordering_key text   NOT NULL,
    payload      jsonb  NOT NULL,          -- the event, proto3 JSON with proto field names
    headers      jsonb  NOT NULL DEFAULT '{}',  -- extra AMQP headers (e.g. trace context)
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz              -- set once RabbitMQ confirmed the message
);

-- What the relay scans: only unpublished rows, in order.
CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL;
CREATE INDEX outbox_unpublished_by_key ON outbox (ordering_key, position) WHERE published_at IS NULL;
-- What the clean-up deletes.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake the relay at commit time instead of making it poll. NOTIFY is
-- transactional (a rolled-back sale sends nothing), and a refused sale inserts
-- no row, so it sends nothing either.
CREATE FUNCTION outbox_wake_relay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM inserted) THEN
        PERFORM pg_notify('outbox', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_wake_relay AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_wake_relay();
