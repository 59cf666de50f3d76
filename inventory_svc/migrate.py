"""python -m inventory_svc.migrate: apply inventory_db's pending migrations, then exit."""

from inventory_svc.settings import InventorySettings
from inventory_svc.store import MIGRATIONS
from meshkit.postgres import migration_main

if __name__ == "__main__":
    migration_main(
        "inventory_svc", InventorySettings, lambda s: s.inventory_database_url, MIGRATIONS
    )
