"""Closed-loop gRPC load generator: N callers, each sending its next call as soon
as the previous one returned, spread over up to two processes (one per core).

    python -m bench.grpc_load --target 127.0.0.1:50051 --rpc decrease \\
        --clients 32 --seconds 5 --first-product 100001 --products 1000

Every DecreaseStock has a unique order id (otherwise the replay path is
measured). Messages are built with the protobuf runtime from the mesh's
descriptor set (upb, C) and responses are not decoded, to keep the generator's
own CPU use low; it is reported anyway. Prints one JSON line.
"""

import argparse
import asyncio
import json
import multiprocessing
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory

from meshkit.reflection import mesh_pool

METHODS = {
    "decrease": ("/polyglot.inventory.v1.InventoryService/DecreaseStock", "DecreaseStockRequest"),
    "get": ("/polyglot.inventory.v1.InventoryService/GetStock", "GetStockRequest"),
}


def request_type(name: str) -> Any:
    # The services' own pool of the mesh's descriptors (meshkit.reflection).
    return message_factory.GetMessageClass(
        mesh_pool().FindMessageTypeByName(f"polyglot.inventory.v1.{name}")
    )


def requests(args: argparse.Namespace, worker: int) -> Callable[[], bytes]:
    message = request_type(METHODS[args.rpc][1])
    prefix = f"{args.run_id}-{worker}-"
    counter = iter(range(1, 1 << 62))
    last = args.first_product + args.products - 1

    def decrease() -> bytes:
        return message(
            product_id=random.randint(args.first_product, last),
            quantity=1,
            order_id=f"{prefix}{next(counter)}",
        ).SerializeToString()

    def get() -> bytes:
        return message(product_id=random.randint(args.first_product, last)).SerializeToString()

    return decrease if args.rpc == "decrease" else get


CONNECT_SECONDS = 30.0


async def drive(args: argparse.Namespace, worker: int, clients: int) -> dict:
    next_request = requests(args, worker)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    # Through Envoy, DecreaseStock needs a bearer token (scope orders:write).
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    async with grpc.aio.insecure_channel(args.target) as channel:
        call = channel.unary_unary(METHODS[args.rpc][0])  # raw bytes both ways
        # Bounded: a server that went away (the bench tearing down) must not keep
        # the generator, and the bench waiting for it, forever.
        await asyncio.wait_for(channel.channel_ready(), CONNECT_SECONDS)
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        stop_at = time.perf_counter() + args.seconds

        # --rate: each client sends on its own schedule (clients ÷ rate apart), so
        # meshes of different speed get the same orders per second to handle.
        interval = clients / args.rate if args.rate else 0.0

        async def caller(offset: float) -> None:
            next_at = time.perf_counter() + offset * interval
            while (started := time.perf_counter()) < stop_at:
                if interval:
                    next_at += interval
                try:
                    await call(next_request(), timeout=30, metadata=metadata)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1
                if interval:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        await asyncio.gather(*(caller(i / clients) for i in range(clients)))
    return {"latencies": latencies, "errors": errors}


def run_worker(job: tuple[argparse.Namespace, int, int]) -> dict:
    args, worker, clients = job
    return asyncio.run(drive(args, worker, clients))


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--rpc", choices=sorted(METHODS), default="decrease")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--first-product", type=int, default=1)
    parser.add_argument("--products", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--token", default="", help="bearer token sent as authorization metadata")
    parser.add_argument("--rate", type=float, default=0.0, help="calls per second (0: as fast)")
    args = parser.parse_args()
    args.run_id = uuid.uuid4().hex[:8]
    args.start_at = time.time() + 1.0  # every process starts its clock together

    processes = max(1, min(args.processes, args.clients))
    shares = [args.clients // processes + (i < args.clients % processes) for i in range(processes)]
    args.rate /= processes  # each process its share
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(run_worker, [(args, i, n) for i, n in enumerate(shares)])
    latencies = sorted(x for r in results for x in r["latencies"])
    errors: dict[str, int] = {}
    for result in results:
        for code, count in result["errors"].items():
            errors[code] = errors.get(code, 0) + count
    print(
        json.dumps(
            {
                "requests": len(latencies),
                "tps": len(latencies) / args.seconds,
                "p50_ms": percentile(latencies, 0.50) * 1000,
                "p99_ms": percentile(latencies, 0.99) * 1000,
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()
