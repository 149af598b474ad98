"""The model of an inference command as one AMPipeline: an exported pipeline folder, or a stage-1
checkpoint with an optional adapter (and ``--base``, the SD 1.5 folder when the stored one is gone).
Imports nothing heavy at module level, so commands can import it for ``--help``."""
from __future__ import annotations


def model_arguments_problem(stage1: str | None, adapter: str | None, pipeline: str | None,
                            base: str | None) -> str | None:
    """Why these model options cannot go together (one line), or None: the rule of every inference command."""
    if pipeline:
        given = [flag for flag, value in (("--stage1", stage1), ("--adapter", adapter), ("--base", base)) if value]
        if given:
            return (f"--pipeline {pipeline} holds the whole model (stage 1, adapter, backbone): drop "
                    f"{' and '.join(given)}")
        return None
    if not stage1 and not adapter:
        return "no model: give --pipeline DIR (an exported pipeline folder) or --stage1 CKPT [--adapter FILE]"
    return None


def stage1_path(stage1: str | None, adapter: str | None) -> str:
    """``--stage1``, or the stage-1 checkpoint the ``--adapter`` file names (found next to it or by hash
    when its stored path is gone; see :func:`amlight.checkpoints.stage1.find_stage1_of`)."""
    if stage1:
        return stage1
    from amlight.checkpoints.adapter_files import read_adapter_file
    from amlight.checkpoints.stage1 import find_stage1_of

    return find_stage1_of(read_adapter_file(adapter)[1].get("stage1") or {}, adapter)


def open_pipeline(stage1: str | None, adapter: str | None, pipeline: str | None, base: str | None = None,
                  device=None, dtype=None):
    """The AMPipeline of the model options: ``from_pretrained(pipeline)`` or ``from_checkpoints``."""
    from pathlib import Path

    from amlight.pipeline.synthesis import AMPipeline

    if pipeline:
        from amlight.checkpoints.pipeline_folder import PipelineFolderError, is_pipeline_folder

        if not Path(pipeline).exists():
            raise PipelineFolderError(f"--pipeline {pipeline} does not exist (give the folder `python -m amlight "
                                      "export` wrote, or a copy of it)")
        if not is_pipeline_folder(pipeline):
            raise PipelineFolderError(f"--pipeline {pipeline} is not a pipeline folder (no model_index.json in it); "
                                      "write one with `python -m amlight export`")
        # diffusers 0.42 names it dtype (torch_dtype still works, with a deprecation warning)
        pipe = AMPipeline.from_pretrained(pipeline, **({"dtype": dtype} if dtype is not None else {}))
        return pipe.to(device) if device is not None else pipe
    extra = {"base": base} if base is not None else {}  # only when given: the stored backbone path otherwise
    return AMPipeline.from_checkpoints(stage1_path(stage1, adapter), adapter, device=device, dtype=dtype, **extra)
