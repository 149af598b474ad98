"""``python -m amlight evaluate``: every mode scored on the same pairs, a resumable cache, sweeps, clear errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amlight.cli.commands.evaluate import main

from helpers.folder_datasets import N_PAIRS, PAIRED_NAMES as NAMES, make_paired_dataset

SIZE = 16  # the tiny model's resolution; files on disk are 32x32
MODES = ("structure_only", "augmented", "hard_mask", "adapter")
METRICS = ("psnr", "ssim", "delta_e", "label_miou")


def make_adapter(path: Path) -> Path:
    from safetensors.torch import save_file

    from amlight.modules.adapter import AMAdapter

    torch.manual_seed(1)
    adapter = AMAdapter(heads=2, channels=4, num_layers=2, max_resolution=8)  # 16x16 layers pooled 4D to 8x8
    for p in adapter.parameters():  # a fresh adapter is the identity: make it do something
        p.data.normal_(0, 0.2)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(path), metadata={
        "amlight_stage": "adapter", "adapter_config": json.dumps(adapter.config), "stage1": json.dumps({})})
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, stage1_ckpt):
    root = tmp_path_factory.mktemp("evaluate")
    data = make_paired_dataset(root / "data")
    adapter = make_adapter(root / "adapter.safetensors")
    return {"root": root, "data": data, "adapter": adapter, "stage1": stage1_ckpt}


def _args(setup, out, *extra, adapter=True):
    args = ["--stage1", str(setup["stage1"]), "--data", str(setup["data"]), "--steps", "2",
            "--batch-size", "4", "--out", str(out), "--quiet"]
    if adapter:
        args += ["--adapter", str(setup["adapter"])]
    return args + list(extra)


def _pngs(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.png")}


@pytest.fixture(scope="module")
def evaluated(setup):
    out = setup["root"] / "run"
    assert main(_args(setup, out)) == 0
    return out


def test_results_cover_every_mode_and_metric(evaluated):
    record = json.loads((evaluated / "results.json").read_text())
    assert record["n_pairs"] == N_PAIRS and len(record["pairs"]) == N_PAIRS
    assert list(record["modes"]) == list(MODES)
    for mode in MODES:
        metrics = record["modes"][mode]["metrics"]
        assert set(metrics) == set(METRICS)
        for name in METRICS:
            entry = metrics[name]
            assert entry["n"] == N_PAIRS and len(entry["per_pair"]) == N_PAIRS
            assert entry["direction"] == ("lower" if name == "delta_e" else "higher")
            assert entry["mean"] == pytest.approx(np.mean(entry["per_pair"]))
            assert entry["ci95"] > 0
        assert record["modes"][mode]["delta_e_per_class"]
    assert record["generation"]["generated"] == N_PAIRS * len(MODES)
    assert record["settings"]["steps"] == 2 and record["settings"]["seeds"] == [0]
    assert record["pairs"][0].startswith("0000_000_a__000_b_")


def test_results_md_table_and_grid(evaluated):
    text = (evaluated / "results.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| mode |"))
    assert "PSNR (dB) ↑" in header and "ΔE per class ↓" in header
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows[:4]] == [f"`{m}`" for m in MODES]
    assert all(" ± " in cell for cell in rows[0].split("|")[2:6])
    assert "python -m amlight evaluate" in text and f"{N_PAIRS} pairs" in text

    grid = Image.open(evaluated / "grid.png")
    # 16 px images upscaled x6 = 96 px cells, 2 px padding, 7 columns (exemplar, labels, truth, 4 modes),
    # N_PAIRS rows under a 16 px title strip.
    assert grid.size == (2 + 7 * (96 + 2), 16 + 2 + N_PAIRS * (96 + 2))


def test_scores_equal_ground_truth_scores_of_the_cached_pngs(evaluated, setup):
    """Known answer: the numbers in results.json are ground_truth_scores of the PNGs in the cache."""
    from amlight.data.pairing import PairDataset, read_pairs_file
    from amlight.data.registry import build_dataset
    from amlight.metrics import ground_truth_scores, images_from_uint8

    record = json.loads((evaluated / "results.json").read_text())
    pairs = read_pairs_file(setup["data"] / "val" / "pairs.json")
    dataset = PairDataset(build_dataset(str(setup["data"]), split="val"), "listed", (SIZE, SIZE), augment=False,
                          pairs=pairs)
    truth = torch.stack([dataset[i]["image"] for i in range(N_PAIRS)])
    labels = torch.stack([dataset[i]["labels"] for i in range(N_PAIRS)])
    for mode in MODES:
        key = record["modes"][mode]["cache_key"]
        files = [evaluated / "cache" / key / mode / f"{pair}_s0.png" for pair in record["pairs"]]
        pred = images_from_uint8([np.asarray(Image.open(f).convert("RGB")) for f in files])
        expected = ground_truth_scores(pred, truth, labels, len(NAMES), 255)
        for name in METRICS:
            assert record["modes"][mode]["metrics"][name]["per_pair"] == expected[name].tolist(), (mode, name)
    # The modes really differ (same noise, different attention), and only structure_only ignores the exemplar.
    so = record["modes"]["structure_only"]["metrics"]["psnr"]["per_pair"]
    assert so != record["modes"]["augmented"]["metrics"]["psnr"]["per_pair"]


def test_second_run_draws_nothing_and_gives_identical_numbers(evaluated, setup, capsys):
    before = _pngs(evaluated)
    first = json.loads((evaluated / "results.json").read_text())
    assert main(_args(setup, evaluated)) == 0
    again = json.loads((evaluated / "results.json").read_text())
    assert _pngs(evaluated) == before
    assert again["generation"]["generated"] == 0 and again["generation"]["reused"] == N_PAIRS * len(MODES)
    assert again["modes"] == first["modes"]
    out = capsys.readouterr().out
    assert "0 image(s) generated" in out and "| `adapter` |" in out

    # A prefix of the pairs reuses the same images.
    prefix = setup["root"] / "prefix"
    prefix.mkdir()
    (prefix / "cache").symlink_to(evaluated / "cache", target_is_directory=True)
    assert main(_args(setup, prefix, "--max-pairs", "2")) == 0
    subset = json.loads((prefix / "results.json").read_text())
    assert subset["generation"]["generated"] == 0 and subset["n_pairs"] == 2
    assert subset["modes"]["adapter"]["metrics"]["psnr"]["per_pair"] == \
        first["modes"]["adapter"]["metrics"]["psnr"]["per_pair"][:2]


def test_a_changed_setting_gets_new_cache_keys_for_the_modes_it_affects(evaluated, setup):
    first = json.loads((evaluated / "results.json").read_text())
    out = setup["root"] / "strength"
    out.mkdir()
    (out / "cache").symlink_to(evaluated / "cache", target_is_directory=True)
    assert main(_args(setup, out, "--strength", "0.5", "--modes", "structure_only,augmented", "--max-pairs", "1")) == 0
    record = json.loads((out / "results.json").read_text())
    keys = {m: e["cache_key"] for m, e in record["modes"].items()}
    # strength does not change structure_only: its images are reused; augmented is redrawn under a new key
    assert keys["structure_only"] == first["modes"]["structure_only"]["cache_key"]
    assert keys["augmented"] != first["modes"]["augmented"]["cache_key"]
    assert record["generation"]["generated"] == 1 and record["generation"]["reused"] == 1
    config = json.loads((evaluated / "cache" / keys["augmented"] / "config.json").read_text())
    assert config["strength"] == 0.5 and "adapter_sha256" not in config

    from amlight.metrics.evaluation import Model, Settings, cache_config, config_key

    class Pipe:  # cache keys need only what identifies the weights
        resolution = (SIZE, SIZE)
        adapter = type("A", (), {"max_resolution": 8})()
        backbone = type("B", (), {"vae": None})()

    model = Model(Pipe(), "s1", "abc", "ad", "def", "fp32")
    base = Settings()
    key = {m: config_key(cache_config(m, base, model)) for m in MODES}
    assert key["augmented"] == key["hard_mask"] != key["adapter"] != key["structure_only"]
    guidance = {m: config_key(cache_config(m, base.with_value("guidance_scale", 5.0), model)) for m in MODES}
    assert all(guidance[m] != key[m] for m in MODES)
    pooled = {m: config_key(cache_config(m, base.with_value("max_resolution", 4), model)) for m in MODES}
    assert [m for m in MODES if pooled[m] != key[m]] == ["adapter"]
    same = {m: config_key(cache_config(m, base.with_value("max_resolution", 8), model)) for m in MODES}
    assert same == key  # the trained value, spelled out, is the default


def test_sweep_appends_rows_and_a_rerun_replaces_them(setup, capsys):
    out = setup["root"] / "sweep"
    common = ["--modes", "augmented", "--max-pairs", "1"]
    assert main(_args(setup, out, *common, "--sweep", "guidance_scale=1,2", adapter=False)) == 0
    data = json.loads((out / "sweeps.json").read_text())
    assert [r["setting"] for r in data["sweeps"]["guidance_scale"]] == ["guidance_scale=1", "guidance_scale=2"]
    row = data["sweeps"]["guidance_scale"][1]
    assert row["modes"]["augmented"]["metrics"]["psnr"]["n"] == 1
    text = (out / "sweeps.md").read_text()
    assert "| setting | mode |" in text and text.count("| `guidance_scale=2` |") == 1
    assert not (out / "results.json").exists()

    before = _pngs(out)
    assert main(_args(setup, out, *common, "--sweep", "guidance_scale=2", "--sweep", "blocks=down+up",
                      adapter=False)) == 0
    data = json.loads((out / "sweeps.json").read_text())
    assert [r["setting"] for r in data["sweeps"]["guidance_scale"]] == ["guidance_scale=1", "guidance_scale=2"]
    assert [r["setting"] for r in data["sweeps"]["blocks"]] == ["blocks=down+up"]
    assert data["sweeps"]["guidance_scale"][1]["modes"] == row["modes"]  # replaced by identical numbers
    after = _pngs(out)
    assert all(after[p] == t for p, t in before.items())  # guidance 2 was cached
    text = (out / "sweeps.md").read_text()
    assert text.count("| `guidance_scale=2` |") == 1 and text.count("## ") == 2
    assert "| `blocks=down+up` | `augmented` |" in text
    assert "## blocks" in capsys.readouterr().out


def test_max_resolution_sweep_changes_only_the_adapter_and_is_restored(setup):
    from amlight.checkpoints.stage1 import load_stage1
    from amlight.metrics.evaluation import Settings, generate, load_model, load_pairs
    from amlight.data.registry import build_dataset

    model = load_model(setup["stage1"], setup["adapter"], "cpu")
    assert load_stage1(setup["stage1"]).sha256 == model.stage1_sha256
    pairs = load_pairs(setup["data"] / "val" / "pairs.json", build_dataset(str(setup["data"]), split="val"),
                       model.pipe.resolution, max_pairs=1)
    adapter = model.pipe.adapter
    assert adapter.max_resolution == 8
    cache = setup["root"] / "maxres"
    keys4, report = generate(model, pairs, Settings(modes=("adapter",), steps=1, max_resolution=4), cache)
    assert adapter.max_resolution == 8 and report.generated == 1
    keys8, report = generate(model, pairs, Settings(modes=("adapter",), steps=1), cache)
    assert keys8["adapter"] != keys4["adapter"] and report.generated == 1
    _, report = generate(model, pairs, Settings(modes=("adapter",), steps=1, max_resolution=8), cache)
    assert report.generated == 0 and report.reused == 1  # the trained value, spelled out, is the default
    four = np.asarray(Image.open(next((cache / keys4["adapter"]).rglob("*.png"))))
    full = np.asarray(Image.open(next((cache / keys8["adapter"]).rglob("*.png"))))
    assert (four != full).any()  # 4D pooling to 4x4 instead of 8x8 changes the refinement
    # The pooling size is an argument of each adapter call: a draw that fails midway leaves nothing to restore.
    seen, refine = [], adapter.refine

    def failing(*args, max_resolution=None, **kw):
        seen.append(max_resolution)
        raise RuntimeError

    adapter.refine = failing
    try:
        with pytest.raises(RuntimeError):
            generate(model, pairs, Settings(modes=("adapter",), steps=1, max_resolution=2), setup["root"] / "fails")
    finally:
        del adapter.refine
    assert seen == [2] and adapter.refine == refine and adapter.max_resolution == 8


@pytest.mark.parametrize("change, message", [
    ({"--stage1": "missing.ckpt"}, "missing.ckpt does not exist"),
    ({"--pairs": "nowhere/pairs.json"}, "nowhere/pairs.json does not exist"),
    ({"--data": "no_such_dataset"}, "unknown dataset 'no_such_dataset'"),
    ({"--modes": "augmented,adapter", "adapter": False}, "drop it from --modes, e.g. --modes augmented"),
    ({"--sweep": "temperature=1,2"}, "unknown parameter 'temperature'"),
    ({"--sweep": "steps=2,zero"}, "bad value 'zero'"),
    ({"--sweep": "blocks=down,left"}, "bad value 'left'"),
    ({"--sweep": "guidance_scale"}, "expected PARAM=V1,V2"),
    ({"--modes": "augmented,fancy"}, "unknown mode(s) fancy"),
    ({"--seeds": "0,x"}, "--seeds"),
    ({"--modes": "augmented", "--sweep": "max_resolution=4"}, "needs the adapter mode"),
    ({"--out": "FILE/sub"}, "cannot write to --out"),
])
def test_bad_input_is_one_line_and_exit_1(setup, tmp_path, capsys, change, message):
    change = dict(change)
    use_adapter = change.pop("adapter", True)
    args = _args(setup, tmp_path / "out", adapter=use_adapter)
    for flag, value in change.items():
        value = str(tmp_path / "a_file" / "sub") if value == "FILE/sub" else value
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    (tmp_path / "a_file").write_text("not a folder")
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("amlight evaluate: error: ") and "\n" not in err and "Traceback" not in err
    assert message in err


def _linked_out(setup, evaluated, name):
    out = setup["root"] / name
    out.mkdir()
    (out / "cache").symlink_to(evaluated / "cache", target_is_directory=True)
    return out


def test_several_seeds_average_per_pair(evaluated, setup):
    out = _linked_out(setup, evaluated, "seeds")
    assert main(_args(setup, out, "--modes", "structure_only", "--seeds", "0,1", "--max-pairs", "2")) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["generation"]["generated"] == 2 and record["generation"]["reused"] == 2  # seed 0 was cached
    first = json.loads((evaluated / "results.json").read_text())
    key = record["modes"]["structure_only"]["cache_key"]
    assert key == first["modes"]["structure_only"]["cache_key"]
    folder = evaluated / "cache" / key / "structure_only"
    s0 = [np.asarray(Image.open(folder / f"{p}_s0.png")) for p in record["pairs"]]
    s1 = [np.asarray(Image.open(folder / f"{p}_s1.png")) for p in record["pairs"]]
    assert all((a != b).any() for a, b in zip(s0, s1))  # another seed, other noise
    seed0 = first["modes"]["structure_only"]["metrics"]["ssim"]["per_pair"][:2]
    values = record["modes"]["structure_only"]["metrics"]["ssim"]
    assert values["n"] == 2
    assert all(v != s for v, s in zip(values["per_pair"], seed0))  # the mean over both seeds, not seed 0


def test_paper_metrics_from_local_weights(evaluated, setup, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
               patch_size=8)
    ViTModel(ViTConfig(**vit), add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vit, projection_dim=16)).save_pretrained(tmp_path / "clip")
    out = _linked_out(setup, evaluated, "paper")
    assert main(_args(setup, out, "--dino", str(tmp_path / "dino"), "--clip", str(tmp_path / "clip"))) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["generation"]["generated"] == 0
    for mode in MODES:
        metrics = record["modes"][mode]["metrics"]
        assert set(metrics) == {*METRICS, "self_sim", "clip"}
        assert metrics["self_sim"]["n"] == N_PAIRS and metrics["self_sim"]["direction"] == "lower"
        assert metrics["clip"]["n"] == N_PAIRS and -1 <= metrics["clip"]["mean"] <= 1
    assert "Self-sim ↓" in (out / "results.md").read_text() and "I_CLIP ↑" in (out / "results.md").read_text()

    assert main(_args(setup, tmp_path / "bad", "--dino", str(tmp_path / "nowhere"))) == 1
