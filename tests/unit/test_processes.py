"""ManagedProcess's pid files: what `make down` relies on to find what `make up` started."""

import sys

from devtools.processes import ManagedProcess

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def managed(tmp_path, argv: list[str]) -> ManagedProcess:
    return ManagedProcess("sleeper", argv, tmp_path / "sleeper.log", pid_path=tmp_path / "x.pid")


def test_stop_keeps_the_pid_file_of_a_process_it_does_not_recognise(tmp_path):
    started = managed(tmp_path, SLEEPER)
    started.start()
    try:
        # Once it runs the command (after exec), its pid file identifies it.
        started.wait_until(lambda: managed(tmp_path, SLEEPER).pid == started.pid, "its exec")
        # e.g. `make down` from another checkout's launcher: another command line.
        other = managed(tmp_path, [*SLEEPER[:-1], "import time; time.sleep(61)"])
        assert not other.running()
        other.stop()
        assert started.running()
        assert (tmp_path / "x.pid").read_text().strip() == str(started.pid)
        # The launcher that does recognise it (no Popen: found by its pid file) stops it.
        found = managed(tmp_path, SLEEPER)
        assert found.pid == started.pid
        found.stop()
        assert started.exit_code(5) is not None
        assert not (tmp_path / "x.pid").exists()
    finally:
        started.stop()


def test_stop_removes_a_stale_pid_file(tmp_path):
    finished = managed(tmp_path, [sys.executable, "-c", "pass"])
    finished.start()
    assert finished.exit_code(30) == 0
    managed(tmp_path, [sys.executable, "-c", "pass"]).stop()
    assert not (tmp_path / "x.pid").exists()
