"""CPU per gRPC call of a lone inventory_svc under h2load (nghttp2-client), no Envoy:
``python -m bench.grpc_cost [--tree DIR] [--rpc get|decrease] [--clients N] [--calls N]
[NAME=VALUE ...]``.

The service runs from ``--tree`` (another checkout, to compare two builds in turn)
on a throwaway database, with the NAME=VALUE settings added; after a warm-up,
h2load sends the calls and the service's CPU time (/proc: user + system) is
divided by them. h2load is a C client, so the figure is the service's own cost.
"""

import argparse
import asyncio
import re
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

import polyglot.inventory.v1 as pb
from bench.procstat import process_cpu_seconds
from devtools import sandbox
from devtools.processes import ManagedProcess, grpc_serving

ROOT = Path(__file__).resolve().parent.parent


def request(rpc: str) -> tuple[str, bytes]:
    if rpc == "get":
        path, message = "GetStock", bytes(pb.GetStockRequest(product_id=1))
    else:
        path = "DecreaseStock"
        message = bytes(pb.DecreaseStockRequest(product_id=1, quantity=1, order_id="ORD-bench"))
    return path, b"\x00" + struct.pack(">I", len(message)) + message


async def one_product(url: str) -> None:
    conn = await asyncpg.connect(url)
    await conn.execute(  # the migrations seed product 1 with little stock
        "INSERT INTO products (product_id, name, stock) VALUES (1, 'x', 1e9)"
        " ON CONFLICT (product_id) DO UPDATE SET stock = excluded.stock"
    )
    await conn.close()


def measure(args: argparse.Namespace) -> str:
    url = asyncio.run(sandbox.create_database(sandbox.PG_SERVER_URL, "polyglot_bench_grpc_cost"))
    try:
        sandbox.migrate({"INVENTORY_DATABASE_URL": url}, ["inventory_svc"])
        asyncio.run(one_product(url))
        port = sandbox.free_port()
        env = {"INVENTORY_DATABASE_URL": url, "GRPC_PORT": str(port), "LOG_LEVEL": "WARNING"}
        service = ManagedProcess(
            "inventory_svc",
            [str(Path(args.tree) / ".venv/bin/python"), "-m", "inventory_svc"],
            Path(tempfile.gettempdir()) / "polyglot-bench-grpc-cost.log",
            env=env | dict(setting.split("=", 1) for setting in args.settings),
            cwd=Path(args.tree),
        )
        service.start_until(lambda: grpc_serving(f"127.0.0.1:{port}"), "SERVING")
        try:
            path, body = request(args.rpc)
            with tempfile.NamedTemporaryFile(suffix=".bin") as data:
                Path(data.name).write_bytes(body)
                load = [
                    "h2load", "-c", str(args.clients), "-m", "1", "-d", data.name,
                    "-H", "content-type: application/grpc", "-H", "te: trailers",
                    f"http://127.0.0.1:{port}/polyglot.inventory.v1.InventoryService/{path}",
                ]  # fmt: skip
                subprocess.run([*load, "-n", str(args.calls // 5)], capture_output=True, check=True)
                before, started = process_cpu_seconds(service.pid), time.perf_counter()
                run = subprocess.run([*load, "-n", str(args.calls)], capture_output=True, text=True)
                wall = time.perf_counter() - started
                used = process_cpu_seconds(service.pid) - before
        finally:
            service.stop()
        succeeded = re.search(r"(\d+) succeeded", run.stdout)
        mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", run.stdout)
        return (
            f"{args.tree} {args.rpc} c={args.clients}: {args.calls / wall:.0f} calls/s,"
            f" mean {mean.group(1) if mean else '?'}, service CPU"
            f" {used / args.calls * 1e6:.0f} µs/call,"
            f" {succeeded.group(1) if succeeded else 0} of {args.calls} succeeded"
        )
    finally:
        asyncio.run(sandbox.drop_database(url))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=str(ROOT))
    parser.add_argument("--rpc", choices=["get", "decrease"], default="get")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("settings", nargs="*", metavar="NAME=VALUE")
    print(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
