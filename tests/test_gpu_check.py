"""`benchmark gpu`: its plumbing, as a CPU dry run on tiny SD-1.5-shaped models (numbers meaningless)."""
import json

import pytest
import torch

from amlight.benchmarks.gpu_check import center_pivot_permute


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


def test_cpu_tiny_dry_run_fills_every_section(tmp_path, capsys):
    from amlight.cli import main

    out = tmp_path / "gpu_check.json"
    code = main(["benchmark", "gpu", "--device", "cpu", "--tiny", "--standin", str(tmp_path / "standin"),
                 "--out", str(out), "--budget-s", "600"])
    assert code == 0, capsys.readouterr().err[-2000:]
    record = json.loads(out.read_text())
    assert record["tiny"] is True
    generate = {(r["mode"], r["batch"]): r for r in record["generate"]}
    assert set(generate) == {(m, b) for m in ("structure_only", "augmented", "adapter") for b in (1, 2)}
    assert all(r["s_per_image"] > 0 for r in generate.values())
    cases = [r["case"] for r in record["memory_options"]]
    assert any("attention_chunk" in c for c in cases) and any("offload_vae" in c for c in cases)
    assert all(r.get("s_per_image", 0) > 0 for r in record["memory_options"])
    training = record["training"]
    assert [(r["stage"], r.get("gradient_checkpointing", r.get("checkpoint_attention"))) for r in training] == [
        (1, True), (1, False), (2, True), (2, False)]
    assert all(r["it_per_s"] > 0 for r in training), training
    forms = {r["form"]: r for r in record["conv4d"]}
    assert forms["max |difference|"]["value"] < 1e-4
    assert forms["3D convs on views (amlight)"]["ms_forward_backward"] > 0
    compiled = record["compile"]
    assert compiled[0]["unet"] == "eager" and compiled[0]["ms_per_call"] > 0
    assert compiled[1] == {"unet": "torch.compile", "skipped": "tiny dry run"}
    table = out.with_suffix(".md").read_text()
    for section in ("generate", "memory_options", "training", "conv4d", "compile"):
        assert f"## {section}" in table
    assert "TINY dry run" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_without_cuda_it_says_so_in_one_line(tmp_path, capsys):
    from amlight.cli import main

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
