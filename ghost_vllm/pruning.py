"""``ghost_vllm.prune(model, calibration, selection)``: the one library call that prunes a model — what
``ghost-vllm prune``, every benchmark and the tests run (like llm-compressor's ``oneshot``).

    import ghost_vllm
    from ghost_vllm.recipe import SelectionSpec

    pruned = ghost_vllm.prune(model, tokens, SelectionSpec(sparsity=0.5, allocation="adaptive", refit=True))
    pruned.model          # the same module, pruned in place, its config's state sizes written
    pruned.report         # per layer: kept channel indices, score summaries, refit errors, timings
    pruned.record(...)    # ghost.json (ghost_record)

Order of work: :func:`check_selection` (everything the selection asks of the model's family and shapes, one-line
errors — the CLI calls it again before loading any weight), then the adaptive allocation when asked
(:mod:`ghost_vllm.allocation`) or the Hankel ranks of a projection (:mod:`ghost_vllm.reduce.balanced`), then the
sequential loop (:func:`ghost_vllm.pipeline.prune_layers`: statistics,
scores, selection, surgery and the refit layer by layer), then the config's state-size keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import resource
import time

import torch

from ghost_vllm.allocation import Allocation, adaptive_state_sizes
from ghost_vllm.errors import ModelError, RecipeError
from ghost_vllm.families import FAMILIES, Family, family_for_config
from ghost_vllm.state import state_size_of
from ghost_vllm import __version__
from ghost_vllm.families.base import cfg_get
from ghost_vllm.ghost_format import FORMAT_VERSION, LAYER_STATE_SIZES_KEY, set_state_sizes
from ghost_vllm.pipeline import PruneReport, dense_gramians, prune_layers
from ghost_vllm.reduce.balanced import allocate_ranks, hankel_singular_values
from ghost_vllm.recipe import SelectionSpec
from ghost_vllm.refit import RefitSpec
from ghost_vllm.scoring import NEEDS_BACKWARD, PROJECTIONS
from ghost_vllm.selection import check_state_sizes, kept_count

__all__ = ["Pruned", "SelectionPlan", "check_selection", "ghost_record", "prune"]


@dataclass(frozen=True)
class SelectionPlan:
    """What :func:`check_selection` found: the family, N and the number of Mamba layers, the uniform cut's N', the
    smallest N'_l the adaptive allocator may give, and the allocation to run (``auto`` resolved)."""

    family: Family
    state_size: int
    mamba_layers: int
    uniform_state_size: int
    min_state_size: int
    allocation: str  # uniform | adaptive | hankel | explicit


def check_selection(cfg: Mapping[str, Any] | Any, selection: SelectionSpec, where: str = "the model") -> SelectionPlan:
    """Everything about ``selection`` that can be checked from a config (dict or transformers object) alone:
    :class:`RecipeError` / :class:`ModelError` in one line naming the key and the fix."""
    family = family_for_config(cfg)
    sel = selection
    label = f"{family.hf_architectures[0]} ({family.name})"
    if sel.method in PROJECTIONS and not family.projected_state:
        which = ", ".join(f.hf_architectures[0] for f in FAMILIES.values() if f.projected_state)
        raise RecipeError(f"selection.method: {sel.method} (a projection of the state) is implemented for {which}, "
                          f"not {label}; use ghost, magnitude or random")
    if sel.allocation == "hankel" and sel.method not in PROJECTIONS:
        raise RecipeError(f"selection.allocation: hankel ranks a projection's state by its Hankel singular values; "
                          f"use it with method: balanced, or allocation: adaptive for {sel.method}")
    if not family.per_layer_budgets and (sel.allocation in ("adaptive", "hankel") or sel.state_sizes is not None):
        raise RecipeError(f"selection: per-layer state budgets are served for pure Mamba2 only, not {label}: vLLM "
                          f"pads every Mamba page of a hybrid to one size, the largest layer's, so they would save no "
                          f"engine memory; use allocation: uniform or auto without state_sizes")
    if sel.method in NEEDS_BACKWARD and not family.supports_backward_scoring:
        raise RecipeError(f"selection.method: {sel.method} needs our differentiable Mamba2 forward, which covers pure "
                          f"Mamba2 only, not {label}; use ghost, magnitude or random")
    if sel.refit and not family.supports_refit:
        raise RecipeError(f"selection.refit: the readout refit is not implemented for {label}; drop --refit")
    if cfg_get(cfg, LAYER_STATE_SIZES_KEY) is not None:
        raise ModelError(f"{where}: already has per-layer state sizes; prune the original dense model instead")
    N, L = family.state_size(cfg), len(family.mamba_layers(cfg))
    uniform_n = kept_count(N, sel.sparsity, sel.multiple_of)
    min_n = sel.min_state_size if sel.min_state_size is not None else sel.multiple_of
    if sel.state_sizes is not None:
        allocation = "explicit"
    elif sel.allocation == "auto":
        per_layer = "hankel" if sel.method in PROJECTIONS else "adaptive"
        allocation = per_layer if family.per_layer_budgets else "uniform"
    else:
        allocation = sel.allocation
    if sel.state_sizes is not None:
        check_state_sizes(sel.state_sizes, N, L)
    elif allocation in ("adaptive", "hankel") and min_n > uniform_n:  # auto resolved: the default runs adaptive too
        raise RecipeError(f"selection.min_state_size: {min_n} is above the uniform N' = {uniform_n} at κ = "
                          f"{sel.sparsity}, so no layer could go below it; lower selection.min_state_size")
    return SelectionPlan(family, N, L, uniform_n, min_n, allocation)


