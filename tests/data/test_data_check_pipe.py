"""`python -m amlight data check DIR | head -1`: a reader that stops early gets no BrokenPipeError traceback."""
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "train" / "images" / f"{k}.png")
        Image.fromarray(rng.integers(0, 3, (8, 8)).astype(np.uint8)).save(root / "train" / "labels" / f"{k}.png")
    (root / "classes.yaml").write_text("names: [sky, tree, road]\n")
    return root


def test_data_check_into_a_closed_pipe_prints_no_traceback(tmp_path):
    root = _folder(tmp_path / "ds")
    command = [sys.executable, "-m", "amlight", "data", "check", str(root)]
    # The reader is gone before the report is written (what `head -1` does after its line, without
    # the race): every write to stdout fails with EPIPE.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2])
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr  # the data is fine: the check's own status
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_head_1_gets_the_first_line(tmp_path):
    root = _folder(tmp_path / "ds")
    full = subprocess.run([sys.executable, "-m", "amlight", "data", "check", str(root)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert full.returncode == 0, full.stderr
    piped = subprocess.run(f'"{sys.executable}" -m amlight data check "{root}" | head -1', shell=True,
                           capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert piped.stdout == full.stdout.splitlines(keepends=True)[0]
    assert "Traceback" not in piped.stderr, piped.stderr
