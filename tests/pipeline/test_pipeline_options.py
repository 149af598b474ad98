"""Generation options: appearance strength, chunked attention, match labels, batching and seeds."""
import dataclasses
import math
import warnings

import pytest
import torch

from amlight.modules import AMAdapter
from amlight.modules.attention_modes import AttentionSettings
from amlight.modules.exemplar_context import ExemplarRead
from amlight.modules.label_resize import resize_labels
from amlight.pipeline.exemplar_banks import build_exemplar_banks
from amlight.pipeline.synthesis import AMPipeline, UncoveredClassWarning, uncovered_classes

STEPS = 3


def _inputs(batch=2, classes=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (batch, size, size), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, labels, t


def _read(model, backbone, attention="augmented", appearance_strength=1.0, **kw):
    x, labels, t = _inputs()
    prompt = backbone.prompt_batch(2)
    ex_labels = labels.flip(-1)
    exemplar = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        bank = model.write_bank(exemplar, t, ex_labels, prompt)
        settings = AttentionSettings(attention, appearance_strength=appearance_strength)
        return model(x, t, labels, prompt, ExemplarRead(bank, settings, exemplar_labels=ex_labels, **kw))


def test_strength_zero_is_plain_self_attention(tiny_model, tiny_backbone):
    plain = _read(tiny_model, tiny_backbone, attention="structure_only")
    assert torch.equal(_read(tiny_model, tiny_backbone, appearance_strength=0.0), plain)
    assert (_read(tiny_model, tiny_backbone) - plain).abs().max() > 1e-4


def test_strength_bias_is_the_same_in_fused_and_explicit_attention(tiny_model, tiny_backbone):
    # The recorder forces the explicit path; both must apply the same log(s) bias.
    shares = {}

    def recorder(layer, probs, size, ctx):
        shares.setdefault(ctx.settings.appearance_strength, []).append(float(probs.sum(-1).mean()))

    for s in (1.0, 3.0):
        fused = _read(tiny_model, tiny_backbone, appearance_strength=s)
        explicit = _read(tiny_model, tiny_backbone, appearance_strength=s, recorder=recorder)
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)
    # s multiplies the exemplar's unnormalised weights: its share of attention grows.
    assert min(shares[3.0][i] - shares[1.0][i] for i in range(len(shares[1.0]))) > 0.01
    assert not torch.allclose(_read(tiny_model, tiny_backbone, appearance_strength=3.0),
                              _read(tiny_model, tiny_backbone), atol=1e-4)


@pytest.mark.parametrize("attention,strength", [("augmented", 1.0), ("hard_mask", 1.0), ("hard_mask", 0.5)])
def test_chunked_attention_matches_whole(tiny_model, tiny_backbone, attention, strength):
    whole = _read(tiny_model, tiny_backbone, attention=attention, appearance_strength=strength)
    chunked = _read(tiny_model, tiny_backbone, attention=attention, appearance_strength=strength, query_chunk=7)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)


def test_bad_strength_and_chunk_are_refused(tiny_model, tiny_backbone):
    with pytest.raises(ValueError, match="appearance_strength"):
        _read(tiny_model, tiny_backbone, appearance_strength=-1.0)
    with pytest.raises(ValueError, match="appearance_strength"):
        _read(tiny_model, tiny_backbone, appearance_strength=math.inf)
    with pytest.raises(ValueError, match="query_chunk"):
        _read(tiny_model, tiny_backbone, query_chunk=0)


def test_match_labels_drive_the_cost_not_the_structure(tiny_model, tiny_backbone):
    x, labels, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    seen = []
    with torch.no_grad():
        bank = tiny_model.write_bank(torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), t, labels, prompt)
        hard = ExemplarRead(bank, "hard_mask", exemplar_labels=labels)
        same = tiny_model(x, t, labels, prompt, hard)
        explicit_same = tiny_model(x, t, labels, prompt, dataclasses.replace(hard, match_labels=labels.clone()))
        # Relabel a target region to a label the exemplar lacks: its queries lose the exemplar.
        match = labels.clone()
        match[:, :8] = 9
        tiny_model(x, t, labels, prompt, dataclasses.replace(
            hard, match_labels=match, recorder=lambda layer, probs, size, ctx: seen.append((size, ctx.cost(size)))))
        moved = tiny_model(x, t, labels, prompt, dataclasses.replace(hard, match_labels=match))
    assert torch.equal(same, explicit_same)
    assert (moved - same).abs().max() > 1e-4
    for size, cost in seen:
        relabelled = resize_labels(match, size).flatten(1) == 9
        assert relabelled.any() and not cost[relabelled].any()
        assert cost[~relabelled].any()


