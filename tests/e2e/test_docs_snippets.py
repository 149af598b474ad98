"""Every fenced code block of README.md and docs/*.md runs (issue 22: snippets must not rot).

What runs: blocks fenced as ```bash, ```console (its "$ " lines) and ```python. Other fences (text,
yaml, toml) show files or trees, not code. An HTML comment on the line right before a block's fence
changes what happens to it; the reader sees it in the Markdown source:

- ``<!-- snippet: skip (REASON) -->``: not run. The reason is required (GPU, SD 1.5 weights, a
  download, a long-running server, hours of training).
- ``<!-- snippet: slow ... -->``: run only under ``-m slow`` (``make test-slow``): training commands.
- ``<!-- snippet: file PATH -->``: written to PATH in the workspace (a module later blocks import),
  and run as well when it is Python.

Where the blocks run: each page gets a copy of one workspace built once per session, laid out as
after ``make demo`` but tiny, so the fast suite stays fast:

- ``configs/``: a link to the repository's configs;
- ``data/synthetic``: ``python -m amlight synth`` with 8 training scenes and 2 validation groups
  (4 validation pairs, file names as in the full set: ``00000_a.png``, ...);
- ``runs/quickstart/stage{1,2}/checkpoints/last.ckpt``: untrained checkpoints with the quickstart's
  shapes, written through Lightning as training writes them (``build_standin_checkpoints``, what the
  notebook uses before ``make demo``), each with its config as ``config.yaml`` beside it, so
  inference snippets run in seconds;
- ``my_folder/`` (a folder dataset of synthetic scenes with its ``classes.yaml``), ``my_layout.png``
  and ``data/mydata/`` (three classes), the user data that the datasets page and README name.

The blocks of one page run in order in the same copy (a later block may read what an earlier one
wrote). Every ``python -m amlight fit`` line is shortened with documented LightningCLI overrides,
appended so that they win: ``--trainer.max_steps 2 --trainer.val_check_interval 2`` with batch 2, 2
validation samples and 2 sampling steps; a line that names no ``--trainer.default_root_dir`` gets its
own, since the quickstart's run folders hold the stand-ins.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_LANGS = {"bash", "console", "python"}
MARKER = re.compile(r"<!--\s*snippet:\s*(skip|slow|file)\b(.*?)-->")
FIT_OVERRIDES = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--data.init_args.batch_size", "2",
                 "--data.init_args.max_val_samples", "2", "--model.init_args.sample_steps", "2"]


@dataclass
class Block:
    page: Path
    line: int       # 1-based line of the opening fence
    lang: str
    code: str
    marker: str     # "", "skip", "slow" or "file"
    argument: str   # the skip reason or the file path

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def extract_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the marker comment right before its fence."""
    lines = page.read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        start, lang, body = i, fence.group(2), []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page}:{start + 1}: unclosed code fence")
        i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        found = MARKER.search(previous)
        marker, argument = (found.group(1), found.group(2).strip()) if found else ("", "")
        blocks.append(Block(page, start + 1, lang, "\n".join(body) + "\n", marker, argument))
    return blocks


