"""LightningCLI's help (issue 18, item 11): it names the program `python -m amlight fit`, describes the
stages' and the DataModule's arguments from their docstrings, and takes the short class names."""
import inspect
import re
import subprocess
import sys
from pathlib import Path

import docstring_parser
import pytest
import yaml

import amlight.cli.lightning_cli  # noqa: F401 - Lightning's log handler must not bind to a test's captured stderr
from amlight.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *argv])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_fit_help_names_the_program_and_says_where_the_class_options_are(capsys):
    out = help_text(capsys, "--help")
    assert out.startswith("usage: python -m amlight fit [-c CONFIG]"), out[:200]
    assert "__main__.py" not in out
    assert "--model.help GenerationStage" in " ".join(out.split())  # the way to the stage's options
    assert "--threads THREADS" in out


@pytest.mark.parametrize("option, name, described", [
    ("--model.help", "GenerationStage", {"--model.exemplar_dropout": "share of samples trained without the exemplar",
                                         "--model.sample_guidance_scale": "the DDIM sampler of validation grids"}),
    ("--model.help", "AdapterStage", {"--model.stage1_checkpoint": "the GenerationStage checkpoint whose UNet",
                                      "--model.max_resolution": "the adapter's 4D conv stack phi"}),
    ("--data.help", "ExemplarPairDataModule", {"--data.dataset": "a registered dataset name",
                                               "--data.max_val_samples": "cap on validation items"}),
])
def test_class_help_takes_the_short_name_and_describes_the_arguments(capsys, option, name, described):
    out = help_text(capsys, option, name)
    assert out.startswith("usage: python -m amlight fit "), out[:200]
    flat = " ".join(out.split())
    for flag, text in described.items():
        # the description follows the flag (after the group's names where one entry documents several)
        pattern = rf"{re.escape(flag)} {flag.rsplit('.', 1)[1].upper()} (\([^)]*\) )?{re.escape(text)}"
        assert re.search(pattern, flat), (flag, out)


def test_short_class_names_work_in_a_fresh_process(tmp_path):
    """A fresh process: in this one an earlier test may have imported the classes, which is what made
    jsonargparse know their short names (a config naming amlight.stages.X did that too)."""
    result = subprocess.run([sys.executable, "-m", "amlight", "fit", "--model", "AdapterStage",
                             "--model.init_args.stage1_checkpoint", "s1.ckpt", "--data", "ExemplarPairDataModule",
                             "--print_config"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["class_path"] == "amlight.stages.AdapterStage"
    assert printed["model"]["init_args"]["stage1_checkpoint"] == "s1.ckpt"
    assert printed["data"]["class_path"] == "amlight.data.ExemplarPairDataModule"


def test_compact_args_blocks_become_one_entry_per_argument():
    from amlight.cli.lightning_cli import parseable_docstring

    class Example:
        """Args:
            a, b: shared text
                that goes on.
            c / d: another.
            e: alone.

        Notes after the block.
        """

    doc = docstring_parser.parse(parseable_docstring(Example))
    assert {p.arg_name: p.description for p in doc.params} == {
        "a": "(a, b) shared text that goes on.", "b": "(a, b) shared text that goes on.",
        "c": "(c / d) another.", "d": "(c / d) another.", "e": "alone."}
    assert doc.short_description == " ".join(inspect.cleandoc(__doc__).split("\n\n")[0].split())  # the module's
    assert Example.__doc__.startswith("Args:")  # the class itself is left as written


def _descriptions(help_out: str, prefix: str) -> dict[str, str]:
    """{argument: its description} from argparse's help: each ``  --prefix.NAME ...`` entry, less its
    invocation (flags and metavars) and the ``(type: ..., default: ...)`` that jsonargparse appends."""
    entries: dict[str, list[str]] = {}
    name = None
    for line in help_out.splitlines():
        match = re.match(rf"^  {re.escape(prefix)}\.(\w+)\b", line)
        if match:
            name = match.group(1)
            # the invocation ends where argparse's column gap starts (or the line ends: text on the next)
            entries[name] = re.split(r"\s{2,}", line.strip(), maxsplit=1)[1:]
        elif name and line.startswith(" " * 4) and line.strip():
            entries[name].append(line.strip())
        else:
            name = None
    return {n: re.split(r"\((?:required, )?type:", " ".join(text))[0].strip() for n, text in entries.items()}


@pytest.mark.parametrize("option, name, cls", [
    ("--model.help", "GenerationStage", "amlight.stages.GenerationStage"),
    ("--model.help", "AdapterStage", "amlight.stages.AdapterStage"),  # lr & co. from DenoisingStage's docstring
    ("--data.help", "ExemplarPairDataModule", "amlight.data.ExemplarPairDataModule"),
])
def test_every_argument_has_a_description(capsys, option, name, cls):
    import importlib

    module, _, attr = cls.rpartition(".")
    arguments = [p for p in inspect.signature(getattr(importlib.import_module(module), attr)).parameters if p != "self"]
    described = _descriptions(help_text(capsys, option, name), option.split(".")[0])
    assert sorted(described) == sorted(arguments)  # the help lists every argument, nothing else
    missing = [a for a in arguments if not re.search(r"[a-z]{3}", described[a])]
    assert not missing, f"{name}: no description for {', '.join(missing)}"
