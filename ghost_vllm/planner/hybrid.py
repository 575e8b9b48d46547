"""Cache bytes per sequence of a hybrid (attention + Mamba2) model, as vLLM 0.32 lays the cache out — mirrored from
its sources, no vLLM import (``tests/test_hybrid_arith.py`` checks every step against vLLM's own functions). TP = 1,
no speculative decoding, KV cache in the model dtype (``--kv-cache-dtype auto``).

How vLLM 0.32 builds the cache of a hybrid model, step by step:

1. **Pages.** An attention layer's page holds ``block_size`` tokens of K and V:
   ``block_size · 2 · kv_heads · head_size · kv_bytes`` (``FullAttentionSpec.page_size_bytes``). A Mamba2 layer's page
   holds one sequence's state, whatever its length: conv ``(K-1)·(I + 2·G·N)`` elements at the conv dtype plus SSM
   ``H·P·N`` at the SSM dtype (``MambaStateShapeCalculator.mamba2_state_shape``, ``MambaSpec.page_size_bytes``).
2. **Block size** (``Platform.update_block_size_for_backend`` → ``_align_hybrid_block_size``): with
   ``a = max(kernel_block, block_size)``, the block grows to ``a · ceil(mamba_page / (a · token_bytes))`` tokens when
   that is larger, so one attention page ≥ one Mamba page; the Mamba page is then padded up to the attention page
   (``cache_config.mamba_page_size_padded``). The starting block size and the kernel block differ by platform
   (:data:`PLATFORMS`): CUDA starts at 16 tokens with FlashAttention's 16-token kernel block; CPU starts at 128 tokens
   (``CpuPlatform.check_and_update_config``) with CPU_ATTN's 32.
3. **Groups** (``get_kv_cache_groups`` → ``_get_kv_cache_groups_uniform_page_size``): with every page now equal, the
   A attention layers and the M Mamba layers form one bucket each; the group size is ``g = min(A, M)``, or
   ``max(A, M)`` when ``max < 1.5·min``; a bucket of n layers splits into ``ceil(n/g)`` groups (``layers[i::k]``).
4. **Pool** (``get_kv_cache_config_from_groups``): all groups draw block ids from one pool and alias the same memory, so
   one block id spans ``bytes_per_block = page · (layers in the largest group)`` and
   ``num_blocks = memory // bytes_per_block``; the block pool holds one back as its null block.
5. **A sequence of T tokens** holds ``ceil(T / block_size)`` blocks in every attention group and, in every Mamba group,
   one block with prefix caching off (``mamba_cache_mode`` "none", how ghost_vllm serves) or the three vLLM budgets
   per request with prefix caching on ("align", vLLM 0.32's default for these models;
   ``MambaSpec.max_memory_usage_bytes``: 2 + the one prefill-checkpoint block ``MambaMixer2.get_kv_cache_spec``
   adds). So ``sequences = (num_blocks - 1) // (attention_groups · ceil(T/block_size) + mamba_groups · k)``,
   k = 1 or 3.

Two figures come out per sequence: the content (Mamba conv + SSM unpadded, attention K/V in whole blocks) and the
vLLM-realistic footprint (blocks × bytes_per_block: padded Mamba pages and half-empty groups included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ghost_vllm.errors import ModelError, RecipeError
from ghost_vllm.families import family_for_config
from ghost_vllm.state import layer_state_bytes
from ghost_vllm.units import DTYPE_BYTES

__all__ = ["PlatformRules", "PLATFORMS", "HybridLayout", "HybridBytes", "ssm_cache_dtype",
           "hybrid_layout", "hybrid_bytes", "sequences_in"]

# Mamba blocks one request holds per Mamba group: align mode budgets 2 + MambaMixer2's one prefill-checkpoint block
# (MambaSpec.max_memory_usage_bytes; vLLM 0.32 and 0.33)
MAMBA_CACHE_MODES = {"none": 1, "align": 3}


@dataclass(frozen=True)
class PlatformRules:
    """What differs between the platforms vLLM 0.32 aligns a hybrid model's block size on."""

    name: str
    start_block_size: int  # block_size before alignment when the user gives none
    kernel_block: int  # the attention backend's smallest kernel block (MultipleOf)
    ssm_float32_unless_gdn: bool  # cpu.py resets the SSM cache dtype to float32 (below)
    what: str


