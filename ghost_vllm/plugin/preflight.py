"""Serve-time choices a (pruned) checkpoint cannot run with, refused before any engine process starts.

Each rule restates a check vLLM makes later — in a worker after the weights are loaded, or inside a kernel — as one
line that names the flag and the fix. No vLLM import: ``ghost-vllm serve`` runs these before it starts vLLM, and the
plugin's config-map classes run them in vLLM's front-end process (plain ``vllm serve``).

* **Tensor parallel** (``vllm/model_executor/layers/mamba/mamba_mixer2.py``, ``MambaMixer2.__init__``): TP must
  divide the Mamba heads, and the groups unless ``n_groups == 1`` (then every rank gets a copy); hybrids' attention
  must split its query heads. Per rank a sequence holds ``H/tp`` heads × head_dim × N'_l SSM elements and
  ``(I + 2·G_tp·N'_l)/tp`` conv channels (``G_tp`` = groups after vLLM's replication) — GHOST shrinks every rank's
  state by the same factor; kept channels are per group, so a rank's groups keep their own channels.
* **Pipeline parallel**: each stage needs at least one decoder layer.
* **FlashInfer state update** (``--mamba-backend flashinfer``): vLLM 0.32/0.33 pin flashinfer-python 0.7.0.post1 /
  0.7.2.post1, whose ``selective_state_update`` is JIT-compiled on first use with DIM and DSTATE as compile-time
  constants; vLLM checks neither and never falls back to Triton. What compiles for Hopper/Blackwell (sm90a/sm100a;
  nvcc 13.0 on FlashInfer's own sources, not run on a GPU): d_state a multiple of 32 and ≥ 64 with a 16-bit state
  (``stp.cuh`` ``DSTATE % stageCols``, ``mtp_simple.cuh`` zero-sized ``rState`` at 32), a multiple of 16 and ≥ 32
  with a float32 state; head_dim a multiple of 64; heads per group a power of two ≤ 64 (``common.cuh``). Any other
  N'_l fails at the first decode step with "Ninja build failed"; the default Triton backend masks any d_state
  (``ghost_vllm.kernels`` proves it at every size the product emits).
* **int8 SSM state** (``ghost_state_dtype: int8``, :mod:`ghost_vllm.plugin.int8_mixer`): pure Mamba2 only (the
  family's ``int8_state``); its own state update, so no ``--mamba-backend flashinfer`` and no
  ``--mamba-ssm-cache-dtype`` beside it; no prefix caching (checked again once vLLM has resolved its defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ghost_vllm.errors import RecipeError
from ghost_vllm.units import DTYPE_BYTES, STATE_DTYPE_TABLE
from ghost_vllm.mamba.layout import extra_groups, tp_shard_problem

__all__ = ["ServeChoices", "flashinfer_ssu_problem", "tensor_parallel_sizes", "preflight", "preflight_vllm_config"]



@dataclass(frozen=True)
class ServeChoices:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    mamba_backend: str = "triton"
    ssm_state_bytes: int = 2  # bytes per SSM-state element in the cache (float32 4, bfloat16/float16 2)
    state_dtype: Optional[str] = None  # the plugin's SSM state ("int8") or None (vLLM's dtypes)
    mamba_ssm_cache_dtype: str = "auto"  # as given
    prefix_caching: Optional[bool] = None  # as given (None: vLLM's default)


def flashinfer_ssu_problem(state_size: int, head_dim: int, heads_per_group: int, ssm_state_bytes: int) -> str:
    """Why FlashInfer 0.7.x's state update cannot be built for this shape on sm90+/sm100 ('' when it can)."""
    step, low = (16, 32) if ssm_state_bytes >= 4 else (32, 64)
    kind = "float32" if ssm_state_bytes >= 4 else "16-bit"
    if state_size < low or state_size % step:
        return f"d_state {state_size} (with a {kind} state FlashInfer needs a multiple of {step}, at least {low})"
    if head_dim % 64:
        return f"head_dim {head_dim} (FlashInfer needs a multiple of 64)"
    if heads_per_group & (heads_per_group - 1) or heads_per_group > 64:
        return f"{heads_per_group} heads per group (FlashInfer needs a power of two up to 64)"
    return ""


def _tp_problem(heads: int, groups: int, attention_heads: int, tp: int) -> str:
    problem = tp_shard_problem(heads, groups, tp)
    if problem:
        return problem
    if attention_heads and attention_heads % tp:
        return f"does not divide the model's {attention_heads} attention heads"
    return ""


def tensor_parallel_sizes(cfg: Mapping[str, Any] | Any, up_to: int = 64) -> list[int]:
    """The TP sizes ≤ ``up_to`` vLLM can shard this model over."""
    heads, groups, attention = _shape(cfg)
    return [tp for tp in range(1, up_to + 1) if not _tp_problem(heads, groups, attention, tp)]


def _shape(cfg) -> tuple[int, int, int]:
    from ghost_vllm.families import family_for_config
    from ghost_vllm.families.base import cfg_get

    family = family_for_config(cfg)
    layout = family.layout(cfg)
    attention = int(cfg_get(cfg, "num_attention_heads", default=0) or 0) if family.attention_layers(cfg) else 0
    return layout.num_heads, layout.n_groups, attention


