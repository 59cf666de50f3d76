"""Random and broken protobuf to every method of every service, straight to each
backend and through Envoy: only deliberate answers, no traceback, nobody dies.

Cases per method and path: GRPC_FUZZ_CASES (default 40; e.g.
``make test PYTEST_ARGS="tests/e2e/test_grpc_fuzz.py" GRPC_FUZZ_CASES=2000``).
The generator is seeded, so a failure names a case that can be replayed.
"""

import os
import re
import zlib

import grpc
import pytest

from blueprint.access import required_scope
from blueprint.contracts import load_contracts
from meshkit.reflection import mesh_pool
from tests.support.protofuzz import ProtoFuzzer
from tests.support.raw_grpc import call_raw

CASES = int(os.environ.get("GRPC_FUZZ_CASES", "40"))
SEED = int(os.environ.get("GRPC_FUZZ_SEED", "9"))

# The answers the contracts document; anything else (INTERNAL, UNKNOWN…) is a bug.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}
PYTHON_TEXT = re.compile(r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception)\b|\bline \d+\b")

METHODS = [
    (
        service.backend,
        f"/{service.full_name}/{method.name}",
        method.input_type,
        required_scope(service.full_name, method.name),
    )
    for service in load_contracts().services
    for method in mesh_pool().FindServiceByName(service.full_name).methods
]


@pytest.mark.parametrize(
    ("via_envoy", "with_token"),
    [(False, False), (True, True), (True, False)],
    ids=["direct", "envoy", "envoy-without-token"],
)
async def test_fuzzed_requests_get_only_documented_answers(scratch_mesh, via_envoy, with_token):
    """Through Envoy with a token holding every scope, the bytes reach the services;
    without one, protected methods are refused at the edge, whatever the bytes."""
    mesh = scratch_mesh
    token = tuple(mesh.auth_header().items()) if with_token else ()
    backends = {name: p for name, p in mesh.processes.items() if name != "envoy"}
    log_sizes = {name: p.log_path.stat().st_size for name, p in backends.items()}
    surprises, answered = [], 0
    for backend, method, request_type, scope in METHODS:
        target = mesh.envoy_target if via_envoy else mesh.grpc_target(backend)
        refused_at_the_edge = via_envoy and not with_token and scope is not None
        expected = {grpc.StatusCode.UNAUTHENTICATED} if refused_at_the_edge else DOCUMENTED
        seed = SEED * 1_000_003 + zlib.crc32(f"{method}{via_envoy}{with_token}".encode())
        fuzzer = ProtoFuzzer(seed)
        async with grpc.aio.insecure_channel(target) as channel:
            for case in range(CASES):
                # One plausible request in four, so the domain checks get their share.
                payload = (
                    fuzzer.valid(request_type) if case % 4 == 0 else fuzzer.mutate(request_type)
                )
                code, message = await call_raw(channel, method, payload, metadata=token)
                answered += 1
                if code not in expected or PYTHON_TEXT.search(message):
                    surprises.append((method, case, payload.hex(), code.name, message))
    assert answered == CASES * len(METHODS)
    assert not surprises, "\n".join(map(str, surprises[:20]))
    for name, process in [*backends.items(), ("envoy", mesh.processes["envoy"])]:
        assert process.running(), f"{name} died"
    for name, process in backends.items():
        with process.log_path.open() as log:
            log.seek(log_sizes[name])
            assert "Traceback" not in log.read(), f"a traceback in {name}'s log"
