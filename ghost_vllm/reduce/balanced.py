"""Balanced truncation of a Mamba2 mixer's SSM state: the exact, closed-form version of what GHOST approximates.

Per layer and group g (G groups, N = state_size, r = the kept rank), from calibration activations:

    P[g] = Σ_{tokens, heads k of g, p < head_dim} h_t[k,p,:] h_t[k,p,:]ᵀ     controllability Gramian   [N, N]
    Q[g] = (1/tokens) Σ_tokens C_t[g,:] C_t[g,:]ᵀ                          observability Gramian     [N, N]

    P = L Lᵀ,  Q = R Rᵀ (symmetric square roots),  Rᵀ L = U Σ Vᵀ  (σ_i: the Hankel singular values)
    T = Σ_r^{-1/2} U_rᵀ Rᵀ    [r, N]   (state_proj_in:  B' = T·B, so h' = T·h)
    S = L V_r Σ_r^{-1/2}      [N, r]   (state_proj_out: C' = Sᵀ·C)

Then T·S = I_r, S·T = I at r = N, and Rᵀ(I − S·T)L = Σ_{i>r} u_i σ_i v_iᵀ: for C independent of h the output energy
lost, Σ ||Cᵀ(I − S·T)h||² summed like P and averaged like Q, is exactly Σ_{i>r} σ_i². The balanced scaling (P and Q
of the reduced coordinates both diagonal, = Σ_r) is the one free diagonal choice this module makes.

Ranks: uniform, or per layer from the Hankel singular values (:func:`allocate_ranks`: greedy, ``multiple_of`` at a
time, to the layer whose share of discarded energy drops most) under the same total as the uniform rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["GramianAccumulator", "Gramians", "Projection", "balanced_projection", "discarded_share",
           "allocate_ranks"]

# P sums the state's outer products of every STATE_STRIDE-th scan step (its cost, tokens·H·P·N² MACs, is N times the
# scan's; Q's, tokens·G·N², is negligible), scaled to all steps. Consecutive states differ by one token's update, so
# a stride of 4 changes the ranks and the projection little — measured in docs/pruning.md ("Calibration cost").
STATE_STRIDE = 4

# relative floor of the eigenvalues of P and Q and of the Hankel singular values (a direction no calibration token
# excites gets this instead of a division by zero)
EPS = 1e-12


@dataclass
class Gramians:
    """P, Q ``[G, N, N]`` float64 of one layer, and the token count behind them."""

    P: torch.Tensor
    Q: torch.Tensor
    tokens: int


class GramianAccumulator:
    """Streams the Gramians of one layer from the scan's ``on_step(h [b, H, P, N], C_t [b, G, N])``, on the device
    the states live on: each step's products in the states' dtype, their sum over the steps in float64."""

    def __init__(self, n_groups: int, state_size: int, heads_per_group: int, head_dim: int,
                 state_stride: int = STATE_STRIDE) -> None:
        self.G, self.N, self.hpg, self.P_dim = n_groups, state_size, heads_per_group, head_dim
        self.stride = state_stride
        self.P: torch.Tensor | None = None
        self.Q: torch.Tensor | None = None
        self.tokens = 0  # steps seen (Q's count)
        self.states = 0  # steps whose state entered P
        self._step = 0

    def update(self, h: torch.Tensor, C: torch.Tensor) -> None:
        b, H, Pd, N = h.shape
        if self.P is None:
            self.P = torch.zeros(self.G, N, N, dtype=torch.float64, device=h.device)
            self.Q = torch.zeros(self.G, N, N, dtype=torch.float64, device=h.device)
        Cg = C.transpose(0, 1)  # [G, b, N]
        self.Q += torch.bmm(Cg.transpose(1, 2), Cg).double()
        self.tokens += b
        self._step += 1
        if self._step % self.stride:  # P from every stride-th step's state (see STATE_STRIDE)
            return
        # one step's product in the states' dtype (a GEMM over b·heads·head_dim rows, cheaper than float64), summed
        # over the steps in float64: rows of a group are its heads' (contiguous) × head_dim × batch
        hg = h.reshape(b, self.G, self.hpg * Pd, N).transpose(0, 1).reshape(self.G, b * self.hpg * Pd, N)
        self.P += torch.bmm(hg.transpose(1, 2), hg).double()
        self.states += b

    def finalize(self) -> Gramians:
        if self.P is None:
            raise AssertionError("no states were accumulated (the scan's on_step never ran)")
        if not self.states:
            raise AssertionError(f"no state was sampled ({self.tokens} steps < the state stride {self.stride})")
        # the N × N eigen- and singular-value decompositions run on the CPU in float64 (tiny beside the scan)
        return Gramians((self.P * (self.tokens / self.states)).cpu(), (self.Q / self.tokens).cpu(), self.tokens)


def _sqrt_psd(M: torch.Tensor) -> torch.Tensor:
    """A symmetric square root of a PSD ``[N, N]`` matrix (eigenvalues floored at EPS·max)."""
    M = 0.5 * (M + M.T)
    w, V = torch.linalg.eigh(M)
    w = w.clamp_min(EPS * max(float(w.max()), EPS))
    return (V * w.sqrt()) @ V.T


@dataclass
class Projection:
    """One layer's projection: ``T [G, r, N]``, ``S [G, N, r]`` (float32), and every Hankel singular value
    ``hsv [G, N]`` (float64, descending)."""

    T: torch.Tensor
    S: torch.Tensor
    hsv: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.T.shape[1])

    def energy_kept(self) -> float:
        """Σ_{i≤r} σ_i² / Σ σ_i² over the layer's groups."""
        s2 = self.hsv.pow(2)
        return float(s2[:, : self.rank].sum() / s2.sum()) if float(s2.sum()) > 0 else 1.0


