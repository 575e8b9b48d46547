"""The ghost checkpoint format, read and written here only: what a pruned checkpoint adds to a Hugging Face one.

- ``config.json``: ``architectures`` = the family's ghost architecture (the plugin registers it; ``model_type`` stays
  the family's, so transformers still loads the checkpoint with its own class); the family's d_state key = N' (the
  largest N'_l); ``layer_state_sizes`` = [N'_l per Mamba layer] only when the layers differ (absent when uniform).
  A *projected* checkpoint (``method: balanced``) keeps d_state = N (in_proj and conv1d unchanged) and adds
  ``ghost_state_ranks`` = [r_l per Mamba layer]: the SSM state is r_l wide, read through two float32 tensors per
  mixer, ``state_proj_in`` T [G, r_l, N] (B' = T·B) and ``state_proj_out`` S [G, N, r_l] (C' = Sᵀ·C), applied after
  the conv and its SiLU (:mod:`ghost_vllm.mamba.projection`).
- ``ghost.json``: provenance — method, sparsity, per-layer sizes and kept channel indices, the bytes per sequence
  before and after, the calibration, the source's sha256, the resolved recipe, the adaptive allocation and the refit
  when used, timings (written by :func:`ghost_vllm.pruning.ghost_record`).

Used by ``prune`` (writing), ``inspect``/``plan`` (reading), the plugin's validation and its metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ghost_vllm.errors import CheckpointError, ModelError
from ghost_vllm.units import plugin_state_dtypes

__all__ = ["GHOST_FILE", "LAYER_STATE_SIZES_KEY", "STATE_RANKS_KEY", "PROJ_IN", "PROJ_OUT", "STATE_DTYPE_KEY", "FORMAT_VERSION",
           "is_ghost_checkpoint", "read_ghost_json", "write_ghost_json", "config_state_sizes", "config_state_ranks",
           "config_state_dtype",
           "set_state_sizes", "mark_ghost_config"]

GHOST_FILE = "ghost.json"
LAYER_STATE_SIZES_KEY = "layer_state_sizes"
# a projected (balanced-truncation) checkpoint: the SSM-state width r_l of every Mamba layer, and its two tensors
STATE_RANKS_KEY = "ghost_state_ranks"
PROJ_IN = "state_proj_in"  # T [G, r, N]: B' = T·B
PROJ_OUT = "state_proj_out"  # S [G, N, r]: C' = Sᵀ·C
# how the plugin caches the SSM state (a plugin-cached row of ghost_vllm.units.STATE_DTYPE_TABLE, e.g. "int8": int8 +
# per-head float32 scales); absent = vLLM's own dtypes
STATE_DTYPE_KEY = "ghost_state_dtype"
FORMAT_VERSION = 1


def is_ghost_checkpoint(model_dir: Path) -> bool:
    return (Path(model_dir) / GHOST_FILE).is_file()


def read_ghost_json(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / GHOST_FILE
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no {GHOST_FILE}; this is not a ghost checkpoint (create one with 'ghost-vllm prune')")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-run 'ghost-vllm prune'") from None


def write_ghost_json(model_dir: Path, record: Mapping[str, Any]) -> None:
    (Path(model_dir) / GHOST_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def config_state_sizes(cfg: Mapping[str, Any] | Any, where: str = "config.json") -> list[int]:
    """N'_l of every layer of a pure-Mamba2 ``config.json`` dict (or config object): ``layer_state_sizes`` when
    present, else ``state_size`` repeated. Raises :class:`ModelError` when the key disagrees with the config."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    L, N = int(get("num_hidden_layers")), int(get("state_size"))
    sizes: Optional[Sequence[Any]] = get(LAYER_STATE_SIZES_KEY)
    if sizes is None:
        return [N] * L
    if not isinstance(sizes, (list, tuple)) or len(sizes) != L or not all(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= N for n in sizes
    ):
        raise ModelError(f"{where}: {LAYER_STATE_SIZES_KEY} must list {L} integers in [1, state_size={N}], got "
                         f"{sizes!r}; re-run 'ghost-vllm prune'")
    if max(sizes) != N:
        raise ModelError(f"{where}: state_size {N} is not the largest of {LAYER_STATE_SIZES_KEY} {list(sizes)}; "
                         f"re-run 'ghost-vllm prune'")
    return [int(n) for n in sizes]


