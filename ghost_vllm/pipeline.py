"""The sequential GHOST loop: layer by layer from the input side, each layer scored on activations that already
flow through the pruned layers before it. Layer inputs are cached once per layer (``[nsamples, T, hidden]``) and
pushed through the pruned block to become the next layer's inputs; statistics are streamed per batch."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ghost_vllm.families import Family, family_by_name, family_for_config
from ghost_vllm.mamba.budgets import LAYER_STATE_SIZES_KEY, is_uniform
from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.reference import mixer_ssm_inputs, ssm_scan
from ghost_vllm.stats.capture import BlockCall, capture_block_inputs, mixer_input, run_block
from ghost_vllm.refit import DEFAULT_ALPHA, ReadoutStats, RefitLayer, capture_readout_input
from ghost_vllm.scoring import NEEDS_BACKWARD, NEEDS_STATE_STATS, SCORERS, LayerStats
from ghost_vllm.selection import kept_count, select_channels
from ghost_vllm.stats.accumulators import ChannelMoments, StateChannelAccumulator
from ghost_vllm.stats.capture import masked_mixers
from ghost_vllm.surgery import prune_mixer

__all__ = ["LayerReport", "PruneReport", "MaskGradients", "RefitSpec", "layer_moments", "mask_gradients",
           "taylor_mask_grads", "prune_model"]

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
    state_size: int  # the largest N'_l
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def state_sizes(self) -> list[int]:
        return [layer.state_size for layer in self.layers]
    calibration_s: float = 0.0
    peak_memory_bytes: Optional[int] = None
    refit: list[RefitLayer] = field(default_factory=list)


@dataclass(frozen=True)
class RefitSpec:
    """Readout refit after each layer's truncation (:mod:`ghost_vllm.refit`)."""

    target: str = "global"  # global (the product's: measured better, benchmarks/refit.py) | local
    alpha: float = DEFAULT_ALPHA


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
def layer_moments(block, layout: InProjLayout, inputs: list[torch.Tensor], progress: Optional[tqdm] = None,
                  family: Optional[Family] = None, calls: Optional[list[BlockCall]] = None) -> ChannelMoments:
    """Stream one layer's scan statistics over the cached inputs ``[b, T, hidden]`` (block inputs; the mixer's own
    input is what the block hands it — after its norm, and for a Zamba2 hybrid layer after the shared attention)."""
    family = family or family_by_name("mamba2")
    mixer = family.mixer(block)
    acc = StateChannelAccumulator(layout.n_groups, layout.state_size, layout.heads_per_group, layout.head_dim)
    for i, x in enumerate(inputs):
        h = mixer_input(block, mixer, x, calls[i] if calls else BlockCall())
        s = mixer_ssm_inputs(mixer, layout, h * family.input_scale(mixer), family.in_proj_scale(mixer))
        ssm_scan(s.x, s.dt, s.A, s.B, s.C, s.D, on_step=acc.update)
        if progress is not None:
            progress.update(1)
    return acc.finalize()


@dataclass
class MaskGradients:
    """Per layer ``[G, N]`` float64: ``total`` = Σ_windows ∂NLL_w/∂m, ``fisher`` = Σ_windows (∂NLL_w/∂m)²."""

    total: list[torch.Tensor]
    fisher: list[torch.Tensor]
    per_window: list[torch.Tensor]  # [W, G, N] float32: each window's own gradient (W = number of windows)


