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

from devtools.topology import grpc_services
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
# Envoy's own refusals of protected methods called without a token.
AT_THE_EDGE = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
PYTHON_TEXT = re.compile(r"Traceback|\b[A-Z][A-Za-z]*(Error|Exception)\b|\bline \d+\b")

METHODS = [
    (service.backend, f"/{service.full_name}/{method.name}", method.input_type)
    for service in grpc_services()
    for method in mesh_pool().FindServiceByName(service.full_name).methods
]


@pytest.mark.parametrize("via_envoy", [False, True], ids=["direct", "envoy"])
async def test_fuzzed_requests_get_only_documented_answers(scratch_mesh, via_envoy):
    mesh = scratch_mesh
    backends = {name: p for name, p in mesh.processes.items() if name != "envoy"}
    log_sizes = {name: p.log_path.stat().st_size for name, p in backends.items()}
    surprises, answered = [], 0
    for backend, method, request_type in METHODS:
        target = mesh.envoy_target if via_envoy else mesh.grpc_target(backend)
        expected = DOCUMENTED | AT_THE_EDGE if via_envoy else DOCUMENTED
        seed = SEED * 1_000_003 + zlib.crc32(f"{method}{via_envoy}".encode())
        fuzzer = ProtoFuzzer(seed)
        async with grpc.aio.insecure_channel(target) as channel:
            for case in range(CASES):
                # One plausible request in four, so the domain checks get their share.
                payload = (
                    fuzzer.valid(request_type) if case % 4 == 0 else fuzzer.mutate(request_type)
                )
                code, message = await call_raw(channel, method, payload)
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