@dataclass
class Pruned:
    """The result of :func:`prune`: the model (pruned in place), the loop's report, the selection it ran, the
    adaptive allocation (when used) and the model's dtype."""

    model: torch.nn.Module
    report: PruneReport
    selection: SelectionSpec
    allocation: Optional[Allocation]
    dtype: str

    @property
    def allocation_kind(self) -> str:
        """uniform | adaptive | hankel | explicit (``auto`` resolved for this model's family)."""
        if self.selection.state_sizes is not None:
            return "explicit"
        if self.report.hankel_ranks is not None:
            return "hankel"
        return "adaptive" if self.allocation is not None else "uniform"

    @property
    def state_sizes(self) -> list[int]:
        return self.report.state_sizes

    @property
    def state_ranks(self) -> Optional[list[int]]:
        """r_l of a projected model (method balanced), else None."""
        return self.report.state_ranks

    def record(self, cfg: dict[str, Any], recipe: dict[str, Any], calibration: dict[str, Any], source: Path,
               digest: str, state_dtype: Optional[str] = None) -> dict[str, Any]:
        """``ghost.json`` for this result (:func:`ghost_record`); ``state_dtype`` "int8"
        when the checkpoint asks for the plugin's int8 SSM state."""
        return ghost_record(self, cfg, recipe, calibration, source, digest, state_dtype)


def prune(model: torch.nn.Module, calibration: Any, selection: SelectionSpec = SelectionSpec(), *,
          batch_size: int = 8, progress: bool = True, refit: Optional[RefitSpec] = None) -> Pruned:
    """Prune the Mamba2 state of ``model`` (any supported family, transformers module) in place.

    ``calibration``: token windows ``[n, T]`` (a tensor, or anything with ``.tokens`` such as
    :class:`ghost_vllm.calib.CalibrationWindows`). ``selection``: method, sparsity, allocation, explicit sizes,
    refit (the recipe's ``selection`` section). ``refit``: the refit's settings when ``selection.refit`` (default
    :class:`RefitSpec`: the global target)."""
    tokens: torch.Tensor = getattr(calibration, "tokens", calibration)
    plan = check_selection(model.config, selection)
    sel = selection
    allocation = None
    sizes = list(sel.state_sizes) if sel.state_sizes is not None else None
    if plan.allocation == "adaptive":
        allocation = adaptive_state_sizes(model, tokens, batch_size, plan.uniform_state_size, sel.multiple_of,
                                          plan.min_state_size, progress)
        sizes = allocation.state_sizes
    hankel, hankel_s = None, 0.0
    if plan.allocation == "hankel":  # the dense model's Hankel singular values decide each layer's rank
        t0 = time.perf_counter()
        dense = dense_gramians(model, tokens, batch_size, progress)
        hankel = [hankel_singular_values(g) for g in dense]
        hankel_s = time.perf_counter() - t0
        sizes = allocate_ranks(hankel, plan.uniform_state_size * plan.mamba_layers, sel.multiple_of,
                               plan.min_state_size)
    sparsity = sel.sparsity if sel.state_sizes is None else 1.0 - sum(sizes) / (plan.mamba_layers * plan.state_size)
    if sizes is None:
        sizes = [plan.uniform_state_size] * plan.mamba_layers
    spec = (refit or RefitSpec()) if sel.refit else None
    report = prune_layers(model, tokens, sel.method, sizes, sparsity, sel.seed, batch_size, progress, spec,
                          first_gramians=dense[0] if hankel is not None else None)
    if hankel is not None:
        report.hankel_seconds = hankel_s
        report.hankel_ranks = [[float(f"{v:.6g}") for v in h.flatten().tolist()] for h in hankel]
    set_state_sizes(model.config, plan.family, report.state_sizes, report.state_ranks)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return Pruned(model, report, sel, allocation, dtype)