def shorten_fit_commands(code: str, tag: str = "") -> str:
    """Each `python -m amlight fit` command with the overrides that make it a 2-step run; ``tag`` keeps
    the run folders of different blocks of one page (one workspace) apart."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for number, line in enumerate(joined.split("\n")):
        command = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment would swallow the overrides
        if re.search(r"python -m amlight fit\b", command):
            command += " " + " ".join(FIT_OVERRIDES)
            if "--trainer.default_root_dir" not in command:
                command += f" --trainer.default_root_dir runs/snippet-fit-{tag}{number}"
            line = command
        out.append(line)
    return "\n".join(out)


def run_block(block: Block, workspace: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    env["MPLBACKEND"] = "Agg"
    if block.marker == "file":
        target = workspace / block.argument
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)
    if block.lang == "python":
        script = workspace / (block.argument if block.marker == "file" else f"snippet_{block.line}.py")
        script.write_text(block.code)
        argv = [sys.executable, str(script)]
    else:
        code = block.code
        if block.lang == "console":
            code = "\n".join(line[2:] for line in code.split("\n") if line.startswith("$ "))
        argv = ["bash", "-euo", "pipefail", "-c", shorten_fit_commands(code, f"l{block.line}-")]
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True, timeout=900)
    print(f"{block.where()}: {time.perf_counter() - start:.1f} s")  # shown with -s, to keep the suite fast
    assert result.returncode == 0, (
        f"the code block at {block.where()} failed (exit {result.returncode}):\n{block.code}\n"
        f"--- stdout (tail)\n{result.stdout[-3000:]}\n--- stderr (tail)\n{result.stderr[-3000:]}")


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in extract_blocks(page)]


# --------------------------------------------------------------------------- the markers themselves
def test_every_skip_says_why_and_every_runnable_block_has_a_known_language():
    problems = []
    for block in all_blocks():
        if block.marker == "skip" and not re.fullmatch(r"\(.+\)", block.argument):
            problems.append(f"{block.where()}: 'snippet: skip' needs a reason in parentheses")
        if block.marker == "file" and not block.argument:
            problems.append(f"{block.where()}: 'snippet: file' needs a path")
        if block.marker and block.lang not in RUN_LANGS:
            problems.append(f"{block.where()}: a snippet marker on a ```{block.lang} block, which never runs")
        if not block.lang:
            problems.append(f"{block.where()}: a fence without a language (```text for trees and listings)")
    assert not problems, "\n".join(problems)


def test_the_extractor_reads_markers_and_the_fit_shortener_wins_over_the_config(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- snippet: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n\n"
                    "```python\nprint(1)\n```\n<!-- snippet: slow -->\n\n```bash\n"
                    "python -m amlight fit --config c.yaml \\\n    --trainer.max_steps 9  # comment\n```\n")
    blocks = extract_blocks(page)
    assert [(b.lang, b.marker, b.argument) for b in blocks] == [
        ("bash", "skip", "(needs a GPU)"), ("python", "", ""), ("bash", "slow", "")]
    assert blocks[2].line == 11
    command = shorten_fit_commands(blocks[2].code).strip()
    assert "# comment" not in command
    assert command.index("--trainer.max_steps 9") < command.index("--trainer.max_steps 2")
    assert command.endswith("--trainer.default_root_dir runs/snippet-fit-0")


# --------------------------------------------------------------------------- the workspace
def _folder_dataset(root: Path, synthetic: Path, names: list[str], classes: int | None = None) -> None:
    """A folder dataset of synthetic scenes (labels folded into ``classes`` classes when given)."""
    (root).mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [" + ", ".join(names) + "]\n")
    for split, source in (("train", synthetic / "train"), ("val", synthetic / "val")):
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True)
        for label_file in sorted((source / "labels").glob("*.png"))[:4]:
            labels = np.asarray(Image.open(label_file))
            if classes is not None:
                labels = np.where(labels == 255, 255, labels % classes).astype(np.uint8)
            Image.fromarray(labels).save(root / split / "labels" / label_file.name)
            shutil.copy(source / "images" / label_file.name, root / split / "images" / label_file.name)


@pytest.fixture(scope="session")
def base_workspace(tmp_path_factory) -> Path:
    from amlight.apps.notebook_helpers import build_standin_checkpoints
    from amlight.data.synthetic import SYNTHETIC_METADATA

    ws = tmp_path_factory.mktemp("docs-workspace")
    (ws / "configs").symlink_to(REPO / "configs")
    synthetic = ws / "data" / "synthetic"
    subprocess.run([sys.executable, "-m", "amlight", "synth", "--out", str(synthetic), "--num-train", "8",
                    "--num-val-groups", "2", "--no-progress"], check=True, capture_output=True)
    num_classes = SYNTHETIC_METADATA.num_classes
    stage1_dir = ws / "runs" / "quickstart" / "stage1" / "checkpoints"
    stage1, _ = build_standin_checkpoints(stage1_dir, num_classes)
    stage1 = stage1.rename(stage1_dir / "last.ckpt")
    for leftover in ("stage2.ckpt", "adapter.safetensors"):
        (stage1_dir / leftover).unlink()
    stage2_dir = ws / "runs" / "quickstart" / "stage2" / "checkpoints"
    build_standin_checkpoints(stage2_dir, num_classes, stage1=stage1)
    (stage2_dir / "stage2.ckpt").rename(stage2_dir / "last.ckpt")
    (stage2_dir / "adapter.safetensors").unlink()
    for stage in ("stage1", "stage2"):  # a run folder holds its config, which export and generate read
        shutil.copy(REPO / "configs" / "quickstart" / f"{stage}.yaml", ws / "runs" / "quickstart" / stage / "config.yaml")
    names = [name.replace(" ", "_") for name in SYNTHETIC_METADATA.class_names]
    _folder_dataset(ws / "my_folder", synthetic, names)
    shutil.copy(synthetic / "val" / "labels" / "00001_b.png", ws / "my_layout.png")
    _folder_dataset(ws / "data" / "mydata", synthetic, ["road", "car", "sky"], classes=3)
    return ws


def _run_page(page: Path, tmp_path: Path, base: Path, slow: bool) -> int:
    workspace = tmp_path / "ws"
    shutil.copytree(base, workspace, symlinks=True)
    ran = 0
    for block in extract_blocks(page):
        if block.lang not in RUN_LANGS or block.marker == "skip" or (block.marker == "slow" and not slow):
            continue
        run_block(block, workspace)
        ran += 1
    return ran


def _pages_with(kinds: set[str]) -> list[Path]:
    return [page for page in PAGES
            if any(b.lang in RUN_LANGS and b.marker in kinds for b in extract_blocks(page))]


@pytest.mark.parametrize("page", _pages_with({"", "file"}), ids=lambda p: str(p.relative_to(REPO)))
def test_the_code_blocks_of_a_page_run(page, tmp_path, base_workspace):
    assert _run_page(page, tmp_path, base_workspace, slow=False) > 0


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with({"slow"}), ids=lambda p: str(p.relative_to(REPO)))
def test_the_code_blocks_of_a_page_run_with_the_training_ones(page, tmp_path, base_workspace):
    assert _run_page(page, tmp_path, base_workspace, slow=True) > 0


# --------------------------------------------------------------------------- the site
def test_the_docs_site_builds_with_strict_checks(tmp_path):
    """`make docs`' build: a broken link, anchor or API reference fails it (mkdocs' --strict)."""
    site = tmp_path / "site"
    result = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    method = (site / "method" / "index.html").read_text()
    assert 'id="part-5-the-am-adapter"' in method
    api = (site / "api" / "pipeline" / "index.html").read_text()
    assert "amlight.pipeline.synthesis.AMPipeline" in api and "from_pretrained" in api
