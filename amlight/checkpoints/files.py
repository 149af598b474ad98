"""Opening checkpoint files: one loader and one wording for every command that reads one.

``--stage1``, ``--adapter``, ``stage1_checkpoint``, ``--ckpt_path`` and Lightning's own resume all
come through :func:`load_torch_file` (or :func:`check_safetensors_file`), so a truncated or foreign
file says "FILE is truncated or not a PyTorch checkpoint (why)" in one line instead of the zip or
pickle reader's internals. Loading is ``torch.load(weights_only=True)``: tensors and plain values only.

It also writes the part of the record every stage shares: the format version, the stage names and
:func:`plain` hyper-parameters.
"""
from __future__ import annotations

import hashlib

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
STAGE_NAMES = {"generation": "stage-1 (generation)", "adapter": "stage-2 (adapter)"}


class CheckpointError(ValueError):
    """A checkpoint or adapter file that cannot be used; the message is one line naming the file."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _container_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file, found from its first bytes and zip directory only
    (cheap: a multi-GB checkpoint is not read), or None when it looks like one."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x80"):
        return None  # the legacy (pre-zip) pickle format: torch.load decides
    if not head.startswith(b"PK"):
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary data"
        return f"{size} bytes of {kind}, not a zip archive: starts with {head!r}"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as e:
        # torch.save writes the zip directory last: a cut-off file has its first entries but no directory.
        return f"a zip archive without its directory at the end ({size} bytes): {e}"
    if not any(name.endswith("data.pkl") for name in names):
        return f"a zip archive without the data.pkl record torch.save writes ({len(names)} entries)"
    return None


def load_torch_file(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a one-line :class:`CheckpointError`
    for a missing, truncated, foreign or unsafe file. ``what`` names the file's role in messages.
    ``mmap``: map the file instead of reading it, so that tensors nobody touches are never read."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is a directory, not a checkpoint file")
    problem = _container_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({problem})")
    if mmap:
        with open(path, "rb") as f:
            mmap = f.read(2) == b"PK"  # the legacy (pre-zip) format cannot be memory-mapped: read it whole
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain values; it is refused "
                "(only weights_only checkpoints are loaded, never arbitrary pickles)"
            ) from None
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({_first_line(e)})") from None
    except Exception as e:  # zip CRC errors, cut-off tensor records, ...
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({_first_line(e)})") from None


def read_checkpoint(path: str | Path, expect_stage: str | None = None, mmap: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint written by an amlight stage, restricted to tensors and primitives."""
    path = Path(path)
    ckpt = load_torch_file(path, mmap=mmap)
    info = ckpt.get("amlight") if isinstance(ckpt, dict) else None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} is not an amlight checkpoint (no 'amlight' record)")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {info.get('format_version')}, newer than this amlight understands "
            f"({FORMAT_VERSION}); upgrade amlight"
        )
    if expect_stage is not None and info.get("stage") != expect_stage:
        found = STAGE_NAMES.get(info.get("stage"), repr(info.get("stage")))
        wanted = STAGE_NAMES.get(expect_stage, expect_stage)
        hint = ""
        if expect_stage == "generation" and info.get("stage") == "adapter":
            hint = f"; its stage-1 checkpoint is {info['stage1'].get('path')}" if isinstance(info.get("stage1"), dict) else ""
        raise CheckpointError(f"{path} is a {found} checkpoint, but a {wanted} checkpoint is needed here{hint}")
    return ckpt


def check_safetensors_file(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, after checking that its header and tensor data are
    all there; one-line :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"adapter file {path} does not exist")
    size = path.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is truncated or not a safetensors file ({why})")

    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8:
            raise bad(f"the header claims {header_len} bytes but the file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"the header is not JSON: {_first_line(e)}") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    if ends and 8 + header_len + max(ends) > size:
        raise bad(f"the tensors need {8 + header_len + max(ends)} bytes but the file has {size}")
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def plain(value: Any) -> Any:
    """Turn hyper-parameters into plain Python values (dict/list/str/number/bool/None) for safe loading."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


# Keyed by (resolved path, size, mtime): an unchanged file is not hashed again.
_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_key(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None  # read_checkpoint says what is wrong with it
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def cached_sha256(path: str | Path) -> str:
    """``file_sha256``, computed once per process for an unchanged file (a stage-1 file is gigabytes)."""
    key = _file_key(Path(path))
    if key is None:
        return file_sha256(path)
    if key not in _SHA256:
        _SHA256[key] = file_sha256(path)
    return _SHA256[key]
