"""``python -m amlight <subcommand>``: Lightning's fit/validate/test/predict plus amlight's own commands.

Lightning subcommands go to :class:`AmlightCLI` (LightningCLI: YAML configs, dotted overrides,
omegaconf interpolation, the resolved config saved next to the checkpoints). The project's own
subcommands are small argparse programs, each a module in ``amlight.cli.commands`` with ``main(argv)``.
"""
from __future__ import annotations

import importlib
import sys

LIGHTNING_COMMANDS = {
    "fit": "train a stage from a YAML config (--config configs/quickstart/stage1.yaml)",
    "validate": "run validation of a stage on a config and checkpoint",
    "test": "run the test loop of a stage",
    "predict": "run the predict loop of a stage",
}
OWN_COMMANDS = {
    "synth": ("amlight.cli.commands.synth", "render the synthetic driving scenes (the offline default data)"),
    "data": ("amlight.cli.commands.data", "inspect datasets: `data check NAME_OR_DIR` validates one before training"),
    "probe": ("amlight.cli.commands.probe", "same-class attention mass per mode on validation pairs"),
    "export": ("amlight.cli.commands.export", "write a stage-1 checkpoint (+ adapter) as a diffusers pipeline folder to share"),
    "assemble": ("amlight.cli.commands.assemble", "a pipeline folder from public parts: SD 1.5 + a segmentation ControlNet + a dataset's classes"),
    "export-adapter": ("amlight.cli.commands.export_adapter", "write a stage-2 checkpoint's adapter to safetensors"),
    "generate": ("amlight.cli.commands.generate", "draw target label maps in exemplars' appearance (pairs, all pairs, retrieval)"),
    "retrieve": ("amlight.cli.commands.retrieve", "rank a database's exemplars for target label maps (class coverage + layout)"),
    "evaluate": ("amlight.cli.commands.evaluate", "generate with every attention mode and score them (JSON + Markdown table + grid)"),
    "metrics": ("amlight.cli.commands.metrics", "score generated images against references (PSNR, SSIM, ΔE, FID, ...)"),
    "benchmark": ("amlight.cli.commands.benchmark", "speed and memory benchmarks: `benchmark train`, `benchmark pipeline`"),
    "backbone": ("amlight.cli.commands.backbone", "backbone folders: `backbone make-sd15-standin --out DIR` (SD 1.5's architecture, random weights)"),
    "app": ("amlight.cli.commands.app", "a local Gradio app: generate, paint, link regions, look at attention (needs the `app` extra)"),
    "rehearse": ("amlight.cli.commands.rehearse", "`rehearse sd15`: the shipped SD 1.5 configs end to end on the CPU at 512 px (time, peak memory)"),
}


def usage() -> str:
    width = max(map(len, [*LIGHTNING_COMMANDS, *OWN_COMMANDS]))
    lines = ["usage: python -m amlight <subcommand> [options]", "", "training (LightningCLI; `<subcommand> --help` for options):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "amlight commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in OWN_COMMANDS.items()]
    lines += ["", "example: python -m amlight fit --config configs/quickstart/stage1.yaml --trainer.max_steps 50",
              "options of a stage or of the data, described: python -m amlight fit --model.help GenerationStage "
              "(or AdapterStage), --data.help ExemplarPairDataModule"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command = argv[0]
    if command in OWN_COMMANDS:
        module = importlib.import_module(OWN_COMMANDS[command][0])
        return int(module.main(argv[1:]) or 0)
    if command in LIGHTNING_COMMANDS:
        # LightningCLI reads sys.argv itself; giving it args too makes it warn about ambiguity.
        return run_lightning(None if from_command_line else argv, command)
    print(f"amlight: unknown subcommand {command!r}\n\n{usage()}", file=sys.stderr)
    return 2


def run_lightning(argv: list[str] | None, command: str = "fit") -> int:
    """Exit code of a Lightning subcommand; errors about the user's input are one line (exit 1)."""
    from amlight.cli.lightning_cli import run_cli

    return run_cli(argv, command)
