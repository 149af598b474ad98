"""``python -m amlight predict`` on two processes (slow, end to end): DDP splits the pairs between the
ranks and rank 0 writes one summary of all of them. The one-process checks are tests/apps/test_predict.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.folder_datasets import make_dataset
from helpers.tiny_models import save_adapter

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/quickstart/generate.yaml"


@pytest.fixture(scope="module")
def world(stage1_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_ddp")
    return {"data": make_dataset(root / "data"), "stage1": stage1_ckpt,
            "adapter": save_adapter(stage1_ckpt, root / "adapter.safetensors")}


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(600)
def test_predict_on_two_processes_splits_the_pairs(world, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "amlight", "predict", "--config", str(CONFIG),
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
           "--model.init_args.stage1_checkpoint", str(world["stage1"]),
           "--model.init_args.adapter", str(world["adapter"]), "--model.init_args.steps", "2",
           "--model.init_args.threads", "1", "--model.init_args.out_dir", str(out), "--trainer.default_root_dir", str(out),
           "--data.init_args.dataset", str(world["data"]), "--data.init_args.root", str(world["data"]),
           "--data.init_args.resolution", "16", "--data.init_args.batch_size", "1"]
    result = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["outputs"] == 4 and summary["settings"]["devices"] == 2
    assert len(list(out.glob("s*.png"))) == 4
