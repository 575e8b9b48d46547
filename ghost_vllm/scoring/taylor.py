"""Taylor: first-order saliency of a per-channel mask m (all ones), |∂L/∂m| summed over the calibration set.
Removing channel (g, n) sets m from 1 to 0, so -∂L/∂m is the first-order estimate of the loss change. One-shot: the
gradients of every layer come from backward passes of the dense model before the layer loop."""

from __future__ import annotations

import torch

from ghost_vllm.scoring.base import LayerStats


def score(stats: LayerStats) -> torch.Tensor:
    if stats.mask_grad is None:
        raise AssertionError(f"taylor needs mask gradients but none were computed for layer {stats.layer_idx}")
    return stats.mask_grad.double().abs()
