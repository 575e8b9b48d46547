"""Per-layer state budgets (``selection.allocation: adaptive``): how many state channels N'_l each layer keeps, at
exactly the uniform cut's bytes per sequence. GHOST (or the chosen method) still decides *which* channels.

1. Sensitivity, calibration text only, one forward + backward of the dense model: every channel (g, n) of every
   layer gets a per-window channel mask m (multiplying its B and C); F[l][g, n] = Σ_windows (∂NLL_w/∂m)² is the
   empirical Fisher of that mask — a second-order estimate of the loss increase when the channel is removed, in the
   same unit (nats) in every layer, which is what lets layers be compared.
2. Cost curves: keeping k channels per group in layer l costs c_l(k) = Σ_g (sum of the N−k smallest F[l][g, ·]).
3. Exact allocation: minimise Σ_l c_l(k_l) over k_l ∈ {min_state_size, …, N} in steps of ``multiple_of`` subject to
   Σ_l k_l ≤ L·N'_uniform. Every Mamba2 layer has the same shapes, so state bytes are affine in k_l with the same
   slope in every layer and this budget is exactly "bytes never above the uniform cut's". Solved by dynamic
   programming over layers × budget units (O(L · K · L·N/m), vectorised), not greedily, so non-convex curves are fine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ghost_vllm.errors import RecipeError

__all__ = ["Allocation", "candidate_sizes", "cost_curves", "allocate", "adaptive_state_sizes"]

log = logging.getLogger(__name__)


@dataclass
class Allocation:
    state_sizes: list[int]
    uniform_state_size: int
    candidates: list[int]
    costs: list[list[float]]  # [L][K] predicted loss increase (summed window NLL, Fisher units) at each candidate
    sensitivity: str = "mask_fisher"
    seconds: float = 0.0

    @property
    def predicted_cost(self) -> float:
        return sum(c[self.candidates.index(n)] for c, n in zip(self.costs, self.state_sizes))

    def uniform_predicted_cost(self) -> Optional[float]:
        if self.uniform_state_size not in self.candidates:
            return None
        k = self.candidates.index(self.uniform_state_size)
        return sum(c[k] for c in self.costs)

    def to_dict(self) -> dict:
        return {
            "state_sizes": self.state_sizes,
            "uniform_state_size": self.uniform_state_size,
            "budget_channels": self.uniform_state_size * len(self.state_sizes),
            "sensitivity": self.sensitivity,
            "candidates": self.candidates,
            "predicted_cost": self.predicted_cost,
            "uniform_predicted_cost": self.uniform_predicted_cost(),
            "costs": [[float(f"{v:.6g}") for v in row] for row in self.costs],
            "seconds": self.seconds,
        }


def candidate_sizes(state_size: int, multiple_of: int, min_state_size: int) -> list[int]:
    """k ∈ {min_state_size, min + m, …} up to N (N itself always allowed)."""
    sizes = list(range(min_state_size, state_size + 1, multiple_of))
    if sizes[-1] != state_size:
        sizes.append(state_size)
    return sizes


def cost_curves(fisher: Sequence[torch.Tensor], candidates: Sequence[int]) -> torch.Tensor:
    """``fisher[l] [G, N]`` → ``[L, K]``: cost of keeping k = candidates[j] channels per group (the N−k channels with
    the smallest Fisher removed in every group)."""
    rows = []
    for f in fisher:
        G, N = f.shape
        asc = torch.sort(f.double(), dim=1).values  # [G, N] ascending
        removed = torch.cat([torch.zeros(G, 1, dtype=torch.float64), asc.cumsum(dim=1)], dim=1)  # [G, N+1]
        rows.append(torch.stack([removed[:, N - k].sum() for k in candidates]))
    return torch.stack(rows)


def allocate(costs: torch.Tensor, candidates: Sequence[int], budget: int, unit: int) -> list[int]:
    """Exact minimiser of Σ_l costs[l, j_l] subject to Σ_l candidates[j_l] ≤ budget (all multiples of ``unit``,
    except possibly N). Ties go to the larger total (more state kept) and then to earlier layers' larger sizes."""
    L, K = costs.shape
    size_units = [-(-k // unit) for k in candidates]  # N not a multiple of unit: priced at the next unit up
    cap = budget // unit
    best = torch.full((cap + 1,), float("inf"), dtype=torch.float64)  # best[b]: min cost of layers so far using b units
    best[0] = 0.0
    choice = torch.zeros(L, cap + 1, dtype=torch.long)
    for layer in range(L):
        new = torch.full_like(best, float("inf"))
        pick = torch.zeros(cap + 1, dtype=torch.long)
        for j in range(K - 1, -1, -1):  # larger sizes first: strict '<' keeps them on ties
            u = size_units[j]
            if u > cap:
                continue
            cand = torch.full_like(best, float("inf"))
            cand[u:] = best[: cap + 1 - u] + costs[layer, j]
            better = cand < new
            new = torch.where(better, cand, new)
            pick = torch.where(better, torch.full_like(pick, j), pick)
        best, choice[layer] = new, pick
    if not torch.isfinite(best).any():
        raise RecipeError(f"selection.min_state_size: {candidates[0]} per layer exceeds the budget of {budget} "
                          f"channels over {L} layers; lower selection.min_state_size or selection.sparsity")
    finite = torch.isfinite(best)
    lowest = best[finite].min()
    b = int(torch.nonzero(finite & (best <= lowest), as_tuple=False).max())  # ties: the largest total
    sizes = [0] * L
    for layer in range(L - 1, -1, -1):
        j = int(choice[layer, b])
        sizes[layer] = candidates[j]
        b -= size_units[j]
    assert b == 0 and sum(sizes) <= budget
    return sizes


def adaptive_state_sizes(model, tokens: torch.Tensor, batch_size: int, uniform_state_size: int, multiple_of: int,
                         min_state_size: int, progress: bool = True) -> Allocation:
    """Measure the per-channel Fisher on ``tokens [n, T]`` and allocate ``L · uniform_state_size`` channels."""
    from ghost_vllm.stats.gradients import mask_gradients

    t0 = time.perf_counter()
    N = int(model.config.state_size)
    L = int(model.config.num_hidden_layers)
    candidates = candidate_sizes(N, multiple_of, min_state_size)
    grads = mask_gradients(model, tokens, batch_size, progress, desc="adaptive sensitivity")
    costs = cost_curves(grads.fisher, candidates)
    sizes = allocate(costs, candidates, L * uniform_state_size, multiple_of)
    alloc = Allocation(sizes, uniform_state_size, list(candidates), costs.tolist(), seconds=time.perf_counter() - t0)
    log.info("adaptive allocation: %s (uniform %d; predicted cost %.4g vs uniform %.4g)", sizes, uniform_state_size,
             alloc.predicted_cost, alloc.uniform_predicted_cost() or float("nan"))
    return alloc
