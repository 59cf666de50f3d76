"""CPU time from /proc: the one way every section of the bench reads it.

- ``process_cpu_seconds(pid)``: what one running process used so far (utime + stime);
- ``cpu_seconds(groups, command)``: every live process in some process groups (each
  managed process leads its own) or of one command name, with their waited-for
  children's time (cutime + cstime);
- ``machine_cpu()``: busy and total clock ticks of all cores (/proc/stat).
"""

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: str) -> list[str] | None:
    """/proc/<pid>/stat as fields: [comm, state, ppid, pgrp, …]; None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces: split after its closing parenthesis.
    name = text[text.index("(") + 1 : text.rindex(")")]
    return [name, *text[text.rindex(")") + 2 :].split()]


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU a running process has used so far (utime and stime); NaN
    when it is not running."""
    fields = proc_stat(str(pid)) if pid is not None else None
    if fields is None:
        return float("nan")
    return (int(fields[12]) + int(fields[13])) / TICKS


def cpu_seconds(groups: set[int] | None = None, command: str | None = None) -> float:
    """CPU time of every live process in one of the process ``groups`` (each
    managed process leads its own), or named ``command``, and of their waited-for
    children."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or (fields := proc_stat(pid)) is None:
            continue
        # After the name: state, ppid, pgrp, … utime is field 14, stime 15, then
        # cutime and cstime (1-based): the time of children that exited and were
        # waited for counts too (PostgreSQL's postmaster collects that of every
        # closed connection's backend, pgbench's included).
        in_group = groups is not None and int(fields[3]) in groups
        if in_group or (command is not None and fields[0] == command):
            total += sum(int(value) for value in fields[12:16])
    return total / TICKS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores so far (/proc/stat's first line)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)
