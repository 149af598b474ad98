"""Inputs for the AM-Adapter's tests: random attention logits with a categorical cost, and random
weights for a module (a fresh adapter is the identity, so most checks need it to act)."""
import torch


def logits_and_cost(batch, heads, h, w, seed=0, classes=3):
    """Logits (batch, heads, N, N), N = h*w, on a scale of 4, and the boolean cost of random labels
    (rows: target positions, columns: exemplar positions)."""
    g = torch.Generator().manual_seed(seed)
    n = h * w
    logits = torch.randn(batch, heads, n, n, generator=g) * 4.0
    t = torch.randint(0, classes, (batch, n), generator=g)
    e = torch.randint(0, classes, (batch, n), generator=g)
    return logits, t[:, :, None] == e[:, None, :]


def randomize(module, seed=0, scale=0.3):
    """Every parameter of ``module`` drawn from N(0, scale^2) with its own seed; the module back."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module