def preflight(cfg: Mapping[str, Any] | Any, state_sizes: Sequence[int], choices: ServeChoices,
              where: str = "the model") -> None:
    """Raise :class:`RecipeError` (one line: flag, reason, fix) for a choice ``cfg`` cannot be served with."""
    from ghost_vllm.families import family_for_config
    from ghost_vllm.families.base import cfg_get

    tp, pp = choices.tensor_parallel_size, choices.pipeline_parallel_size
    if tp < 1:
        raise RecipeError(f"--tensor-parallel-size {tp}: must be a positive integer")
    heads, groups, attention = _shape(cfg)
    problem = _tp_problem(heads, groups, attention, tp)
    if problem:
        ok = ", ".join(str(t) for t in tensor_parallel_sizes(cfg, up_to=max(8, tp)))
        raise RecipeError(f"--tensor-parallel-size {tp}: {problem} ({where}); use one of {ok}")
    layers = int(cfg_get(cfg, "num_hidden_layers", "n_layer", default=0) or len(family_for_config(cfg).kinds(cfg)))
    if pp < 1 or (layers and pp > layers):
        raise RecipeError(f"--pipeline-parallel-size {pp}: must be between 1 and the model's {layers} decoder layers "
                          f"({where})")
    if choices.state_dtype is not None:  # a plugin-cached SSM state (a row of ghost_vllm.units.STATE_DTYPE_TABLE)
        family, name = family_for_config(cfg), choices.state_dtype
        if STATE_DTYPE_TABLE[name].mixer is None:
            raise RecipeError(f"{name} SSM state: priced by the planner but the plugin has no mixer that caches it "
                              f"yet ({where}); serve with --state-dtype {' or '.join(d for d in STATE_DTYPE_TABLE if STATE_DTYPE_TABLE[d].mixer)} "
                              f"or vLLM's --mamba-ssm-cache-dtype")
        if not family.int8_state:
            raise RecipeError(f"{name} SSM state: served for pure Mamba2 models only, not {family.name} ({where}); "
                              f"serve it with --mamba-ssm-cache-dtype float32|bfloat16|float16")
        if choices.mamba_backend.lower() == "flashinfer":
            raise RecipeError(f"--mamba-backend flashinfer: the {name} SSM state has its own state update ({where}); "
                              f"drop the flag")
        if choices.mamba_ssm_cache_dtype not in ("auto", "", "None"):
            raise RecipeError(f"--mamba-ssm-cache-dtype {choices.mamba_ssm_cache_dtype}: the SSM state is {name} "
                              f"({where}); drop the flag, or serve without the {name} state")
        if choices.prefix_caching:
            raise RecipeError(f"--enable-prefix-caching: not supported with the {name} SSM state ({where}); pass "
                              f"--no-enable-prefix-caching")
    if choices.mamba_backend.lower() == "flashinfer":
        layout = family_for_config(cfg).layout(cfg)
        ratio = (heads // tp) // max((groups + extra_groups(groups, tp)) // tp, 1)
        # the kernels' d_state: a projected state's ranks (its conv stays N wide), else each layer's N'_l
        dims = family_for_config(cfg).state_ranks(cfg, f"{where}/config.json") or state_sizes
        for n in sorted({int(n) for n in dims}):
            problem = flashinfer_ssu_problem(n, layout.head_dim, ratio, choices.ssm_state_bytes)
            if problem:
                raise RecipeError(f"--mamba-backend flashinfer: FlashInfer's state update cannot be built for "
                                  f"{problem} ({where}); serve with --mamba-backend triton (vLLM's default, any "
                                  f"d_state) or prune to sizes it supports (--multiple-of 32)")


def preflight_vllm_config(vllm_config) -> None:
    """:func:`preflight` from vLLM's own config (front-end process, plain ``vllm serve``); attribute reads only."""
    from ghost_vllm.families import family_for_config
    from ghost_vllm.ghost_format import config_state_dtype

    hf = vllm_config.model_config.hf_config
    parallel = getattr(vllm_config, "parallel_config", None)
    backend = getattr(getattr(vllm_config, "mamba_config", None), "backend", None)
    cache = getattr(vllm_config, "cache_config", None)
    ssm = given = str(getattr(cache, "mamba_ssm_cache_dtype", "auto") or "auto")
    if ssm == "auto":
        ssm = str(family_for_config(hf).default_ssm_cache_dtype(hf) or getattr(vllm_config.model_config, "dtype", ""))
    choices = ServeChoices(tensor_parallel_size=int(getattr(parallel, "tensor_parallel_size", 1) or 1),
                           pipeline_parallel_size=int(getattr(parallel, "pipeline_parallel_size", 1) or 1),
                           mamba_backend=str(getattr(backend, "value", backend or "triton")),
                           ssm_state_bytes=DTYPE_BYTES.get(ssm.replace("torch.", ""), 2),
                           state_dtype=config_state_dtype(hf), mamba_ssm_cache_dtype=given)
    preflight(hf, family_for_config(hf).state_sizes(hf), choices, where=str(vllm_config.model_config.model))
