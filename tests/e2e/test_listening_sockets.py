"""What listens where: every process of the mesh on loopback, Envoy's listener on
the configured address and nothing else beyond it (tests/e2e)."""

import ipaddress
import os
import socket
from pathlib import Path

from blueprint.edge.render import envoy_config
from blueprint.edge.settings import EnvoySite


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv4 socket seen as IPv6
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _listening() -> dict[int, tuple[str, int]]:
    """inode → (address, port) of every listening TCP socket on the machine."""
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _with_children(pid: int) -> set[int]:
    pids, todo = set(), [pid]
    while todo:
        current = todo.pop()
        pids.add(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            children = (task / "children").read_text().split()
            todo += [int(c) for c in children if int(c) not in pids]
    return pids


def _owner_of_port(port: int, listening: dict[int, tuple[str, int]]) -> int:
    inodes = {inode for inode, (_, p) in listening.items() if p == port}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _socket_inodes(int(entry.name)) & inodes:
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError(f"nothing of ours listens on {port}")


def test_only_loopback_sockets_in_the_mesh(mesh, mongo_url, mail):
    """Envoy's admin, the services (gRPC and metrics), MongoDB and the SMTP catcher listen
    on loopback; Envoy's listener on the configured address (loopback here and in `make up`)."""
    listening = _listening()
    owners = {name: _with_children(process.pid) for name, process in mesh.processes.items()}
    owners["mongodb"] = {_owner_of_port(int(mongo_url.rsplit(":", 1)[1]), listening)}
    owners["smtp catcher"] = {_owner_of_port(int(mail.url.rsplit(":", 1)[1]), listening)}
    seen = {}
    for name, pids in owners.items():
        inodes = set().union(*(_socket_inodes(pid) for pid in pids))
        sockets = [listening[inode] for inode in inodes if inode in listening]
        assert sockets, f"{name} listens on nothing?"
        seen[name] = sockets
        for address, port in sockets:
            assert is_loopback(address), f"{name} listens on {address}:{port}"
    envoy_ports = {port for _, port in seen["envoy"]}
    assert {mesh.plan.http_port, mesh.plan.admin_port} <= envoy_ports
    for backend, port in [*mesh.plan.grpc_ports.items(), *mesh.plan.metrics_ports.items()]:
        if backend in seen:
            assert port in {p for _, p in seen[backend]}


def test_only_the_listener_may_be_configured_beyond_loopback():
    """What `make up` and compose run: admin always on loopback, and no other socket."""
    for site in (EnvoySite(), EnvoySite(listen_address="0.0.0.0")):
        config = envoy_config(site)
        assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
        listeners = config["static_resources"]["listeners"]
        bound = [
            listener["address"]["socket_address"]["address"]
            for listener in listeners
            if "address" in listener
        ]
        assert bound == [site.listen_address]
        # the other listener is Envoy-internal (no socket)
        assert all("internal_listener" in lsn for lsn in listeners if "address" not in lsn)
