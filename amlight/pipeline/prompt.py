"""The fixed prompt as a pipeline component: its embedding and the empty prompt's, saved as weights.

The method uses one prompt for every image, so a pipeline needs its text encoder only to encode that
prompt once. The tiny preset has no text encoder at all (a constant random embedding stands in for
the prompt), and an SD-size folder carries the encoded prompt too: either way the folder alone
reproduces the conditioning the model was trained with, byte for byte.
"""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin


class PromptEmbeddings(ModelMixin, ConfigMixin):
    """``prompt_embeds`` (1, tokens, dim): the prompt; ``negative_prompt_embeds``: the empty prompt
    (classifier-free guidance's unconditional rows and the exemplar inversion)."""

    config_name = "config.json"

    def __init__(self, tokens: int = 77, dim: int = 768, negative_tokens: int | None = None, prompt: str = ""):
        super().__init__()
        negative_tokens = tokens if negative_tokens is None else negative_tokens
        self.register_to_config(tokens=int(tokens), dim=int(dim), negative_tokens=int(negative_tokens),
                                prompt=str(prompt))
        # Frozen parameters (not buffers) so that the pipeline's dtype casts and device moves treat
        # them like every other weight.
        self.prompt_embeds = torch.nn.Parameter(torch.zeros(1, tokens, dim), requires_grad=False)
        self.negative_prompt_embeds = torch.nn.Parameter(torch.zeros(1, negative_tokens, dim), requires_grad=False)

    @classmethod
    def from_tensors(cls, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor,
                     prompt: str = "") -> "PromptEmbeddings":
        if prompt_embeds.ndim != 3 or negative_prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1:
            raise ValueError(f"prompt embeddings must be (1, tokens, dim), got {tuple(prompt_embeds.shape)} "
                             f"and {tuple(negative_prompt_embeds.shape)}")
        module = cls(prompt_embeds.shape[1], prompt_embeds.shape[2], negative_prompt_embeds.shape[1], prompt)
        with torch.no_grad():
            # Copies: the tiny preset's two embeddings are one tensor, which safetensors cannot save twice.
            module.prompt_embeds.copy_(prompt_embeds.detach().reshape(module.prompt_embeds.shape))
            negative = module.negative_prompt_embeds
            negative.copy_(negative_prompt_embeds.detach().reshape(negative.shape))
        # nn.Module's own cast: ModelMixin.to warns about fp32-only modules, which this has none of.
        return torch.nn.Module.to(module, prompt_embeds.dtype) if prompt_embeds.dtype != torch.float32 else module
