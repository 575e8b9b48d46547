"""The state-cache size ``ghost-vllm serve`` and the plugin's ``cpu-default-cache-size`` patch choose on CPU when the
user gives none, and the one-line capacity it buys."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["CPU_CACHE_CAP", "default_cpu_cache_bytes", "capacity_line"]

CPU_CACHE_CAP = 4 * 2**30


def default_cpu_cache_bytes(available: int) -> int:
    """A quarter of the available host memory, at most 4 GiB, in whole MiB (at least 64 MiB)."""
    return max(64, min(available // 4, CPU_CACHE_CAP) // 2**20) * 2**20


def capacity_line(config: dict[str, Any], dtype: str, ssm_dtype: str, cache_memory: int, tp: int = 1) -> Optional[str]:
    """"holds N concurrent sequences of this model (B B/sequence)" for a Mamba2/ghost config, else None."""
    from ghost_vllm.errors import GhostError
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.planner.arith import block_math
    from ghost_vllm.units import DTYPE_BYTES
    from ghost_vllm.planner.models import plan_model_from_config

    try:
        model = plan_model_from_config("model", config)
    except GhostError:
        return None
    if dtype not in DTYPE_BYTES:
        return None
    ssm = dtype if ssm_dtype in ("auto", "None", "") else ssm_dtype
    bm = block_math(InProjLayout.from_config(model.config), model.state_sizes, dtype, ssm, tp,
                    state_ranks=model.state_ranks)
    blocks = cache_memory // bm.bytes_per_block
    return (f"which holds {max(blocks - 1, 0):,} concurrent sequences of this model ({bm.bytes_per_block:,} B of state "
            f"each; {blocks:,} blocks)")
