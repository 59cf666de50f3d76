"""Container health probe: ``python -m meshkit.healthcheck [--service NAME] [HOST:PORT]``.

Asks a service's grpc.health.v1 endpoint and exits 0 only when the answer is
SERVING (docker and compose treat any other exit code as unhealthy). Failures
print one line on stderr, never a traceback, so ``docker inspect`` stays readable.
"""

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def default_address() -> str:
    # The service itself listens on GRPC_HOST (0.0.0.0 in a container); the probe
    # runs inside the same container, so loopback always reaches it.
    return f"127.0.0.1:{os.environ.get('GRPC_PORT', '50051')}"


def probe(address: str, service: str = "", timeout: float = 3.0) -> str | None:
    """None when ``service`` is SERVING at ``address``, else why not."""
    label = f"{address} service {service!r}" if service else address
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # types-grpcio-health-checking declares HealthStub without its methods.
            reply: health_pb2.HealthCheckResponse = stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return f"{label}: {error.code().name}: {error.details()}"
    if reply.status != SERVING:
        return f"{label}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshkit.healthcheck", description=__doc__)
    parser.add_argument("address", nargs="?", default=None, help="HOST:PORT")
    parser.add_argument("--service", default="", help='health service name ("" = overall)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    args = parser.parse_args(argv)
    problem = probe(args.address or default_address(), args.service, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
