"""python -m notify_svc.migrate: apply notify_db's pending migrations, then exit."""

from meshkit.postgres import migration_main
from notify_svc.settings import NotifySettings
from notify_svc.store import MIGRATIONS

if __name__ == "__main__":
    migration_main("notify_svc", NotifySettings, lambda s: s.notify_database_url, MIGRATIONS)
