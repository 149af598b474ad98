"""``python -m amlight benchmark startup``: wall time of ``--help`` commands in fresh processes.

What a new user waits for before the first line of output: Python starting, ``import amlight`` and
the subcommand's argument parser. Each command runs ``repeats`` times in a new interpreter (nothing
cached in the process; the OS file cache is warm after the first run, which is also what a user sees
from the second call on) and the median counts. ``--baseline DIR`` times another checkout too (run in
DIR with DIR first on PYTHONPATH, same interpreter), alternating runs so both see the same load.

Light on purpose: this module imports only the standard library.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

# (label, arguments after `python -m amlight`)
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("--help", ("--help",)),
    ("generate --help", ("generate", "--help")),
    ("data check --help", ("data", "check", "--help")),
    ("evaluate --help", ("evaluate", "--help")),
    ("generate (usage error)", ("generate", "--no-such-flag")),
)


def _env(pythonpath: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def time_once(args: tuple[str, ...], python: str, env: dict[str, str], cwd: str | None = None) -> float:
    """Wall seconds of one ``python -m amlight ARGS`` in a fresh process (the exit code is ignored:
    usage errors exit 2 on purpose)."""
    start = time.perf_counter()
    subprocess.run([python, "-m", "amlight", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def startup_benchmark(repeats: int = 5, python: str | None = None, baseline: str | None = None,
                      commands=COMMANDS, progress=None) -> dict:
    """Median wall time of each command; with ``baseline`` (a checkout's root, put first on
    PYTHONPATH) the same commands of that checkout too, runs alternating so both see the same load."""
    python = python or sys.executable
    current_env, baseline_env = _env(None), _env(baseline)
    rows = []
    for label, args in commands:
        if progress:
            progress(f"{label}: {repeats} runs" + (" each, alternating with the baseline" if baseline else ""))
        runs, base_runs = [], []
        for _ in range(repeats):
            runs.append(time_once(tuple(args), python, current_env))
            if baseline:
                # cwd too: `python -m` puts the working directory ahead of PYTHONPATH.
                base_runs.append(time_once(tuple(args), python, baseline_env, cwd=baseline))
        row = {"command": label, "args": list(args), "median_s": statistics.median(runs), "runs_s": runs}
        if baseline:
            row["baseline_median_s"] = statistics.median(base_runs)
            row["baseline_runs_s"] = base_runs
            row["speedup"] = row["baseline_median_s"] / row["median_s"]
        rows.append(row)
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"python": python, "baseline": baseline, "repeats": repeats, "loadavg": load, "rows": rows}


def format_table(result: dict) -> str:
    baseline = result.get("baseline")
    head = f"{'python -m amlight ...':<26} {'median s':>9}"
    if baseline:
        head += f" {'baseline s':>11} {'speedup':>8}"
    lines = [head]
    for row in result["rows"]:
        line = f"{row['command']:<26} {row['median_s']:>9.2f}"
        if baseline:
            line += f" {row['baseline_median_s']:>11.2f} {row['speedup']:>7.1f}x"
        lines.append(line)
    lines.append(f"median of {result['repeats']} fresh processes each" + (f"; baseline: {baseline}" if baseline else ""))
    if result.get("loadavg"):
        lines.append(f"load average after the run: {' '.join(f'{v:.2f}' for v in result['loadavg'])}")
    return "\n".join(lines)
