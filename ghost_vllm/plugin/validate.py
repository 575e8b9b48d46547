"""Checks a ghost checkpoint before vLLM allocates anything: ghost.json vs config.json vs the weight shapes.
No vLLM import here, so the checks are unit-testable without an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ghost_vllm.checkpoint import validate_model_dir
from ghost_vllm.ghost_format import config_state_dtype, read_ghost_json
from ghost_vllm.families import model_family
from ghost_vllm.errors import CheckpointError, ModelError
from ghost_vllm.inspection import inspect_checkpoint, layer_state_sizes
from ghost_vllm.units import STATE_DTYPE_TABLE

__all__ = ["validate_ghost_checkpoint"]


def validate_ghost_checkpoint(model_dir: Path) -> dict[str, Any]:
    """Return :func:`inspect_checkpoint`'s summary, or raise :class:`CheckpointError` naming the layer and shapes."""
    try:
        cfg = validate_model_dir(model_dir)
    except ModelError as e:
        raise CheckpointError(f"ghost checkpoint rejected: {e}") from None
    ghost = read_ghost_json(model_dir)
    family = model_family(cfg, f"{model_dir}/config.json")
    if family.state_ranks(cfg, f"{model_dir}/config.json") is not None and not family.projected_state_served:
        raise CheckpointError(f"{model_dir}: a projected state (method balanced) on {family.hf_architectures[0]} is "
                              f"not served by the plugin yet; evaluate it with 'ghost-vllm compare', or prune with "
                              f"--method ghost to serve it")
    cached = config_state_dtype(cfg, f"{model_dir}/config.json")
    if cached is not None and STATE_DTYPE_TABLE[cached].mixer is None:
        raise CheckpointError(f"{model_dir}: ghost_state_dtype {cached} has no plugin mixer yet (it is priced, not "
                              f"served); serve with --state-dtype int8 or vLLM's --mamba-ssm-cache-dtype")
    n_cfg = family.state_size(cfg)
    sizes = family.state_sizes(cfg, f"{model_dir}/config.json")
    n_layers, n_groups = len(family.mamba_layers(cfg)), family.layout(cfg).n_groups
    n_ghost = ghost.get("state_size")
    if n_ghost != n_cfg:
        raise CheckpointError(
            f"{model_dir}: ghost.json says state_size {n_ghost} but config.json says {n_cfg}; the checkpoint was "
            f"edited or mixed — re-run 'ghost-vllm prune'"
        )
    if ghost.get("state_sizes", sizes) != sizes:
        raise CheckpointError(f"{model_dir}: ghost.json says per-layer state sizes {ghost.get('state_sizes')} but "
                              f"config.json says {sizes}; the checkpoint was edited or mixed — re-run 'ghost-vllm prune'")
    if ghost.get("state_dtype") != config_state_dtype(cfg, f"{model_dir}/config.json"):
        raise CheckpointError(f"{model_dir}: ghost.json says state dtype {ghost.get('state_dtype')} but config.json "
                              f"says {config_state_dtype(cfg)}; the checkpoint was edited or mixed — re-run "
                              f"'ghost-vllm prune' (or ask for the int8 state at serve time: --state-dtype int8)")
    per_layer = layer_state_sizes(model_dir, cfg)
    for i, (n, want) in enumerate(zip(per_layer, sizes)):
        if n != want:
            raise CheckpointError(f"{model_dir}: layer {i} has {n} state channels in its weights, config.json says {want}")
    layers = ghost.get("layers")
    if not isinstance(layers, list) or len(layers) != n_layers:
        raise CheckpointError(f"{model_dir}: ghost.json lists {len(layers) if isinstance(layers, list) else 'no'} layers, "
                              f"the model has {n_layers} Mamba layers")
    for i, (layer, want) in enumerate(zip(layers, sizes)):
        kept = layer.get("kept") if isinstance(layer, dict) else None
        if not isinstance(kept, list) or len(kept) != n_groups or any(len(g) != want for g in kept):
            raise CheckpointError(f"{model_dir}: ghost.json layer {i} does not keep {want} channels in each of "
                                  f"{n_groups} groups")
    return inspect_checkpoint(model_dir)
