"""python -m inventory_svc.relay: the outbox relay as a process of its own (same
settings as the API; GRPC_PORT is its health port)."""

from inventory_svc.bootstrap import relay
from inventory_svc.settings import InventorySettings
from meshkit.lifecycle import service_main

if __name__ == "__main__":
    service_main("inventory_svc.relay", InventorySettings, relay)
