from pydantic import Field, MongoDsn

from meshkit.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    grpc_port: int = Field(default=50052, ge=1, le=65535)
    mongo_url: MongoDsn = MongoDsn("mongodb://127.0.0.1:27017")
    # The seed's database name; the collection is sales_events.
    analytics_database: str = Field(default="analytics_db", min_length=1)
    # Upper bound for reaching MongoDB: past it the caller gets UNAVAILABLE.
    mongo_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # Unacknowledged messages the consumer may hold at once.
    consumer_prefetch: int = Field(default=50, ge=1, le=10_000)
