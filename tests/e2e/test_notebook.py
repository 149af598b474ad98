"""notebooks/quickstart.ipynb runs top to bottom and shows what it says it shows.

CI has no quickstart checkpoints and must stay fast: the notebook is executed (nbclient, a kernel on
this interpreter) with 2 DDIM steps, checkpoint paths that do not exist (so it builds its untrained
stand-ins, even on a machine where `make demo` has run) and a small synthetic dataset made here.
"""
from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
MODES = ("structure_only", "augmented", "hard_mask", "adapter")
KERNEL = "amlight-notebook-test"


def _kernelspec_dir(root: Path) -> Path:
    """A Jupyter data dir whose only kernel runs this very interpreter (the venv's, in CI and in
    `make test`), whatever kernels the user has installed elsewhere."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "amlight test kernel", "language": "python",
    }))
    return root


def execute(monkeypatch, tmp_path: Path, env: dict[str, str], timeout: int):
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec_dir(tmp_path / "jupyter")))
    # the kernel's temporary files (the notebook's stand-in checkpoints) go with the test's folder
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(REPO)}})
    try:
        client.execute()
    finally:  # the executed copy, for a look when something fails
        nbformat.write(nb, tmp_path / "quickstart.executed.ipynb")
    return nb


def cell_with(nb, text: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    assert len(cells) == 1, f"expected one code cell calling {text!r}, found {len(cells)}"
    return cells[0]


def stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def images(cell) -> list:
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(o.data["image/png"])))
            for o in cell.outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert 'int(os.environ.get("AMLIGHT_NOTEBOOK_STEPS", 20))' in code[0].source


def test_quickstart_notebook_runs_with_standins(monkeypatch, tmp_path):
    from amlight.data.synthetic import ensure_synthetic_dataset

    data = ensure_synthetic_dataset(tmp_path / "synthetic", progress=False, num_train=2, num_val_groups=3)
    nb = execute(monkeypatch, tmp_path, {
        "AMLIGHT_NOTEBOOK_STEPS": "2",
        "AMLIGHT_NOTEBOOK_STAGE1": str(tmp_path / "missing" / "stage1.ckpt"),
        "AMLIGHT_NOTEBOOK_STAGE2": str(tmp_path / "missing" / "stage2.ckpt"),
        "AMLIGHT_NOTEBOOK_DATA": str(data),
    }, timeout=300)

    first = stdout(cell_with(nb, "quickstart_checkpoints("))
    assert "train them with `make demo`" in first and "untrained stand-ins" in first

    for call in ("triplet_panel(", "attention_figure(", "modes_panel(", "edit_panel("):
        assert images(cell_with(nb, call)), f"the cell calling {call} shows no image"

    modes_cell = cell_with(nb, "modes_panel(")
    assert all(mode in stdout(modes_cell) for mode in MODES)
    (figure,) = images(modes_cell)
    # exemplar | labels | four modes | ground truth, three 32x32 pairs at 4x
    assert figure.width >= 7 * 32 * 4 and figure.height >= 3 * 32 * 4

    probe = cell_with(nb, "attention_figure(")
    assert all(mode in stdout(probe) for mode in ("augmented", "hard_mask", "adapter"))
    assert "car painted at" in stdout(cell_with(nb, "edit_panel("))


QUICKSTART = [REPO / "runs/quickstart" / stage / "checkpoints/last.ckpt" for stage in ("stage1", "stage2")]


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in QUICKSTART), reason="no quickstart checkpoints (`make demo`)")
def test_quickstart_notebook_on_trained_checkpoints(monkeypatch, tmp_path):
    """The real thing, 20 steps (minutes on 2 CPU cores): the trained checkpoints are used as they are."""
    nb = execute(monkeypatch, tmp_path, {"AMLIGHT_NOTEBOOK_STEPS": "20"}, timeout=1200)
    assert "using the trained quickstart checkpoints" in stdout(cell_with(nb, "quickstart_checkpoints("))
    assert images(cell_with(nb, "modes_panel("))


def test_edit_box_lies_on_the_class():
    from amlight.apps.notebook_helpers import edit_box_on_class

    labels = torch.zeros(32, 32, dtype=torch.long)
    labels[20:, 4:28] = 1
    x0, y0, x1, y1 = edit_box_on_class(labels, 1, box_hw=(6, 9))
    assert (y1 - y0, x1 - x0) == (6, 9)
    assert bool((labels[y0:y1, x0:x1] == 1).all())
    with pytest.raises(ValueError, match="no pixel of class 7"):
        edit_box_on_class(labels, 7)
