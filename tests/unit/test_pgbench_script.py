"""The pgbench baseline runs DecreaseStock's own statement: every parameter of
RECORD_SALE needs a pgbench expression, or pgbench fails (as it did when the sale
gained its outbox headers, $8)."""

import re

from bench.pgbench_script import decrease_stock_script
from inventory_svc.store import RECORD_SALE


def test_every_parameter_of_the_sale_statement_has_a_pgbench_value():
    parameters = set(re.findall(r"\$\d+", RECORD_SALE))
    script = decrease_stock_script(first_product=1, products=3)
    assert parameters  # the statement is parameterised: the check means something
    assert re.findall(r"\$\d+", script) == []
