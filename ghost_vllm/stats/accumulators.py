"""Streaming per-channel sums for one layer (float64, never all hidden states at once).

Every accumulator has ``update(...)`` and ``finalize()``; GHOST multiplies per token and then sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ChannelMoments", "StateChannelAccumulator"]


@dataclass(frozen=True)
class ChannelMoments:
    """Finalized sums of one layer, all ``[G, N]`` float64.

    ``sum_h2c2 = Σ_{d,t,k∈g,p} h_t[k,p,n]² · C'_t[g,n]²``, ``sum_h2`` the same without C', ``sum_c2 = Σ_{d,t} C'_t[g,n]²``;
    ``n_terms`` (Z) counts the (d, t, k, p) terms in ``sum_h2c2``/``sum_h2``, ``n_tokens`` the (d, t) pairs.
    """

    sum_h2c2: torch.Tensor
    sum_h2: torch.Tensor
    sum_c2: torch.Tensor
    n_terms: int
    n_tokens: int


class StateChannelAccumulator:
    """Accumulates h² and C'² per state channel (g, n) from the scan's per-step callback."""

    def __init__(self, n_groups: int, state_size: int, heads_per_group: int, head_dim: int):
        self.n_groups, self.state_size = n_groups, state_size
        self.heads_per_group, self.head_dim = heads_per_group, head_dim
        self._h2c2 = torch.zeros(n_groups, state_size, dtype=torch.float64)
        self._h2 = torch.zeros_like(self._h2c2)
        self._c2 = torch.zeros_like(self._h2c2)
        self._terms = 0
        self._tokens = 0
        self._sq: torch.Tensor | None = None

    def update(self, h: torch.Tensor, c: torch.Tensor) -> None:
        """One scan step. ``h [b, H, P, N]`` the state after the update, ``c [b, G, N]`` the C' that reads it."""
        b = h.shape[0]
        # sum over (heads of the group, head_dim) in float32, then accumulate in float64
        if self._sq is None or self._sq.shape != h.shape:  # one float32 scratch buffer, reused at every step
            self._sq = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        sq = torch.mul(h, h, out=self._sq) if h.dtype == torch.float32 else self._sq.copy_(h).square_()
        h2 = sq.view(b, self.n_groups, self.heads_per_group * self.head_dim, self.state_size).sum(2).double()
        c2 = c.double().pow(2)  # [b, G, N]
        self._h2c2 += (h2 * c2).sum(0).cpu()
        self._h2 += h2.sum(0).cpu()
        self._c2 += c2.sum(0).cpu()
        self._terms += b * self.heads_per_group * self.head_dim
        self._tokens += b

    __call__ = update  # usable directly as the scan's on_step

    def finalize(self) -> ChannelMoments:
        if self._tokens == 0:
            raise RuntimeError("StateChannelAccumulator.finalize() before any update(): the scan never ran")
        return ChannelMoments(self._h2c2.clone(), self._h2.clone(), self._c2.clone(), self._terms, self._tokens)
