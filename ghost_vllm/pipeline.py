"""The sequential GHOST loop: layer by layer from the input side, each layer scored on activations that already
flow through the pruned layers before it. Layer inputs are cached once per layer (``[nsamples, T, hidden]``) and
pushed through the pruned block to become the next layer's inputs; statistics are streamed per batch.

Called through :func:`ghost_vllm.prune` (:mod:`ghost_vllm.pruning`), which checks the selection against the model and
decides each layer's N'_l first."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ghost_vllm.families import Family, family_by_name, family_for_config
from ghost_vllm.mamba.budgets import is_uniform
from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.reference import mixer_ssm_inputs, ssm_scan
from ghost_vllm.mamba.projection import attach_projection
from ghost_vllm.memory import release_free_heap
from ghost_vllm.reduce.balanced import GramianAccumulator, Gramians, balanced_projection
from ghost_vllm.refit import RefitLayer, RefitSpec, refit_readout
from ghost_vllm.scoring import NEEDS_BACKWARD, NEEDS_STATE_STATS, PROJECTIONS, SCORERS, LayerStats
from ghost_vllm.selection import select_channels
from ghost_vllm.stats.accumulators import ChannelMoments, StateChannelAccumulator
from ghost_vllm.stats.capture import PROPAGATE_WINDOWS, BlockCall, capture_block_inputs, mixer_input, run_block
from ghost_vllm.stats.gradients import taylor_mask_grads
from ghost_vllm.surgery import prune_mixer

__all__ = ["LayerReport", "PruneReport", "layer_moments", "layer_gramians", "dense_gramians", "prune_layers"]

log = logging.getLogger(__name__)


@dataclass
class LayerReport:
    layer: int
    state_size: int
    kept: list[list[int]]  # [G][N']
    score_summary: dict[str, float]
    scores: list[list[float]]  # [G][N] every channel's score (a projection: the Hankel singular values)
    rank: Optional[int] = None  # a projection's state width r_l (its B/C channels all kept)
    energy_kept: Optional[float] = None  # a projection's Σ_{i≤r} σ_i² / Σ σ_i²

    def to_dict(self) -> dict:
        extra = {} if self.rank is None else {"rank": self.rank, "energy_kept": self.energy_kept}
        return {"layer": self.layer, "state_size": self.state_size, "kept": self.kept, "score": self.score_summary,
                "scores": self.scores, **extra}


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

    @property
    def state_ranks(self) -> Optional[list[int]]:
        """r_l of a projection (method balanced), else None."""
        ranks = [layer.rank for layer in self.layers]
        return None if not ranks or ranks[0] is None else ranks
    calibration_s: float = 0.0
    peak_memory_bytes: Optional[int] = None
    refit: list[RefitLayer] = field(default_factory=list)
    hankel_seconds: float = 0.0  # allocation hankel: the dense Gramian pre-pass
    hankel_ranks: Optional[list[list[float]]] = None  # allocation hankel: the dense model's σ per layer (G·N each)


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
def _stream(acc, block, layout: InProjLayout, inputs: list[torch.Tensor], progress: Optional[tqdm],
            family: Optional[Family], calls: Optional[list[BlockCall]]):
    """Run the reference scan of one layer over the cached block inputs ``[b, T, hidden]`` with ``acc.update`` as
    its ``on_step`` (the mixer's own input is what the block hands it — after its norm, and for a Zamba2 hybrid layer
    after the shared attention); return ``acc.finalize()``."""
    family = family or family_by_name("mamba2")
    mixer = family.mixer(block)
    for i, x in enumerate(inputs):
        h = mixer_input(block, mixer, x, calls[i] if calls else BlockCall())
        s = mixer_ssm_inputs(mixer, layout, h * family.input_scale(mixer), family.in_proj_scale(mixer))
        ssm_scan(s.x, s.dt, s.A, s.B, s.C, s.D, on_step=acc.update, readout=False)
        if progress is not None:
            progress.update(1)
    return acc.finalize()


def layer_moments(block, layout: InProjLayout, inputs: list[torch.Tensor], progress: Optional[tqdm] = None,
                  family: Optional[Family] = None, calls: Optional[list[BlockCall]] = None) -> ChannelMoments:
    """One layer's per-channel scan statistics (the GHOST scores' input), streamed over the cached block inputs."""
    acc = StateChannelAccumulator(layout.n_groups, layout.state_size, layout.heads_per_group, layout.head_dim)
    return _stream(acc, block, layout, inputs, progress, family, calls)


def layer_gramians(block, layout: InProjLayout, inputs: list[torch.Tensor], progress: Optional[tqdm] = None,
                   family: Optional[Family] = None, calls: Optional[list[BlockCall]] = None) -> Gramians:
    """One layer's controllability and observability Gramians (:mod:`ghost_vllm.reduce.balanced`), streamed over
    the cached block inputs."""
    acc = GramianAccumulator(layout.n_groups, layout.state_size, layout.heads_per_group, layout.head_dim)
    return _stream(acc, block, layout, inputs, progress, family, calls)


@torch.no_grad()
def dense_gramians(model, tokens: torch.Tensor, batch_size: int = 8, progress: bool = True) -> list[Gramians]:
    """The Gramians of every Mamba layer of the unreduced ``model`` (each layer on the dense network's activations):
    what the Hankel rank allocation reads before the sequential loop. Pure Mamba2 (blocks take no other input)."""
    family = family_for_config(model.config)
    layout = family.layout(model.config)
    device = next(model.parameters()).device
    embeddings = family.embeddings(model)
    if embeddings is None:
        raise AssertionError(f"dense_gramians needs a family whose first block reads the embeddings ({family.name})")
    acts = [embeddings(b.to(device)) for b in tokens.split(batch_size)]
    blocks = family.blocks(model)
    out = []
    bar = tqdm(total=len(blocks) * len(acts), desc="hankel ranks", unit="batch", disable=None if progress else True)
    for block in blocks:
        out.append(layer_gramians(block, layout, acts, bar, family))
        acts = [_propagate(block, a) for a in acts]
    bar.close()
    return out


def _propagate(block, acts: torch.Tensor, call: Optional[BlockCall] = None) -> torch.Tensor:
    """``block(acts)`` a few windows at a time, in place of the input batch (at most one extra copy is alive). With
    captured keyword arguments (hybrids: masks, rotary tables, … of the whole batch) the batch runs at once."""
    if call:
        return run_block(block, acts, call)
    out = torch.empty_like(acts)
    for i in range(0, acts.shape[0], PROPAGATE_WINDOWS):
        out[i : i + PROPAGATE_WINDOWS] = block(acts[i : i + PROPAGATE_WINDOWS])
    return out


def prune_layers(
    model,
    tokens: torch.Tensor,  # [nsamples, T] calibration windows
    method: str,
    state_sizes: Sequence[int],  # N'_l per Mamba layer
    sparsity: float,  # recorded in the report
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    refit: Optional[RefitSpec] = None,
    first_gramians: Optional[Gramians] = None,
) -> PruneReport:
    """Prune Mamba layer l of ``model`` in place to ``state_sizes[l]`` state channels, chosen by ``method`` — or, for
    a projection (``balanced``), keep every channel and project the layer's state to ``state_sizes[l]`` dimensions.
    ``refit``: re-solve each pruned layer's ``out_proj`` on the calibration activations (:mod:`ghost_vllm.refit`).
    ``first_gramians``: the first Mamba layer's Gramians from a pass over the same windows (:func:`dense_gramians`;
    its inputs are the dense model's, so the projection reuses them). The config is not touched
    (:func:`ghost_vllm.ghost_format.set_state_sizes`)."""
    projection = method in PROJECTIONS
    scorer = None if projection else SCORERS[method]
    family = family_for_config(model.config)
    layout = family.layout(model.config)
    blocks = family.blocks(model)
    mamba = [i for i, block in enumerate(blocks) if family.mixer(block) is not None]
    assert len(state_sizes) == len(mamba) and all(1 <= n <= layout.state_size for n in state_sizes), state_sizes
    report = PruneReport(method, sparsity, layout.state_size, layout.state_size if projection else max(state_sizes))
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
        bar = tqdm(total=len(mamba) * len(batches), desc=f"{method} layers", unit="batch", disable=None if progress else True)
        for idx, block in enumerate(blocks):
            kw = block_kwargs[idx]
            if idx not in budget:  # attention / MLP / MoE block: carried through unchanged
                acts = [_propagate(block, a, k) for a, k in zip(acts, kw)]
                if dense_acts is not None:
                    dense_acts = [_propagate(block, a, k) for a, k in zip(dense_acts, kw)]
                continue
            n_keep, mixer = budget[idx], family.mixer(block)
            bar.set_postfix(layer=f"{idx + 1}/{len(blocks)}")
            dense_block = copy.deepcopy(block) if refit is not None else None
            if projection:
                known = first_gramians if idx == mamba[0] else None
                report.layers.append(_project_layer(idx, block, mixer, layout, acts, bar, family, kw, n_keep, known))
            else:
                report.layers.append(_select_layer(idx, block, mixer, layout, acts, bar, family, kw, n_keep, scorer,
                                                   method, None if mask_grads is None else mask_grads[mamba.index(idx)],
                                                   seed, device))
            if refit is not None:  # the refit pass also propagates: inputs of the next layer, through the refit block
                layer_refit, acts, dense_acts = refit_readout(idx, block, dense_block, acts, dense_acts, refit, family,
                                                              kw if any(kw) else None)
                report.refit.append(layer_refit)
                del dense_block
            else:
                acts = [_propagate(block, a, k) for a, k in zip(acts, kw)]  # next inputs, through the pruned block
            release_free_heap()
        bar.close()
    report.calibration_s = time.perf_counter() - t0
    if device.type == "cuda":
        report.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    log.info("pruned %d Mamba layers: N %d → %s (%s) in %.1f s", len(mamba), layout.state_size,
             state_sizes[0] if is_uniform(state_sizes) else list(state_sizes), method, report.calibration_s)
    return report


def _select_layer(idx, block, mixer, layout, acts, bar, family, kw, n_keep, scorer, method, grads, seed,
                  device) -> LayerReport:
    """Score the layer's channels, keep the top ``n_keep`` per group, slice the mixer."""
    moments = layer_moments(block, layout, acts, bar, family, kw) if method in NEEDS_STATE_STATS else None
    if moments is None:
        bar.update(len(acts))
    w_B, w_C = _bc_rows(mixer, layout)
    scores = scorer(LayerStats(idx, w_B, w_C, moments, grads, seed))
    keep = select_channels(scores, n_keep)
    prune_mixer(mixer, layout, keep.to(device))
    family.after_resize(mixer, layout.in_proj_keep_rows(keep), n_keep)
    rounded = [[float(f"{v:.6g}") for v in row] for row in scores.tolist()]
    return LayerReport(idx, n_keep, keep.tolist(), _summary(scores, keep), rounded)


def _project_layer(idx, block, mixer, layout, acts, bar, family, kw, rank, known: Optional[Gramians]) -> LayerReport:
    """Balanced truncation of the layer's state to ``rank`` (every B/C channel kept, the state projected); ``known``:
    the layer's Gramians when they were already streamed on these inputs."""
    if known is None:
        known = layer_gramians(block, layout, acts, bar, family, kw)
    else:
        bar.update(len(acts))
    proj = balanced_projection(known, rank)
    attach_projection(mixer, proj.T, proj.S)
    hsv = proj.hsv
    summary = {"min": float(hsv.min()), "max": float(hsv.max()), "mean": float(hsv.mean()),
               "kept_share_of_squares": proj.energy_kept()}
    every = [list(range(layout.state_size))] * layout.n_groups
    return LayerReport(idx, layout.state_size, every, summary, [[float(f"{v:.6g}") for v in row] for row in
                                                                 hsv.tolist()], rank, proj.energy_kept())