def mask_gradients(model, tokens: torch.Tensor, batch_size: int, progress: bool = True,
                   desc: str = "mask gradients") -> MaskGradients:
    """Gradients of each window's summed token NLL w.r.t. a per-window channel mask m = 1 (multiplying B and C) in
    every layer of the dense model, one forward + backward per batch (the mask is ``[b, 1, G, N]``, so one backward
    gives every window's own gradient)."""
    layout = InProjLayout.from_config(model.config)
    device = next(model.parameters()).device
    L = len(model.backbone.layers)
    total = [torch.zeros(layout.n_groups, layout.state_size, dtype=torch.float64) for _ in range(L)]
    fisher = [torch.zeros(layout.n_groups, layout.state_size, dtype=torch.float64) for _ in range(L)]
    per_window: list[list[torch.Tensor]] = [[] for _ in range(L)]
    params = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for batch in tqdm(tokens.split(batch_size), desc=desc, disable=not progress, leave=False):
            batch = batch.to(device)
            masks = [torch.ones(batch.shape[0], 1, layout.n_groups, layout.state_size, device=device,
                                requires_grad=True) for _ in range(L)]
            with masked_mixers(model, masks, chunked=True):
                logits = model(batch, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            loss.backward()
            for t, f, w, m in zip(total, fisher, per_window, masks):
                g = m.grad.double().cpu()[:, 0]  # [b, G, N], one row per window
                t += g.sum(0)
                f += g.pow(2).sum(0)
                w.append(g.float())
    finally:
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
    return MaskGradients(total, fisher, [torch.cat(w) for w in per_window])


def taylor_mask_grads(model, tokens: torch.Tensor, batch_size: int, progress: bool = True) -> list[torch.Tensor]:
    """Σ over calibration windows of ∂(summed token NLL)/∂m for a per-channel mask m = 1 in every layer (one-shot,
    dense model). Returns one ``[G, N]`` float64 tensor per layer."""
    return mask_gradients(model, tokens, batch_size, progress, desc="taylor gradients").total


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


def _propagate(block, acts: torch.Tensor, call: Optional[BlockCall] = None) -> torch.Tensor:
    """``block(acts)`` a few windows at a time, in place of the input batch (at most one extra copy is alive). With
    captured keyword arguments (hybrids: masks, rotary tables, … of the whole batch) the batch runs at once."""
    if call:
        return run_block(block, acts, call)
    out = torch.empty_like(acts)
    for i in range(0, acts.shape[0], PROPAGATE_WINDOWS):
        out[i : i + PROPAGATE_WINDOWS] = block(acts[i : i + PROPAGATE_WINDOWS])
    return out


def _mixer_out(block, h: torch.Tensor) -> torch.Tensor:
    return block.mixer(block.norm(h.to(dtype=block.norm.weight.dtype)))


def _refit_readout(idx: int, block, dense_block, acts: list[torch.Tensor], dense_acts: Optional[list[torch.Tensor]],
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


def prune_model(
    model,
    tokens: torch.Tensor,  # [nsamples, T] calibration windows
    method: str,
    sparsity: float,
    multiple_of: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    state_sizes: Optional[Sequence[int]] = None,
    refit: Optional[RefitSpec] = None,
) -> PruneReport:
    """Prune every layer of ``model`` in place to N' = kept_count(N, sparsity, multiple_of) state channels, or layer l
    to ``state_sizes[l]`` (per-layer budgets; ``sparsity`` is then only recorded). ``refit``: re-solve each pruned
    layer's ``out_proj`` on the calibration activations (:mod:`ghost_vllm.refit`)."""
    scorer = SCORERS[method]
    family = family_for_config(model.config)
    layout = family.layout(model.config)
    blocks = family.blocks(model)
    mamba = [i for i, block in enumerate(blocks) if family.mixer(block) is not None]
    if state_sizes is None:
        state_sizes = [kept_count(layout.state_size, sparsity, multiple_of)] * len(mamba)
    if len(state_sizes) != len(mamba) or not all(1 <= n <= layout.state_size for n in state_sizes):
        raise AssertionError(f"state sizes {list(state_sizes)} for {len(mamba)} Mamba layers of N={layout.state_size}")
    if method in NEEDS_BACKWARD and not family.supports_backward_scoring:
        raise AssertionError(f"{method} scoring is not implemented for {family.name}")
    if refit is not None and not family.supports_refit:
        raise AssertionError(f"the readout refit is not implemented for {family.name}")
    report = PruneReport(method, sparsity, layout.state_size, max(state_sizes))
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()

    mask_grads = taylor_mask_grads(model, tokens, batch_size, progress) if method in NEEDS_BACKWARD else None
    batches = tokens.split(batch_size)
    budget = dict(zip(mamba, state_sizes))
    with torch.no_grad():
        embeddings = family.embeddings(model)
        if embeddings is not None:  # the first block's input is the embedding output; blocks take no other input
            acts = [embeddings(b.to(device)) for b in batches]
            block_kwargs: list[list[BlockCall]] = [[BlockCall() for _ in batches] for _ in blocks]
        else:  # hybrids: one dense forward records each block's input and keyword arguments (masks, rotary, …)
            acts, block_kwargs = capture_block_inputs(model, blocks, [b.to(device) for b in batches])
        dense_acts = [a.clone() for a in acts] if refit is not None and refit.target == "global" else None
        bar = tqdm(total=len(mamba) * len(batches), desc=f"{method} layers", unit="batch", disable=not progress)
        for idx, block in enumerate(blocks):
            kw = block_kwargs[idx]
            if idx not in budget:  # attention / MLP / MoE block: carried through unchanged
                acts = [_propagate(block, a, k) for a, k in zip(acts, kw)]
                continue
            n_keep, mixer = budget[idx], family.mixer(block)
            bar.set_postfix(layer=f"{idx + 1}/{len(blocks)}")
            moments = layer_moments(block, layout, acts, bar, family, kw) if method in NEEDS_STATE_STATS else None
            if moments is None:
                bar.update(len(batches))
            w_B, w_C = _bc_rows(mixer, layout)
            grads = None if mask_grads is None else mask_grads[mamba.index(idx)]
            stats = LayerStats(idx, w_B, w_C, moments, grads, seed)
            scores = scorer(stats)
            keep = select_channels(scores, n_keep)
            dense_block = copy.deepcopy(block) if refit is not None else None
            prune_mixer(mixer, layout, keep.to(device))
            family.after_resize(mixer, layout.in_proj_keep_rows(keep), n_keep)
            rounded = [[float(f"{v:.6g}") for v in row] for row in scores.tolist()]
            report.layers.append(LayerReport(idx, n_keep, keep.tolist(), _summary(scores, keep), rounded))
            if refit is not None:  # the refit pass also propagates: inputs of the next layer, through the refit block
                layer_refit, acts, dense_acts = _refit_readout(idx, block, dense_block, acts, dense_acts, refit)
                report.refit.append(layer_refit)
                del dense_block
            else:
                acts = [_propagate(block, a, k) for a, k in zip(acts, kw)]  # next inputs, through the pruned block
            _release_free_heap()
        bar.close()
    family.set_state_size(model.config, max(state_sizes))
    if is_uniform(state_sizes):
        if hasattr(model.config, LAYER_STATE_SIZES_KEY):
            delattr(model.config, LAYER_STATE_SIZES_KEY)
    else:
        if not family.per_layer_budgets:
            raise AssertionError(f"per-layer state sizes are not servable for {family.name}")
        setattr(model.config, LAYER_STATE_SIZES_KEY, list(state_sizes))
    report.calibration_s = time.perf_counter() - t0
    if device.type == "cuda":
        report.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    log.info("pruned %d Mamba layers: N %d → %s (%s) in %.1f s", len(mamba), layout.state_size,
             state_sizes[0] if is_uniform(state_sizes) else list(state_sizes), method, report.calibration_s)
    return report
