"""``ghost-vllm prune``: everything cheap is validated before the model is loaded; the checkpoint is written
atomically with ``ghost.json`` provenance."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ghost_vllm import __version__
from ghost_vllm.calib import load_texts, make_windows
from ghost_vllm.calib.sources import TOKEN_SOURCES
from ghost_vllm.calib.windows import generated_windows
from ghost_vllm.sources import resolve_model_path
from ghost_vllm.checkpoint import (
    check_output_location,
    model_family,
    load_model,
    read_config,
    load_tokenizer,
    resolve_tokenizer_path,
    source_hash,
    validate_model_dir,
    write_checkpoint,
)
from ghost_vllm.errors import CalibrationError, ModelError, OutputError, RecipeError
from ghost_vllm.mamba.mamba_ssm_format import hf_config_from_mamba_ssm, is_mamba_ssm_dir, load_mamba_ssm_model
from ghost_vllm.allocation import Allocation, adaptive_state_sizes
from ghost_vllm.pipeline import PruneReport, RefitSpec, prune_model
from ghost_vllm.recipe import Recipe
from ghost_vllm.scoring import NEEDS_BACKWARD
from ghost_vllm.selection import check_state_sizes, kept_count
from ghost_vllm.state import state_size_of

__all__ = ["PruneOutcome", "run_prune", "ghost_json"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneOutcome:
    out_dir: Path
    ghost: dict

    def summary(self) -> str:
        g = self.ghost
        sizes = g["state_sizes"]
        n = str(sizes[0]) if len(set(sizes)) == 1 else f"[{', '.join(map(str, sizes))}] ({g['allocation']})"
        return (
            f"wrote {self.out_dir}: {g['method']} κ={g['sparsity']:.4g}, N {g['state_size_original']} → {n} "
            f"in {len(g.get('mamba_layers', sizes))} Mamba layers; state/sequence {g['state_bytes_per_sequence_original']:,} B → "
            f"{g['state_bytes_per_sequence']:,} B ({g['state_reduction_ratio']:.3f}×); calibration "
            f"{g['timings']['calibration_s']:.1f} s"
        )


def ghost_json(recipe: Recipe, report: PruneReport, cfg: dict, calib_spec: dict, model_dir: Path, digest: str,
               dtype: str, allocation: Optional[Allocation] = None) -> dict:
    from ghost_vllm.families import family_for_config

    family = family_for_config(cfg)
    orig = state_size_of(cfg, state_size=report.state_size_original, dtype=dtype)
    new = state_size_of(cfg, dtype=dtype, state_sizes=report.state_sizes)
    kind = "explicit" if recipe.selection.state_sizes is not None else recipe.selection.allocation
    return {
        "format_version": 1,
        "package": "ghost_vllm",
        "version": __version__,
        "method": report.method,
        "sparsity": report.sparsity,
        "multiple_of": recipe.selection.multiple_of,
        "seed": recipe.selection.seed,
        "state_size_original": report.state_size_original,
        "state_size": report.state_size,
        "allocation": kind,
        "state_sizes": report.state_sizes,
        "state_bytes_per_layer": list(new.layer_bytes),
        "family": family.name,
        "n_groups": family.layout(cfg).n_groups,
        "num_hidden_layers": family.num_layers(cfg),
        "mamba_layers": family.mamba_layers(cfg),
        "state_bytes_per_sequence_original": orig.bytes_per_sequence,
        "state_bytes_per_sequence": new.bytes_per_sequence,
        "state_reduction_ratio": orig.bytes_per_sequence / new.bytes_per_sequence,
        "dtype": dtype,
        "layers": [layer.to_dict() for layer in report.layers],
        "calibration": calib_spec,
        "source": {"path": str(model_dir.resolve()), "sha256": digest},
        "recipe": recipe.to_dict(),
        **({"adaptive": allocation.to_dict()} if allocation is not None else {}),
        **({"refit": {"weights": ["out_proj"], "target": report.refit[0].target, "alpha": report.refit[0].alpha,
                      "error_relative": "Σ||t − W u'||² / Σ||t||² on the calibration tokens, before → after",
                      "layers": [r.to_dict() for r in report.refit]}} if report.refit else {}),
        "timings": {"calibration_s": report.calibration_s,
                    "allocation_s": allocation.seconds if allocation is not None else 0.0,
                    "peak_memory_bytes": report.peak_memory_bytes,
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
    }


def run_prune(recipe: Recipe, device: str = "cpu", progress: bool = True) -> PruneOutcome:
    source_dir = resolve_model_path(recipe.model.path)
    if is_mamba_ssm_dir(source_dir):  # state-spaces layout: read straight into the HF module, no converted copy
        cfg = {**hf_config_from_mamba_ssm(read_config(source_dir)), "model_type": "mamba2"}
        return _prune(recipe, source_dir, cfg, device, progress, mamba_ssm=True)
    return _prune(recipe, source_dir, validate_model_dir(source_dir), device, progress, mamba_ssm=False)


def _check_target(recipe: Recipe, model_dir: Path) -> Path:
    target = recipe.output_dir()
    if target.exists() and not recipe.output.overwrite:
        raise OutputError(f"{target}: already exists; pass --overwrite to replace it or choose another --out")
    if target.resolve() == model_dir.resolve():
        raise OutputError(f"{target}: is the input model; choose another --out")
    check_output_location(target)
    return target


def _check_family_supports(family, recipe: Recipe) -> None:
    """What the hybrid families do not have yet, refused before anything is loaded."""
    sel = recipe.selection
    where = f"{family.hf_architectures[0]} ({family.name})"
    if not family.per_layer_budgets and (sel.allocation != "uniform" or sel.state_sizes is not None):
        raise RecipeError(f"selection: per-layer state budgets are served for pure Mamba2 only, not {where}; use "
                          f"allocation: uniform (the default) without state_sizes")
    if sel.method in NEEDS_BACKWARD and not family.supports_backward_scoring:
        raise RecipeError(f"selection.method: {sel.method} needs our differentiable Mamba2 forward, which covers pure "
                          f"Mamba2 only, not {where}; use ghost, magnitude or random")
    if sel.refit and not family.supports_refit:
        raise RecipeError(f"selection.refit: the readout refit covers pure Mamba2 only, not {where}; drop --refit")


def _check_calibration_fits(source: str, model_dir: Path) -> None:
    """Refuse calibration data that would quietly give a worse checkpoint: an evaluation-only split, or text for the
    bundled recall model (measured: recall accuracy 0.706 after text calibration, 0.968 after --calibration recall,
    both at κ 0.5). Calibration 'recall' on a model without the MQAR vocabulary is refused where the windows are made."""
    from ghost_vllm.calib.sources import EVALUATION_SOURCES
    from ghost_vllm.sources import bundled_model_dir

    if source in EVALUATION_SOURCES:
        raise RecipeError(f"calibration.source {source}: an evaluation-only split (scores on it would be flattered); "
                          f"calibrate with --calibration {EVALUATION_SOURCES[source]}")
    if source not in TOKEN_SOURCES and model_dir.resolve() == bundled_model_dir("recall").resolve():
        raise RecipeError(f"calibration.source {source}: the recall model is calibrated on its task; pass "
                          f"--calibration recall (text calibration loses recall: 0.706 vs 0.968 at κ 0.5)")


def _prune(recipe: Recipe, model_dir: Path, cfg: dict, device: str, progress: bool, mamba_ssm: bool) -> PruneOutcome:
    # cheap checks first: model config/shapes, output target, sparsity vs N, calibration text
    target = _check_target(recipe, model_dir)
    sel = recipe.selection
    family = model_family(cfg, f"{model_dir}/config.json")
    _check_family_supports(family, recipe)
    N, L = family.state_size(cfg), len(family.mamba_layers(cfg))
    if cfg.get("layer_state_sizes") is not None:
        raise ModelError(f"{model_dir}: already has per-layer state sizes; prune the original dense model instead")
    uniform_n = kept_count(N, sel.sparsity, sel.multiple_of)
    min_n = sel.min_state_size if sel.min_state_size is not None else sel.multiple_of
    if sel.state_sizes is not None:
        check_state_sizes(sel.state_sizes, N, L)
    elif sel.allocation == "adaptive" and min_n > uniform_n:
        raise RecipeError(f"selection.min_state_size: {min_n} is above the uniform N' = {uniform_n} at κ = "
                          f"{sel.sparsity}, so no layer could go below it; lower selection.min_state_size")
    c = recipe.calibration
    _check_calibration_fits(c.source, model_dir)
    tok_path = str(resolve_tokenizer_path(recipe.model.tokenizer)) if recipe.model.tokenizer else None
    tokenizer = load_tokenizer(model_dir, tok_path)
    if c.source in TOKEN_SOURCES:  # generated token windows (recall: MQAR training sequences)
        if int(cfg["vocab_size"]) != 512:
            raise CalibrationError(f"calibration 'recall' draws MQAR tokens up to 511; {model_dir} has vocab_size "
                                   f"{cfg['vocab_size']} — use it with --model recall")
        calib = generated_windows(c.source, c.nsamples, c.seq_len, c.seed)
    else:
        calib = make_windows(load_texts(c.source), tokenizer, c.nsamples, c.seq_len, c.seed, c.source)
    log.info("calibration: %d windows × %d tokens from %s", c.nsamples, c.seq_len, c.source)

    digest = source_hash(model_dir, any_weights=mamba_ssm)
    if mamba_ssm:
        model = load_mamba_ssm_model(model_dir, recipe.model.dtype, device)
        log.info("read the mamba_ssm checkpoint %s into the HF Mamba2 layout", model_dir)
    else:
        model = load_model(model_dir, recipe.model.dtype, device)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    allocation = None
    sizes = sel.state_sizes
    if sizes is None and sel.allocation == "adaptive":
        allocation = adaptive_state_sizes(model, calib.tokens, c.batch_size, uniform_n, sel.multiple_of, min_n, progress)
        sizes = allocation.state_sizes
    sparsity = sel.sparsity if sel.state_sizes is None else 1.0 - sum(sizes) / (L * N)
    report = prune_model(model, calib.tokens, sel.method, sparsity, sel.multiple_of, sel.seed, c.batch_size, progress,
                         state_sizes=sizes, refit=RefitSpec() if sel.refit else None)
    ghost = ghost_json(recipe, report, cfg, calib.spec(), model_dir, digest, dtype, allocation)
    write_checkpoint(model, target, ghost, model_dir, overwrite=recipe.output.overwrite,
                     tokenizer_override=tok_path)
    return PruneOutcome(target, ghost)
