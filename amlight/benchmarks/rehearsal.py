"""The SD 1.5 rehearsal: the shipped SD 1.5 configs end to end on the CPU, each phase a subprocess.

Phases, each through the user's own command line (``python -m amlight ...``) in a fresh process, so
that its wall time and peak resident memory are its own (``os.wait4`` reports the child's peak RSS):

1. ``standin``: ``backbone make-sd15-standin`` (skipped when the folder is complete)
2. ``fixture``: synthetic scenes in the dataset's real layout at its real size (skipped when there)
3. ``stage1``: ``fit --config configs/sd15/<dataset>/stage1.yaml`` + CPU overrides only
4. ``stage2``: ``fit --config configs/sd15/<dataset>/stage2.yaml`` on stage 1's last.ckpt
5. ``generate``: one image, adapter mode, classifier-free guidance
6. ``evaluate``: every mode on the fixture's listed pairs

With ``controlnet`` (``rehearse sd15 --controlnet``), public weights' path instead: the stand-in with
its segmentation ControlNet, ``assemble`` (a pipeline folder from the two), ``stage2`` with
``configs/sd15/<dataset>/stage2_controlnet.yaml`` on that folder, and ``generate`` of one image in
``augmented`` mode from the folder (no stage 1, no evaluate).

The fits run with the rehearsal folder as their working directory: every relative path the shipped
config names (checkpoints, logs) lands inside it, whichever way the config derives them.
No torch import here: this process only launches and measures.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
MARKER = "amlight_rehearsal.json"
GIB = 1 << 30


class RehearsalError(RuntimeError):
    pass


@dataclass
class Phase:
    name: str
    command: list[str]
    wall_s: float = 0.0
    peak_rss_gib: float = 0.0
    returncode: int | None = None
    log: str = ""
    skipped: bool = False
    note: str = ""


@dataclass
class Settings:
    dataset: str = "cityscapes"
    out: Path = Path("runs/rehearse-sd15")
    standin: Path = Path("runs/sd15-standin")
    fixture: Path | None = None  # default: runs/sd15-fixture/<dataset>
    resolution: int = 512
    train_steps: int = 1
    sample_steps: int = 2
    precision: str = "32-true"
    eval_pairs: int = 2
    eval_modes: str | None = None  # default: evaluate's own (all four)
    guidance_scale: float = 3.0
    memory_limit_gib: float = 24.0
    controlnet: bool = False  # the public-weights path: assemble + stage 2 + generate (module docstring)
    configs: Path = field(default_factory=lambda: REPO / "configs" / "sd15")

    def fixture_root(self) -> Path:
        return self.fixture if self.fixture is not None else Path("runs/sd15-fixture") / self.dataset


def _python() -> list[str]:
    return [sys.executable]


def fit_overrides(s: Settings, stage: str) -> list[str]:
    """The only changes to the shipped config: device, precision, steps, batch, workers, paths.

    The run directory is the rehearsal's ``OUT/<stage>`` (``trainer.default_root_dir`` places the
    whole run: logger, checkpoints, samples). The fit also runs with OUT as its working directory, so
    any relative path a config names on its own lands inside OUT too."""
    root_dir = str(s.out.resolve() / stage)
    return [
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", s.precision,
        "--trainer.max_steps", str(s.train_steps),
        # Validate once, at the last step: the validation loss and the sample grid run too, and
        # ModelCheckpoint writes last.ckpt at validation end.
        "--trainer.val_check_interval", str(s.train_steps),
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", root_dir,
        "--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0",
        "--data.init_args.max_val_samples", "1",
        "--data.init_args.resolution", f"[{s.resolution}, {s.resolution}]",
        "--data.init_args.root", str(s.fixture_root().resolve()),
        "--model.init_args.sample_steps", str(s.sample_steps),
    ]


def _run(phase: Phase, cwd: Path, log_dir: Path, echo: Callable[[str], None]) -> Phase:
    """Run ``phase.command``, tee its output to a log file, record wall time and the child's peak RSS."""
    log_path = log_dir / f"{phase.name}.log"
    phase.log = str(log_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(phase.command) + "\n")
        log.flush()
        proc = subprocess.Popen(phase.command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                echo(f"  {phase.name} | {line.rstrip()[:200]}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
    phase.wall_s = round(time.perf_counter() - start, 1)
    # ru_maxrss is in KiB on Linux. It is at least the launching process's own peak (exec records
    # the old address space's high-water mark), which is why this process never imports torch.
    phase.peak_rss_gib = round(usage.ru_maxrss * 1024 / GIB, 2)
    phase.returncode = proc.returncode
    return phase


def _tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _find_one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.rglob(pattern))
    if len(found) != 1:
        raise RehearsalError(f"expected one {what} ({pattern}) under {folder}, found {len(found)}: "
                             f"{[str(p) for p in found[:5]]}")
    return found[0]


def prepare_out(out: Path) -> None:
    """A fresh folder for this rehearsal: an earlier rehearsal's folder is emptied, anything else refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise RehearsalError(f"--out {out} is not empty and is not a rehearsal folder: choose another")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        info["mem_total_gib"] = round(int(meminfo["MemTotal"].split()[0]) / (1 << 20), 1)
        info["mem_available_gib"] = round(int(meminfo["MemAvailable"].split()[0]) / (1 << 20), 1)
    except (OSError, KeyError, ValueError):
        pass
    return info


def rehearse(s: Settings, echo: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    out = s.out.resolve()
    prepare_out(out)
    (out / MARKER).write_text(json.dumps({"dataset": s.dataset}) + "\n")
    logs = out / "logs"
    logs.mkdir()
    fixture = s.fixture_root().resolve()
    standin = s.standin.resolve()
    config_dir = s.configs / s.dataset
    py = _python()
    record = {"settings": {k: str(v) for k, v in asdict(s).items()}, "machine_before": machine(), "phases": []}
    phases: list[Phase] = []

    def run(phase: Phase, check: Callable[[], str] | None = None) -> Phase:
        echo(f"[rehearse] {phase.name}: {shlex.join(phase.command)}")
        _run(phase, out, logs, echo)
        phases.append(phase)
        record["phases"] = [asdict(p) for p in phases]
        _write(out, record)
        if phase.returncode != 0:
            raise RehearsalError(f"phase {phase.name} failed (exit {phase.returncode}); log {phase.log}:\n"
                                 + _tail(phase.log))
        if check is not None:
            phase.note = check()
        if phase.peak_rss_gib > s.memory_limit_gib:
            raise RehearsalError(f"phase {phase.name} peaked at {phase.peak_rss_gib} GiB resident, over the "
                                 f"{s.memory_limit_gib} GiB limit")
        echo(f"[rehearse] {phase.name}: {phase.wall_s} s, peak RSS {phase.peak_rss_gib} GiB {phase.note}")
        record["phases"] = [asdict(p) for p in phases]
        _write(out, record)
        return phase

    try:
        run(Phase("standin", [*py, "-m", "amlight", "backbone", "make-sd15-standin", "--out", str(standin)]
                  + (["--controlnet"] if s.controlnet else [])))
        run(Phase("fixture", [*py, "-c", (
            "import sys; from amlight.data.layout_fixtures import write_layout_fixture; "
            f"print(write_layout_fixture({s.dataset!r}, {str(fixture)!r}, num_train=2, "
            f"num_val_groups={max(1, s.eval_pairs)}, progress=print))")]))
        pairs = fixture / "amlight_pairs" / "val.json"
        # One image: the first pair only.
        first = out / "generate_pairs.json"
        first.write_text(json.dumps({"pairs": [_absolute(e, pairs.parent) for e in
                                               json.loads(pairs.read_text())["pairs"][:1]]}) + "\n")
        if s.controlnet:
            _controlnet_phases(s, out, standin, first, config_dir, run)
            record["ok"] = True
            return record

        stage1_cmd = [*py, "-m", "amlight", "fit", "--config", str(config_dir / "stage1.yaml"),
                      *fit_overrides(s, "stage1"), "--model.init_args.backbone_path", str(standin)]
        holder: dict[str, Path] = {}

        def check_stage1() -> str:
            holder["s1"] = _find_one(out, "last.ckpt", "stage-1 checkpoint")
            return f"-> {holder['s1'].relative_to(out)} ({holder['s1'].stat().st_size / GIB:.2f} GiB)"

        run(Phase("stage1", stage1_cmd), check_stage1)
        stage1_ckpt = holder["s1"]

        stage2_cmd = [*py, "-m", "amlight", "fit", "--config", str(config_dir / "stage2.yaml"),
                      *fit_overrides(s, "stage2"), "--model.init_args.stage1_checkpoint", str(stage1_ckpt)]

        def check_stage2() -> str:
            found = [p for p in out.rglob("last.ckpt") if p != stage1_ckpt]
            if len(found) != 1:
                raise RehearsalError(f"expected one stage-2 last.ckpt under {out}, found {found}")
            holder["s2"] = found[0]
            return f"-> {found[0].relative_to(out)} ({found[0].stat().st_size / 1024:.0f} KiB)"

        run(Phase("stage2", stage2_cmd), check_stage2)
        stage2_ckpt = holder["s2"]

        gen_out = out / "generate"
        gen_cmd = [*py, "-m", "amlight", "generate", "--stage1", str(stage1_ckpt), "--adapter", str(stage2_ckpt),
                   "--pairs", str(pairs), "--out", str(gen_out), "--mode", "adapter",
                   "--steps", str(s.sample_steps), "--guidance-scale", str(s.guidance_scale),
                   "--size", str(s.resolution), str(s.resolution), "--device", "cpu", "--batch-size", "1",
                   "--quiet"]

        def check_generate() -> str:
            from PIL import Image

            images = sorted(gen_out.glob("*__*.png"))  # <exemplar>__<target>.png; not grid.png
            if not images:
                raise RehearsalError(f"generate wrote no image into {gen_out}")
            with Image.open(images[0]) as im:
                size = im.size
            if size != (s.resolution, s.resolution):
                raise RehearsalError(f"generate wrote a {size[0]}x{size[1]} image, expected {s.resolution}x{s.resolution}")
            return f"-> {len(images)} image(s) {size[0]}x{size[1]}"

        gen_cmd[gen_cmd.index("--pairs") + 1] = str(first)
        run(Phase("generate", gen_cmd), check_generate)

        eval_out = out / "evaluate"
        eval_cmd = [*py, "-m", "amlight", "evaluate", "--stage1", str(stage1_ckpt), "--adapter", str(stage2_ckpt),
                    "--data", s.dataset, "--root", str(fixture), "--pairs", str(pairs),
                    "--max-pairs", str(s.eval_pairs), "--steps", str(s.sample_steps),
                    "--guidance-scale", str(s.guidance_scale), "--device", "cpu", "--out", str(eval_out),
                    "--quiet"]
        if s.eval_modes:
            eval_cmd += ["--modes", s.eval_modes]

        def check_evaluate() -> str:
            results = eval_out / "results.json"
            if not results.is_file():
                raise RehearsalError(f"evaluate wrote no {results}")
            return "-> evaluate/results.md"

        run(Phase("evaluate", eval_cmd), check_evaluate)
        record["ok"] = True
    except RehearsalError as e:
        record["ok"] = False
        record["error"] = str(e)
        raise
    finally:
        record["machine_after"] = machine()
        record["phases"] = [asdict(p) for p in phases]
        _write(out, record)
    return record


def _check_image(folder: Path, resolution: int) -> str:
    from PIL import Image

    images = sorted(folder.glob("*__*.png"))  # <exemplar>__<target>.png; not grid.png
    if not images:
        raise RehearsalError(f"generate wrote no image into {folder}")
    with Image.open(images[0]) as im:
        size = im.size
    if size != (resolution, resolution):
        raise RehearsalError(f"generate wrote a {size[0]}x{size[1]} image, expected {resolution}x{resolution}")
    return f"-> {len(images)} image(s) {size[0]}x{size[1]}"


_CLASS_INDEX_PAIRS = """
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from amlight.apps.inputs import LabelSpace
dataset, root, pairs, out = sys.argv[1:5]
space = LabelSpace.resolve(dataset, root=root)
entries = json.loads(Path(pairs).read_text())["pairs"]
Path(out).mkdir(parents=True, exist_ok=True)
for entry in entries:
    for key, value in list(entry.items()):
        if isinstance(value, str):
            entry[key] = str((Path(pairs).parent / value).resolve())
    for key in ("exemplar_labels", "target_labels"):
        target = Path(out) / (Path(entry[key]).stem + "_classes.png")
        Image.fromarray(space.load_labels(entry[key]).astype(np.uint8)).save(target)
        entry[key] = str(target)
Path(out, "pairs.json").write_text(json.dumps({"pairs": entries}) + "\\n")
"""


def class_index_pairs(dataset: str, fixture: Path, pairs: Path, out: Path) -> Path:
    """The pairs file ``pairs`` with its label maps rewritten as class-index PNGs under ``out`` (returns
    ``out/pairs.json``). A pipeline folder assembled for a registered dataset carries its classes but not
    the dataset files' raw-id decoding (Cityscapes' labelIds are mapped by file name), so it reads class
    indices; run in a subprocess: this process imports no torch."""
    done = subprocess.run([*_python(), "-c", _CLASS_INDEX_PAIRS, dataset, str(fixture), str(pairs), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RehearsalError(f"cannot rewrite the label maps of {pairs} as class indices:\n{done.stderr[-2000:]}")
    return out / "pairs.json"


def _controlnet_phases(s: Settings, out: Path, standin: Path, pairs: Path, config_dir: Path, run) -> None:
    """assemble -> stage 2 on the folder -> one augmented image from the folder (see the module docstring)."""
    py = _python()
    folder = out / "pipeline"
    run(Phase("assemble", [*py, "-m", "amlight", "assemble", "--base", str(standin), "--controlnet",
                           str(standin / "controlnet"), "--data", s.dataset, "--out", str(folder)]),
        lambda: f"-> {folder.name}/ ({sum(p.stat().st_size for p in folder.rglob('*') if p.is_file()) / GIB:.2f} GiB)")
    stage2_cmd = [*py, "-m", "amlight", "fit", "--config", str(config_dir / "stage2_controlnet.yaml"),
                  *fit_overrides(s, "stage2"), "--model.init_args.stage1_checkpoint", str(folder)]
    holder: dict[str, Path] = {}

    def check_stage2() -> str:
        holder["s2"] = _find_one(out / "stage2", "last.ckpt", "stage-2 checkpoint")
        return f"-> {holder['s2'].relative_to(out)} ({holder['s2'].stat().st_size / 1024:.0f} KiB)"

    run(Phase("stage2", stage2_cmd), check_stage2)
    gen_out = out / "generate"
    pairs = class_index_pairs(s.dataset, s.fixture_root().resolve(), pairs, out / "labels")
    gen_cmd = [*py, "-m", "amlight", "generate", "--pipeline", str(folder), "--pairs", str(pairs),
               "--out", str(gen_out), "--mode", "augmented", "--steps", str(s.sample_steps),
               "--guidance-scale", str(s.guidance_scale), "--size", str(s.resolution), str(s.resolution),
               "--device", "cpu", "--batch-size", "1", "--quiet"]
    run(Phase("generate", gen_cmd), lambda: _check_image(gen_out, s.resolution))


def _absolute(entry: dict, base: Path) -> dict:
    return {k: str((base / v).resolve()) if isinstance(v, str) else v for k, v in entry.items()}


def format_table(record: dict) -> str:
    s = record["settings"]
    public = str(s.get("controlnet")) == "True"
    lines = [
        ("SD 1.5 + segmentation ControlNet rehearsal (public-weights path: assemble, stage 2, generate augmented; "
         if public else "SD 1.5 rehearsal (") + f"{s['dataset']}, {s['resolution']}x{s['resolution']}, {s['train_steps']} training step(s) "
        f"per stage, {s['sample_steps']} sampling steps, precision {s['precision']}, batch 1, CPU)",
        "",
        "| phase | wall time (s) | peak RSS (GiB) | result |",
        "|---|---|---|---|",
    ]
    for p in record["phases"]:
        result = "ok" if p["returncode"] == 0 else f"FAILED (exit {p['returncode']})"
        lines.append(f"| {p['name']} | {p['wall_s']:.1f} | {p['peak_rss_gib']:.2f} | {result} {p['note']} |")
    m = record.get("machine_before", {})
    lines += ["", f"machine: {m.get('cpus')} CPUs, {m.get('mem_total_gib')} GiB RAM "
              f"({m.get('mem_available_gib')} GiB available at start), load average at start {m.get('load_average')}"]
    if record.get("error"):
        lines += ["", "FAILED: " + record["error"].splitlines()[0]]
    return "\n".join(lines)


def _write(out: Path, record: dict) -> None:
    (out / "rehearsal.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "rehearsal.md").write_text(format_table(record) + "\n")
