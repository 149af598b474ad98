import pytest
import torch

from amlight.modules import ExemplarContext
from amlight.modules.attention_modes import AttentionSettings
from amlight.modules.exemplar_context import ExemplarRead


def _inputs(batch=2, classes=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (batch, size, size), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, labels, t


def test_structure_only_ignores_the_bank(tiny_model, tiny_backbone):
    x, labels, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    with torch.no_grad():
        bank = tiny_model.write_bank(torch.randn_like(x), t, labels, prompt)
        plain = tiny_model(x, t, labels, prompt)
        ignored = tiny_model(x, t, labels, prompt, ExemplarRead(bank, "structure_only", exemplar_labels=labels))
        read = tiny_model(x, t, labels, prompt, ExemplarRead(bank, "augmented", exemplar_labels=labels))
    assert torch.equal(plain, ignored)
    assert (plain - read).abs().max() > 1e-4  # the bank does change the output


def test_identical_exemplar_equals_plain_self_attention(tiny_model, tiny_backbone):
    # Keys/values [X ; X] give the same softmax average as [X]: a self-pair with the same noisy input
    # must reproduce plain self-attention. Catches wrong projections, head splits or scaling.
    x, labels, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    with torch.no_grad():
        bank = tiny_model.write_bank(x, t, labels, prompt)
        plain = tiny_model(x, t, labels, prompt)
        read = tiny_model(x, t, labels, prompt, ExemplarRead(bank, "augmented", exemplar_labels=labels))
    assert torch.allclose(plain, read, atol=1e-5)


def test_dropped_rows_use_plain_attention(tiny_model, tiny_backbone):
    x, labels, t = _inputs(batch=4)
    prompt = tiny_backbone.prompt_batch(4)
    keep = torch.tensor([True, False, True, False])
    with torch.no_grad():
        bank = tiny_model.write_bank(torch.randn_like(x), t, labels, prompt)
        plain = tiny_model(x, t, labels, prompt)
        read = tiny_model(x, t, labels, prompt, ExemplarRead(bank, exemplar_labels=labels, exemplar_keep=keep))
    assert torch.allclose(read[~keep], plain[~keep], atol=1e-6)
    assert (read[keep] - plain[keep]).abs().max() > 1e-4


@pytest.mark.parametrize("attention", ["hard_mask", "adapter"])
def test_dropped_rows_skip_the_exemplar_work_and_kept_rows_match_a_call_of_their_own(tiny_model, tiny_backbone, attention):
    # CFG's unconditional half: its rows must cost plain attention only (the adapter never sees them)
    # and must not change what the reading rows get.
    from amlight.modules.adapter import AMAdapter

    x, labels, t = _inputs(batch=4)
    ex_labels = torch.flip(labels, dims=[-1])
    prompt = tiny_backbone.prompt_batch(4)
    keep = torch.tensor([False, True, False, True])
    torch.manual_seed(1)
    adapter = AMAdapter(heads=2, channels=4, num_layers=2, max_resolution=8).eval()
    for p in adapter.parameters():  # not the identity, so the refinement changes the images
        torch.nn.init.normal_(p, std=0.5)
    rows_seen = []

    class Spy:  # a LogitRefiner: notes the rows it is handed, refines through the adapter
        def refine(self, group, logits, cost, size, **kw):
            rows_seen.append(logits.shape[0])
            return adapter.refine(group, logits, cost, size, **kw)

    kw = dict(settings=attention, adapter=Spy() if attention == "adapter" else None)
    with torch.no_grad():
        bank = tiny_model.write_bank(torch.randn_like(x), t, ex_labels, prompt)
        mixed = tiny_model(x, t, labels, prompt, ExemplarRead(bank, exemplar_labels=ex_labels, exemplar_keep=keep, **kw))
        plain = tiny_model(x[~keep], t[~keep], labels[~keep], prompt[~keep])
        alone = tiny_model(x[keep], t[keep], labels[keep], prompt[keep],
                           ExemplarRead({k: b[keep] for k, b in bank.items()}, exemplar_labels=ex_labels[keep], **kw))
    assert torch.allclose(mixed[~keep], plain, atol=1e-5)
    assert torch.allclose(mixed[keep], alone, atol=1e-5)
    if attention == "adapter":
        assert rows_seen and set(rows_seen) == {2}  # the two kept rows, in the mixed and the alone call


def test_hard_mask_puts_no_probability_on_other_classes(tiny_model, tiny_backbone):
    x, labels, t = _inputs()
    ex_labels = torch.flip(labels, dims=[-1])
    prompt = tiny_backbone.prompt_batch(2)
    seen = {}

    def recorder(layer, probs, size, ctx):
        seen[layer] = (probs, ctx.cost(size))

    with torch.no_grad():
        bank = tiny_model.write_bank(torch.randn_like(x), t, ex_labels, prompt)
        tiny_model(x, t, labels, prompt, ExemplarRead(bank, "hard_mask", exemplar_labels=ex_labels, recorder=recorder))
    assert set(seen) == set(tiny_model.self_attention_layers)
    for probs, cost in seen.values():
        off_class = probs.masked_select(~cost[:, None].expand_as(probs))
        assert off_class.abs().max() == 0
        # ...and it still attends to the exemplar where a class matches
        assert probs.masked_select(cost[:, None].expand_as(probs)).sum() > 0


def test_blocks_restrict_which_layers_read(tiny_model, tiny_backbone):
    x, labels, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    seen = []
    with torch.no_grad():
        bank = tiny_model.write_bank(torch.randn_like(x), t, labels, prompt)
        tiny_model(x, t, labels, prompt, ExemplarRead(bank, AttentionSettings("augmented", groups={"mid"}),
                                                      exemplar_labels=labels,
                                                      recorder=lambda layer, *a: seen.append(layer)))
    assert seen and all(name.startswith("mid_block") for name in seen)


def test_gradient_checkpointing_keeps_gradients(tiny_model, tiny_backbone):
    # Checkpointing re-runs blocks during backward; the exemplar context travels with the call
    # (cross_attention_kwargs), so the recomputation must read the same bank and give equal gradients.
    x, labels, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    ex = torch.randn_like(x)

    def grads():
        tiny_model.zero_grad()
        bank = tiny_model.write_bank(ex, t, labels, prompt)
        out = tiny_model(x, t, labels, prompt, ExemplarRead(bank, exemplar_labels=labels))
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    tiny_model.train()
    reference = grads()
    tiny_model.unet.enable_gradient_checkpointing()
    checkpointed = grads()
    tiny_model.unet.disable_gradient_checkpointing()
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        assert torch.allclose(reference[name], checkpointed[name], atol=1e-5), name


def test_settings_max_resolution_reaches_every_adapter_call_and_leaves_the_adapter_alone(tiny_model, tiny_backbone):
    """The pooling size travels with the call (AttentionSettings -> ExemplarRead -> processor -> refine),
    also into the recomputation of checkpointed attention in backward; the adapter is never modified."""
    from amlight.modules.adapter import AMAdapter

    x, labels, t = _inputs()
    ex_labels = torch.flip(labels, dims=[-1])
    prompt = tiny_backbone.prompt_batch(2)
    adapter = _random_adapter(max_resolution=8)
    pooled = AMAdapter(**{**adapter.config, "max_resolution": 2})
    pooled.load_state_dict(adapter.state_dict())
    seen = []

    class Spy:
        def refine(self, group, logits, cost, size, **kw):
            seen.append(kw["max_resolution"])
            return adapter.refine(group, logits, cost, size, **kw)

    def draw(refiner, settings, checkpoint=False):
        read = ExemplarRead(bank, settings, exemplar_labels=ex_labels, adapter=refiner, checkpoint_attention=checkpoint)
        return tiny_model(x, t, labels, prompt, read)

    with torch.no_grad():
        bank = tiny_model.write_bank(torch.randn_like(x), t, ex_labels, prompt)
        per_call = draw(Spy(), AttentionSettings("adapter", max_resolution=2))
        assert seen and set(seen) == {2} and adapter.max_resolution == 8
        layers = len(seen)
        assert torch.allclose(per_call, draw(pooled, "adapter"), atol=1e-6)
        seen.clear()
        trained = draw(Spy(), "adapter")
        assert set(seen) == {None} and (trained - per_call).abs().max() > 1e-5
    seen.clear()
    try:
        draw(Spy(), AttentionSettings("adapter", max_resolution=2), checkpoint=True).square().mean().backward()
    finally:
        tiny_model.zero_grad()
    assert len(seen) == 2 * layers and set(seen) == {2} and adapter.max_resolution == 8  # forward, recomputation


def test_read_rejects_an_adapter_without_refine():
    def bare(group, logits, cost, size):
        return torch.zeros_like(logits)

    with pytest.raises(TypeError, match="refine"):
        ExemplarRead(settings="adapter", adapter=bare)


def _random_adapter(max_resolution):
    from amlight.modules.adapter import AMAdapter

    torch.manual_seed(2)
    adapter = AMAdapter(heads=2, channels=4, num_layers=2, max_resolution=max_resolution).eval()
    with torch.no_grad():
        for p in adapter.parameters():  # not the identity, so the pooling size changes the output
            p.normal_(std=0.5)
    return adapter


def test_context_rejects_unknown_mode_and_missing_labels():
    with pytest.raises(ValueError, match="unknown attention mode"):
        ExemplarContext(mode="read", latent_size=(8, 8), read=ExemplarRead(settings="softmask"))
    with pytest.raises(ValueError, match="needs target and exemplar label maps"):
        ExemplarContext(mode="read", latent_size=(8, 8), read=ExemplarRead(settings="hard_mask"))


def test_mismatched_exemplar_size_is_a_clear_error(tiny_model, tiny_backbone):
    x, labels, t = _inputs()
    prompt = tiny_backbone.prompt_batch(2)
    with torch.no_grad():
        bank = tiny_model.write_bank(torch.randn(2, 3, 8, 8), t, labels[:, :8, :8], prompt)
        with pytest.raises(ValueError, match="exemplar and target must have the same size"):
            tiny_model(x, t, labels, prompt, ExemplarRead(bank, exemplar_labels=labels))


def test_one_exemplar_serving_many_targets_is_projected_once(tiny_model, tiny_backbone):
    x, labels, t = _inputs(batch=3)
    t = t[:1].expand(3)
    prompt = tiny_backbone.prompt_batch(3)
    index = torch.zeros(3, dtype=torch.long)
    layer = tiny_model.self_attention_layers[0]
    to_k = tiny_model.unet.get_submodule(layer).to_k
    rows = []
    handle = to_k.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            bank = tiny_model.write_bank(x[:1], t[:1], labels[:1], prompt[:1])
            rows.clear()
            shared = tiny_model(x, t, labels, prompt, ExemplarRead(bank, "hard_mask", exemplar_labels=labels[:1],
                                                                   exemplar_index=index))
            assert sorted(rows) == [1, 3]  # the 3 targets' keys, the exemplar's keys once
            copied = tiny_model(x, t, labels, prompt, ExemplarRead({k: b.expand(3, -1, -1) for k, b in bank.items()},
                                "hard_mask", exemplar_labels=labels[:1].expand(3, -1, -1)))
    finally:
        handle.remove()
    assert torch.allclose(shared, copied, atol=1e-5)


def test_a_keep_mask_that_keeps_every_row_adds_no_attention_mask():
    # Otherwise every row would go through masked attention for nothing (slower, same result).
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    common = dict(mode="read", latent_size=(8, 8), target_labels=labels)

    def reading(mode="augmented", **kw):
        return ExemplarRead(settings=mode, exemplar_labels=labels, **kw)

    all_kept = ExemplarContext(read=reading(exemplar_keep=torch.tensor([True, True])), **common)
    assert all_kept.cross_mask((4, 4), 2, torch.device("cpu")) is None and all_kept.row_split(2, "cpu") is None
    one_dropped = ExemplarContext(read=reading(exemplar_keep=torch.tensor([True, False])), **common)
    mask = one_dropped.cross_mask((4, 4), 2, torch.device("cpu"))
    assert mask[0].all() and not mask[1].any()
    hard = ExemplarContext(read=reading("hard_mask", exemplar_keep=torch.tensor([True, True])), **common)
    assert torch.equal(hard.cross_mask((4, 4), 2, torch.device("cpu")), hard.cost((4, 4)))
