"""Training survives a kill: checkpoints are written atomically (issue 11); a checkpoint path that is
not there is one line. Killing and resuming whole runs is tests/e2e/test_resume_after_kill.py (slow)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

_WRITER = r"""
import sys, torch
from amlight.training.checkpoint_io import AtomicCheckpointIO
io, path, i = AtomicCheckpointIO(), sys.argv[1], 0
while True:
    io.save_checkpoint({"i": i, "w": torch.full((2_000_000,), float(i))}, path)
    print(i, flush=True)
    i += 1
"""


def test_a_kill_during_checkpoint_writes_leaves_a_complete_file(tmp_path):
    path = tmp_path / "last.ckpt"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        for _ in range(3):  # a few complete saves, then a kill in the middle of the following ones
            assert child.stdout.readline(), "the writer died"
        time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["i"] >= 2 and torch.equal(ckpt["w"], torch.full((2_000_000,), float(ckpt["i"])))
    # The next save removes what the killed write left beside the file.
    from amlight.training.checkpoint_io import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"i": -1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_truncated_ckpt_path_is_one_line():
    from amlight.checkpoints.files import CheckpointError
    from amlight.training.checkpoint_io import AtomicCheckpointIO

    with pytest.raises(CheckpointError, match=r"x\.ckpt does not exist"):
        AtomicCheckpointIO().load_checkpoint("/nowhere/x.ckpt")
