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
from typing import Iterator, Optional, Sequence

import torch

from ghost_vllm.stats.capture import PROPAGATE_WINDOWS, run_block

__all__ = ["ReadoutStats", "RefitLayer", "RefitSpec", "capture_readout_input", "refit_readout", "DEFAULT_ALPHA"]

DEFAULT_ALPHA = 1e-3


class ReadoutStats:
    """Streamed float64 sufficient statistics of one layer's readout least-squares problem."""

    def __init__(self, inner: int, hidden: int, device: torch.device | str = "cpu") -> None:
        # on the device the pruning runs on (a GPU accumulates and solves there in float64; nothing is copied back
        # per batch)
        self.uu = torch.zeros(inner, inner, dtype=torch.float64, device=device)
        self.tu = torch.zeros(hidden, inner, dtype=torch.float64, device=device)
        self.tt = 0.0
        self.tokens = 0

    def update(self, u: torch.Tensor, t: torch.Tensor) -> None:
        """``u`` [..., I] pruned readout inputs, ``t`` [..., hidden] targets for the same tokens."""
        u = u.reshape(-1, u.shape[-1]).to(self.uu.device, torch.float64)
        t = t.reshape(-1, t.shape[-1]).to(self.uu.device, torch.float64)
        if u.shape[0] != t.shape[0]:
            raise AssertionError(f"{u.shape[0]} readout inputs for {t.shape[0]} targets")
        self.uu += u.T @ u
        self.tu += t.T @ u
        self.tt += float(t.pow(2).sum())
        self.tokens += u.shape[0]

    def error(self, w: torch.Tensor) -> float:
        """Σ_tokens ||t − W u'||² from the statistics alone."""
        w = w.to(self.uu.device, torch.float64)
        return float(self.tt - 2 * (w * self.tu).sum() + ((w @ self.uu) * w).sum())

    def solve(self, w0: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
        """The ridge solution regularised toward ``w0`` [hidden, I] (float64)."""
        w0 = w0.to(self.uu.device, torch.float64)
        lam = alpha * float(self.uu.diagonal().mean()) if self.tokens else 0.0
        a = self.uu + lam * torch.eye(self.uu.shape[0], dtype=torch.float64, device=self.uu.device)
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


@contextmanager
def _capture_input(module: Optional[torch.nn.Module], sink: list) -> Iterator[None]:
    """Append ``module``'s first input to ``sink`` on every forward (nothing when ``module`` is None)."""
    if module is None:
        yield
        return
    handle = module.register_forward_pre_hook(lambda _m, args: sink.append(args[0].detach()))
    try:
        yield
    finally:
        handle.remove()


def _run(block, h: torch.Tensor, call) -> torch.Tensor:
    return run_block(block, h, call) if call else block(h)


def refit_readout(idx: int, block, dense_block, acts: list[torch.Tensor], dense_acts: Optional[list[torch.Tensor]],
                  spec: RefitSpec, family=None, calls: Optional[Sequence] = None
                  ) -> tuple[RefitLayer, list[torch.Tensor], Optional[list[torch.Tensor]]]:
    """Fit the pruned mixer's ``out_proj`` to the dense layer's output (``local``, Mamba2 blocks) or to the dense
    network's activation at that depth (``global``) over the cached block inputs ``acts`` (``calls``: the blocks'
    other arguments, hybrids); set it in place. Returns the report, the next layer's inputs and (``global``) the
    dense network's next activations.

    ``global``: with m the residual stream right after the mixer's output y = W u' + b was added (scaled by s) —
    the block output, or the input of the family's :meth:`~ghost_vllm.families.Family.refit_residual` module when an
    MLP or attention output follows in the same layer — the target of y is y + (m_dense − m')/s, so that the pruned
    layer's m' matches the dense network's m_dense. One pass, a few windows at a time; after the solve, the outputs
    are corrected by s·u'(W* − W₀)ᵀ when m is the block output, else the block is run again."""
    from ghost_vllm.families import family_by_name

    family = family or family_by_name("mamba2")
    mixer = family.mixer(block)
    out_proj = mixer.out_proj
    scale = family.mixer_output_scale(block)
    mid, dense_mid = family.refit_residual(block), family.refit_residual(dense_block)
    if spec.target == "local" and (mid is not None or scale != 1.0 or not hasattr(block, "norm")):
        raise AssertionError(f"the local refit target needs h + mixer(norm(h)) blocks, not {family.name}'s")
    w0 = out_proj.weight.detach().clone()
    bias = out_proj.bias.detach().double() if out_proj.bias is not None else None
    stats = ReadoutStats(w0.shape[1], w0.shape[0], w0.device)
    outs, readouts, dense_next = [], [], []
    for i, a in enumerate(acts):
        call = calls[i] if calls else None
        out = torch.empty_like(a)
        dense_out = torch.empty_like(dense_acts[i]) if dense_acts is not None else None
        step = a.shape[0] if call else PROPAGATE_WINDOWS  # captured keyword arguments cover the whole batch
        us = []
        for j in range(0, a.shape[0], step):
            h = a[j : j + step]
            u: list[torch.Tensor] = []
            m: list[torch.Tensor] = []
            with capture_readout_input(mixer, u), _capture_input(mid, m):
                out[j : j + step] = _run(block, h, call)
            if spec.target == "local":
                t = _mixer_out(dense_block, h).double()
            else:
                md: list[torch.Tensor] = []
                with _capture_input(dense_mid, md):
                    dense_out[j : j + step] = _run(dense_block, dense_acts[i][j : j + step], call)
                m_pruned = (m[0] if m else out[j : j + step]).double()
                m_dense = (md[0] if md else dense_out[j : j + step]).double()
                y = u[0].double() @ w0.double().T + (bias if bias is not None else 0.0)
                t = y + (m_dense - m_pruned) / scale
            stats.update(u[0], t - bias if bias is not None else t)
            us.append(u[0])
        outs.append(out)
        readouts.append(torch.cat(us))
        dense_next.append(dense_out)
    w = stats.solve(w0, spec.alpha)
    before, after = stats.error(w0), stats.error(w)
    with torch.no_grad():
        out_proj.weight.copy_(w.to(out_proj.weight.dtype))
        if mid is None:  # m is the block output: correct it instead of running the block again
            delta = scale * (out_proj.weight.float() - w0.float()).T  # [I, hidden]
            nxt = [(o.float() + u.float() @ delta).to(o.dtype) for o, u in zip(outs, readouts)]
        else:
            nxt = [_run(block, a, calls[i] if calls else None) for i, a in enumerate(acts)]
    norm = stats.tt if stats.tt > 0 else 1.0
    report = RefitLayer(idx, spec.target, spec.alpha, stats.tokens, before / norm, after / norm)
    return report, nxt, (dense_next if dense_acts is not None else None)
