"""Bad input sweep (issue 11, item 5): every user-facing command, given the bad inputs that each was
taught to handle, exits non-zero with one line that names the file, no traceback, and no output.

Commands run in-process through ``amlight.cli.main.main`` (one interpreter, seconds in all); two of them
also run as ``python -m amlight`` to check the real entry point's exit code and stderr.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amlight.cli.main import main

from helpers.tiny_models import save_stage2_checkpoint
from helpers.folder_datasets import make_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def w(stage1_ckpt, tmp_path_factory):
    """The inputs: a good folder dataset and checkpoints, and one bad file of each kind."""
    from amlight.checkpoints.adapter_files import export_adapter

    root = tmp_path_factory.mktemp("bad_inputs")
    data = make_dataset(root / "data")
    v = data / "val"
    stage2 = save_stage2_checkpoint(stage1_ckpt, root / "stage2.ckpt")
    adapter = export_adapter(stage2, root / "adapter.safetensors")
    bad = root / "bad"
    bad.mkdir()
    (bad / "trunc.ckpt").write_bytes(stage1_ckpt.read_bytes()[:4096])
    (bad / "text.ckpt").write_text("hello\n")
    (bad / "trunc.safetensors").write_bytes(adapter.read_bytes()[:-64])
    (bad / "corrupt.png").write_bytes(b"this is not a png file")
    labels = np.asarray(Image.open(v / "labels/s1.png")).copy()
    Image.fromarray(labels[:24, :24]).save(bad / "small_labels.png")
    labels[3, 5] = (1, 2, 3)
    Image.fromarray(labels).save(bad / "off_palette.png")
    (bad / "invalid_pairs.json").write_text("{not json")
    pairs = json.loads((v / "pairs.json").read_text())
    pairs["pairs"][0]["exemplar"] = "images/nope.png"
    (bad / "missing_file_pairs.json").write_text(json.dumps(pairs))
    (root / "empty_dataset").mkdir()
    (bad / "unknown_key.yaml").write_text("model:\n  init_args:\n    learning_rat: 1\n")
    # A copy of the dataset with one unreadable image and one off-palette label map, for `data check`.
    broken = root / "broken_data"
    shutil.copytree(data, broken)
    (broken / "val/images/s2.png").write_bytes(b"garbage")
    shutil.copy(bad / "off_palette.png", broken / "val/labels/s3.png")
    # Predictions for `metrics`: one unreadable, one of the wrong size.
    for name in ("pred_corrupt", "pred_small"):
        shutil.copytree(v / "images", root / name)
    (root / "pred_corrupt/s0.png").write_bytes(b"garbage")
    Image.open(v / "images/s0.png").resize((24, 24)).save(root / "pred_small/s0.png")
    return {"root": root, "data": data, "v": v, "stage1": stage1_ckpt, "stage2": stage2, "adapter": adapter,
            "bad": bad, "empty": root / "empty_dataset", "broken": broken}


def _out(w) -> Path:
    return w["out"] / "result"  # w["out"]: a fresh folder per test, which must not appear


def _with(argv: list, *extra) -> list[str]:
    """``argv`` with each ``--flag value`` of ``extra`` replacing the good value (or added)."""
    argv = list(argv)
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return [str(a) for a in argv]


def _generate(w, *extra):
    v = w["v"]
    argv = ["generate", "--stage1", w["stage1"], "--adapter", w["adapter"], "--data", w["data"], "--out", _out(w),
            "--steps", "2", "--threads", "1", "--quiet"]
    if "--pairs" not in extra:  # --pairs replaces the single pair
        argv += ["--exemplar", v / "images/s0.png", "--exemplar-labels", v / "labels/s0.png",
                 "--target-labels", v / "labels/s1.png"]
    return _with(argv, *extra)


def _evaluate(w, *extra):
    return _with(["evaluate", "--stage1", w["stage1"], "--adapter", w["adapter"], "--data", w["data"],
                  "--out", _out(w), "--steps", "2", "--max-pairs", "1"], *extra)


def _fit(w, stage, *extra):
    return ["fit", "--config", str(REPO / f"configs/quickstart/{stage}.yaml"),
            "--trainer.default_root_dir", str(_out(w)), "--data.init_args.root", str(w["root"] / "synthetic"),
            "--data.init_args.resolution", "16", *map(str, extra)]


def _retrieve(w, *extra, target=None):
    return _with(["retrieve", "--data", w["data"], "--split", "val", "--out", _out(w) / "r.json",
                  "--target-labels", target or w["v"] / "labels/s1.png", "--no-progress"], *extra)


def _probe(w, *extra):
    return _with(["probe", "--dataset", w["data"], "--root", w["data"], "--resolution", "16", "--pairs", "1",
                  "--out", _out(w) / "probe.json"], *extra)


# (command, case): (argv, what the one line must say). Every message names the offending file.
def cases(w) -> dict:
    b, v = w["bad"], w["v"]
    return {
        ("generate", "missing_image"): (_generate(w, "--exemplar", v / "images/nope.png", "--exemplar-labels",
                                                  v / "labels/s0.png", "--target-labels", v / "labels/s1.png"), "nope.png"),
        ("generate", "corrupt_image"): (_generate(w, "--exemplar", b / "corrupt.png", "--exemplar-labels",
                                                  v / "labels/s0.png", "--target-labels", v / "labels/s1.png"), "corrupt.png"),
        ("generate", "off_palette_labels"): (_generate(w, "--exemplar", v / "images/s0.png", "--exemplar-labels",
                                                       v / "labels/s0.png", "--target-labels", b / "off_palette.png"),
                                             "off_palette.png"),
        ("generate", "size_mismatch"): (_generate(w, "--exemplar", v / "images/s0.png", "--exemplar-labels",
                                                  b / "small_labels.png", "--target-labels", v / "labels/s1.png"),
                                        "small_labels.png"),
        ("generate", "wrong_stage_checkpoint"): (_generate(w, "--adapter", w["stage1"]), f"{w['stage1']} is a stage-1"),
        ("generate", "truncated_checkpoint"): (_generate(w, "--adapter", b / "trunc.ckpt"),
                                               f"{b / 'trunc.ckpt'} is truncated or not a PyTorch checkpoint"),
        ("generate", "truncated_safetensors"): (_generate(w, "--adapter", b / "trunc.safetensors"),
                                                f"{b / 'trunc.safetensors'} is truncated or not a safetensors file"),
        ("generate", "invalid_pairs_json"): (_generate(w, "--pairs", b / "invalid_pairs.json"), "invalid_pairs.json"),
        ("generate", "missing_file_pairs_json"): (_generate(w, "--pairs", b / "missing_file_pairs.json"), "nope.png"),
        ("generate", "unknown_dataset"): (_generate(w, "--data", "nosuchds"), "nosuchds"),
        ("evaluate", "wrong_stage_checkpoint"): (_evaluate(w, "--stage1", w["stage2"]), f"{w['stage2']} is a stage-2"),
        ("evaluate", "truncated_checkpoint"): (_evaluate(w, "--stage1", b / "trunc.ckpt"), "trunc.ckpt is truncated"),
        ("evaluate", "truncated_safetensors"): (_evaluate(w, "--adapter", b / "trunc.safetensors"),
                                                "trunc.safetensors is truncated"),
        ("evaluate", "invalid_pairs_json"): (_evaluate(w, "--pairs", b / "invalid_pairs.json"), "invalid_pairs.json"),
        ("evaluate", "missing_file_pairs_json"): (_evaluate(w, "--pairs", b / "missing_file_pairs.json"), "nope.png"),
        ("evaluate", "unknown_dataset"): (_evaluate(w, "--data", "nosuchds"), "nosuchds"),
        ("evaluate", "empty_folder_dataset"): (_evaluate(w, "--data", w["empty"]), "empty_dataset"),
        ("metrics", "missing_image_folder"): (["metrics", "--pred", str(w["root"] / "nope"), "--ref", str(v / "images"),
                                               "--out", str(_out(w) / "m.json")], "nope"),
        ("metrics", "corrupt_image"): (["metrics", "--pred", str(w["root"] / "pred_corrupt"), "--ref", str(v / "images"),
                                        "--metrics", "psnr", "--out", str(_out(w) / "m.json")], "s0.png"),
        ("metrics", "size_mismatch"): (["metrics", "--pred", str(w["root"] / "pred_small"), "--ref", str(v / "images"),
                                        "--metrics", "psnr", "--out", str(_out(w) / "m.json")], "s0.png"),
        ("retrieve", "off_palette_labels"): (_retrieve(w, target=b / "off_palette.png"), "off_palette.png"),
        ("retrieve", "corrupt_image"): (_retrieve(w, target=b / "corrupt.png"), "corrupt.png"),
        ("retrieve", "missing_image"): (_retrieve(w, target=b / "nope.png"), "nope.png"),
        ("retrieve", "unknown_dataset"): (_retrieve(w, "--data", "nosuchds"), "nosuchds"),
        ("export-adapter", "wrong_stage_checkpoint"): (["export-adapter", str(w["stage1"]), str(_out(w) / "a.safetensors")],
                                                       f"{w['stage1']} is a stage-1"),
        ("export-adapter", "truncated_checkpoint"): (["export-adapter", str(b / "trunc.ckpt"), str(_out(w) / "a.safetensors")],
                                                     f"{b / 'trunc.ckpt'} is truncated or not a PyTorch checkpoint"),
        ("export-adapter", "text_checkpoint"): (["export-adapter", str(b / "text.ckpt"), str(_out(w) / "a.safetensors")],
                                                f"{b / 'text.ckpt'} is truncated or not a PyTorch checkpoint"),
        ("data check", "unknown_dataset"): (["data", "check", "nosuchds"], "nosuchds"),
        ("data check", "empty_folder_dataset"): (["data", "check", str(w["empty"])], "empty_dataset"),
        ("data check", "corrupt_image"): (["data", "check", str(w["broken"])], "s2.png"),
        ("data check", "off_palette_labels"): (["data", "check", str(w["broken"])], "s3.png"),
        ("probe", "wrong_stage_checkpoint"): (_probe(w, "--stage2", w["stage1"]), f"{w['stage1']} is a stage-1"),
        ("probe", "truncated_checkpoint"): (_probe(w, "--stage1", b / "trunc.ckpt"), "trunc.ckpt is truncated"),
        ("probe", "unknown_dataset"): (["probe", "--stage1", str(w["stage1"]), "--dataset", "nosuchds",
                                        "--out", str(_out(w) / "probe.json")], "nosuchds"),
        ("fit", "unknown_config_key"): (_fit(w, "stage1", "--config", b / "unknown_key.yaml"),
                                        f"unknown key model.init_args.learning_rat in {b / 'unknown_key.yaml'}"),
        ("fit", "unknown_dataset"): (_fit(w, "stage1", "--data.init_args.dataset", "nosuchds"), "nosuchds"),
        ("fit", "empty_folder_dataset"): (_fit(w, "stage1", "--data.init_args.dataset", w["empty"],
                                               "--data.init_args.root", w["empty"]), "empty_dataset"),
        ("fit", "wrong_stage_checkpoint"): (_fit(w, "stage2", "--model.init_args.stage1_checkpoint", w["stage2"]),
                                            f"{w['stage2']} is a stage-2"),
        ("fit", "truncated_checkpoint"): (_fit(w, "stage2", "--model.init_args.stage1_checkpoint", b / "trunc.ckpt"),
                                          f"{b / 'trunc.ckpt'} is truncated or not a PyTorch checkpoint"),
        ("fit", "text_ckpt_path"): (_fit(w, "stage1", "--ckpt_path", b / "text.ckpt"),
                                    f"{b / 'text.ckpt'} is truncated or not a PyTorch checkpoint"),
    }


CASES = [
    ("generate", c) for c in ["missing_image", "corrupt_image", "off_palette_labels", "size_mismatch",
                              "wrong_stage_checkpoint", "truncated_checkpoint", "truncated_safetensors",
                              "invalid_pairs_json", "missing_file_pairs_json", "unknown_dataset"]
] + [
    ("evaluate", c) for c in ["wrong_stage_checkpoint", "truncated_checkpoint", "truncated_safetensors",
                              "invalid_pairs_json", "missing_file_pairs_json", "unknown_dataset", "empty_folder_dataset"]
] + [("metrics", c) for c in ["missing_image_folder", "corrupt_image", "size_mismatch"]
] + [("retrieve", c) for c in ["off_palette_labels", "corrupt_image", "missing_image", "unknown_dataset"]
] + [("export-adapter", c) for c in ["wrong_stage_checkpoint", "truncated_checkpoint", "text_checkpoint"]
] + [("data check", c) for c in ["unknown_dataset", "empty_folder_dataset", "corrupt_image", "off_palette_labels"]
] + [("probe", c) for c in ["wrong_stage_checkpoint", "truncated_checkpoint", "unknown_dataset"]
] + [("fit", c) for c in ["unknown_config_key", "unknown_dataset", "empty_folder_dataset", "wrong_stage_checkpoint",
                          "truncated_checkpoint", "text_ckpt_path"]]

# `data check` reports every problem of a dataset at once (one line each), so only there may
# several lines name problems.
REPORTS_ALL_PROBLEMS = {"data check"}


def _run_in_process(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize("command,case", CASES, ids=[f"{c.replace(' ', '_')}-{k}" for c, k in CASES])
def test_bad_input(w, command, case, capsys, tmp_path, monkeypatch):
    w["out"], cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv, expected = cases(w)[(command, case)]
    code, text = _run_in_process(argv, capsys)
    assert code not in (0, None), text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    naming = [line for line in text.splitlines() if expected in line]
    assert naming, f"no line says {expected!r}:\n{text[-2000:]}"
    if command not in REPORTS_ALL_PROBLEMS:
        errors = [line for line in text.splitlines() if "error" in line.lower() and "0 error" not in line.lower()]
        assert len(errors) <= 1 and (not errors or errors == naming[:1]), text[-2000:]
    assert not w["out"].exists(), "partial output left behind"
    assert list(cwd.iterdir()) == []  # nothing in the working directory either


@pytest.mark.parametrize("argv_of", [
    lambda w: _fit(w, "stage1", "--ckpt_path", w["bad"] / "text.ckpt"),
    lambda w: ["export-adapter", str(w["bad"] / "trunc.ckpt"), str(_out(w) / "a.safetensors")],
], ids=["fit", "export-adapter"])
def test_bad_input_through_the_real_entry_point(w, argv_of, tmp_path):
    w["out"] = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "amlight", *map(str, argv_of(w))], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "ckpt is truncated or not a PyTorch checkpoint (" in last and str(w["bad"]) in last, last
    assert not w["out"].exists() and sorted(p.name for p in tmp_path.iterdir()) == []
