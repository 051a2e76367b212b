"""CPU seconds of benchmark processes: the daemons a script started (Linux /proc) and the script itself."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def worker_cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this (master) process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