def hankel_singular_values(g: Gramians) -> torch.Tensor:
    """σ ``[G, N]`` (descending) of one layer's Gramians."""
    return torch.stack([torch.linalg.svdvals(_sqrt_psd(g.Q[i]) @ _sqrt_psd(g.P[i])) for i in range(g.P.shape[0])])


def balanced_projection(g: Gramians, rank: int) -> Projection:
    """T and S of balanced truncation to ``rank`` for every group of one layer (see the module docstring)."""
    G, N, _ = g.P.shape
    if not 1 <= rank <= N:
        raise AssertionError(f"rank {rank} outside [1, {N}]")
    Ts, Ss, hsv = [], [], []
    for i in range(G):
        L, R = _sqrt_psd(g.P[i]), _sqrt_psd(g.Q[i])
        U, sig, Vh = torch.linalg.svd(R.T @ L)
        hsv.append(sig)
        s = sig[:rank].clamp_min(EPS * max(float(sig[0]), EPS)).rsqrt()  # Σ_r^{-1/2}
        Ts.append(s[:, None] * (U[:, :rank].T @ R.T))
        Ss.append((L @ Vh[:rank].T) * s[None, :])
    return Projection(torch.stack(Ts).float(), torch.stack(Ss).float(), torch.stack(hsv))


def discarded_share(hsv: torch.Tensor, rank: int) -> float:
    """Σ_{i>r} σ_i² / Σ σ_i² of one layer (``hsv [G, N]``, groups summed)."""
    s2 = hsv.pow(2)
    total = float(s2.sum())
    return float(s2[:, rank:].sum()) / total if total > 0 else 0.0


def allocate_ranks(hsvs: Sequence[torch.Tensor], total: int, multiple_of: int, min_rank: int) -> list[int]:
    """Per-layer ranks, multiples of ``multiple_of`` in [``min_rank``, N], summing to ``total`` (the uniform rank
    times the layers): every layer starts at ``min_rank`` and each further ``multiple_of`` goes to the layer whose
    discarded share (:func:`discarded_share`) drops most."""
    N = int(hsvs[0].shape[-1])
    ranks = [min_rank] * len(hsvs)
    if sum(ranks) > total:
        raise AssertionError(f"min rank {min_rank} × {len(hsvs)} layers exceeds the budget {total}")
    while sum(ranks) + multiple_of <= total:
        gains = [discarded_share(h, r) - discarded_share(h, r + multiple_of) if r + multiple_of <= N else -1.0
                 for h, r in zip(hsvs, ranks)]
        best = max(range(len(ranks)), key=lambda i: gains[i])
        if gains[best] < 0:
            break
        ranks[best] += multiple_of
    return ranks