def ghost_record(pruned, cfg: dict[str, Any], recipe: dict[str, Any], calibration: dict[str, Any],
                 source: Path, digest: str, state_dtype: Optional[str] = None) -> dict[str, Any]:
    """``ghost.json`` for ``pruned`` (:class:`Pruned`) of the model whose original
    ``config.json`` dict is ``cfg``; ``recipe`` the resolved recipe, ``calibration`` the windows' description.
    ``state_dtype`` "int8": the state is cached as int8 + per-head scales (``state_bytes_*`` of the checkpoint price
    that; the original stays at the model dtype), and :func:`write_checkpoint` puts ``ghost_state_dtype`` into
    config.json."""
    report, allocation, selection, dtype = pruned.report, pruned.allocation, pruned.selection, pruned.dtype
    family = family_for_config(cfg)
    orig = state_size_of(cfg, state_size=report.state_size_original, dtype=dtype)
    new = state_size_of(cfg, dtype=dtype, ssm_dtype=state_dtype, state_sizes=report.state_sizes,
                        state_ranks=report.state_ranks)
    return {
        "format_version": FORMAT_VERSION,
        "package": "ghost_vllm",
        "version": __version__,
        "method": report.method,
        "sparsity": report.sparsity,
        "multiple_of": selection.multiple_of,
        "seed": selection.seed,
        "state_size_original": report.state_size_original,
        "state_size": report.state_size,
        "allocation": pruned.allocation_kind,
        "state_sizes": report.state_sizes,
        **({"state_ranks": report.state_ranks,
            "energy_kept": [layer.energy_kept for layer in report.layers]} if report.state_ranks else {}),
        **({"hankel_singular_values": report.hankel_ranks} if report.hankel_ranks else {}),
        "state_bytes_per_layer": list(new.layer_bytes),
        "family": family.name,
        "n_groups": family.layout(cfg).n_groups,
        "num_hidden_layers": family.num_layers(cfg),
        "mamba_layers": family.mamba_layers(cfg),
        "state_bytes_per_sequence_original": orig.bytes_per_sequence,
        "state_bytes_per_sequence": new.bytes_per_sequence,
        "state_reduction_ratio": orig.bytes_per_sequence / new.bytes_per_sequence,
        "dtype": dtype,
        **({"state_dtype": state_dtype} if state_dtype else {}),
        "layers": [layer.to_dict() for layer in report.layers],
        "calibration": calibration,
        "source": {"path": str(Path(source).resolve()), "sha256": digest},
        "recipe": recipe,
        **({"adaptive": allocation.to_dict()} if allocation is not None else {}),
        **({"refit": {"weights": ["out_proj"], "target": report.refit[0].target, "alpha": report.refit[0].alpha,
                      "error_relative": "Σ||t − W u'||² / Σ||t||² on the calibration tokens, before → after",
                      "layers": [r.to_dict() for r in report.refit]}} if report.refit else {}),
        "timings": {"calibration_s": report.calibration_s,
                    "allocation_s": allocation.seconds if allocation is not None else report.hankel_seconds,
                    "peak_memory_bytes": report.peak_memory_bytes,
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
    }
