"""vLLM's cache arithmetic for Mamba2 layers, mirrored exactly (vllm 0.32 sources; tests/test_plan.py checks it
against vLLM's own ``MambaStateShapeCalculator`` and ``MambaSpec.page_size_bytes``):

* per layer and per worker (``mamba2_state_shape``): n_groups grows to ``tp`` when ``tp`` does not divide it
  (``extra_groups_for_head_shards``); conv state ``(K-1) × (I + 2·G·N_l)/tp`` elements at the conv dtype, SSM state
  ``H/tp × head_dim × N_l`` at the SSM dtype (``mamba2_state_dtype``: conv = model dtype, SSM = ``mamba_ssm_cache_dtype``
  or the conv dtype when ``auto``);
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
from typing import Sequence

from ghost_vllm.errors import RecipeError
from ghost_vllm.mamba.layout import extra_groups
from ghost_vllm.units import DTYPE_BYTES

__all__ = ["MambaShape", "BlockMath", "block_math", "num_blocks"]



@dataclass(frozen=True)
class MambaShape:
    """The numbers of a Mamba2 model that its state depends on (HF names)."""

    num_hidden_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    n_groups: int
    conv_kernel: int

    @classmethod
    def from_config(cls, cfg: dict) -> "MambaShape":
        return cls(int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["num_heads"]),
                   int(cfg["head_dim"]), int(cfg["n_groups"]), int(cfg.get("conv_kernel", 4)))

    @property
    def intermediate_size(self) -> int:
        return self.num_heads * self.head_dim


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


def block_math(shape: MambaShape, state_sizes: Sequence[int], conv_dtype: str, ssm_dtype: str, tp: int = 1,
               padded: bool = False) -> BlockMath:
    """Per-layer conv/SSM bytes on one of ``tp`` workers, as vLLM allocates them."""
    if len(state_sizes) != shape.num_hidden_layers:
        raise AssertionError(f"{len(state_sizes)} state sizes for {shape.num_hidden_layers} layers")
    if tp < 1 or shape.num_heads % tp:
        raise RecipeError(f"--tensor-parallel-size {tp}: must be a positive divisor of the model's num_heads "
                          f"{shape.num_heads}")
    for name in (conv_dtype, ssm_dtype):
        if name not in DTYPE_BYTES:
            raise RecipeError(f"state dtype {name!r}: use one of {', '.join(DTYPE_BYTES)}")
    groups = shape.n_groups + extra_groups(shape.n_groups, tp)
    conv, ssm = [], []
    for n in state_sizes:
        conv_dim = shape.intermediate_size + 2 * groups * int(n)
        if conv_dim % tp:
            raise RecipeError(f"--tensor-parallel-size {tp}: does not divide the conv channels {conv_dim}")
        conv.append((shape.conv_kernel - 1) * (conv_dim // tp) * DTYPE_BYTES[conv_dtype])
        ssm.append((shape.num_heads // tp) * shape.head_dim * int(n) * DTYPE_BYTES[ssm_dtype])
    return BlockMath(tuple(conv), tuple(ssm), padded)


def num_blocks(cache_memory: int, bytes_per_block: int) -> int:
    return cache_memory // bytes_per_block
