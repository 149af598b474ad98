"""Pipeline folders (diffusers ``save_pretrained`` layout) as stage-1 models, adapters and label spaces.

A pipeline folder is the currency of amlight: ``model_index.json`` plus one subfolder per component
(``unet``, ``structure_guidance``, ``scheduler``, ``prompt_embeddings``, ``label_space``, optionally
``am_adapter``, ``vae``, ``text_encoder``, ``tokenizer``). Everything that reads a stage-1 checkpoint
can read one: ``amlight.checkpoints.stage1.stage1_from_pipeline_folder`` gives the same frozen
``Stage1Model``, cached per process like ``load_stage1``. :func:`check_pipeline_folder` says in one line, naming the file,
what is missing or foreign before diffusers' loader would fail with its own internals.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from amlight.backbone.backbone import own_memory  # noqa: F401 (used by the loaders of folder parts)
from amlight.checkpoints.files import CheckpointError, cached_sha256

INDEX = "model_index.json"
PIPELINE_CLASS = "AMPipeline"
REQUIRED = ("unet", "structure_guidance", "scheduler")
# Components amlight defines itself: the classes model_index.json may name for each.
OWN_CLASSES = {
    "structure_guidance": ("StructureGuidance", "ControlNetGuidance"),
    "am_adapter": ("AMAdapter",),
    "prompt_embeddings": ("PromptEmbeddings",),
    "label_space": ("PipelineLabelSpace",),
}
# Where each kind of component keeps its config, and what its weights are called.
CONFIG_FILES = {"scheduler": "scheduler_config.json", "tokenizer": "tokenizer_config.json"}
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


class PipelineFolderError(CheckpointError):
    """A pipeline folder that cannot be used; the message is one line naming the file."""


def is_pipeline_folder(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding ``model_index.json`` (a diffusers pipeline folder)."""
    path = Path(path)
    return path.is_dir() and (path / INDEX).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineFolderError(f"{path} is not readable JSON ({first})") from None
    if not isinstance(data, dict):
        raise PipelineFolderError(f"{path} is not a JSON object")
    return data


def read_model_index(path: str | Path) -> dict[str, Any]:
    """The checked ``model_index.json`` of an amlight pipeline folder."""
    path = Path(path)
    if not path.is_dir():
        raise PipelineFolderError(f"pipeline folder {path} does not exist or is not a directory")
    index_file = path / INDEX
    if not index_file.is_file():
        raise PipelineFolderError(f"{index_file} does not exist: {path} is not a diffusers pipeline folder")
    index = _read_json(index_file)
    found = index.get("_class_name")
    if found != PIPELINE_CLASS:
        raise PipelineFolderError(f"{index_file} describes a {found or 'nameless'} pipeline, not an amlight "
                                  f"{PIPELINE_CLASS} (export one with `python -m amlight export`)")
    for name in REQUIRED:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise PipelineFolderError(f"{index_file} lacks the required component {name!r}")
    return index


def check_pipeline_folder(path: str | Path) -> dict[str, Any]:
    """Check an amlight pipeline folder without loading weights: every component that
    ``model_index.json`` lists has its folder, a config of the class it names, and safetensors
    weights. Returns the index; :class:`PipelineFolderError` naming the file otherwise."""
    path = Path(path)
    index = read_model_index(path)
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            continue
        library, class_name = entry
        expected = OWN_CLASSES.get(name)
        if expected is not None and (class_name not in expected or not str(library).startswith("amlight.")):
            raise PipelineFolderError(f"{path / INDEX}: component {name!r} is {library}.{class_name}, "
                                      f"amlight's is {' or '.join(expected)}")
        folder = path / name
        if not folder.is_dir():
            raise PipelineFolderError(f"{folder} does not exist, but {path / INDEX} lists the component {name!r}")
        if name == "tokenizer":
            if not any(folder.iterdir()):
                raise PipelineFolderError(f"{folder} is empty: the tokenizer's files are missing")
            continue
        config_file = folder / CONFIG_FILES.get(name, "config.json")
        if not config_file.is_file():
            raise PipelineFolderError(f"{config_file} does not exist: the {name!r} component has no config")
        config = _read_json(config_file)
        if library == "transformers":
            if class_name not in (config.get("architectures") or [class_name]):
                raise PipelineFolderError(f"{config_file} is the config of {config.get('architectures')}, "
                                          f"not of {class_name}")
            weights = TRANSFORMERS_WEIGHTS
        else:
            if config.get("_class_name") != class_name:
                raise PipelineFolderError(f"{config_file} is the config of a {config.get('_class_name') or 'nameless'} "
                                          f"class, not of {class_name} ({name!r})")
            weights = None if name == "scheduler" else ("diffusion_pytorch_model.safetensors",
                                                        "diffusion_pytorch_model.safetensors.index.json")
        if weights is not None and not any((folder / w).is_file() for w in weights) \
                and not any(folder.glob("*.safetensors")):
            raise PipelineFolderError(f"{folder / weights[0]} does not exist: the {name!r} component has no "
                                      "safetensors weights")
    return index


def _weight_files(path: Path, name: str) -> list[Path]:
    return sorted(p for p in (path / name).glob("*.safetensors") if p.is_file())


def folder_digest(path: str | Path) -> str:
    """sha256 over the unet and structure-guidance weight files of a folder: what identifies its stage 1."""
    path = Path(path)
    digest = hashlib.sha256()
    for name in ("unet", "structure_guidance"):
        for file in _weight_files(path, name):
            digest.update(f"{name}/{file.name}:{cached_sha256(file)}\n".encode())
    return digest.hexdigest()


def adapter_from_pipeline_folder(path: str | Path):
    """The folder's AM-Adapter (frozen, eval), or None when the folder has none."""
    from amlight.modules.adapter import AMAdapter

    path = Path(path)
    index = check_pipeline_folder(path)
    entry = index.get("am_adapter")
    if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
        return None
    try:
        adapter = AMAdapter.from_pretrained(path / "am_adapter", low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        text = str(e).strip().splitlines()
        raise PipelineFolderError(f"{path / 'am_adapter'}: cannot be loaded ({type(e).__name__}: "
                                  f"{text[0] if text else ''})") from None
    return own_memory(adapter).eval().requires_grad_(False)
