"""Readout refit: after a layer is truncated, re-solve its ``out_proj`` in closed form so that the pruned layer
reproduces, on the calibration activations, what the dense layer produced there.

For the calibration tokens of layer l, with u' the input of the pruned mixer's ``out_proj`` (the gated-norm output,
``[tokens, I]``) and t the target mixer output (``[tokens, hidden]``):

    W* = argmin_W  Σ_tokens ||t − W u'||²  +  λ ||W − W₀||²_F   =   (Σ t u'ᵀ + λ W₀) (Σ u' u'ᵀ + λ I)⁻¹

regularised toward the dense weights W₀ (so κ = 0, where u' = u and t = W₀ u, returns W₀ exactly), with
λ = ``alpha`` · mean(diag Σ u' u'ᵀ). Only sufficient statistics are kept — ``Σ u'u'ᵀ`` (I × I), ``Σ t u'ᵀ``
(hidden × I) and ``Σ ||t||²``, all float64 — never the activations. The reconstruction error of any W follows from the
same statistics: ``E(W) = Σ||t||² − 2 tr(W Σ u' tᵀ) + tr(W Σ u'u'ᵀ Wᵀ)``.

Targets: ``global`` (the product's ``--refit``) — t = the dense network's residual stream after layer l minus the
pruned stream before it, so the block output matches the dense network's activation at that depth (corrects drift
accumulated in earlier layers too); ``local`` (kept for the benchmark's ablation) — t = W₀ u, the dense mixer's
output on the same (pruned-network) inputs. benchmarks/refit.py measures both. The weight stays in
the standard Mamba2 layout (``mixer.out_proj.weight``): the checkpoint loads with transformers and vLLM unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

import torch

from ghost_vllm.stats.capture import PROPAGATE_WINDOWS

__all__ = ["ReadoutStats", "RefitLayer", "RefitSpec", "capture_readout_input", "refit_readout", "DEFAULT_ALPHA"]

DEFAULT_ALPHA = 1e-3


class ReadoutStats:
    """Streamed float64 sufficient statistics of one layer's readout least-squares problem."""

    def __init__(self, inner: int, hidden: int) -> None:
        self.uu = torch.zeros(inner, inner, dtype=torch.float64)
        self.tu = torch.zeros(hidden, inner, dtype=torch.float64)
        self.tt = 0.0
        self.tokens = 0

    def update(self, u: torch.Tensor, t: torch.Tensor) -> None:
        """``u`` [..., I] pruned readout inputs, ``t`` [..., hidden] targets for the same tokens."""
        u = u.reshape(-1, u.shape[-1]).double().cpu()
        t = t.reshape(-1, t.shape[-1]).double().cpu()
        if u.shape[0] != t.shape[0]:
            raise AssertionError(f"{u.shape[0]} readout inputs for {t.shape[0]} targets")
        self.uu += u.T @ u
        self.tu += t.T @ u
        self.tt += float(t.pow(2).sum())
        self.tokens += u.shape[0]

    def error(self, w: torch.Tensor) -> float:
        """Σ_tokens ||t − W u'||² from the statistics alone."""
        w = w.double().cpu()
        return float(self.tt - 2 * (w * self.tu).sum() + ((w @ self.uu) * w).sum())

    def solve(self, w0: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
        """The ridge solution regularised toward ``w0`` [hidden, I] (float64)."""
        w0 = w0.double().cpu()
        lam = alpha * float(self.uu.diagonal().mean()) if self.tokens else 0.0
        a = self.uu + lam * torch.eye(self.uu.shape[0], dtype=torch.float64)
        b = self.tu + lam * w0
        # W a = b  ⇔  a Wᵀ = bᵀ (a symmetric positive definite)
        return torch.linalg.solve(a, b.T).T


@dataclass
class RefitLayer:
    layer: int
    target: str
    alpha: float
    tokens: int
    error_before: float  # relative: E(W₀) / Σ||t||²
    error_after: float  # relative: E(W*) / Σ||t||²

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def capture_readout_input(mixer, sink: list) -> Iterator[None]:
    """Append the input of ``mixer.out_proj`` ([b, T, I]) to ``sink`` on every forward; raises if it never fired."""
    calls = len(sink)
    handle = mixer.out_proj.register_forward_pre_hook(lambda _m, args: sink.append(args[0].detach()))
    try:
        yield
    finally:
        handle.remove()
    if len(sink) == calls:
        raise AssertionError("out_proj hook never fired: the mixer took a path that skips out_proj")


@dataclass(frozen=True)
class RefitSpec:
    """Readout refit after each layer's truncation."""

    target: str = "global"  # global (the product's: measured better, benchmarks/refit.py) | local
    alpha: float = DEFAULT_ALPHA


def _mixer_out(block, h: torch.Tensor) -> torch.Tensor:
    return block.mixer(block.norm(h.to(dtype=block.norm.weight.dtype)))


def refit_readout(idx: int, block, dense_block, acts: list[torch.Tensor], dense_acts: Optional[list[torch.Tensor]],
                   spec: RefitSpec) -> tuple[RefitLayer, list[torch.Tensor], Optional[list[torch.Tensor]]]:
    """Fit ``block.mixer.out_proj`` (pruned) to the dense layer's output (``local``) or to the dense network's next
    activation (``global``) over the cached inputs; set it in place. Returns the report, the next layer's inputs and
    (``global``) the dense network's next activations.

    One pass, a few windows at a time: the pruned block's forward (the propagation every layer needs) records its
    readout input u'; the target comes from the dense copy. After the solve, the recorded outputs are corrected by
    u'(W* − W₀)ᵀ instead of running the block again."""
    out_proj = block.mixer.out_proj
    w0 = out_proj.weight.detach().clone()
    bias = out_proj.bias.detach().double().cpu() if out_proj.bias is not None else None
    stats = ReadoutStats(w0.shape[1], w0.shape[0])
    outs, readouts, dense_next = [], [], []
    for i, a in enumerate(acts):
        out = torch.empty_like(a)
        dense_out = torch.empty_like(dense_acts[i]) if dense_acts is not None else None
        us = []
        for j in range(0, a.shape[0], PROPAGATE_WINDOWS):
            h = a[j : j + PROPAGATE_WINDOWS]
            u: list[torch.Tensor] = []
            with capture_readout_input(block.mixer, u):
                out[j : j + PROPAGATE_WINDOWS] = block(h)
            if spec.target == "local":
                t = _mixer_out(dense_block, h)
            else:
                dense_out[j : j + PROPAGATE_WINDOWS] = dense_block(dense_acts[i][j : j + PROPAGATE_WINDOWS])
                t = dense_out[j : j + PROPAGATE_WINDOWS].float() - h.float()
            t = t.double().cpu()
            stats.update(u[0], t - bias if bias is not None else t)
            us.append(u[0])
        outs.append(out)
        readouts.append(torch.cat(us))
        dense_next.append(dense_out)
    w = stats.solve(w0, spec.alpha)
    before, after = stats.error(w0), stats.error(w)
    with torch.no_grad():
        out_proj.weight.copy_(w.to(out_proj.weight.dtype))
        delta = (out_proj.weight.float() - w0.float()).T  # [I, hidden]
        nxt = [(o.float() + u.float() @ delta).to(o.dtype) for o, u in zip(outs, readouts)]
    norm = stats.tt if stats.tt > 0 else 1.0
    report = RefitLayer(idx, spec.target, spec.alpha, stats.tokens, before / norm, after / norm)
    return report, nxt, (dense_next if dense_acts is not None else None)
