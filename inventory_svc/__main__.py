"""python -m inventory_svc [serve|migrate]"""

from inventory_svc.bootstrap import migrate, serve
from inventory_svc.settings import InventorySettings
from meshkit.lifecycle import service_main

service_main("inventory_svc", InventorySettings, serve, {"migrate": migrate})
