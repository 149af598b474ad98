"""``python -m amlight generate``: all pairs, listed pairs, retrieval, resuming, applications, bad input."""
import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from amlight.cli.commands.generate import main

from helpers.folder_datasets import COLORS, SIZE, make_dataset
from helpers.tiny_models import TINY_OPTIONS, save_adapter, save_stage1_checkpoint


@pytest.fixture(scope="module")
def world(stage1_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    data = make_dataset(root / "data")
    adapter = save_adapter(stage1_ckpt, root / "adapter.safetensors")
    return {"root": root, "data": data, "val": data / "val", "stage1": stage1_ckpt, "adapter": adapter}


def run(world, out, *extra, adapter=True, steps=2):
    argv = ["--stage1", str(world["stage1"]), "--data", str(world["data"]), "--out", str(out),
            "--steps", str(steps), "--threads", "1", "--quiet", *map(str, extra)]
    if adapter:
        argv += ["--adapter", str(world["adapter"])]
    return main(argv)


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def summary(out):
    return json.loads((out / "summary.json").read_text())


def ex_args(world, exemplars, targets):
    v = world["val"]
    return ["--exemplar", *[v / f"images/{e}.png" for e in exemplars],
            "--exemplar-labels", *[v / f"labels/{e}.png" for e in exemplars],
            "--target-labels", *[v / f"labels/{t}.png" for t in targets]]


# --- all pairs, resuming, determinism ---------------------------------------------------------


def test_all_pairs_resume_and_determinism(world, tmp_path, capsys):
    out = tmp_path / "out"
    args = ex_args(world, ["s0", "s1"], ["s2", "s3"])
    assert run(world, out, *args, "--batch-size", "3") == 0
    names = {f"s{e}__s{t}.png" for e in (0, 1) for t in (2, 3)}
    assert {p.name for p in out.glob("*.png")} == names | {"grid.png"}
    for name in names:
        assert Image.open(out / name).size == (16, 16)  # the model's native size
    record = summary(out)
    assert record["counts"]["written"] == 4 and record["counts"]["skipped"] == 0
    by_name = {o["output"]: o for o in record["outputs"]}
    assert by_name["s0__s3.png"]["uncovered_classes"] == ["tree"]  # s3 has a tree, s0 a building
    assert by_name["s0__s2.png"]["uncovered_classes"] == []
    assert by_name["s0__s2.png"]["seed"] == 0 and by_name["s0__s2.png"]["mode"] == "adapter"
    captured = capsys.readouterr()
    assert "4 written, 0 skipped" in captured.out
    # warned once per pair, naming the files and the class
    warned = [line for line in captured.err.splitlines() if "nothing to copy" in line]
    assert len(warned) == 2 and any("s3.png" in w and "tree" in w and "s0.png" in w for w in warned)
    first = files(out)

    # same arguments elsewhere: the same bytes
    again = tmp_path / "again"
    assert run(world, again, *args, "--batch-size", "3") == 0
    assert {k: v for k, v in files(again).items() if k.endswith(".png")} == \
        {k: v for k, v in first.items() if k.endswith(".png")}

    # second run: everything skipped, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("s*.png")}
    assert run(world, out, *args, "--batch-size", "3") == 0
    assert "0 written, 4 skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("s*.png")} == mtimes
    assert summary(out)["counts"]["skipped"] == 4

    # one output lost: only it is drawn again, to the same bytes
    (out / "s1__s2.png").unlink()
    assert run(world, out, *args, "--batch-size", "3") == 0
    assert "1 written, 3 skipped" in capsys.readouterr().out
    assert (out / "s1__s2.png").read_bytes() == first["s1__s2.png"]
    assert [o["output"] for o in summary(out)["outputs"] if o["status"] == "written"] == ["s1__s2.png"]
    assert not list(out.rglob(".*.tmp"))


def test_pairs_file_with_triplets_and_grid(world, tmp_path):
    out = tmp_path / "out"
    assert run(world, out, "--pairs", world["val"] / "pairs.json", "--triplets") == 0
    results = sorted(p.name for p in out.glob("s*.png"))
    assert results == ["s0__s1.png", "s1__s0.png", "s2__s3.png", "s3__s2.png"]
    assert sorted(p.name for p in (out / "triplets").glob("*.png")) == results
    # exemplar | target labels | result | ground truth, 16 px each, 2 px padding, zoomed 8x
    triplet = Image.open(out / "triplets" / "s0__s1.png")
    assert triplet.size == ((2 + 4 * 18) * 8, (2 + 18) * 8)
    grid = Image.open(out / "grid.png")
    assert grid.size == (triplet.size[0], (2 + 4 * 18) * 8)  # one row per pair
    # a resumed run that now asks for triplets adds them without redrawing
    shutil.rmtree(out / "triplets")
    before = (out / "s0__s1.png").stat().st_mtime_ns
    assert run(world, out, "--pairs", world["val"] / "pairs.json", "--triplets") == 0
    assert len(list((out / "triplets").glob("*.png"))) == 4
    assert (out / "s0__s1.png").stat().st_mtime_ns == before
    assert summary(out)["counts"] == {"outputs": 4, "written": 0, "skipped": 4, "warnings": 0}


def test_ctrl_c_leaves_complete_files_and_a_summary(world, tmp_path, monkeypatch):
    from amlight.apps.outputs import ResultWriter

    out = tmp_path / "out"
    real_write = ResultWriter.write

    def write_then_interrupt(self, name, result, inputs):
        real_write(self, name, result, inputs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ResultWriter, "write", write_then_interrupt)
    assert run(world, out, *ex_args(world, ["s0"], ["s1", "s2"])) == 130
    assert [p.name for p in out.glob("s*.png")] == ["s0__s1.png"]
    assert summary(out)["interrupted"] is True
    assert not list(out.rglob(".*.tmp"))
    monkeypatch.setattr(ResultWriter, "write", real_write)
    assert run(world, out, *ex_args(world, ["s0"], ["s1", "s2"])) == 0
    assert summary(out)["counts"]["written"] == 1


# --- applications -------------------------------------------------------------------------------


def pixel(image, column, x, y, size=16, pad=2, zoom=8):
    """The colour of model pixel (x, y) in column ``column`` of a triplet image."""
    left, top = (pad + column * (size + pad)) * zoom, pad * zoom
    return tuple(np.asarray(image)[top + y * zoom + zoom // 2, left + x * zoom + zoom // 2])


def test_paint_edits_the_exemplars_own_labels(world, tmp_path):
    out = tmp_path / "out"
    v = world["val"]
    argv = ["--exemplar", v / "images/s0.png", "--exemplar-labels", v / "labels/s0.png",
            "--paint", "car@0,0,16,8", "--paint", "4@24,24,32,32", "--triplets"]
    assert run(world, out, *argv) == 0
    record = summary(out)["outputs"]
    assert [o["output"] for o in record] == ["s0__s0_edited.png"]
    assert record[0]["paint"] == ["car@0,0,16,8", "building@24,24,32,32"]
    triplet = Image.open(out / "triplets" / "s0__s0_edited.png")
    assert pixel(triplet, 1, 1, 1) == tuple(COLORS[2])  # painted: car (was sky)
    assert pixel(triplet, 1, 13, 13) == tuple(COLORS[4])  # painted: building (was road)
    assert pixel(triplet, 1, 10, 1) == tuple(COLORS[0])  # outside the boxes: still sky
    # the Python building block does the same edit
    from amlight.apps.inputs import InputCache, LabelSpace, Paint

    cache = InputCache(LabelSpace.resolve(str(world["data"])), (16, 16))
    edited = cache.target(v / "labels/s0.png", [Paint(2, (0, 0, 16, 8))])
    assert edited[:4, :8].eq(2).all() and edited[4:8, :8].eq(0).all()


def test_link_changes_the_result_in_hard_mask_mode(world, tmp_path):
    ex_mask = np.zeros((SIZE, SIZE), np.uint8)
    ex_mask[:10, 22:] = 255  # the exemplar's building
    Image.fromarray(ex_mask).save(tmp_path / "ex_mask.png")
    instances = np.zeros((SIZE, SIZE), np.uint8)
    instances[20:28, 6:16] = 7  # the target's car, as instance 7
    Image.fromarray(instances).save(tmp_path / "instances.png")
    common = [*ex_args(world, ["s0"], ["s1"]), "--mode", "hard_mask"]
    assert run(world, tmp_path / "plain", *common, adapter=False) == 0
    link = f"{tmp_path / 'ex_mask.png'}:{tmp_path / 'instances.png'}#7"
    assert run(world, tmp_path / "linked", *common, "--link", link, adapter=False) == 0
    plain = (tmp_path / "plain" / "s0__s1__hard_mask.png").read_bytes()
    linked = (tmp_path / "linked" / "s0__s1__hard_mask.png").read_bytes()
    assert plain != linked
    assert summary(tmp_path / "linked")["outputs"][0]["links"] == [link]


def test_translation_shows_the_target_image(world, tmp_path):
    out = tmp_path / "out"
    v = world["val"]
    assert run(world, out, *ex_args(world, ["s0"], ["s1"]), "--target-images", v / "images/s1.png",
               "--triplets", "--mode", "augmented", adapter=False) == 0
    assert Image.open(out / "triplets" / "s0__s1__augmented.png").size[0] == (2 + 4 * 18) * 8


def test_retrieval_picks_other_scenes(world, tmp_path):
    pytest.importorskip("amlight.apps.retrieval")
    out = tmp_path / "out"
    v = world["val"]
    assert run(world, out, "--target-labels", v / "labels/s1.png", "--retrieve", world["data"],
               "--top-k", "2") == 0
    record = summary(out)["outputs"]
    assert len(record) == 2 and all(o["output"].endswith("__s1.png") for o in record)
    assert "s1" not in [o["retrieval"]["name"] for o in record]  # never its own scene
    assert record[0]["retrieval"]["rank"] == 1 and record[0]["retrieval"]["coverage"] == 1.0
    assert record[0]["retrieval"]["name"] == "s3"  # the other scene with a tree


def test_label_palette_comes_from_the_stage1_run_config(world, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = shutil.copy(world["stage1"], run_dir / "checkpoints" / "last.ckpt")
    argv = ["--stage1", str(ckpt), "--mode", "structure_only", "--out", str(tmp_path / "out"), "--steps", "2",
            "--threads", "1", "--quiet", *map(str, ex_args(world, ["s0"], ["s1"]))]
    assert main(argv) == 1
    assert "pass --data" in capsys.readouterr().err
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": {"dataset": str(world["data"])}}}))
    assert main(argv) == 0
    assert (tmp_path / "out" / "s0__s1__structure_only.png").is_file()


# --- bad input: one line, exit 1, nothing written ---------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    v = world["val"]
    small = np.asarray(Image.open(v / "labels/s0.png"))[:24, :24]
    Image.fromarray(small).save(root / "small_labels.png")
    off = np.asarray(Image.open(v / "labels/s1.png")).copy()
    off[3, 5] = (1, 2, 3)
    Image.fromarray(off).save(root / "off_palette.png")
    (root / "a_file").write_text("not a folder")
    wide = save_stage1_checkpoint(root / "wide.ckpt", backbone_options={**TINY_OPTIONS, "attention_heads": 4})
    return {"small": root / "small_labels.png", "off": root / "off_palette.png", "file": root / "a_file",
            "wide_adapter": save_adapter(wide, root / "wide_adapter.safetensors")}


@pytest.mark.parametrize("case", ["size_mismatch", "missing_stage1", "other_architecture", "unwritable_out",
                                  "off_palette", "count_mismatch", "adapter_mode_without_adapter"])
def test_bad_input_is_one_line_and_writes_nothing(world, bad_files, tmp_path, capsys, case):
    v = world["val"]
    out = tmp_path / "out"
    stage1, adapter = str(world["stage1"]), str(world["adapter"])
    exemplar = ["--exemplar", str(v / "images/s0.png"), "--exemplar-labels", str(v / "labels/s0.png")]
    targets = ["--target-labels", str(v / "labels/s1.png")]
    expected = {
        "size_mismatch": (["--exemplar", str(v / "images/s0.png"), "--exemplar-labels", str(bad_files["small"]),
                           *targets], "small_labels.png: label is 24x24"),
        "missing_stage1": ([*exemplar, *targets], "nope.ckpt does not exist"),
        "other_architecture": ([*exemplar, *targets], "wide_adapter.safetensors was built for 4 attention heads"),
        "unwritable_out": ([*exemplar, *targets], "cannot write to --out"),
        "off_palette": ([*exemplar, "--target-labels", str(bad_files["off"])], "off_palette.png: 1 colour(s) not in"),
        "count_mismatch": (["--exemplar", str(v / "images/s0.png"), str(v / "images/s1.png"),
                            "--exemplar-labels", str(v / "labels/s0.png"), *targets],
                           "2 --exemplar image(s) but 1 --exemplar-labels"),
        "adapter_mode_without_adapter": ([*exemplar, *targets], "use --mode augmented"),
    }
    argv, message = expected[case]
    if case == "missing_stage1":
        stage1 = str(tmp_path / "nope.ckpt")
    if case == "other_architecture":
        adapter = str(bad_files["wide_adapter"])
    if case == "unwritable_out":
        out = bad_files["file"] / "out"
    argv = ["--stage1", stage1, "--data", str(world["data"]), "--out", str(out), "--steps", "2", "--threads", "1",
            "--quiet", *argv]
    if case != "adapter_mode_without_adapter":
        argv += ["--adapter", adapter]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("amlight generate: error: "), err
    assert message in err[0]
    assert not out.exists()  # not even an empty folder is left behind


def test_existing_out_folder_is_left_as_it_was(world, bad_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    v = world["val"]
    assert run(world, out, "--exemplar", v / "images/s0.png", "--exemplar-labels", v / "labels/s0.png",
               "--target-labels", bad_files["off"]) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_python_entry_point(world, tmp_path):
    from amlight.apps.generate_files import generate_files

    result = generate_files(tmp_path / "out", stage1=world["stage1"], adapter=world["adapter"], data=world["data"],
                            pairs=world["val"] / "pairs.json", steps=2, threads=1, quiet=True, batch_size=4)
    assert len(result.written) == 4 and len(list((tmp_path / "out").glob("s*.png"))) == 4
    assert sorted(result.files) == sorted((tmp_path / "out").glob("s*.png"))
    assert result.summary == tmp_path / "out" / "summary.json" and result.grid == tmp_path / "out" / "grid.png"


def test_python_entry_point_writes_the_files_of_the_command(world, tmp_path):
    """The same options through the command line and the Python function: the same files, byte for byte."""
    from amlight.apps.generate_files import generate_files

    v = world["val"]
    assert run(world, tmp_path / "cli", *ex_args(world, ["s0", "s1"], ["s2", "s3"]), "--triplets", "--seed", "3",
               "--batch-size", "3") == 0
    result = generate_files(tmp_path / "py", stage1=world["stage1"], adapter=world["adapter"], data=world["data"],
                            exemplar=[v / "images/s0.png", v / "images/s1.png"],
                            exemplar_labels=[v / "labels/s0.png", v / "labels/s1.png"],
                            target_labels=[v / "labels/s2.png", v / "labels/s3.png"], triplets=True, seed=3,
                            batch_size=3, steps=2, threads=1, quiet=True)
    files = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "py") for p in (tmp_path / "py").rglob("*.png"))
    assert len(files) == 2 * 4 + 1  # results, triplets and the grid
    for path in files:
        assert (tmp_path / "cli" / path).read_bytes() == (tmp_path / "py" / path).read_bytes(), path
    assert len(result.files) == 4 and result.outputs == 4
    cli, py = summary(tmp_path / "cli"), summary(tmp_path / "py")
    assert cli["outputs"] == py["outputs"] and cli["settings"] == py["settings"]


@pytest.mark.parametrize("options, message", [
    ({}, "no inputs: give --exemplar"),
    ({"pairs": "p.json", "exemplar": ["a.png"]}, "--exemplar and --pairs are alternatives"),
    ({"exemplar": "a.png"}, "exemplar takes a list of files"),
    ({"pairs": "p.json", "steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"pairs": "p.json", "batch_size": "many"}, "batch_size must be 'auto' or an integer"),
    ({"pairs": "p.json", "guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
    ({"pairs": "p.json", "mode": "fancy"}, "unknown mode 'fancy'"),
    ({"pairs": "p.json", "scheduler": "lms"}, "unknown scheduler 'lms'"),
])
def test_python_entry_point_refuses_bad_input_in_one_line(world, tmp_path, options, message):
    from amlight.apps.generate_files import GenerateError, generate_files

    out = tmp_path / "out"
    with pytest.raises(GenerateError) as info:
        generate_files(out, stage1=world["stage1"], adapter=world["adapter"], data=world["data"], **options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()  # nothing made before the inputs are known good


def test_python_entry_point_refuses_bad_files_before_drawing(world, bad_files, tmp_path):
    from amlight.apps.generate_files import generate_files
    from amlight.data.io import DataFileError

    v = world["val"]
    out = tmp_path / "out"
    with pytest.raises(DataFileError, match="off_palette.png: 1 colour"):
        generate_files(out, stage1=world["stage1"], adapter=world["adapter"], data=world["data"],
                       exemplar=[v / "images/s0.png"], exemplar_labels=[v / "labels/s0.png"],
                       target_labels=[bad_files["off"]], steps=2, threads=1, quiet=True)
    assert not out.exists()


def test_the_parsers_mode_lists_are_attention_modes():
    """The parsers' mode lists come from their one home (alphabetical, as --help lists them)."""
    from amlight.cli.commands import benchmark, generate
    from amlight.modules.attention_modes import ATTENTION_MODES, BANK_MODES

    assert generate.MODES == tuple(sorted(ATTENTION_MODES))
    assert benchmark.BANK_MODES == tuple(sorted(BANK_MODES))


def test_the_command_the_options_and_the_function_have_the_same_defaults():
    """generate_files spells out GenerateOptions' fields as typed keyword arguments, and the command's
    parser has its own defaults: a default changed in one place only would make the three disagree."""
    import dataclasses
    import inspect

    from amlight.apps.generate_files import GenerateOptions, generate_files
    from amlight.cli.commands.generate import build_parser

    fields = {f.name: f for f in dataclasses.fields(GenerateOptions)}
    parameters = {k: p for k, p in inspect.signature(generate_files).parameters.items() if k != "notify"}
    assert list(parameters) == ["out", *[name for name in fields if name != "out"]]
    for name, field in fields.items():
        default = parameters[name].default
        if field.default is dataclasses.MISSING:
            assert default is inspect.Parameter.empty, name
        else:
            assert default == field.default, name
    from_command_line = GenerateOptions(**vars(build_parser().parse_args(["--out", "runs/x"])))
    assert from_command_line == GenerateOptions(out="runs/x")

