"""Start, watch and stop the mesh's processes; shared by the launcher and the tests.

Each process writes stdout and stderr to one log file. A pid file lets a later
command (``make down``) find what an earlier one (``make up``) started.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blueprint.topology import ROOT


class StartupFailed(RuntimeError):
    pass


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # added to os.environ
    pid_path: Path | None = None
    cwd: Path = ROOT
    _popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # A second start would orphan the running process (nothing would stop it).
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self._popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the launcher; not killed by its Ctrl-C
            )
        if self.pid_path:
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(f"{self._popen.pid}\n")

    @property
    def pid(self) -> int | None:
        if self._popen is not None:
            return self._popen.pid
        pid = self._recorded_pid()
        return pid if pid is not None and _is_ours(pid, self.argv) else None

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text()) if self.pid_path else None
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self.pid is not None

    def signal(self, signum: int) -> None:
        """Signal the process and everything it started (its own process group)."""
        pid = self.pid
        if pid is not None and self.running():
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                os.kill(pid, signum)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait for a graceful exit, SIGKILL after ``timeout``.

        A live process of the pid file that this object does not recognise (started
        with another command line) keeps its pid file, so that a later ``make down``
        can still find it; the file of one stopped here, or long gone, goes.
        """
        if self.running():
            self.signal(signal.SIGTERM)
            if not self._wait_exit(timeout):
                self.signal(signal.SIGKILL)
                self._wait_exit(5)
        elif (recorded := self._recorded_pid()) is not None and _alive(recorded):
            return
        if self.pid_path:
            self.pid_path.unlink(missing_ok=True)

    def exit_code(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the exit; its code, or None if still running.

        Only for a process this object started (the code of another is unknown).
        """
        assert self._popen is not None, "exit_code() needs a process started here"
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _wait_exit(self, timeout: float) -> bool:
        if self._popen is not None:
            return self.exit_code(timeout) is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                return True
            time.sleep(0.05)
        return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start_until(self, ready: Callable[[], bool], what: str) -> None:
        """Start it and wait until ``ready``; stopped again if it never gets there."""
        self.start()
        try:
            self.wait_until(ready, what)
        except Exception:
            self.stop()
            raise

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll ``ready`` until it holds; fail early, with the log, if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise StartupFailed(
                    f"{self.name} exited before {what}. Last lines of {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise StartupFailed(
            f"{self.name}: no {what} after {timeout:.0f}s. Last lines of {self.log_path}:\n"
            f"{self.log_tail()}"
        )


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie (which has exited, only not been reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_ours(pid: int, argv: list[str]) -> bool:
    """True when ``pid`` is alive and still runs our command (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A script with a shebang runs as [interpreter, script, args...]: compare the tail.
    expected = [arg.encode() for arg in argv]
    return cmdline.rstrip(b"\0").split(b"\0")[-len(expected) :] == expected


def grpc_health(address: str, service: str = "") -> str | None:
    """One grpc.health.v1 check: "SERVING", "NOT_SERVING", …; None when unreachable."""
    try:
        with grpc.insecure_channel(address) as channel:
            # types-grpcio-health-checking declares HealthStub without its methods.
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
    except grpc.RpcError:
        return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def grpc_serving(address: str, service: str = "") -> bool:
    return grpc_health(address, service) == "SERVING"


def run(argv: list[str], timeout: float = 120, **options: Any) -> subprocess.CompletedProcess[str]:
    """A tool run to its end, its output captured as text; the caller reads its exit code."""
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **options
    )


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
