"""Mask gradients of the dense model: the per-channel sensitivities the ``taylor`` scorer and the adaptive
allocator read. A per-window channel mask m = 1 multiplies every layer's B and C (:func:`masked_mixers`); one
forward + backward per batch gives every window's ∂NLL_w/∂m."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.stats.capture import masked_mixers

__all__ = ["MaskGradients", "mask_gradients", "taylor_mask_grads"]


@dataclass
class MaskGradients:
    """Per layer ``[G, N]`` float64: ``total`` = Σ_windows ∂NLL_w/∂m, ``fisher`` = Σ_windows (∂NLL_w/∂m)²."""

    total: list[torch.Tensor]
    fisher: list[torch.Tensor]
    per_window: list[torch.Tensor]  # [W, G, N] float32: each window's own gradient (W = number of windows)


def mask_gradients(model, tokens: torch.Tensor, batch_size: int, progress: bool = True,
                   desc: str = "mask gradients") -> MaskGradients:
    """Gradients of each window's summed token NLL w.r.t. a per-window channel mask m = 1 (multiplying B and C) in
    every layer of the dense model, one forward + backward per batch (the mask is ``[b, 1, G, N]``, so one backward
    gives every window's own gradient)."""
    layout = InProjLayout.from_config(model.config)
    device = next(model.parameters()).device
    L = len(model.backbone.layers)
    total = [torch.zeros(layout.n_groups, layout.state_size, dtype=torch.float64) for _ in range(L)]
    fisher = [torch.zeros(layout.n_groups, layout.state_size, dtype=torch.float64) for _ in range(L)]
    per_window: list[list[torch.Tensor]] = [[] for _ in range(L)]
    params = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for batch in tqdm(tokens.split(batch_size), desc=desc, disable=None if progress else True, leave=False):
            batch = batch.to(device)
            masks = [torch.ones(batch.shape[0], 1, layout.n_groups, layout.state_size, device=device,
                                requires_grad=True) for _ in range(L)]
            with masked_mixers(model, masks, chunked=True):
                logits = model(batch, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            loss.backward()
            for t, f, w, m in zip(total, fisher, per_window, masks):
                g = m.grad.double().cpu()[:, 0]  # [b, G, N], one row per window
                t += g.sum(0)
                f += g.pow(2).sum(0)
                w.append(g.float())
    finally:
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
    return MaskGradients(total, fisher, [torch.cat(w) for w in per_window])


def taylor_mask_grads(model, tokens: torch.Tensor, batch_size: int, progress: bool = True) -> list[torch.Tensor]:
    """Σ over calibration windows of ∂(summed token NLL)/∂m for a per-channel mask m = 1 in every layer (one-shot,
    dense model). Returns one ``[G, N]`` float64 tensor per layer."""
    return mask_gradients(model, tokens, batch_size, progress, desc="taylor gradients").total
