"""Stage 2 with two processes (DDP over gloo on the CPU): both ranks must end with the same adapter,
after training on different draws."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.tiny_models import save_stage1_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(600)
def test_stage2_ddp_two_processes_end_with_identical_adapters(tmp_path):
    stage1 = save_stage1_checkpoint(tmp_path / "stage1.ckpt", num_classes=10)
    cmd = [
        sys.executable, "-m", "amlight", "fit", "--config", str(REPO / "configs/quickstart/stage2.yaml"),
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false",
        "--model.init_args.stage1_checkpoint", str(stage1), "--model.init_args.sample_steps", "2",
        "--data.init_args.batch_size", "2", "--data.init_args.resolution", "16", "--data.init_args.max_val_samples", "2",
        "--data.init_args.synthetic", "{num_train: 16, num_val_groups: 1, height: 32, width: 32}",
        "--trainer.callbacks+=helpers.ddp_probe.RankDump", f"--trainer.callbacks.out_dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["wrapper"] == "DistributedDataParallel"
    # Only the adapter is wrapped for gradient sync: the frozen stage-1 model is not a submodule.
    assert ranks[0]["synced_params"] == ranks[0]["adapter_params"]
    a, b = ranks[0]["adapter"], ranks[1]["adapter"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Each rank draws its own timesteps and noise (issue 17, item 3): alike, 2 GPUs would train on one draw.
    first = [r["first_draws"] for r in ranks]
    assert all(len(d) == 2 for d in first)
    for which in (0, 1):  # the exemplar's noising, then the target's
        assert not torch.equal(first[0][which]["noise"], first[1][which]["noise"])
    assert not torch.equal(first[0][0]["t"], first[1][0]["t"])  # 2 timesteps of 1000: alike by chance 1 in 10^6
    # ...and training really moved them: phi's last layer (index 6 with 3 layers) starts at exactly zero
    last = {k: v for k, v in a.items() if re.match(r"phi\.\w+\.6\.", k)}
    assert last and any(v.abs().sum() > 0 for v in last.values())
