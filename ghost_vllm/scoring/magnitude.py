"""Magnitude: ‖W_B row‖ · ‖W_C row‖ of each channel — static, blind to the data."""

from __future__ import annotations

import torch

from ghost_vllm.scoring.base import LayerStats


def score(stats: LayerStats) -> torch.Tensor:
    return stats.w_B.double().norm(dim=-1) * stats.w_C.double().norm(dim=-1)
