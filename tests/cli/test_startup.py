"""`--help` and argument errors of every own subcommand start without torch, diffusers, Lightning or
transformers (seconds of import each): checked by what a fresh interpreter has imported, not by timing.

The command list is read from ``amlight.cli.main.OWN_COMMANDS`` and each command's argparse sub-commands,
so commands added later are covered without editing this file.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from amlight.cli.main import OWN_COMMANDS

HEAVY = ("torch", "diffusers", "lightning", "pytorch_lightning", "transformers")
REPO = Path(__file__).resolve().parents[2]

# Runs main(argv) for each argv in one fresh interpreter: exit code, output and the heavy modules loaded
# after each call (a call that imports one shows it first).
_CHILD = r"""
import contextlib, io, json, sys
from amlight.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    results.append({"code": code, "heavy": heavy, "output": out.getvalue()})
print(json.dumps(results))
""".replace("HEAVY", repr(HEAVY))


def _sub_commands(module_name: str) -> list[list[str]]:
    """[[]] plus [name] for each argparse sub-command of the command's parser (data check, benchmark train, ...)."""
    paths = [[]]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:  # the command's own --help test then fails, naming it
        return paths
    build = getattr(module, "build_parser", None)
    if build is None:
        return paths
    for action in build()._actions:
        if isinstance(action, argparse._SubParsersAction):
            paths += [[name] for name in action.choices]
    return paths


def _cases() -> list[list[str]]:
    cases = [[]]  # `python -m amlight --help`
    for command, (module_name, _) in OWN_COMMANDS.items():
        cases += [[command, *sub] for sub in _sub_commands(module_name)]
    return cases


def _run(*argvs: list[str]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argvs)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", _cases(), ids=lambda p: " ".join(p) or "amlight")
def test_help_and_argument_errors_import_nothing_heavy(path):
    name = " ".join(path)
    help_result, *error_result = _run([*path, "--help"], *([[*path, "--no-such-option-xyz"]] if path else []))
    assert help_result["code"] == 0, help_result["output"][-1000:]
    assert "usage" in help_result["output"].lower()
    assert help_result["heavy"] == [], f"`{name} --help` imported {help_result['heavy'][:8]}"
    for result in error_result:  # an argument error: argparse's exit code 2 and a message
        assert result["code"] == 2, result["output"][-1000:]
        assert "error" in result["output"].lower() or "usage" in result["output"].lower()
        assert result["heavy"] == [], f"`{name} --no-such-option-xyz` imported {result['heavy'][:8]}"


def test_python_m_amlight_help_imports_nothing_heavy():
    """The real entry point (`python -m amlight`), seen by -X importtime."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "amlight", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0
    assert "fit" in proc.stdout and "generate" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "amlight" in imported  # the import log is really there
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_lazy_package_exports_still_work():
    """`from amlight import categorical_cost` resolves on first use (in this process: torch is loaded anyway;
    that `import amlight` alone loads nothing heavy is the -X importtime test above)."""
    import amlight
    from amlight import categorical_cost
    from amlight.modules.categorical_cost import categorical_cost as direct

    assert categorical_cost is direct and "categorical_cost" in amlight.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        amlight.nope  # noqa: B018


def test_lazy_modules_exports_still_work():
    """amlight.modules resolves its names on first use (the parsers import its attention_modes for the
    one list of modes); `categorical_cost` stays the function although a submodule has that name."""
    import amlight.modules
    import amlight.modules.categorical_cost  # noqa: F401 (the submodule import sets the package attribute)
    from amlight.modules import AMAdapter, categorical_cost
    from amlight.modules.adapter import AMAdapter as adapter_class
    from amlight.modules.categorical_cost import categorical_cost as direct

    assert categorical_cost is direct and amlight.modules.categorical_cost is direct
    assert AMAdapter is adapter_class and set(amlight.modules.__all__) <= set(dir(amlight.modules))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        amlight.modules.nope  # noqa: B018


def test_benchmark_startup_times_both_checkouts_and_refuses_a_bad_baseline(tmp_path, capsys):
    from amlight.cli.commands.benchmark import main as benchmark_main

    out = tmp_path / "startup.json"
    assert benchmark_main(["startup", "--repeats", "1", "--baseline", str(REPO), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [row["command"] for row in record["rows"]][:2] == ["--help", "generate --help"]
    for row in record["rows"]:
        assert row["median_s"] > 0 and row["baseline_median_s"] > 0 and len(row["runs_s"]) == 1
    table = capsys.readouterr().out
    assert "speedup" in table and "generate --help" in table
    assert benchmark_main(["startup", "--baseline", str(tmp_path)]) == 2
    assert "no amlight/__init__.py there" in capsys.readouterr().err
