"""Unpaired GHOST: sqrt(mean h² · mean C'²) — the two averages multiplied, instead of averaging their product."""

from __future__ import annotations

import torch

from ghost_vllm.scoring.base import LayerStats


def score(stats: LayerStats) -> torch.Tensor:
    m = stats.require_moments("ghost_unpaired")
    return torch.sqrt((m.sum_h2 / m.n_terms) * (m.sum_c2 / m.n_tokens))
