"""``python -m amlight probe``: how much of each target position's exemplar attention lands on its own class.

Runs the attention probe over validation pairs for several modes and timesteps, with a stage-1 model
and (optionally) a stage-2 adapter, and prints one table: mode x (same-class attention mass,
share of attention that goes to the exemplar at all). Writes the numbers as JSON too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m amlight probe", description=__doc__)
    parser.add_argument("--stage2", help="stage-2 checkpoint (its stage-1 checkpoint is found from it)")
    parser.add_argument("--stage1", help="stage-1 checkpoint (when no --stage2: no adapter mode)")
    parser.add_argument("--pipeline", metavar="DIR", help="an exported pipeline folder (instead of --stage1/--stage2)")
    parser.add_argument("--base", metavar="DIR", help="the SD 1.5 folder, when the backbone_path stored in the "
                        "stage-1 checkpoint does not exist here")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=64, help="validation pairs to probe (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[250, 500, 750])
    parser.add_argument("--modes", nargs="+", default=None, help="default: augmented hard_mask [adapter]")
    parser.add_argument("--out", default=None, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    if args.pipeline and (args.stage1 or args.stage2 or args.base):
        parser.error("--pipeline holds the whole model: drop --stage1/--stage2/--base")
    if not args.stage1 and not args.stage2 and not args.pipeline:
        parser.error("give --stage2, --stage1 or --pipeline")

    from amlight.checkpoints.stage1 import find_stage1_of, load_stage1
    from amlight.data import ExemplarPairDataModule
    from amlight.apps.attention_probe import probe_attention
    from amlight.checkpoints.adapter_files import load_adapter
    from amlight.checkpoints.files import CheckpointError, read_checkpoint
    from amlight.modules.attention_modes import BANK_MODES, AttentionSettings

    try:
        adapter = None
        if args.pipeline:
            from amlight.checkpoints.pipeline_folder import adapter_from_pipeline_folder

            stage1 = load_stage1(args.pipeline)  # a folder: its own stage 1
            adapter = adapter_from_pipeline_folder(args.pipeline)
        elif args.stage2:
            record = read_checkpoint(args.stage2, expect_stage="adapter")["amlight"]
            # The stored path is the trainer's; when it is gone, the stage 1 next to the file (or by hash).
            stage1 = load_stage1(args.stage1 or find_stage1_of(record.get("stage1") or {}, args.stage2), base=args.base)
            adapter = load_adapter(args.stage2, stage1)
        else:
            stage1 = load_stage1(args.stage1, base=args.base)
    except CheckpointError as e:
        print(f"probe: {e}", file=sys.stderr)
        return 1
    try:  # one AttentionSettings per probed mode, built here; by default the modes that read the exemplar
        attentions = [AttentionSettings(m) for m in args.modes or BANK_MODES]
    except ValueError as e:
        print(f"probe: {e}", file=sys.stderr)
        return 1
    if not args.modes:
        attentions = [a for a in attentions if not a.uses_adapter or adapter is not None]
    modes = [a.mode for a in attentions]
    try:
        data = ExemplarPairDataModule(
            dataset=args.dataset, root=args.root, resolution=args.resolution, max_val_samples=args.pairs, val_batch_size=8
        )
        data.prepare_data()
        data.setup("validate")
    except (ValueError, KeyError, OSError) as e:  # unknown dataset, unreadable files: one line, no traceback
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"probe: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    sums = {m: {"same_class_mass": 0.0, "exemplar_share": 0.0} for m in modes}
    count = 0
    for batch in data.val_dataloader():
        for t in args.timesteps:
            for attention in attentions:
                mode = attention.mode
                result = probe_attention(stage1.model, stage1.backbone, batch, attention, adapter=adapter, timestep=t)
                sums[mode]["same_class_mass"] += result.same_class_mass()
                sums[mode]["exemplar_share"] += result.exemplar_share()
            count += 1
    table = {m: {k: v / count for k, v in s.items()} for m, s in sums.items()}
    print(f"{len(data.val_set)} pairs x timesteps {args.timesteps}, all self-attention layers")
    print(f"{'mode':<12} {'same-class mass':>16} {'exemplar share':>15}")
    for mode, row in table.items():
        print(f"{mode:<12} {row['same_class_mass']:>16.3f} {row['exemplar_share']:>15.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"pairs": len(data.val_set), "timesteps": args.timesteps,
                                              "modes": table}, indent=2))
    return 0
