"""One-line messages for what goes wrong while LightningCLI parses a config or builds a stage.

jsonargparse wraps an error raised in a model's or DataModule's ``__init__`` in several layers of
"Does not validate against any of the Union subtypes", and prints a usage dump for an unknown key.
Here the amlight error inside is found and shown alone, as ``generate`` shows its errors; an
unknown key is named with where it came from (flag or file) and the closest accepted key.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path

# The amlight package (this file is amlight/cli/lightning_errors.py): a ValueError raised anywhere in it
# is about the user's input, and is shown as one line.
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
# Modules that moved when the package root was split into cli/, training/ and utils/: a saved
# config.yaml of an older run still names the old path.
_MOVED = {"amlight.run_logger": "amlight.training.run_logger", "amlight.run_config": "amlight.training.run_config",
          "amlight.run_directory": "amlight.training.run_directory",
          "amlight.checkpoint_io": "amlight.training.checkpoint_io", "amlight.lightning_cli": "amlight.cli.lightning_cli",
          "amlight.commands": "amlight.cli.commands", "amlight.visualize": "amlight.utils.visualize",
          "amlight.atomic_write": "amlight.utils.atomic_write", "amlight.cpu_threads": "amlight.utils.cpu_threads"}
_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def _chain(error: BaseException) -> list[BaseException]:
    seen, out, todo = set(), [], [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo += [e.__cause__, e.__context__]
    return out


def _raised_in_amlight(error: BaseException) -> bool:
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def one_line(error: BaseException, whole: bool = False) -> str:
    """The first line of the error's message, or (``whole``) all of it joined into one line."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines) if whole else lines[0]


def amlight_error(error: BaseException) -> BaseException | None:
    """The error amlight raised about the user's input somewhere in ``error``'s chain: an exception
    class of the amlight package, or a ValueError raised by amlight code. None for anything else (a
    bug keeps its traceback)."""
    for e in _chain(error):
        if type(e).__module__.split(".")[0] == "amlight" and isinstance(e, Exception):
            return e
    for e in _chain(error):
        if type(e) is ValueError and _raised_in_amlight(e):
            return e
    return None


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _file_has(path: str, key: str) -> bool:
    import yaml

    try:
        node = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and part == "init_args":
            continue  # `model: {lr: ...}` without init_args is accepted too
        else:
            return False
    return True


def _where(key: str, argv: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and (flag == f"--{key}" or flag.endswith(f".{leaf}") or flag == f"--{leaf}"):
            return f"on the command line ({flag})"
    for path in reversed(_config_files(argv)):
        if _file_has(path, key):
            return f"in {path}"
    files = _config_files(argv)
    return f"in {', '.join(files)}" if files else "in the arguments"


def _class_parameters(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _unknown_key(error: BaseException, argv: list[str], accepted: list[str]) -> str | None:
    messages = [str(e) for e in _chain(error)]
    text = "\n".join(messages)
    key, candidates = None, list(accepted)
    m = re.search(r"does not accept (?:the )?option '([^']+)'", text) or re.search(r"unrecognized arguments: --?(\S+)", text, re.I)
    if m:
        key = m.group(1).split("=", 1)[0]
    else:
        m = re.search(r"Option '([^']+)' is not accepted", text)
        if m is None:
            return None
        owner = re.search(r'Parser key "([^"]+)"', text)
        class_path = re.search(r"class_path '([^']+)'", text)
        prefix = f"{owner.group(1)}.init_args." if owner else ""
        key = prefix + m.group(1)
        if class_path:
            candidates = [prefix + p for p in _class_parameters(class_path.group(1))]
    # Leaves are compared among keys of the same parent: a long shared prefix would make any key look close.
    parent = key.rpartition(".")[0]
    leaves = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
    match = difflib.get_close_matches(key.rpartition(".")[2], list(leaves), n=1, cutoff=0.6)
    hint = f"; did you mean {leaves[match[0]]}?" if match else ""
    return f"unknown key {key} {_where(key, argv)}{hint}"


def describe(error: BaseException, argv: list[str], accepted: list[str] = ()) -> str | None:
    """The one-line message for ``error``, or None when it is not about the user's input."""
    from argparse import ArgumentError

    found = amlight_error(error)
    if found is not None:
        return one_line(found, whole=True)  # amlight's messages may add an example on further lines
    if not any(isinstance(e, ArgumentError) for e in _chain(error)):
        return None
    unknown = _unknown_key(error, argv, list(accepted))
    if unknown is not None:
        return unknown
    # Other parse errors: the innermost specific message, with the key it is about.
    keys = [m.group(1) for e in _chain(error) for m in [re.search(r'Parser key "([^"]+)"', str(e))] if m]
    specific = [one_line(e) for e in _chain(error) if not one_line(e).startswith(_WRAPPERS)
                and not one_line(e).startswith("Parser key")]
    message = specific[-1] if specific else one_line(error)
    moved = re.search(r"No module named '(amlight\.[\w.]+)'", message)
    if moved and moved.group(1) in _MOVED:
        message += f" (it moved: write {_MOVED[moved.group(1)]} in the config)"
    return f"{keys[-1]}: {message}" if keys and keys[-1] not in message else message
