"""python -m inventory_svc (migrations first: python -m inventory_svc.migrate)"""

from inventory_svc.bootstrap import serve
from inventory_svc.settings import InventorySettings
from meshkit.lifecycle import service_main

service_main("inventory_svc", InventorySettings, serve)
