"""What a scorer sees for one layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ghost_vllm.stats.accumulators import ChannelMoments

__all__ = ["LayerStats"]


@dataclass(frozen=True)
class LayerStats:
    """Inputs of every scorer for layer ``layer_idx``.

    ``w_B``/``w_C [G, N, hidden]`` are the in_proj rows of each channel; ``moments`` the scan statistics (None for
    methods that do not need them); ``mask_grad [G, N]`` the summed gradient of the loss w.r.t. a channel mask
    (taylor only); ``seed`` the recipe's seed (random only).
    """

    layer_idx: int
    w_B: torch.Tensor
    w_C: torch.Tensor
    moments: Optional[ChannelMoments] = None
    mask_grad: Optional[torch.Tensor] = None
    seed: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.w_B.shape[:2])

    def require_moments(self, method: str) -> ChannelMoments:
        if self.moments is None:
            raise AssertionError(f"{method} needs scan statistics but none were collected for layer {self.layer_idx}")
        return self.moments
