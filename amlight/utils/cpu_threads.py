"""How many torch threads to use on a CPU that other processes may share (no torch import here).

Used by the commands that run models (generate, predict) and by the benchmarks.
"""
from __future__ import annotations

import os
import time


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_times() -> dict[int, list[int]]:
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                times[int(fields[0][3:])] = [int(x) for x in fields[1:9]]
    return times


def idle_cores(sample_s: float = 1.0) -> float | None:
    """Cores of this process's affinity set left idle by everything else, sampled over sample_s; None
    where /proc/stat is missing."""
    try:
        cpus = os.sched_getaffinity(0)
        before = _cpu_times()
        time.sleep(sample_s)
        after = _cpu_times()
    except (AttributeError, OSError):
        return None
    idle = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after:
            delta = [b - a for a, b in zip(before[cpu], after[cpu])]
            total = sum(delta)
            idle += (delta[3] + delta[4]) / total if total else 1.0  # idle + iowait
    return idle


def default_threads() -> tuple[int, float | None]:
    """(torch threads, idle cores seen): one thread per core that other processes leave free.

    Not simply every core: torch's OpenMP threads meet at a barrier after each op, and when another
    process holds one of the cores, every barrier waits for a scheduler time slice. On 2 cores with
    a training job beside it, the tiny model's step took 4-5 s with 2 threads and 0.035 s with 1.
    """
    cores = available_cores()
    idle = idle_cores()
    if idle is None:
        return cores, None
    # A core counts as free when at most ~70% of it is taken by others.
    return max(1, min(cores, int(idle + 0.3))), idle
