-- record_sales (0004) also stores each order's outbox headers: the trace context
-- of the call that made the order (meshkit/telemetry.py), so each event of a
-- batch continues its own caller's trace rather than the batch's. Same function
-- otherwise; the old signature goes, as only this code calls it.

DROP FUNCTION record_sales(integer, text[], integer[], text[], uuid[], text, jsonb[]);

CREATE FUNCTION record_sales(
    p_product_id integer,
    p_order_ids  text[],
    p_quantities integer[],
    p_sold_by    text[],
    p_event_ids  uuid[],
    p_routing_key text,
    p_bodies     jsonb[],
    p_headers    jsonb[]   -- per order: its caller's trace context ('{}' when none)
) RETURNS integer[]  -- per order: the stock left after its sale, NULL when not sold
LANGUAGE plpgsql AS $$
-- Shape, and why:
-- 1. lock the product's row once (FOR UPDATE): the whole batch costs one lock
--    wait instead of one per order, which is what serialises a hot product;
-- 2. walk the orders in arrival order with the stock in a variable: an order that
--    does not fit is skipped (NULL) and a later, smaller one may still fit;
-- 3. each sale row goes in with ON CONFLICT DO NOTHING: an order id already sold
--    (earlier in this batch, in an earlier batch, or by a concurrent transaction,
--    which it waits for) is skipped without failing the batch, and the caller's
--    replay answer is read afterwards (use_cases.decrease_stock);
-- 4. one stock UPDATE and one outbox INSERT (from unnest, in arrival order, so
--    events keep the sales' order) for the sold orders: an event exactly for
--    every committed sale, all in the caller's one transaction.
-- Anything failing (connection lost, serialization) aborts the transaction:
-- a batch is committed whole or not at all.
DECLARE
    v_name  text;
    v_stock integer;
    v_left  integer[] := array_fill(NULL::integer, ARRAY[cardinality(p_order_ids)]);
    v_sold  integer[] := '{}';  -- indexes of the sold orders, in arrival order
    v_sold_at timestamptz := now();
BEGIN
    SELECT name, stock INTO v_name, v_stock
    FROM products WHERE product_id = p_product_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN v_left;  -- unknown product: nothing sold
    END IF;
    FOR i IN 1 .. cardinality(p_order_ids) LOOP
        CONTINUE WHEN p_quantities[i] > v_stock;
        INSERT INTO sales (order_id, product_id, quantity, remaining_stock, sold_by, sold_at)
        VALUES (p_order_ids[i], p_product_id, p_quantities[i], v_stock - p_quantities[i],
                p_sold_by[i], v_sold_at)
        ON CONFLICT (order_id) DO NOTHING;
        CONTINUE WHEN NOT FOUND;
        v_stock := v_stock - p_quantities[i];
        v_left[i] := v_stock;
        v_sold := v_sold || i;
    END LOOP;
    IF cardinality(v_sold) = 0 THEN
        RETURN v_left;
    END IF;
    UPDATE products SET stock = v_stock, updated_at = now() WHERE product_id = p_product_id;
    INSERT INTO outbox (event_id, routing_key, ordering_key, payload, headers)
    SELECT p_event_ids[i], p_routing_key, p_product_id::text, p_bodies[i] || jsonb_build_object(
        'product_name', v_name, 'remaining_stock', v_left[i], 'occurred_at', v_sold_at),
        p_headers[i]
    FROM unnest(v_sold) WITH ORDINALITY AS s (i, arrival)
    ORDER BY arrival;
    RETURN v_left;
END
$$;
