"""The pgbench baseline: exactly the statement DecreaseStock runs.

The script is derived from ``inventory_svc.store.RECORD_SALE`` at run time, so
the baseline cannot drift from the service: the same conditional update, sale
row and outbox row, in one statement. Only the parameters differ in origin:
pgbench makes them client-side from random numbers (a unique order id, a random
event UUID) as the service does in Python, and the event body from the
contract's JSON with those values spliced in.
"""

import json

from inventory_svc.store import RECORD_SALE
from meshkit.events import PRODUCT_SOLD, product_sold_body

# $n of RECORD_SALE → a pgbench expression producing the same value.
PARAMETERS = {
    "$1": "('pgb-' || :client_id || '-' || :order_hi || '-' || :order_lo)",  # order_id
    "$2": "(:product)::integer",  # product_id
    "$3": "(:quantity)::integer",  # quantity
    "$4": "((lpad(to_hex((:uuid_hi)::bigint), 16, '0')"
    " || lpad(to_hex((:uuid_lo)::bigint), 16, '0'))::uuid)",
    "$5": f"'{PRODUCT_SOLD}'",  # routing key
    "$7": "'pgbench'",  # sold_by: the caller's verified subject
    "$8": "'{}'",  # outbox headers: an untraced caller's (no trace context to carry)
}


def _event_body() -> str:
    """$6: the body ``product_sold_body`` makes, with pgbench's values in place."""
    marks = {"event_id": "@EVENT@", "order_id": "@ORDER@"}
    body = product_sold_body(**marks, product_id=1, quantity=1, sold_by="pgbench")
    parsed = json.loads(body)
    assert (parsed["product_id"], parsed["quantity"]) == (1, 1)
    expression = "'" + body.replace("'", "''") + "'"
    expression = expression.replace('"product_id":1', "\"product_id\":' || :product || '")
    expression = expression.replace(
        '"@EVENT@"', "' || to_json(" + PARAMETERS["$4"] + "::text)::text || '"
    )
    expression = expression.replace(
        '"@ORDER@"', "' || to_json(" + PARAMETERS["$1"] + ")::text || '"
    )
    return f"({expression})"


PARAMETERS["$6"] = _event_body()


def decrease_stock_script(first_product: int, products: int) -> str:
    statement = RECORD_SALE
    for placeholder in sorted(PARAMETERS, reverse=True):  # $8 before $1…
        statement = statement.replace(placeholder, PARAMETERS[placeholder])
    last = first_product + products - 1
    return "\n".join(
        [
            f"\\set product random({first_product}, {last})",
            "\\set quantity 1",
            "\\set order_hi random(1, 999999999999)",
            "\\set order_lo random(1, 999999999999)",
            "\\set uuid_hi random(0, 1152921504606846975)",
            "\\set uuid_lo random(0, 1152921504606846975)",
            # pgbench wants one statement per line
            " ".join(line.strip() for line in statement.strip().splitlines()) + ";",
            "",
        ]
    )


def get_stock_script(first_product: int, products: int) -> str:
    last = first_product + products - 1
    return (
        f"\\set product random({first_product}, {last})\n"
        "SELECT product_id, name, stock FROM products WHERE product_id = :product;\n"
    )