def _adapter():
    adapter = AMAdapter(heads=2, channels=4, num_layers=2)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.1)
    return adapter


def _data(m, n, seed=0, classes=5):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(m, 3, 16, 16, generator=g) * 2 - 1
    ex_labels = torch.randint(0, classes, (m, 16, 16), generator=g)
    targets = torch.randint(0, classes, (n, 16, 16), generator=g)
    return images, ex_labels, targets


def test_images_do_not_depend_on_batching(tiny_model, tiny_backbone):
    pipe = AMPipeline.from_model(tiny_model, tiny_backbone, adapter=_adapter())
    images, ex_labels, targets = _data(1, 3)
    banks = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
    whole = pipe.draw(targets, banks, seed=[5, 6, 7])
    one_by_one = pipe.draw(targets, banks, seed=[5, 6, 7], batch_size=1)
    torch.testing.assert_close(one_by_one, whole, atol=1e-5, rtol=1e-4)
    # A target drawn alone with its own seed is the same image (resumed runs redraw it exactly).
    torch.testing.assert_close(pipe.draw(targets[2:], banks, seed=7), whole[2:], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="2 seeds for 3 targets"):
        pipe.draw(targets, banks, seed=[1, 2])


def test_warns_when_a_target_class_is_missing_from_its_exemplar(tiny_model, tiny_backbone):
    pipe = AMPipeline.from_model(tiny_model, tiny_backbone)
    images, _, targets = _data(1, 2)
    ex_labels = torch.zeros(1, 16, 16, dtype=torch.long)
    ex_labels[:, 8:] = 1
    covered = torch.zeros(2, 16, 16, dtype=torch.long)
    covered[1, :4] = 1
    banks = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.draw(covered, banks, attention="augmented")
    lacking = covered.clone()
    lacking[1, -3:] = 4
    with pytest.warns(UncoveredClassWarning, match=r"target 1: \[4\]"):
        pipe.draw(lacking, banks, attention="augmented")
    assert uncovered_classes(lacking[1], ex_labels[0]) == [4]
    assert uncovered_classes(torch.full((4, 4), 255), ex_labels[0]) == []


def test_one_to_one_banks_keep_structure_labels(tiny_model, tiny_backbone):
    images, ex_labels, _ = _data(1, 1)
    match = ex_labels.clone()
    match[:, :4, :4] = 10
    plain = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS)
    linked = build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS, match_labels=match)
    assert torch.equal(linked.exemplar_labels, match)
    # The appearance branch saw the true classes: the banks themselves are identical.
    for a, b in zip(plain.banks, linked.banks):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="match labels have shape"):
        build_exemplar_banks(tiny_model, tiny_backbone, images, ex_labels, STEPS, match_labels=match[:, :8])


def test_pipeline_reports_its_model(tiny_model, tiny_backbone):
    pipe = AMPipeline.from_model(tiny_model, tiny_backbone)
    assert pipe.num_classes == 5 and pipe.ignore_index == 255 and pipe.resolution == (16, 16)


def test_vae_may_live_on_another_device_than_the_latents(tiny_sd15_dir):
    # Offloading keeps the VAE on the CPU: encode/decode must hand results back on the caller's
    # device and dtype. On a CPU-only machine a dtype change stands in for the device change.
    from amlight.backbone.presets import build_sd15

    backbone = build_sd15(str(tiny_sd15_dir))
    images = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 2 - 1
    latents = backbone.encode(images, generator=torch.Generator().manual_seed(0))
    assert latents.dtype == torch.float64 and latents.shape == (1, 4, 8, 8)
    assert backbone.decode(latents).dtype == torch.float64
