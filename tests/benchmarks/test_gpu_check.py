"""`benchmark gpu`: its plumbing, as a CPU dry run on tiny SD-1.5-shaped models (numbers meaningless)."""
import json

import pytest
import torch

from amlight.benchmarks.gpu_check import CONV4D_BF16_TOLERANCE, SECTIONS, center_pivot_permute
from amlight.utils.cuda_runtime import CudaVersions, cuda_problem, parse_driver, parse_runtime

SECTION_NAMES = ("generate", "training", "memory_options", "conv4d", "compile")


def test_permute_reference_equals_the_view_form_of_the_center_pivot_conv():
    from amlight.modules.conv4d import center_pivot_views

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 3, 4, generator=g, dtype=torch.float64)
    wt, we = torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    ref = center_pivot_permute(x, wt, we, bias)
    assert ref.shape == (2, 6, 4, 5, 3, 4)
    torch.testing.assert_close(ref, center_pivot_views(x, wt, we, bias))
    # one entry by hand: target conv over (h1, w1) at a fixed exemplar position, plus exemplar conv
    i, j, k, l = 1, 2, 0, 3
    t = torch.nn.functional.conv2d(x[:, :, :, :, k, l], wt, padding=1)[:, :, i, j]
    e = torch.nn.functional.conv2d(x[:, :, i, j], we, padding=1)[:, :, k, l]
    torch.testing.assert_close(ref[:, :, i, j, k, l], t + e + bias)


