"""``python -m amlight app``: the local Gradio app on your own model (needs ``pip install 'amlight[app]'``).

    python -m amlight app --pipeline DIR           # a folder written by `python -m amlight export`
    python -m amlight app --stage1 CKPT --adapter FILE
    python -m amlight app                          # the quickstart model, after `make demo`

Serves on 127.0.0.1 only (a free port, or --port), offline: no share link, no analytics, nothing
downloaded. Tabs: Generate, Edit (paint classes), Link (one-to-one mapping), Look (attention).
"""
from __future__ import annotations

import argparse
import sys

from amlight.cli.commands import int_at_least, parse_or_exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amlight app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", metavar="DIR", help="an exported pipeline folder (model_index.json)")
    parser.add_argument("--stage1", metavar="CKPT", help="a stage-1 checkpoint")
    parser.add_argument("--adapter", metavar="FILE", help="an adapter file or stage-2 checkpoint (for mode adapter)")
    parser.add_argument("--data", metavar="NAME_OR_DIR",
                        help="the dataset whose classes and colours label files use (default: the model's own)")
    parser.add_argument("--data-root", metavar="DIR", help="the dataset's files, to pick exemplars from it")
    parser.add_argument("--port", type=int_at_least(1), help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--steps", type=int_at_least(1), default=20, help="sampling steps the app starts with")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    from amlight.apps import app_logic as A

    model = {"pipeline": args.pipeline, "stage1": args.stage1, "adapter": args.adapter}
    if args.pipeline and (args.stage1 or args.adapter):
        print("amlight app: --pipeline holds the whole model: drop --stage1/--adapter", file=sys.stderr)
        return 2
    if not any(model.values()):
        model = A.default_model_paths()
        if not model:
            print("amlight app: no model: give --pipeline DIR or --stage1 CKPT [--adapter FILE] "
                  "(or run `make demo` for the quickstart model)", file=sys.stderr)
            return 2
        print("using the quickstart model: " + ", ".join(f"{k} {v}" for k, v in model.items()))
    from amlight.apps import app_ui as U

    try:
        U.import_gradio()  # before the model loads: a missing extra is said at once
    except SystemExit as e:
        print(f"amlight app: {e}", file=sys.stderr)
        return 2
    try:
        pipe, space = A.load_model(model.get("pipeline"), model.get("stage1"), model.get("adapter"), data=args.data)
    except (ValueError, KeyError, OSError) as e:  # bad input: one line, no traceback
        print(f"amlight app: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    demo = U.build_app(pipe, space, data_root=args.data_root, steps=args.steps)
    port = args.port or U.free_port()
    print(f"amlight app on http://127.0.0.1:{port}/  (Ctrl+C stops it)", flush=True)
    U.launch(demo, port, block=True)
    return 0
