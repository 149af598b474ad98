"""Training survives a kill (slow, end to end): `fit --ckpt_path last` after a SIGKILL goes on from the
last checkpoint with the same step, optimiser and LR-scheduler state, for stage 1 and then stage 2
(issue 11). The atomic writes themselves are checked in tests/training/test_resume.py."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from amlight.checkpoints.files import read_checkpoint

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _config(stage: str, tmp_path: Path, steps: int, stage1: Path | None = None) -> Path:
    """The quickstart config, shrunk: a checkpoint every 3 steps, tiny model and data, no sample grids. The
    interval (1000) is past the run's end, so each run validates once, at its last step (lightning_cli's
    _ValidateAtLastStep), on 2 samples; the killed first run never gets there."""
    cfg = yaml.safe_load((REPO / f"configs/quickstart/{stage}.yaml").read_text())
    cfg["trainer"].update(max_steps=steps, val_check_interval=1000, enable_progress_bar=False, log_every_n_steps=1)
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    cfg["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 3
    cfg["data"]["init_args"].update(root=str(tmp_path / "data"), batch_size=2, resolution=16, max_val_samples=2,
                                    synthetic={"num_train": 8, "num_val_groups": 1, "height": 32, "width": 32})
    if stage == "stage1":
        cfg["model"]["init_args"].update(backbone_options={"block_out_channels": [16, 32], "attention_heads": 2},
                                         guidance_channels=16)
    else:
        cfg["model"]["init_args"]["stage1_checkpoint"] = str(stage1)
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _kill_after_first_checkpoint(cmd, run: Path, cwd: Path) -> int:
    child = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists():
        assert child.poll() is None, f"fit ended before its first checkpoint: {child.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return torch.load(last, weights_only=True, mmap=True)["global_step"]


def _kill_and_resume(stage: str, tmp_path: Path, steps: int, stage1: Path | None = None) -> Path:
    config = _config(stage, tmp_path, steps, stage1)
    run = tmp_path / f"run_{stage}"
    cmd = [sys.executable, "-m", "amlight", "fit", "--config", str(config), "--trainer.default_root_dir", str(run)]
    killed_at = _kill_after_first_checkpoint(cmd, run, tmp_path)
    assert 3 <= killed_at < steps  # killed in the middle of the run
    first_config = (run / "config.yaml").read_bytes()

    result = subprocess.run([*cmd, "--ckpt_path", "last"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt", expect_stage="generation" if stage == "stage1" else "adapter")
    assert ckpt["global_step"] == steps
    # Restored, not restarted: the scheduler and Adam counted every step of both processes.
    assert ckpt["lr_schedulers"][0]["last_epoch"] == steps
    assert int(next(iter(ckpt["optimizer_states"][0]["state"].values()))["step"]) == steps
    assert (run / "config.yaml").read_bytes() == first_config and (run / "config.resume-1.yaml").is_file()
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stage1_then_stage2_resume_after_sigkill(tmp_path):
    stage1 = _kill_and_resume("stage1", tmp_path, steps=24)
    from amlight.checkpoints.stage1 import load_stage1

    assert load_stage1(stage1).num_classes == 10  # the final checkpoint loads as a stage-1 model
    stage2 = _kill_and_resume("stage2", tmp_path, steps=12, stage1=stage1)
    from amlight.checkpoints.adapter_files import read_adapter_file

    weights, record = read_adapter_file(stage2)
    assert weights and record["stage1"]["path"] == str(stage1)
