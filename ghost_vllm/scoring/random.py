"""Random: i.i.d. uniform scores from a generator seeded by (seed, layer) — reproducible, independent of data."""

from __future__ import annotations

import torch

from ghost_vllm.scoring.base import LayerStats


def score(stats: LayerStats) -> torch.Tensor:
    g = torch.Generator().manual_seed(stats.seed * 100_003 + stats.layer_idx)
    return torch.rand(stats.shape, generator=g, dtype=torch.float64)