PLATFORMS: dict[str, PlatformRules] = {p.name: p for p in (
    # interface.py: Phase 1 keeps CacheConfig.DEFAULT_BLOCK_SIZE 16 (FlashAttention takes it), Phase 2 aligns.
    PlatformRules("cuda", 16, 16, False, "CUDA SM 8.x/9.x (A100/H100/H200): FlashAttention, MultipleOf(16)"),
    # cpu.py: check_and_update_config sets 128 when the user gives no --block-size; CPU_ATTN is MultipleOf(32); with
    # AVX512-BF16 an SSM cache dtype other than float32 survives only for the "gdn" backend (an explicit fp16/bf16
    # and a transformers config whose layer_types has "linear_attention"); otherwise it is reset to float32.
    PlatformRules("cpu", 128, 32, True, "CPU with AVX512-BF16: CPU_ATTN, MultipleOf(32), block 128"),
    PlatformRules("cpu-no-avx512bf16", 128, 32, False, "CPU without AVX512-BF16: CPU_ATTN, block 128"),
)}


def _dtype(name: str, flag: str) -> int:
    if name not in DTYPE_BYTES:
        raise RecipeError(f"{flag} {name!r}: use one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def _platform(name: str) -> PlatformRules:
    if name not in PLATFORMS:
        raise RecipeError(f"platform {name!r}: use one of {', '.join(PLATFORMS)}")
    return PLATFORMS[name]


def ssm_cache_dtype(cfg: Mapping[str, Any] | Any, dtype: str, requested: str = "auto",
                    platform: str = "cuda") -> str:
    """The SSM-state dtype vLLM 0.32 allocates for ``--mamba-ssm-cache-dtype requested`` and model dtype ``dtype``.

    In vLLM's order: the model's config hook first (``NemotronHForCausalLMConfig``: "auto" → the config's
    ``mamba_ssm_cache_dtype``, else float32 — :meth:`Family.default_ssm_cache_dtype`), then the platform
    (``CpuPlatform.check_and_update_config`` with AVX512-BF16: anything but float32 becomes float32 unless it is
    float16/bfloat16 and some layer is Mamba-only — transformers 5 writes those ``linear_attention`` in
    ``layer_types``, Falcon-H1's parallel layers ``hybrid``), then "auto" means the conv dtype (the model dtype)."""
    family = family_for_config(cfg)
    value = requested
    if value == "auto" and family.default_ssm_cache_dtype(cfg) is not None:
        value = family.default_ssm_cache_dtype(cfg)
    if _platform(platform).ssm_float32_unless_gdn and value != "float32":
        mamba_only = set(family.mamba_layers(cfg)) - set(family.attention_layers(cfg))
        if not (value in ("float16", "bfloat16") and mamba_only):
            value = "float32"
    value = dtype if value == "auto" else value
    _dtype(value, "--mamba-ssm-cache-dtype")
    return value


@dataclass(frozen=True)
class HybridLayout:
    """What vLLM 0.32 builds for a hybrid model at start-up (independent of any sequence's length)."""

    model_type: str
    platform: str
    state_size: int  # N of every Mamba layer
    attention_layers: int  # A
    mamba_layers: int  # M
    kv_heads: int
    head_size: int
    dtype: str  # model dtype = KV cache and conv state
    ssm_dtype: str
    mamba_cache_mode: str  # "none" (prefix caching off) or "align"
    conv_bytes: int  # one Mamba layer, one sequence
    ssm_bytes: int
    token_bytes: int  # one attention layer, one token: 2·kv_heads·head_size·kv_bytes
    block_size: int  # tokens per attention block, after alignment

    @property
    def mamba_page_bytes(self) -> int:
        """Unpadded Mamba page: one layer's state of one sequence."""
        return self.conv_bytes + self.ssm_bytes

    @property
    def page_bytes(self) -> int:
        """Every layer's page after alignment (the attention page; the Mamba page is padded up to it)."""
        return self.block_size * self.token_bytes

    @property
    def mamba_padding_bytes(self) -> int:
        return self.page_bytes - self.mamba_page_bytes

    @property
    def group_size(self) -> int:
        lo, hi = min(self.attention_layers, self.mamba_layers), max(self.attention_layers, self.mamba_layers)
        return hi if hi < lo * 1.5 else lo

    @property
    def attention_groups(self) -> int:
        return math.ceil(self.attention_layers / self.group_size)

    @property
    def mamba_groups(self) -> int:
        return math.ceil(self.mamba_layers / self.group_size)

    @property
    def layers_per_block(self) -> int:
        """Layers in the largest group (``layers[i::k]`` splits n layers into groups of at most ceil(n/k))."""
        return max(math.ceil(self.attention_layers / self.attention_groups),
                   math.ceil(self.mamba_layers / self.mamba_groups))

    @property
    def bytes_per_block(self) -> int:
        return self.page_bytes * self.layers_per_block

    def num_blocks(self, memory_bytes: int) -> int:
        return memory_bytes // self.bytes_per_block

    def attention_blocks(self, context_tokens: int) -> int:
        """Block ids one sequence of ``context_tokens`` holds across the attention groups."""
        return self.attention_groups * math.ceil(context_tokens / self.block_size)

    @property
    def mamba_blocks(self) -> int:
        """Block ids one sequence holds across the Mamba groups, whatever its length."""
        return self.mamba_groups * MAMBA_CACHE_MODES[self.mamba_cache_mode]

    def blocks_per_sequence(self, context_tokens: int) -> int:
        return self.attention_blocks(context_tokens) + self.mamba_blocks


def _aligned_block_size(rules: PlatformRules, block_size: Optional[int], mamba_page: int, token_bytes: int) -> int:
    """``Platform._align_hybrid_block_size`` (TP 1, one attention backend, no MLA)."""
    block = rules.start_block_size if block_size is None else int(block_size)
    if block < 1:
        raise RecipeError(f"--block-size {block}: must be a positive number of tokens")
    if rules.name == "cuda" and block % rules.kernel_block:
        raise RecipeError(f"--block-size {block}: FlashAttention takes multiples of {rules.kernel_block} tokens")
    a = max(rules.kernel_block, block)
    aligned = a * math.ceil(mamba_page / (a * token_bytes))
    aligned = rules.kernel_block * math.ceil(aligned / rules.kernel_block)  # backend_block_alignment (a no-op here)
    return max(block, aligned)


def hybrid_layout(cfg: Mapping[str, Any] | Any, dtype: str = "bfloat16", ssm_dtype: Optional[str] = None,
                  state_size: Optional[int] = None, block_size: Optional[int] = None, platform: str = "cuda",
                  mamba_cache_mode: str = "none") -> HybridLayout:
    """The cache layout of the hybrid model ``cfg`` (a ``config.json`` dict) in vLLM 0.32 on ``platform``.

    ``dtype``: the model dtype (the KV cache and the conv state). ``ssm_dtype``: ``--mamba-ssm-cache-dtype`` (None or
    "auto": vLLM's rule, :func:`ssm_cache_dtype`). ``state_size``: N of every Mamba layer (default: the config's; a
    GHOST-pruned model at N'). ``block_size``: ``--block-size`` (default: the platform's). ``mamba_cache_mode``: "none"
    (prefix caching off) or "align" (on)."""
    family = family_for_config(cfg)
    attn, mamba = family.attention_layers(cfg), family.mamba_layers(cfg)
    if not attn or not mamba:
        raise ModelError(f"{family.name}: {len(attn)} attention and {len(mamba)} Mamba layers — not a hybrid; pure "
                         f"Mamba2 caches are planned by ghost_vllm.planner.arith")
    if mamba_cache_mode not in MAMBA_CACHE_MODES:
        raise RecipeError(f"mamba_cache_mode {mamba_cache_mode!r}: use one of {', '.join(MAMBA_CACHE_MODES)}")
    rules = _platform(platform)
    layout = family.layout(cfg)
    if state_size is not None:
        if not 1 <= int(state_size) <= layout.state_size:
            raise RecipeError(f"state_size {state_size}: must be between 1 and the config's {layout.state_size}")
        layout = layout.with_state_size(int(state_size))
    ssm = ssm_cache_dtype(cfg, dtype, "auto" if ssm_dtype is None else ssm_dtype, platform)
    _dtype(dtype, "dtype")
    conv_bytes, ssm_bytes = layer_state_bytes(layout, dtype, ssm)
    kv_heads, head_size = family.attention_kv(cfg)
    token_bytes = 2 * kv_heads * head_size * DTYPE_BYTES[dtype]
    block = _aligned_block_size(rules, block_size, conv_bytes + ssm_bytes, token_bytes)
    return HybridLayout(family.name, rules.name, layout.state_size, len(attn), len(mamba), kv_heads, head_size, dtype,
                        ssm, mamba_cache_mode, conv_bytes, ssm_bytes, token_bytes, block)


@dataclass(frozen=True)
class HybridBytes:
    """One sequence of ``context_tokens`` tokens in a hybrid model's cache."""

    layout: HybridLayout
    context_tokens: int

    # content: what the model stores --------------------------------------------------------------------------------
    @property
    def conv_bytes(self) -> int:
        """Conv state, all Mamba layers (unpadded)."""
        return self.layout.mamba_layers * self.layout.conv_bytes

    @property
    def ssm_bytes(self) -> int:
        return self.layout.mamba_layers * self.layout.ssm_bytes

    @property
    def mamba_bytes(self) -> int:
        return self.conv_bytes + self.ssm_bytes

    @property
    def attention_bytes(self) -> int:
        """K and V of every attention layer, in whole blocks of ``layout.block_size`` tokens."""
        lay = self.layout
        return lay.attention_layers * math.ceil(self.context_tokens / lay.block_size) * lay.page_bytes

    @property
    def total_bytes(self) -> int:
        return self.mamba_bytes + self.attention_bytes

    # vLLM's footprint: block ids × bytes per block ------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return self.layout.blocks_per_sequence(self.context_tokens)

    @property
    def vllm_mamba_bytes(self) -> int:
        """Mamba blocks × bytes_per_block: padded pages and groups narrower than the widest included."""
        return self.layout.mamba_blocks * self.layout.bytes_per_block

    @property
    def vllm_attention_bytes(self) -> int:
        return self.layout.attention_blocks(self.context_tokens) * self.layout.bytes_per_block

    @property
    def vllm_bytes(self) -> int:
        return self.blocks * self.layout.bytes_per_block

    @property
    def dominant(self) -> str:
        """Which part takes more of vLLM's footprint ("attention", "mamba" or "tie")."""
        a, m = self.vllm_attention_bytes, self.vllm_mamba_bytes
        return "attention" if a > m else "mamba" if m > a else "tie"

    def to_dict(self) -> dict[str, Any]:
        names = ("conv_bytes", "ssm_bytes", "mamba_bytes", "attention_bytes", "total_bytes", "blocks",
                 "vllm_mamba_bytes", "vllm_attention_bytes", "vllm_bytes", "dominant")
        lay = self.layout
        layout = asdict(lay) | {k: getattr(lay, k) for k in ("page_bytes", "mamba_page_bytes", "mamba_padding_bytes",
                                                             "group_size", "attention_groups", "mamba_groups",
                                                             "layers_per_block", "bytes_per_block")}
        return {"context_tokens": self.context_tokens, **{k: getattr(self, k) for k in names}, "layout": layout}


def hybrid_bytes(cfg: Mapping[str, Any] | Any, context_tokens: int, dtype: str = "bfloat16",
                 ssm_dtype: Optional[str] = None, state_size: Optional[int] = None, block_size: Optional[int] = None,
                 platform: str = "cuda", mamba_cache_mode: str = "none") -> HybridBytes:
    """Cache bytes of one sequence of ``context_tokens`` tokens (arguments as :func:`hybrid_layout`)."""
    if int(context_tokens) < 1:
        raise RecipeError(f"context {context_tokens}: must be at least one token")
    return HybridBytes(hybrid_layout(cfg, dtype, ssm_dtype, state_size, block_size, platform, mamba_cache_mode),
                       int(context_tokens))


def sequences_in(memory_bytes: int, per_sequence: HybridBytes) -> int:
    """How many sequences like ``per_sequence`` vLLM 0.32 holds at once in ``memory_bytes`` of cache memory.

    vLLM's block-pool view: ``num_blocks = memory // bytes_per_block`` (``get_kv_cache_config_from_groups``;
    ``bytes_per_block`` = the aligned page × the layers of the largest KV-cache group); the pool keeps one block as its
    null block; each sequence holds ``attention_groups · ceil(T / block_size) + mamba_groups · k`` block ids
    (k = 1 with prefix caching off). So ``(num_blocks - 1) // blocks``. (vLLM's own start-up line, "Maximum
    concurrency", is ``num_blocks / blocks`` at ``max_model_len``: it does not hold the null block back.)"""
    free = per_sequence.layout.num_blocks(int(memory_bytes)) - 1
    return max(free, 0) // per_sequence.blocks
