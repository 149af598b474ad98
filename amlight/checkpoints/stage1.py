"""The frozen stage-1 model (UNet + structure guidance) that stage 2 and inference build on.

Loaded once per process and checkpoint, like the backbone, and never a submodule of a stage-2
LightningModule: it stays out of stage-2 checkpoints and out of DDP's gradient synchronisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amlight.backbone.backbone import Backbone, freeze
from amlight.backbone.registry import backbone_from_spec
from amlight.checkpoints.files import (  # noqa: F401 (file_sha256, cached_sha256: re-exported)
    CheckpointError, _file_key, cached_sha256, file_sha256, read_checkpoint,
)
from amlight.checkpoints.pipeline_folder import (
    _weight_files, check_pipeline_folder, folder_digest, is_pipeline_folder, own_memory, read_model_index,
)
from amlight.modules.exemplar_unet import build_exemplar_unet


@dataclass
class Stage1Model:
    path: str
    sha256: str
    backbone: Backbone
    model: Any  # ExemplarUNet, frozen
    hparams: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.hparams["num_classes"])

    @property
    def ignore_index(self) -> int:
        return int(self.hparams.get("ignore_index", 255))

    @property
    def heads(self) -> int:
        heads = {p.heads for n, p in self.model.unet.named_modules() if n.endswith("attn1")}
        if len(heads) != 1:
            raise ValueError(f"the stage-1 UNet has self-attention layers with different head counts {sorted(heads)}")
        return heads.pop()

    def to(self, device) -> "Stage1Model":
        # Outside inference mode even when called inside it: this model is shared, and weights copied
        # under inference mode would make every later training step through it fail in backward.
        with torch.inference_mode(False):
            self.model.to(device)
            self.backbone.to(device)
        return self


# Keyed by (resolved path, size, mtime): an unchanged file is neither read nor hashed again.
_CACHE: dict[tuple[str, int, int], Stage1Model] = {}
# Pipeline folders, keyed by their path and the (size, mtime) of every weight file.
_FOLDER_CACHE: dict[tuple, Stage1Model] = {}


def _folder_key(path: Path) -> tuple:
    parts = ("unet", "structure_guidance", "scheduler", "prompt_embeddings", "vae")
    files = [path / "model_index.json"] + [f for name in parts for f in _weight_files(path, name)]
    return (str(path.resolve()),) + tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def stage1_from_pipeline_folder(path: str | Path):
    """The frozen stage-1 model (UNet + structure guidance, and a backbone of the folder's VAE, prompt
    and scheduler) of a pipeline folder, cached per process while its files are unchanged."""
    from diffusers import UNet2DConditionModel

    from amlight.modules.exemplar_unet import ExemplarUNet

    path = Path(path)
    check_pipeline_folder(path)
    key = _folder_key(path)
    if key in _FOLDER_CACHE:
        return _FOLDER_CACHE[key]
    # Outside inference mode even when loaded inside it: the model is shared (as load_stage1's is).
    index = read_model_index(path)
    with torch.inference_mode(False):
        unet = own_memory(_load_part(UNet2DConditionModel, path / "unet"))
        guidance = load_folder_guidance(path, index)
        backbone = backbone_from_spec({"preset": "pipeline", "path": str(path)})
        model = ExemplarUNet(unet, guidance, ignore_index=int(guidance.ignore_index)).eval()
    hparams = {
        "num_classes": int(guidance.config.num_classes),
        "backbone": {"preset": "pipeline", "path": str(path)},
        **guidance_hparams(guidance),
    }
    if index.get("stage1_sha256"):
        hparams["source_sha256"] = index["stage1_sha256"]
    stage1 = Stage1Model(str(path), folder_digest(path), backbone, freeze(model), hparams)
    for stale in [k for k in _FOLDER_CACHE if k[0] == key[0]]:
        del _FOLDER_CACHE[stale]
    _FOLDER_CACHE[key] = stage1
    return stage1


def load_folder_guidance(path: Path, index: dict[str, Any]):
    """A pipeline folder's structure guidance (the class its model_index.json names: StructureGuidance or
    ControlNetGuidance), as plain weights in their own memory."""
    from amlight.modules.controlnet_guidance import ControlNetGuidance
    from amlight.modules.structure_guidance import StructureGuidance

    cls = ControlNetGuidance if index["structure_guidance"][1] == "ControlNetGuidance" else StructureGuidance
    return own_memory(_load_part(cls, Path(path) / "structure_guidance"))


def guidance_hparams(guidance) -> dict[str, Any]:
    """The stage-1 hyper-parameters that describe ``guidance`` (what load_stage1 rebuilds it from)."""
    config = guidance.config
    if guidance.is_controlnet:
        return {"guidance": "controlnet", "ignore_index": int(config.ignore_index),
                "guidance_scale": float(config.conditioning_scale),
                "class_colors": [list(c) for c in config.class_colors],
                "controlnet_config": dict(config.controlnet_config)}
    return {"guidance": "structure", "ignore_index": int(config.ignore_index),
            "guidance_channels": int(config.channels), "guidance_scale": float(config.scale)}


def _load_part(cls, folder: Path):
    try:
        return cls.from_pretrained(folder, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        text = str(e).strip().splitlines()
        raise CheckpointError(f"{folder}: cannot be loaded ({type(e).__name__}: {text[0] if text else ''})") from None


def load_stage1(path: str | Path, base: str | Path | None = None) -> Stage1Model:
    """The frozen stage-1 model of a GenerationStage checkpoint (or of a pipeline folder), cached per
    process while the file is unchanged (same resolved path, size and modification time).

    ``base``: the SD 1.5 folder to use instead of the ``backbone_path`` stored in the checkpoint (the
    training machine's path, gone on another machine: ``--base DIR`` on the command line)."""
    path = Path(path)
    if path.is_dir():
        if is_pipeline_folder(path):
            if base is not None:
                raise CheckpointError(f"{path} is a pipeline folder, which carries its own backbone: drop --base {base}")
            return stage1_from_pipeline_folder(path)
    key = _file_key(path)
    if key is not None:
        key = (*key, "" if base is None else str(Path(base).expanduser().resolve()))
    if key is not None and key in _CACHE:
        return _CACHE[key]
    # mmap: only the tensors used are read from disk (not the optimiser state a resumable checkpoint holds).
    ckpt = read_checkpoint(path, expect_stage="generation", mmap=True)
    sha = cached_sha256(path)
    hp = ckpt["amlight"]["hparams"]
    spec = backbone_spec(ckpt["amlight"]["backbone"], path, base)
    # Built outside inference mode even when loaded inside it (a pipeline, predict): the model is shared
    # through the cache, and inference-tensor weights would break any later training through it.
    with torch.inference_mode(False):
        backbone = backbone_from_spec(spec)
        model = _stage1_model(backbone, hp)
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit the model its settings describe: {str(e)[:500]}") from None
    del ckpt, state  # drops the file mapping
    stage1 = Stage1Model(str(path), sha, backbone, freeze(model), {**hp, "backbone": spec})
    for stale in [k for k in _CACHE if k[0] == key[0] and k[3] == key[3]]:
        del _CACHE[stale]  # an earlier version of this file
    _CACHE[key] = stage1
    return stage1


def _stage1_model(backbone, hp: dict[str, Any]):
    """The (untrained) model a stage-1 checkpoint's weights load into, from its hyper-parameters."""
    if hp.get("controlnet_config"):
        # A run started from a pipeline folder (``init_from``): its ControlNet's own architecture (a public
        # one need not be what ``controlnet_from_unet`` builds), stored with the hyper-parameters.
        from amlight.modules.controlnet_guidance import ControlNetGuidance
        from amlight.modules.exemplar_unet import ExemplarUNet

        ignore = hp.get("ignore_index", 255)
        net = ControlNetGuidance(hp["num_classes"], hp["class_colors"], hp["controlnet_config"],
                                 conditioning_scale=hp.get("guidance_scale", 1.0), ignore_index=ignore)
        return ExemplarUNet(backbone.new_unet(), net, ignore_index=ignore)
    return build_exemplar_unet(
        backbone, hp["num_classes"], hp.get("ignore_index", 255),
        guidance_channels=hp.get("guidance_channels", 32), guidance_scale=hp.get("guidance_scale", 1.0),
        guidance=hp.get("guidance") or "structure", class_colors=hp.get("class_colors"),
    )


def backbone_spec(stored: dict[str, Any], checkpoint: str | Path, base: str | Path | None = None) -> dict[str, Any]:
    """The backbone spec to build: the stored one, with ``base`` as the SD 1.5 folder when given.

    A stored local folder that no longer exists is a one-line error naming it and ``--base`` (rather
    than the backbone's own "does not exist", which does not say that another folder may be given)."""
    spec = dict(stored)
    if base is not None:
        if "path" not in spec or spec.get("preset") == "tiny":
            raise CheckpointError(
                f"{checkpoint}: its backbone is the {spec.get('preset')!r} preset, built from settings with no "
                f"folder to replace: drop --base {base}"
            )
        if not Path(base).expanduser().is_dir():
            raise CheckpointError(f"--base {base} is not a folder (give the SD 1.5 folder with unet/, vae/, "
                                  "text_encoder/, tokenizer/, scheduler/)")
        spec["path"] = str(base)
        return spec
    stored_path = spec.get("path")
    if stored_path and not Path(stored_path).expanduser().exists() and not _looks_like_hub_id(str(stored_path)):
        raise CheckpointError(
            f"{checkpoint} was trained on the backbone folder {stored_path}, which does not exist here: "
            "pass --base DIR with that model's folder (e.g. your copy of stable-diffusion-v1-5)"
        )
    return spec


def _looks_like_hub_id(text: str) -> bool:
    """``owner/name`` as the user wrote a hub id (downloaded by the backbone, which the user asked for when
    training), not a local path: absolute, ``./``, ``~`` or deeper paths are folders."""
    from amlight.backbone.presets import HUB_ID

    return bool(HUB_ID.match(text)) and not text.startswith((".", "/", "~"))


# --- a stage-2 file's stage 1 ---------------------------------------------------------------------


def find_stage1_of(reference: dict[str, Any], stage2_file: str | Path) -> str:
    """The stage-1 checkpoint a stage-2 checkpoint or exported adapter was trained on.

    ``reference`` is the file's ``stage1`` record: the path as the trainer's working directory saw it
    and the checkpoint's sha256. The stored path is used when it exists; when it is gone (the runs folder
    was copied elsewhere, the adapter sent to someone), checkpoints near the stage-2 file are tried and
    the one with the stored sha256 is taken: the file's own folder, the stored path's tail under each
    folder above the file, the checkpoints in the stored path's folder under each of them, the run folders
    in the file's folder, its run folder and the run folders beside it (``../stage1/checkpoints/*.ckpt``).
    Otherwise a one-line :class:`CheckpointError` says what was looked for and names ``--stage1``."""
    stored = str((reference or {}).get("path") or "")
    sha = (reference or {}).get("sha256")
    stage2_file = Path(stage2_file)
    exists = bool(stored) and (Path(stored).is_file() or _is_pipeline_folder(Path(stored)))
    if exists and (not sha or _digest(Path(stored)) == sha):
        return stored
    if not sha:
        raise CheckpointError(f"{stage2_file} names no stage-1 checkpoint that exists here"
                              + (f" (stored path {stored})" if stored else "") + ": pass --stage1 CKPT")
    looked = 0
    for candidate in _stage1_candidates(stored, stage2_file):
        looked += 1
        if _digest(candidate) == sha:
            return str(candidate)
    if exists:  # another file at the stored path and no match nearby: used, and load_adapter warns
        return stored
    raise CheckpointError(
        f"{stage2_file} was trained on the stage-1 checkpoint {stored or '(no path stored)'}, which does not exist "
        f"here, and none of the {looked} checkpoint(s) next to it (its folder, its run folder, the run folders beside "
        f"it) has its sha256 {sha[:12]}...: pass --stage1 CKPT"
    )


def _stage1_candidates(stored: str, stage2_file: Path):
    """Checkpoint files near ``stage2_file``, the likeliest first, each once."""
    here = stage2_file.resolve().parent
    run = here.parent if here.name == "checkpoints" else here
    seen: set[Path] = {stage2_file.resolve()}
    tail = [p for p in Path(stored).parts if p not in ("/", "..", ".")] if stored else []

    def files():
        yield from sorted(here.glob("*.ckpt"))  # side by side (a model sent as two files)
        yield from sorted(p.parent for p in here.glob("*/model_index.json"))  # a stage 2 trained on a folder
        # The stored path's tail under each folder above the stage-2 file (runs/q/stage1/checkpoints/last.ckpt
        # inside a copied runs/ folder): the same file the trainer saw, wherever the tree now is.
        for folder in [here, *here.parents][:6]:
            for k in range(len(tail), 0, -1):
                yield folder.joinpath(*tail[-k:])
        # The stored folder under each of them, any file name (last.ckpt renamed, or an epoch=... one).
        if len(tail) > 1:
            for folder in [here, *here.parents][:6]:
                for k in range(len(tail) - 1, 0, -1):
                    yield from sorted(folder.joinpath(*tail[-1 - k:-1]).glob("*.ckpt"))
        yield from sorted(here.glob("*/checkpoints/*.ckpt"))  # an experiment folder's runs
        yield from sorted(run.glob("*.ckpt"))
        yield from sorted(run.glob("checkpoints/*.ckpt"))
        if run.parent != run:
            yield from sorted(run.parent.glob("*/checkpoints/*.ckpt"))
            yield from sorted(run.parent.glob("*/*.ckpt"))

    for path in files():
        if (path.is_file() and path.suffix == ".ckpt") or _is_pipeline_folder(path):
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                yield resolved


def _is_pipeline_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def _digest(path: Path) -> str:
    """What a stage-2 record's sha256 is of: a checkpoint file's bytes, or a pipeline folder's weights."""
    if path.is_dir():
        return folder_digest(path)
    return cached_sha256(path)
