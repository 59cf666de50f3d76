-- Products with their stock, and one row per sold order (the idempotency record).

CREATE TABLE products (
    product_id integer PRIMARY KEY CHECK (product_id > 0),
    name       text    NOT NULL CHECK (name <> ''),
    -- The CHECK is the last line of defence against overselling; the
    -- conditional UPDATE in DecreaseStock never lets it fire.
    stock      integer NOT NULL CHECK (stock >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A sale per order id. Its primary key is what makes DecreaseStock idempotent:
-- a second sale for the same order id cannot be committed.
CREATE TABLE sales (
    order_id        text    PRIMARY KEY,
    product_id      integer NOT NULL REFERENCES products,
    quantity        integer NOT NULL CHECK (quantity > 0),
    -- Stock right after this sale: the answer a replay gets back.
    remaining_stock integer NOT NULL CHECK (remaining_stock >= 0),
    sold_at         timestamptz NOT NULL DEFAULT now()
);

-- The seed's catalogue.
INSERT INTO products (product_id, name, stock) VALUES
    (1, 'Laptop Gamer', 100),
    (2, 'Mouse Wireless', 50);
