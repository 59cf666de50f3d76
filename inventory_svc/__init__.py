"""inventory_svc: stock of every product, sold atomically and idempotently by order id."""
