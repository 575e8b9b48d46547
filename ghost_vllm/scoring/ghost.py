"""GHOST: S[g,n] = sqrt( Σ h_t[k,p,n]² · C'_t[g,n]² / Z ), the per-token product of the controllability (h²) and
observability (C'²) proxies. S² is the mean squared change of the SSM output when channel (g, n) alone is removed."""

from __future__ import annotations

import torch

from ghost_vllm.scoring.base import LayerStats


def score(stats: LayerStats) -> torch.Tensor:
    m = stats.require_moments("ghost")
    return torch.sqrt(m.sum_h2c2 / m.n_terms)