def test_cpu_tiny_dry_run_fills_every_section_in_order(tmp_path, capsys):
    from amlight.cli.main import main

    out = tmp_path / "gpu_check.json"
    torch.backends.cudnn.benchmark = False
    code = main(["benchmark", "gpu", "--device", "cpu", "--tiny", "--standin", str(tmp_path / "standin"),
                 "--out", str(out), "--budget-s", "600"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    # The versions come first, before anything is loaded.
    assert err.splitlines()[0].startswith(f"[benchmark gpu] torch {torch.__version__}, CUDA runtime ")
    record = json.loads(out.read_text())
    assert record["tiny"] is True and record["torch"] == torch.__version__
    assert [k for k in record if k in SECTION_NAMES] == list(SECTION_NAMES)  # run (and recorded) in this order
    assert all(record[f"{name}_deadline_s"] > 0 for name in SECTION_NAMES)
    generate = {(r["mode"], r["batch"]): r for r in record["generate"]}
    assert set(generate) == {(m, b) for m in ("structure_only", "augmented", "adapter") for b in (1, 2)}
    assert all(r["s_per_image"] > 0 and r["nan_images"] == 0 for r in generate.values())
    cases = [r["case"] for r in record["memory_options"]]
    assert any("attention_chunk" in c for c in cases) and any("offload_vae" in c for c in cases)
    assert all(r.get("s_per_image", 0) > 0 and r["nan_images"] == 0 for r in record["memory_options"])
    training = record["training"]
    # the shipped configs' settings first, at the shipped configs' batch sizes
    assert [(r["stage"], r.get("gradient_checkpointing", r.get("checkpoint_attention")), r["batch"])
            for r in training] == [(1, True, 4), (2, True, 2), (1, False, 4), (2, False, 2)]
    assert all(r["it_per_s"] > 0 for r in training), training
    forms = {r["form"]: r for r in record["conv4d"]}
    assert forms["max |difference|"]["value"] < 1e-4
    assert forms["3D convs on views (amlight)"]["ms_forward_backward"] > 0
    for name in ("3D convs on views (amlight)", "permuted 2D convs"):
        check = forms[f"bf16 vs fp32: {name}"]
        assert check["pass"] is True and 0 < check["max_rel_error"] <= check["tolerance"] == CONV4D_BF16_TOLERANCE
    compiled = record["compile"]
    assert compiled[0]["unet"] == "eager" and compiled[0]["ms_per_call"] > 0
    assert compiled[1] == {"unet": "torch.compile", "skipped": "tiny dry run"}
    assert torch.backends.cudnn.benchmark is False  # the conv4d section turned it on and put it back
    table = out.with_suffix(".md").read_text()
    assert [line.split(" ")[1] for line in table.splitlines() if line.startswith("## ")] == list(SECTION_NAMES)
    assert "TINY dry run" in table and "conv4d bf16 check: pass when" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_without_cuda_it_says_so_in_one_line(tmp_path, capsys):
    from amlight.cli.main import main

    assert main(["benchmark", "gpu", "--standin", str(tmp_path / "s"), "--out", str(tmp_path / "g.json")]) == 1
    err = capsys.readouterr().err
    assert "no CUDA device is available" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # nothing written before the check


def test_a_compile_failure_is_reported_not_raised(tmp_path):
    from amlight.benchmarks.gpu_check import Budget, compile_section

    class Backbone:  # what compile_section reads of a backbone
        latent_downsample, latent_channels = 1, 4

        def prompt_batch(self, n):
            return torch.zeros(n, 2, 8)

        def to(self, *args):
            return self

    calls = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = torch.nn.Conv2d(4, 4, 1)

        def forward(self, latents, t, labels, prompt, read):
            calls.append(read.settings.mode)
            return self.unet(latents)

    def broken_backend(gm, example_inputs):
        raise RuntimeError("this backend cannot compile anything")

    model = Model()
    rows = compile_section((Backbone(), model, torch.nn.Identity()), torch.device("cpu"), 8, tiny=True,
                           budget=Budget(600), progress=lambda m: None, repeats=1, backend=broken_backend)
    assert rows[0]["unet"] == "eager" and "error" in rows[1] and "cannot compile" in rows[1]["error"]
    assert isinstance(model.unet, torch.nn.Conv2d)  # the eager UNet is put back
    assert calls and set(calls) == {"structure_only"}


# --- the order and deadlines of the sections ---------------------------------------------------------

def test_sections_run_most_wanted_first_each_with_its_own_deadline(tmp_path):
    import time

    from amlight.benchmarks.gpu_check import gpu_check

    assert tuple(name for name, _ in SECTIONS) == SECTION_NAMES
    seen = []

    def section(name, sleep):
        def run(deadline):
            seen.append((name, deadline.seconds))
            time.sleep(sleep)
            return [{"row": name}]
        return run

    budget = 2.0
    sections = {name: section(name, 0.0) for name in SECTION_NAMES}
    sections["generate"] = section("generate", 1.5)  # far past its share: must not eat training's
    record = gpu_check(device="cpu", budget_s=budget, work=tmp_path, sections=sections, versions=_versions())
    assert [name for name, _ in seen] == list(SECTION_NAMES)
    deadlines = dict(seen)
    shares = dict(SECTIONS)
    assert deadlines["generate"] == pytest.approx(shares["generate"] * budget)
    assert deadlines["training"] == pytest.approx(shares["training"] * budget)  # its share, whole
    # a section that ends early hands its time on to the next
    expected = (shares["training"] + shares["memory_options"]) * budget
    assert deadlines["memory_options"] == pytest.approx(expected, abs=0.1)
    assert record["training"] == [{"row": "training"}]


def test_a_failing_section_is_reported_and_the_next_still_runs(tmp_path):
    from amlight.benchmarks.gpu_check import failures, gpu_check

    def boom(deadline):
        raise RuntimeError("generate broke")

    sections = {name: (lambda d, n=name: [{"row": n}]) for name in SECTION_NAMES}
    sections["generate"] = boom
    record = gpu_check(device="cpu", budget_s=10, work=tmp_path, sections=sections, versions=_versions())
    assert "generate broke" in record["generate"][0]["error"] and record["training"] == [{"row": "training"}]
    assert failures(record) == ["generate"]


def test_training_runs_both_shipped_settings_at_the_shipped_batches_even_past_the_deadline(tmp_path, monkeypatch):
    import yaml

    import amlight.benchmarks.gpu_check as gc_mod

    built, timed = [], []

    class FakeStage:
        def to(self, device):
            return self

    monkeypatch.setattr(gc_mod, "_build_stage", lambda n, switch, *a: built.append((n, switch)) or FakeStage())
    monkeypatch.setattr(gc_mod, "_stage1_checkpoint", lambda stage, path: path)
    monkeypatch.setattr(gc_mod, "_train_rate",
                        lambda stage, dev, size, batch, steps, warmup: timed.append(batch) or (2.0, None))
    rows = gc_mod.training_section(tmp_path / "standin", True, torch.device("cpu"), 32, gc_mod.Budget(0.0), tmp_path,
                                   lambda m: None)
    config = {n: yaml.safe_load((gc_mod.SHIPPED_CONFIGS / f"stage{n}.yaml").read_text()) for n in (1, 2)}
    batch = {n: config[n]["data"]["init_args"]["batch_size"] for n in (1, 2)}
    assert config[1]["model"]["init_args"]["gradient_checkpointing"] is True
    assert config[2]["model"]["init_args"]["checkpoint_attention"] is True
    assert built == [(1, True), (2, True)] and timed == [batch[1], batch[2]] == [4, 2]
    assert rows[0] == {"stage": 1, "gradient_checkpointing": True, "batch": 4, "it_per_s": 2.0, "peak_gib": None}
    assert rows[1]["stage"] == 2 and rows[1]["it_per_s"] == 2.0
    assert [r.get("skipped") for r in rows[2:]] == ["time budget", "time budget"]


def test_an_error_in_stage1_skips_stage2_with_the_reason(tmp_path, monkeypatch):
    import amlight.benchmarks.gpu_check as gc_mod

    def build(n, switch, *a):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(gc_mod, "_build_stage", build)
    rows = gc_mod.training_section(tmp_path, True, torch.device("cpu"), 32, gc_mod.Budget(600), tmp_path,
                                   lambda m: None)
    assert rows[0]["error"].startswith("out of memory") and "stage-1 checkpoint" in rows[1]["skipped"]
    assert gc_mod.failures({"training": rows}) == []  # running out of memory is a finding, not a failure


# --- conv4d: cudnn.benchmark and the bf16 check -------------------------------------------------------

def test_conv4d_section_turns_cudnn_benchmark_on_and_restores_it_even_on_error():
    assert torch.backends.cudnn.allow_tf32 is True  # the default, put back after the fp32 reference
    from amlight.benchmarks.gpu_check import Budget, conv4d_section
    from amlight.modules.conv4d import center_pivot_views

    flags = []

    def spy(*args):
        flags.append(torch.backends.cudnn.benchmark)
        return center_pivot_views(*args)

    for before in (False, True):
        torch.backends.cudnn.benchmark = before
        conv4d_section(torch.device("cpu"), True, Budget(600), lambda m: None, repeats=1, forms={"spy": spy})
        assert flags and set(flags) == {True} and torch.backends.cudnn.benchmark is before
        flags.clear()

    def broken(*args):
        raise RuntimeError("cuDNN said no")

    torch.backends.cudnn.benchmark = False
    with pytest.raises(RuntimeError, match="cuDNN said no"):
        conv4d_section(torch.device("cpu"), True, Budget(600), lambda m: None, repeats=1, forms={"broken": broken})
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.allow_tf32 is True


def test_conv4d_bf16_check_passes_the_real_forms_and_fails_a_wrong_or_nan_one():
    from amlight.benchmarks.gpu_check import Budget, conv4d_section, failures
    from amlight.modules.conv4d import center_pivot_views

    def target_only(x, wt, we, bias):  # forgets the exemplar conv: a kernel that computes something else
        return center_pivot_views(x, wt, torch.zeros_like(we), bias)

    def nan_in_bf16(x, wt, we, bias):  # right in fp32, NaN in bf16 (an overflow, a bad kernel)
        y = center_pivot_views(x, wt, we, bias)
        return y * float("nan") if y.dtype == torch.bfloat16 else y

    forms = {"views": center_pivot_views, "permute": center_pivot_permute, "target only": target_only,
             "nan in bf16": nan_in_bf16}
    rows = conv4d_section(torch.device("cpu"), True, Budget(600), lambda m: None, repeats=1, forms=forms)
    checks = {r["form"].removeprefix("bf16 vs fp32: "): r for r in rows if "max_rel_error" in r}
    assert set(checks) == set(forms)
    assert checks["views"]["pass"] and checks["permute"]["pass"]
    assert checks["views"]["max_rel_error"] > 0  # really computed in bf16
    assert not checks["target only"]["pass"] and checks["target only"]["max_rel_error"] > CONV4D_BF16_TOLERANCE
    assert not checks["nan in bf16"]["pass"] and checks["nan in bf16"]["max_rel_error"] == float("inf")
    assert failures({"conv4d": rows}) == ["conv4d"]


# --- NaN images ------------------------------------------------------------------------------------------

class _Parts:
    def to(self, *args, **kwargs):
        return self

    vae = None


def test_every_generated_image_is_checked_for_nan(monkeypatch):
    import amlight.benchmarks.gpu_check as gc_mod

    def fake_generate(backbone, model, adapter, device, size, mode, batch, steps, attention_chunk=None):
        images = torch.zeros(batch, 3, size, size)
        if mode == "adapter":
            images[-1, 0, 0, 0] = float("nan")  # the last image of the batch only
        if attention_chunk:
            images[0, 1, 2, 3] = float("inf")
        return images

    monkeypatch.setattr(gc_mod, "_generate_once", fake_generate)
    parts = (_Parts(), _Parts(), _Parts())
    rows = gc_mod.generate_section(parts, torch.device("cpu"), 8, 1, gc_mod.Budget(600), lambda m: None, tiny=True)
    assert {(r["mode"], r["batch"]): r["nan_images"] for r in rows} == {
        ("structure_only", 1): 0, ("structure_only", 2): 0, ("augmented", 1): 0, ("augmented", 2): 0,
        ("adapter", 1): 1, ("adapter", 2): 1}
    memory = gc_mod.memory_section(parts, torch.device("cpu"), 8, gc_mod.Budget(600), lambda m: None, steps=1)
    assert {r["case"]: r["nan_images"] for r in memory}["augmented, bf16, attention_chunk 1024"] == 1
    assert {r["case"]: r["nan_images"] for r in memory}["augmented, bf16"] == 0
    assert gc_mod.failures({"generate": rows, "memory_options": memory}) == ["generate", "memory_options"]


def test_a_nan_image_or_failed_check_makes_the_command_exit_1(tmp_path, monkeypatch, capsys):
    import amlight.benchmarks.gpu_check as gc_mod
    from amlight.cli.main import main

    record = {"device": "fake", "torch": "x", "cuda_runtime": None, "cuda_driver": None, "tiny": True,
              "resolution": 8, "total_s": 1.0, "generate": [{"mode": "adapter", "batch": 1, "nan_images": 1}]}
    monkeypatch.setattr(gc_mod, "gpu_check", lambda **kw: record)
    assert main(["benchmark", "gpu", "--device", "cpu", "--out", str(tmp_path / "g.json")]) == 1
    assert "NaN" in capsys.readouterr().err
    record["generate"][0]["nan_images"] = 0
    assert main(["benchmark", "gpu", "--device", "cpu", "--out", str(tmp_path / "g.json")]) == 0


# --- torch's CUDA runtime against the driver -------------------------------------------------------------

def _versions(runtime=(12, 4), driver=(12, 4), available=True, torch_version="2.6.0+cu124"):
    return CudaVersions(torch_version, runtime, driver, available)


def test_versions_are_parsed_from_torch_and_the_driver_api():
    assert parse_runtime("12.4") == (12, 4) and parse_runtime("13.0") == (13, 0) and parse_runtime(None) is None
    assert parse_driver(12040) == (12, 4) and parse_driver(11080) == (11, 8) and parse_driver(0) is None
    line = _versions(driver=None, available=False).line()
    assert line.startswith("torch 2.6.0+cu124, CUDA runtime 12.4, driver supports CUDA unknown")


def test_a_driver_too_old_for_the_runtime_is_one_line_naming_the_install():
    problem = cuda_problem(_versions(runtime=(12, 4), driver=(11, 4), available=False))
    assert "\n" not in problem
    assert "built for CUDA 12.4" in problem and "supports CUDA up to 11.4" in problem
    # no wheel index is as old as CUDA 11.4
    assert "update the NVIDIA driver" in problem
    problem = cuda_problem(_versions(runtime=(13, 0), driver=(12, 6), available=False))
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cu126" in problem
    problem = cuda_problem(_versions(runtime=(12, 8), driver=(12, 2), available=False))
    assert "whl/cu121" in problem
    problem = cuda_problem(_versions(runtime=None, driver=(12, 8), available=False, torch_version="2.6.0+cpu"))
    assert "CPU-only build" in problem and "whl/cu128" in problem


def test_no_problem_when_cuda_works_or_there_is_no_driver():
    # minor version compatibility: a 12.4 runtime on a 12.2 driver may work; when it does, say nothing
    assert cuda_problem(_versions(runtime=(12, 4), driver=(12, 2), available=True)) is None
    assert cuda_problem(_versions(driver=None, available=False)) is None  # "no CUDA device", said by the caller
    assert cuda_problem(_versions(runtime=(12, 1), driver=(12, 4), available=False)) is None


def test_detect_on_this_machine_gives_the_torch_build():
    from amlight.utils.cuda_runtime import detect

    v = detect()
    assert v.torch == torch.__version__ and v.runtime == parse_runtime(torch.version.cuda)
    assert v.available == torch.cuda.is_available()


def test_the_command_stops_with_one_line_when_the_driver_cannot_run_torchs_cuda(tmp_path, capsys, monkeypatch):
    import amlight.benchmarks.gpu_check as gc_mod
    from amlight.cli.main import main

    monkeypatch.setattr(gc_mod, "detect", lambda: _versions(runtime=(12, 8), driver=(12, 4), available=False))
    assert main(["benchmark", "gpu", "--standin", str(tmp_path / "s"), "--out", str(tmp_path / "g.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in "".join(err)
    assert err[0].startswith("[benchmark gpu] torch 2.6.0+cu124, CUDA runtime 12.8, driver supports CUDA 12.4")
    assert err[1].startswith("amlight benchmark gpu: torch 2.6.0+cu124 is built for CUDA 12.8, but the NVIDIA driver")
    assert "whl/cu124" in err[1]
    assert not (tmp_path / "s").exists()
