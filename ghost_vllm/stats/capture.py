"""Context managers that run every mixer of a model through our reference forward (with a channel mask), restore
the original forwards in ``finally``, and raise if a patched mixer never ran."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.reference import mixer_forward

__all__ = ["masked_mixers"]


@contextlib.contextmanager
def masked_mixers(model, masks: list[torch.Tensor], chunked: bool = True) -> Iterator[None]:
    """While active, mixer ``l`` computes with B and C multiplied by ``masks[l] [G, N]`` (differentiable)."""
    layout = InProjLayout.from_config(model.config)
    layers = model.backbone.layers
    if len(masks) != len(layers):
        raise AssertionError(f"{len(masks)} masks for {len(layers)} layers")
    fired = [0] * len(layers)
    saved = []

    def make(i: int, mixer):
        def forward(hidden_states, cache_params=None, attention_mask=None, **kwargs):
            if cache_params is not None or attention_mask is not None:
                raise AssertionError("masked_mixers supports full-sequence forwards without cache or padding only")
            fired[i] += 1
            out = mixer_forward(mixer, layout, hidden_states, mask=masks[i], chunked=chunked)
            return out.to(hidden_states.dtype)

        return forward

    try:
        for i, layer in enumerate(layers):
            saved.append(layer.mixer.forward)
            layer.mixer.forward = make(i, layer.mixer)
        yield
    finally:
        for layer, fwd in zip(layers, saved):
            layer.mixer.forward = fwd
            if "forward" in vars(layer.mixer):
                del layer.mixer.forward  # back to the class method
    missing = [i for i, n in enumerate(fired) if n == 0]
    if missing:
        raise RuntimeError(f"masked_mixers: mixers of layers {missing} never ran; a fused kernel path bypassed them")
