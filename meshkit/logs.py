"""One logging format for every service, so the logs under .run/ read alike."""

import logging


def configure_logging(service: str, level: str) -> None:
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)-7s {service}[%(process)d] %(name)s: %(message)s",
        force=True,
    )
    # grpc and asyncio chatter at INFO is noise for our users.
    logging.getLogger("asyncio").setLevel(logging.WARNING)
