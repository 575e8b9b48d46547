"""vLLM's cache arithmetic for Mamba2 layers, mirrored exactly (vllm 0.32 sources; tests/test_plan.py checks it
against vLLM's own ``MambaStateShapeCalculator`` and ``MambaSpec.page_size_bytes``):

* per layer and per worker (``mamba2_state_shape``): n_groups grows to ``tp`` when ``tp`` does not divide it
  (``extra_groups_for_head_shards``); conv state ``(K-1) × (I + 2·G·N_l)/tp`` elements at the conv dtype, SSM state
  ``H/tp × head_dim × N_l`` at the SSM dtype (``mamba2_state_dtype``: conv = model dtype, SSM = ``mamba_ssm_cache_dtype``
  or the conv dtype when ``auto``); the plugin's int8 state adds one float32 scale per head (``H/tp`` × 4 B);
* page of a layer = conv bytes + SSM bytes; a block holds one sequence's state in every layer, so
  ``bytes_per_block = Σ_l page_l`` (ghost per-layer checkpoints, one ``GhostMambaSpec`` group) — stock vLLM pads every
  page to the largest (``unify_kv_cache_spec_page_size``), ``L × max_l page_l``;
* ``num_blocks = cache_memory // bytes_per_block`` (``get_kv_cache_config_from_groups``); one block is the block
  pool's null block, so ``num_blocks - 1`` sequences hold a state at once; start-up needs ``num_blocks >= 2``
  (``_check_enough_kv_cache_memory`` reserves the null block, then wants one block for a request); with full CUDA
  graphs start-up also needs ``max_num_seqs <= num_blocks`` (``CompilationConfig``, vllm#38270).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ghost_vllm.errors import RecipeError
from ghost_vllm.mamba.layout import InProjLayout, extra_groups
from ghost_vllm.state import layer_state_bytes
from ghost_vllm.units import DTYPE_BYTES, STATE_DTYPE_TABLE

__all__ = ["BlockMath", "block_math", "num_blocks"]


@dataclass(frozen=True)
class BlockMath:
    conv_bytes: tuple[int, ...]  # per layer, one worker
    ssm_bytes: tuple[int, ...]
    padded: bool  # stock vLLM: every page padded to the largest

    @property
    def page_bytes(self) -> tuple[int, ...]:
        return tuple(c + s for c, s in zip(self.conv_bytes, self.ssm_bytes))

    @property
    def bytes_per_sequence(self) -> int:
        """State bytes one sequence occupies on one worker (unpadded)."""
        return sum(self.page_bytes)

    @property
    def bytes_per_block(self) -> int:
        pages = self.page_bytes
        return len(pages) * max(pages) if self.padded else sum(pages)


def block_math(layout: InProjLayout, state_sizes: Sequence[int], conv_dtype: str, ssm_dtype: str, tp: int = 1,
               padded: bool = False, state_ranks: Optional[Sequence[int]] = None) -> BlockMath:
    """Per-layer conv/SSM bytes on one of ``tp`` workers, as vLLM allocates them: the elements are
    :meth:`InProjLayout.state_elements` (the one definition the state arithmetic, the metrics and ghost.json use)
    at each layer's N'_l (a projected state: SSM at ``state_ranks[l]``, conv at N'_l), priced at the dtypes' sizes."""
    if tp < 1 or layout.num_heads % tp:
        raise RecipeError(f"--tensor-parallel-size {tp}: must be a positive divisor of the model's num_heads "
                          f"{layout.num_heads}")
    if conv_dtype not in DTYPE_BYTES:
        raise RecipeError(f"state dtype {conv_dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    if ssm_dtype not in STATE_DTYPE_TABLE:
        raise RecipeError(f"SSM state dtype {ssm_dtype!r}: use one of {', '.join(STATE_DTYPE_TABLE)}")
    conv, ssm = [], []
    ranks = list(state_ranks) if state_ranks is not None else [None] * len(state_sizes)
    for n, r in zip(state_sizes, ranks):
        conv_dim = layout.intermediate_size + 2 * (layout.n_groups + extra_groups(layout.n_groups, tp)) * int(n)
        if conv_dim % tp:
            raise RecipeError(f"--tensor-parallel-size {tp}: does not divide the conv channels {conv_dim}")
        c, s = layer_state_bytes(layout.with_state_size(int(n)), conv_dtype, ssm_dtype, tp, r)
        conv.append(c)
        ssm.append(s)
    return BlockMath(tuple(conv), tuple(ssm), padded)


def num_blocks(cache_memory: int, bytes_per_block: int) -> int:
    return cache_memory // bytes_per_block