def config_state_ranks(cfg: Mapping[str, Any] | Any, where: str = "config.json", layers: Optional[int] = None,
                       state_size: Optional[int] = None) -> Optional[list[int]]:
    """r_l of every Mamba layer of a projected checkpoint (``ghost_state_ranks``), or None for a checkpoint whose
    SSM state is as wide as its B/C channels. ``layers`` / ``state_size``: the model's Mamba-layer count and d_state
    (:meth:`ghost_vllm.families.base.Family.state_ranks` passes its own; default: a pure Mamba2 config's
    ``num_hidden_layers`` / ``state_size``). Raises :class:`ModelError` on a malformed key."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    ranks: Optional[Sequence[Any]] = get(STATE_RANKS_KEY)
    if ranks is None:
        return None
    L = int(layers if layers is not None else get("num_hidden_layers"))
    N = int(state_size if state_size is not None else get("state_size"))
    if not isinstance(ranks, (list, tuple)) or len(ranks) != L or not all(
        isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= N for r in ranks
    ):
        raise ModelError(f"{where}: {STATE_RANKS_KEY} must list {L} integers in [1, state_size={N}], got {ranks!r}; "
                         f"re-run 'ghost-vllm prune'")
    if get(LAYER_STATE_SIZES_KEY) is not None:
        raise ModelError(f"{where}: {STATE_RANKS_KEY} and {LAYER_STATE_SIZES_KEY} together; a projected checkpoint "
                         f"keeps every B/C channel — re-run 'ghost-vllm prune'")
    return [int(r) for r in ranks]


def config_state_dtype(cfg: Mapping[str, Any] | Any, where: str = "config.json") -> Optional[str]:
    """The SSM-state dtype a checkpoint asks the plugin to cache (``ghost_state_dtype``), or None (vLLM's own
    ``--mamba-ssm-cache-dtype`` rules). Raises :class:`ModelError` on a value the plugin does not serve."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    value = get(STATE_DTYPE_KEY)
    if value is None:
        return None
    if value not in plugin_state_dtypes():
        raise ModelError(f"{where}: {STATE_DTYPE_KEY} {value!r} is not a state dtype the plugin caches (use "
                         f"{', '.join(plugin_state_dtypes())}, or remove the key for vLLM's float32/bfloat16/float16)")
    return str(value)


def set_state_sizes(config: Any, family, sizes: Sequence[int], ranks: Optional[Sequence[int]] = None) -> None:
    """Write N'_l into a transformers config object: the family's d_state key(s) = the largest, and
    ``layer_state_sizes`` only when the layers differ (a family without per-layer budgets refuses those); a
    projected model's ``ranks`` as ``ghost_state_ranks`` (always a list)."""
    family.set_state_size(config, max(sizes))
    if ranks is not None:
        setattr(config, STATE_RANKS_KEY, [int(r) for r in ranks])
    if len(set(sizes)) <= 1:
        if hasattr(config, LAYER_STATE_SIZES_KEY):
            delattr(config, LAYER_STATE_SIZES_KEY)
        return
    if not family.per_layer_budgets:
        raise AssertionError(f"per-layer state sizes are not servable for {family.name}")
    setattr(config, LAYER_STATE_SIZES_KEY, [int(n) for n in sizes])


def mark_ghost_config(cfg: dict[str, Any], architecture: str) -> dict[str, Any]:
    """A saved ``config.json`` dict with the family's ghost ``architecture`` the plugin registers (``model_type``
    unchanged)."""
    return {**cfg, "architectures": [architecture]}
