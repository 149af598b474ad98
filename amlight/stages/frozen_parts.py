"""Keeping a stage's frozen parts on its device, as tensors that training can backpropagate through.

The frozen parts (backbone, stage-1 model) are plain attributes shared by everyone in the process, not
submodules, so nn.Module does not move them. Two things can go wrong with them on a GPU:

- moved or built under ``torch.inference_mode`` (Lightning's sanity check, ``trainer.validate``, a
  pipeline earlier in the process), their weights become inference tensors, and the first backward
  through them fails with "Inference tensors cannot be saved for backward";
- compared by ``torch.device``, ``cuda`` and ``cuda:0`` differ, so a check on the wrong object or with
  the wrong equality moves too little or moves everything again every step.

:func:`place_module` and :func:`place_backbone` check the parts' own tensors and fix both, outside
inference mode; they do nothing (and cost one pass over the parameters) when all is in place.
"""
from __future__ import annotations

from itertools import chain

import torch


def normalise_device(device: torch.device | str) -> torch.device:
    """``device`` with its index spelled out: ``cuda`` means the current CUDA device, the CPU has one."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.index is None:
        backend = getattr(torch, device.type, None)
        available = backend is not None and hasattr(backend, "current_device") and backend.is_available()
        return torch.device(device.type, backend.current_device() if available else 0)
    return device


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    return normalise_device(a) == normalise_device(b)


def _tensors(module: torch.nn.Module):
    return chain(module.parameters(), module.buffers())


def _replace_inference_tensors(module: torch.nn.Module) -> None:
    """Swap inference-tensor parameters and buffers for normal copies (the shared model is fixed for
    everyone; frozen parameters are in no optimiser, so replacing the objects is safe)."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_inference():
                sub._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_inference():
                sub._buffers[name] = b.clone()


def place_module(module: torch.nn.Module, device: torch.device | str) -> bool:
    """Put every parameter and buffer of ``module`` on ``device`` as a normal tensor; True if anything
    had to change."""
    target = normalise_device(device)
    devices = {t.device for t in _tensors(module)}
    misplaced = any(normalise_device(d) != target for d in devices)
    inference = any(t.is_inference() for t in _tensors(module))
    if not (misplaced or inference):
        return False
    with torch.inference_mode(False), torch.no_grad():
        if inference:
            _replace_inference_tensors(module)  # before the move: .data of an inference tensor is read-only here
        if misplaced:
            module.to(device)
    return True


def place_tensor(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``, and a normal tensor (a copy when it was an inference tensor)."""
    if same_device(tensor.device, device) and not tensor.is_inference():
        return tensor
    with torch.inference_mode(False):
        return (tensor.clone() if tensor.is_inference() else tensor).to(device)


def place_backbone(backbone, device: torch.device | str) -> bool:
    """:func:`place_module` for a :class:`~amlight.backbone.Backbone`'s VAE and prompt embeddings."""
    changed = backbone.vae is not None and place_module(backbone.vae, device)
    for name in ("prompt_embeds", "negative_prompt_embeds"):
        old = getattr(backbone, name)
        new = place_tensor(old, device)
        if new is not old:
            setattr(backbone, name, new)
            changed = True
    return changed
