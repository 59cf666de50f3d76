"""python -m inventory_svc [serve|migrate]"""

import asyncio
import sys

from inventory_svc import bootstrap
from inventory_svc.settings import InventorySettings
from meshkit.lifecycle import run_until_signalled
from meshkit.logs import configure_logging
from meshkit.settings import load_settings


def main(argv: list[str]) -> None:
    command = argv[0] if argv else "serve"
    settings = load_settings(InventorySettings)
    configure_logging("inventory_svc", settings.log_level)
    if command == "serve":
        run_until_signalled(lambda stop: bootstrap.serve(settings, stop))
    elif command == "migrate":
        asyncio.run(bootstrap.migrate(settings))
    else:
        sys.exit(f"usage: python -m inventory_svc [serve|migrate] (unknown command {command!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
