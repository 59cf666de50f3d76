-- Runs once, when the postgres container starts on an empty data volume
-- (POSTGRES_DB already created inventory_db): notify_svc's own database.
-- Both services create their tables themselves (migrations on start).
CREATE DATABASE notify_db;
