"""The sequential GHOST loop: layer by layer from the input side, each layer scored on activations that already
flow through the pruned layers before it. Layer inputs are cached once per layer (``[nsamples, T, hidden]``) and
pushed through the pruned block to become the next layer's inputs; statistics are streamed per batch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.reference import mixer_ssm_inputs, ssm_scan
from ghost_vllm.scoring import NEEDS_BACKWARD, NEEDS_STATE_STATS, SCORERS, LayerStats
from ghost_vllm.selection import kept_count, select_channels
from ghost_vllm.stats.accumulators import ChannelMoments, StateChannelAccumulator
from ghost_vllm.stats.capture import masked_mixers
from ghost_vllm.surgery import prune_mixer

__all__ = ["LayerReport", "PruneReport", "layer_moments", "taylor_mask_grads", "prune_model"]

log = logging.getLogger(__name__)


@dataclass
class LayerReport:
    layer: int
    state_size: int
    kept: list[list[int]]  # [G][N']
    score_summary: dict[str, float]
    scores: list[list[float]]  # [G][N] every channel's score, for analysis

    def to_dict(self) -> dict:
        return {"layer": self.layer, "state_size": self.state_size, "kept": self.kept, "score": self.score_summary,
                "scores": self.scores}


@dataclass
class PruneReport:
    method: str
    sparsity: float
    state_size_original: int
    state_size: int
    layers: list[LayerReport] = field(default_factory=list)
    calibration_s: float = 0.0
    peak_memory_bytes: Optional[int] = None


def _summary(scores: torch.Tensor, keep: torch.Tensor) -> dict[str, float]:
    kept_mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, keep, True)
    s2 = scores.double().pow(2)
    total = float(s2.sum())
    return {
        "min": float(scores.min()),
        "max": float(scores.max()),
        "mean": float(scores.mean()),
        "kept_mean": float(scores[kept_mask].mean()),
        "removed_mean": float(scores[~kept_mask].mean()) if (~kept_mask).any() else 0.0,
        "kept_share_of_squares": float(s2[kept_mask].sum()) / total if total > 0 else 1.0,
    }


def _bc_rows(mixer, layout: InProjLayout) -> tuple[torch.Tensor, torch.Tensor]:
    w = mixer.in_proj.weight.detach()
    GN = layout.n_groups * layout.state_size
    wB = w[layout.b_row0 : layout.b_row0 + GN].reshape(layout.n_groups, layout.state_size, -1)
    wC = w[layout.c_row0 : layout.c_row0 + GN].reshape(layout.n_groups, layout.state_size, -1)
    return wB.cpu(), wC.cpu()


@torch.no_grad()
def layer_moments(block, layout: InProjLayout, inputs: list[torch.Tensor], progress: Optional[tqdm] = None) -> ChannelMoments:
    """Stream one layer's scan statistics over the cached inputs ``[b, T, hidden]`` (block inputs, before its norm)."""
    acc = StateChannelAccumulator(layout.n_groups, layout.state_size, layout.heads_per_group, layout.head_dim)
    for x in inputs:
        s = mixer_ssm_inputs(block.mixer, layout, block.norm(x.to(block.norm.weight.dtype)))
        ssm_scan(s.x, s.dt, s.A, s.B, s.C, s.D, on_step=acc.update)
        if progress is not None:
            progress.update(1)
    return acc.finalize()


def taylor_mask_grads(model, tokens: torch.Tensor, batch_size: int, progress: bool = True) -> list[torch.Tensor]:
    """Σ over calibration batches of ∂(summed token NLL)/∂m for a per-channel mask m = 1 in every layer (one-shot,
    dense model). Returns one ``[G, N]`` float64 tensor per layer."""
    layout = InProjLayout.from_config(model.config)
    device = next(model.parameters()).device
    masks = [
        torch.ones(layout.n_groups, layout.state_size, device=device, requires_grad=True)
        for _ in model.backbone.layers
    ]
    grads = [torch.zeros(layout.n_groups, layout.state_size, dtype=torch.float64) for _ in masks]
    params = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with masked_mixers(model, masks, chunked=True):
            for batch in tqdm(tokens.split(batch_size), desc="taylor gradients", disable=not progress, leave=False):
                batch = batch.to(device)
                logits = model(batch, use_cache=False).logits.float()
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
                )
                loss.backward()
                for g, m in zip(grads, masks):
                    g += m.grad.double().cpu()
                    m.grad = None
    finally:
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
    return grads


# transformers' torch path materialises chunk-sized intermediates that grow with the batch (for 16 windows of
# mamba2-130m more than a layer's weights); two windows at a time keep the transient small
PROPAGATE_WINDOWS = 2


def _release_free_heap() -> None:
    """Hand glibc's freed-but-kept heap pages back to the OS after each layer: the layer's batch-sized temporaries
    (mixer inputs, propagation) are served from the heap once glibc's adaptive mmap threshold has grown, and that
    heap is not returned by itself, so RSS would ratchet up layer after layer with memory no longer in use."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def _propagate(block, acts: torch.Tensor) -> torch.Tensor:
    """``block(acts)`` a few windows at a time, in place of the input batch (at most one extra copy is alive)."""
    out = torch.empty_like(acts)
    for i in range(0, acts.shape[0], PROPAGATE_WINDOWS):
        out[i : i + PROPAGATE_WINDOWS] = block(acts[i : i + PROPAGATE_WINDOWS])
    return out


def prune_model(
    model,
    tokens: torch.Tensor,  # [nsamples, T] calibration windows
    method: str,
    sparsity: float,
    multiple_of: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> PruneReport:
    """Prune every layer of ``model`` in place to N' = kept_count(N, sparsity, multiple_of) state channels."""
    scorer = SCORERS[method]
    layout = InProjLayout.from_config(model.config)
    n_keep = kept_count(layout.state_size, sparsity, multiple_of)
    report = PruneReport(method, sparsity, layout.state_size, n_keep)
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()

    mask_grads = taylor_mask_grads(model, tokens, batch_size, progress) if method in NEEDS_BACKWARD else None
    layers = model.backbone.layers
    batches = tokens.split(batch_size)
    with torch.no_grad():
        acts = [model.backbone.embeddings(b.to(device)) for b in batches]
        bar = tqdm(total=len(layers) * len(batches), desc=f"{method} layers", unit="batch", disable=not progress)
        for idx, block in enumerate(layers):
            bar.set_postfix(layer=f"{idx + 1}/{len(layers)}")
            moments = layer_moments(block, layout, acts, bar) if method in NEEDS_STATE_STATS else None
            if moments is None:
                bar.update(len(batches))
            w_B, w_C = _bc_rows(block.mixer, layout)
            stats = LayerStats(idx, w_B, w_C, moments, None if mask_grads is None else mask_grads[idx], seed)
            scores = scorer(stats)
            keep = select_channels(scores, n_keep)
            prune_mixer(block.mixer, layout, keep.to(device))
            rounded = [[float(f"{v:.6g}") for v in row] for row in scores.tolist()]
            report.layers.append(LayerReport(idx, n_keep, keep.tolist(), _summary(scores, keep), rounded))
            acts = [_propagate(block, a) for a in acts]  # inputs of the next layer, through the pruned block
            _release_free_heap()
        bar.close()
    model.config.state_size = n_keep
    report.calibration_s = time.perf_counter() - t0
    if device.type == "cuda":
        report.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    log.info("pruned %d layers: N %d → %d (%s, κ=%.3f) in %.1f s", len(layers), layout.state_size, n_keep, method,
             sparsity, report.calibration_s)
    return report
