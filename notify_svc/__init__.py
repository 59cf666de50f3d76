"""notify_svc: one order-confirmation e-mail per ProductSold event."""
